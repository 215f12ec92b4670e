"""tracking.sync_mongo against mongomock: a failed-over run uploads in full, once."""
import json
from pathlib import Path

import pytest
from sacred import Experiment

from tracking.load import load_info, load_metrics, load_runs
from tracking.mongo import parse_target
from tracking.mongo_observer import FailSafeMongoObserver
from tracking.sync_mongo import main as sync_main
from tracking.sync_mongo import sync


def _toy(artifact_dir):
    ex = Experiment("toy_sync")
    ex.add_config(width=3, run_key="k1")

    @ex.main
    def main(_run, width, run_key):
        for i in range(4):
            _run.log_scalar("loss", 1.0 / (i + 1), i)
        _run.info["note"] = "hello"
        path = artifact_dir / "weights.txt"
        path.write_text("w" * width)
        _run.add_artifact(str(path), "weights.txt")
        print("computed")
        return {"lambdahat": 1.5}

    return ex


@pytest.fixture
def mock_db():
    pytest.importorskip("mongomock")
    import mongomock.gridfs  # binds mongomock too

    mongomock.gridfs.enable_gridfs_integration()
    return mongomock.MongoClient()


def failed_over_run(tmp_path, client, monkeypatch, target="h:1:db"):
    """A toy run whose server (mongomock ``client``) is lost just before its final save."""
    import gridfs
    import pymongo.errors

    db = client["db"]
    obs = FailSafeMongoObserver.from_collections(db.runs, gridfs.GridFS(db), db.metrics, parse_target(target),
                                                 tmp_path / "failed" / "toy_sync", final_grace_s=0.0)
    ex = _toy(tmp_path)
    ex.observers.append(obs)

    def down(*args, **kwargs):
        raise pymongo.errors.AutoReconnect("connection closed")

    @ex.post_run_hook
    def lose_server():
        for coll in (db.runs, db.metrics):
            monkeypatch.setattr(coll, "update_one", down)

    ex.run()
    monkeypatch.undo()
    return obs


def _snapshot(db):
    return {name: sorted((json.dumps(d, sort_keys=True, default=str) for d in db[name].find()))
            for name in ("runs", "metrics", "fs.files", "fs.chunks")}


def test_failed_over_run_syncs_in_full_and_only_once(tmp_path, mock_db, monkeypatch):
    obs = failed_over_run(tmp_path, mock_db, monkeypatch)
    db = mock_db["db"]
    stale = db.runs.find_one({"run_uid": obs.uid})
    assert stale["status"] == "RUNNING"  # what Sacred alone would leave behind
    done = sync(tmp_path / "failed", "h:1:db", db=db)
    assert [(run_id, written) for _, run_id, written in done] == [(stale["_id"], True)]
    df = load_runs(db)
    assert len(df) == 1 and df.loc[0, "status"] == "COMPLETED" and df.loc[0, "lambdahat"] == 1.5
    assert df.loc[0, "width"] == 3 and df.loc[0, "stop_time"] is not None
    m = load_metrics(db, names="loss")
    assert m["step"].tolist() == [0, 1, 2, 3] and m["value"].tolist() == [1.0, 1 / 2, 1 / 3, 1 / 4]
    assert load_info(db, stale["_id"])["note"] == "hello"
    doc = db.runs.find_one({"_id": stale["_id"]})
    assert doc["captured_out"] == (obs.failed_over_dir / "cout.txt").read_text()  # empty under pytest's capture
    assert "test_mongo_sync.py" in [name for name, _ in doc["experiment"]["sources"]]
    import gridfs

    (art,) = doc["artifacts"]
    assert gridfs.GridFS(db).get(art["file_id"]).read() == b"www"
    before = _snapshot(db)
    again = sync(tmp_path / "failed", "h:1:db", db=db)
    assert [written for *_, written in again] == [False] and _snapshot(db) == before
    record = json.loads((obs.failed_over_dir / "mongo.json").read_text())
    assert record["synced"]["run_id"] == stale["_id"]


def test_sync_into_an_empty_database_and_other_targets_are_left(tmp_path, mock_db, monkeypatch):
    failed_over_run(tmp_path, mock_db, monkeypatch)
    fresh = mock_db["fresh"]  # e.g. a server restarted without its data
    assert sync(tmp_path / "failed", "h:2:db", db=fresh) == []  # another server: nothing to do
    (done,) = sync(tmp_path / "failed" / "toy_sync", "h:1:db", db=fresh)
    assert done[1] == 1 and done[2] and fresh.runs.count_documents({}) == 1
    assert fresh.metrics.count_documents({"run_id": 1, "name": "loss"}) == 1
    import gridfs

    sources = dict(fresh.runs.find_one({"_id": 1})["experiment"]["sources"])  # uploaded from _sources/
    assert gridfs.GridFS(fresh).get(sources["test_mongo_sync.py"]).read() == Path(__file__).read_bytes()


def test_sync_command_line_reports_and_fails_fast(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DLT_MONGO_TIMEOUT_S", "1")
    assert sync_main([str(tmp_path), "127.0.0.1:1:db"]) == 0  # nothing failed over: no connection needed
    assert "0 of 0 runs" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        sync_main([str(tmp_path), "not a target"])
    assert "host:port" in capsys.readouterr().err


def test_failed_over_runs_count_as_finished_until_synced(tmp_path, mock_db, monkeypatch, capsys):
    import mongomock
    import pymongo

    from gen_commands import pending, store

    obs = failed_over_run(tmp_path, mock_db, monkeypatch, target="h:1:db")
    monkeypatch.setenv("DLT_MONGO_FAILURE_DIR", str(tmp_path / "failed"))
    monkeypatch.setattr(pymongo, "MongoClient", lambda url, **kw: mongomock.MongoClient(url, _store=mock_db._store))
    monkeypatch.setattr(store, "mongo_client", lambda target: mock_db)
    df = load_runs("h:1:db", status="COMPLETED")
    assert df["run_id"].tolist() == ["toy_sync/1"] and df["source"].tolist() == [f"failed-over:{tmp_path / 'failed'}"]
    assert load_metrics("h:1:db", names="loss")["value"].tolist() == [1.0, 1 / 2, 1 / 3, 1 / 4]
    assert load_runs("h:1:db", status="COMPLETED", failed_over=False).empty  # the server has only a RUNNING stale
    assert load_runs("h:1:db")["status"].tolist() == ["COMPLETED"]  # the failed-over copy replaces the stale one
    assert load_runs("h:1:db.other", status="COMPLETED").empty  # another collection
    cmds = tmp_path / "cmds.txt"
    cmds.write_text("python a.py -m h:1:db with run_key=k1\npython a.py -m h:1:db with run_key=k2\n")
    capsys.readouterr()
    assert pending.main([str(cmds)]) == 0
    assert capsys.readouterr().out.strip() == "2"  # k1 finished on disk: not rerun
    sync(tmp_path / "failed", "h:1:db", db=mock_db["db"])
    df = load_runs("h:1:db", status="COMPLETED")
    assert df["run_id"].tolist() == [obs.run_entry["_id"]]  # once, now from the server
    assert pending.main([str(cmds)]) == 0 and capsys.readouterr().out.strip() == "2"
