"""Against a real MongoDB wire server (mongoeco, started here): outage, sync, credentials.

Each test starts its own server (``tracking.mongo_server``), so killing it disturbs no
other test. Skipped when no mongoeco interpreter is installed (``.ci/mongo-venv.sh``;
``.ci/run`` builds it, so CI runs these).
"""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tracking import mongo_server
from tracking.load import load_metrics, load_runs
from tracking.sync_mongo import main as sync_main

REPO = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.mongo, pytest.mark.skipif(
    mongo_server.mongoeco_python() is None,
    reason="no mongoeco server: run .ci/mongo-venv.sh (Python >= 3.13) or set DLT_MONGOECO_PYTHON")]

TOY = '''
import sys, time
from pathlib import Path
from sacred import Experiment
from tracking.sacred_utils import run_cli

ex = Experiment("toy_outage")
ex.add_config(width=3, go_file="", run_key="k1")


@ex.main
def main(_run, width, go_file):
    _run.log_scalar("loss", 1.0, 0)
    print("first half done", flush=True)
    deadline = time.monotonic() + 120
    while go_file and not Path(go_file).exists() and time.monotonic() < deadline:
        time.sleep(0.1)  # the test kills the server meanwhile
    for i in range(1, 4):
        _run.log_scalar("loss", 1.0 / (i + 1), i)
    out = Path("weights.txt")  # in the run's cwd
    out.write_text("w" * width)
    _run.add_artifact(str(out), "weights.txt")
    return {"lambdahat": 1.5}


if __name__ == "__main__":
    run_cli(ex)
'''


def _env(tmp_path, **extra):
    return dict(os.environ, PYTHONPATH=str(REPO), DLT_MONGO_FAILURE_DIR=str(tmp_path / "failed"),
                DLT_MONGO_FINAL_GRACE_S="1", DLT_MONGO_TIMEOUT_S="5", OMP_NUM_THREADS="1", **extra)


