"""-m handling, MongoDB targets and the fail-safe observer, without a server (mongomock)."""
import json
import time

import pytest
from sacred import Experiment

from tracking import sacred_utils
from tracking.mongo import parse_target, redact
from tracking.mongo_observer import FailSafeMongoObserver


def test_targets_parse_and_never_show_credentials(monkeypatch):
    t = parse_target("db.example.org:27018:mydb.myruns")
    assert (t.hosts, t.db_name, t.collection, t.public) == (("db.example.org:27018",), "mydb", "myruns",
                                                             "db.example.org:27018/mydb.myruns")
    u = parse_target("mongodb://alice:s3cret@127.0.0.1:4000/exp?authSource=admin")
    assert u.url == "mongodb://alice:s3cret@127.0.0.1:4000/exp?authSource=admin"
    assert "s3cret" not in repr(u) + u.public + u.spec and u.db_name == "exp"
    monkeypatch.setenv("DLT_MONGO_PASSWORD", "fromenv")
    assert parse_target("mongodb://alice@h/exp").url == "mongodb://alice:fromenv@h/exp"
    assert redact("python a.py -m mongodb://alice:s3cret@h:1/db with x=1") == "python a.py -m mongodb://h:1/db with x=1"
    with pytest.raises(ValueError, match="host:port"):
        parse_target("not a target")


def _toy():
    ex = Experiment("toy_mongo")

    @ex.main
    def main(_run):
        for i in range(3):
            _run.log_scalar("loss", 1.0 / (i + 1), i)
        return 42.0

    return ex


def test_unreachable_server_fails_fast_before_compute(monkeypatch, capsys):
    monkeypatch.setenv("DLT_MONGO_TIMEOUT_S", "1")
    start = time.monotonic()
    with pytest.raises(SystemExit) as exc:
        sacred_utils.run_cli(_toy(), ["toy", "-m", "mongodb://u:pw@127.0.0.1:1/db"])
    assert time.monotonic() - start < 5  # 1 s server selection plus slack
    message = str(exc.value.code)
    assert "127.0.0.1:1" in message and "-F DIR" in message and "pw" not in message.replace("upload", "")


def test_lost_server_leaves_a_complete_run_in_the_failure_dir(tmp_path, monkeypatch):
    import mongomock
    import pymongo.errors

    db = mongomock.MongoClient()["db"]
    import gridfs
    import mongomock.gridfs

    mongomock.gridfs.enable_gridfs_integration()
    obs = FailSafeMongoObserver.from_collections(db.runs, gridfs.GridFS(db), db.metrics, parse_target("h:1:db"),
                                                 tmp_path / "failed", final_grace_s=0.0)
    ex = _toy()
    ex.observers.append(obs)

    def down(*args, **kwargs):
        raise pymongo.errors.AutoReconnect("connection closed")

    @ex.post_run_hook
    def lose_server():  # after the compute, before the final save
        monkeypatch.setattr(db.runs, "update_one", down)
        monkeypatch.setattr(db.metrics, "update_one", down)

    ex.run()
    run_dir = obs.failed_over_dir
    assert run_dir is not None and run_dir.parent == tmp_path / "failed"
    run = json.loads((run_dir / "run.json").read_text())
    assert run["status"] == "COMPLETED" and run["result"] == 42.0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["loss"]["steps"] == [0, 1, 2]
    side = json.loads((run_dir / "mongo.json").read_text())
    assert side["hosts"] == ["h:1"] and side["run_uid"] == obs.uid


def test_commands_files_and_failure_records_hold_no_password(tmp_path, capsys, monkeypatch):
    from gen_commands import run, sweep
    from gen_commands.store import Store

    url = "mongodb://alice:pw-XYZ@127.0.0.1:1/db?authSource=admin"
    flag = sweep.observer_flag(mongo=url)
    assert flag == "-m 'mongodb://alice@127.0.0.1:1/db?authSource=admin'"
    assert "$DLT_MONGO_PASSWORD" in capsys.readouterr().err
    assert "pw-XYZ" not in Store.parse("mongo", url).describe()
    cmds = tmp_path / "cmds.txt"  # a hand-written file that does hold a password
    cmds.write_text(f"python -c 'raise SystemExit(3)' -m {url}\n")
    monkeypatch.setenv("DLT_MONGO_TIMEOUT_S", "1")
    assert run.main([str(cmds), "--jobs", "1", "--no-progress"]) == run.EXIT_FAILED
    out = capsys.readouterr()
    record = (tmp_path / "cmds.txt.failures.json").read_text()
    assert "pw-XYZ" not in record + out.out + out.err and "alice" not in record
    # the record still matches the line
    assert run.main([str(cmds), "--jobs", "1", "--no-progress", "--retry-failed"]) == run.EXIT_FAILED


def test_pending_names_an_unreachable_server_and_hides_the_password(monkeypatch):
    from gen_commands.store import Store, StoreError

    monkeypatch.setenv("DLT_MONGO_TIMEOUT_S", "1")
    with pytest.raises(StoreError) as err:
        Store.parse("mongo", "mongodb://alice:pw-XYZ@127.0.0.1:1/db").completed(["k1"])
    assert "127.0.0.1:1" in str(err.value) and "-F DIR" in str(err.value) and "pw-XYZ" not in str(err.value)