def _wait_for_running_doc(client, db_name, proc, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client[db_name].runs.find_one({"status": "RUNNING"}):
            return
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        time.sleep(0.2)
    raise AssertionError("the run never appeared on the server")


def _run_through_an_outage(tmp_path, server, url, client, db_name):
    """Start the toy run on ``url``, kill ``server`` once the run is on it, let the run finish."""
    script = tmp_path / "toy_outage.py"
    script.write_text(TOY)
    go = tmp_path / "go"
    proc = subprocess.Popen([sys.executable, str(script), "-m", url, "with", f"go_file={go}"], cwd=tmp_path,
                            env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_running_doc(client, db_name, proc)
        server.kill()
        go.touch()
        out, err = proc.communicate(timeout=180)
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-2000:]
    return out, err


def test_run_survives_a_killed_server_and_syncs_after_restart(tmp_path):
    import pymongo

    db_path = tmp_path / "mongo.sqlite"
    server = mongo_server.start(db_path=db_path)
    spec = f"{server.address}:outage"
    try:
        with pymongo.MongoClient(server.address, serverSelectionTimeoutMS=5000) as client:
            out, err = _run_through_an_outage(tmp_path, server, spec, client, "outage")
        assert "tracking.sync_mongo" in err  # it said how to upload the run
        (run_dir,) = [p.parent for p in (tmp_path / "failed").glob("toy_outage/*/mongo.json")]
        run = json.loads((run_dir / "run.json").read_text())
        assert run["status"] == "COMPLETED" and run["result"] == {"lambdahat": 1.5}
        assert json.loads((run_dir / "metrics.json").read_text())["loss"]["steps"] == [0, 1, 2, 3]
        assert json.loads((run_dir / "config.json").read_text())["width"] == 3
        assert (run_dir / "weights.txt").read_text() == "www"
        assert "first half done" in (run_dir / "cout.txt").read_text()
    finally:
        server.stop()
    server = mongo_server.start(port=server.port, db_path=db_path)  # same port and data, as a restarted mongod
    try:
        stale = load_runs(spec, failed_over=False)
        assert stale["status"].tolist() == ["RUNNING"]  # what the server kept from before the outage
        before = load_runs(spec, failed_over=tmp_path / "failed")  # the failed-over copy replaces the stale one
        assert before["status"].tolist() == ["COMPLETED"]
        assert before["run_id"].tolist() == [f"toy_outage/{run_dir.name}"]
        assert sync_main([str(tmp_path / "failed"), spec]) == 0
        assert sync_main([str(tmp_path / "failed"), spec]) == 0  # idempotent
        df = load_runs(spec, failed_over=tmp_path / "failed")
        assert df["status"].tolist() == ["COMPLETED"] and df["run_id"].tolist() == stale["run_id"].tolist()
        assert df.loc[0, "lambdahat"] == 1.5 and df.loc[0, "width"] == 3
        m = load_metrics(spec, names="loss", failed_over=False)
        assert m["step"].tolist() == [0, 1, 2, 3] and m["value"].tolist() == [1.0, 1 / 2, 1 / 3, 1 / 4]
        with pymongo.MongoClient(server.address, serverSelectionTimeoutMS=5000) as client:
            assert client.outage.metrics.count_documents({}) == 1 and client.outage.runs.count_documents({}) == 1
    finally:
        server.stop()


def _all_text(client, db_name) -> str:
    db = client[db_name]
    return json.dumps({name: list(db[name].find()) for name in db.list_collection_names()}, default=str)


def test_credentials_work_and_are_never_written(tmp_path, capsys):
    import pymongo

    from gen_commands.sweep import observer_flag

    secret = "s3cret-Pw"
    db_path = tmp_path / "mongo.sqlite"
    server = mongo_server.start(db_path=db_path, user=f"alice:{secret}")
    url = f"mongodb://alice:{secret}@{server.address}/creds?authSource=admin&authMechanism=SCRAM-SHA-256"
    script = tmp_path / "toy_outage.py"
    script.write_text(TOY)
    try:
        with pymongo.MongoClient(url, serverSelectionTimeoutMS=5000) as client:
            ok = subprocess.run([sys.executable, str(script), "-m", url], cwd=tmp_path, env=_env(tmp_path),
                                capture_output=True, text=True, timeout=180)
            assert ok.returncode == 0, ok.stderr[-2000:]
            df = load_runs(url)
            assert df["status"].tolist() == ["COMPLETED"] and df.loc[0, "lambdahat"] == 1.5
            assert "alice" not in df.loc[0, "source"] and secret not in df.to_csv()
            assert secret not in _all_text(client, "creds") + ok.stdout + ok.stderr
            # a user without a password in the URL reads it from $DLT_MONGO_PASSWORD
            user_only = f"mongodb://alice@{server.address}/creds?authSource=admin&authMechanism=SCRAM-SHA-256"
            assert observer_flag(mongo=url) == f"-m '{user_only}'"  # what commands files carry
            wrong = subprocess.run([sys.executable, str(script), "-m", user_only], cwd=tmp_path,
                                   env=_env(tmp_path, DLT_MONGO_PASSWORD="wrong-Pw"), capture_output=True, text=True,
                                   timeout=120)
            assert wrong.returncode != 0 and server.address in wrong.stderr and "-F DIR" in wrong.stderr
            assert "first half done" not in wrong.stdout and "wrong-Pw" not in wrong.stdout + wrong.stderr
            # an outage with credentials: nothing under the failure directory holds the password
            out, err = _run_through_an_outage(tmp_path, server, url, client, "creds")
        assert secret not in out + err
        files = [p for p in (tmp_path / "failed").rglob("*") if p.is_file()]
        assert any(p.name == "mongo.json" for p in files)
        assert not [p for p in files if secret.encode() in p.read_bytes() or b"alice" in p.read_bytes()]
    finally:
        server.stop()
    server = mongo_server.start(port=server.port, db_path=db_path, user=f"alice:{secret}")
    try:
        os.environ["DLT_MONGO_PASSWORD"] = secret
        assert sync_main([str(tmp_path / "failed"), user_only]) == 0
        assert secret not in capsys.readouterr().out
        assert load_runs(url, failed_over=False)["status"].tolist() == ["COMPLETED", "COMPLETED"]
    finally:
        os.environ.pop("DLT_MONGO_PASSWORD", None)
        server.stop()
