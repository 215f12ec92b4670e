"""gen_commands.pending with interrupted and RUNNING runs: stale heartbeats are pending, live ones are not."""
import json

import pytest

from gen_commands import pending, store


def _fake_run(root, name, status, key, heartbeat):
    (root / name).mkdir(parents=True)
    (root / name / "run.json").write_text(json.dumps({"status": status, "heartbeat": heartbeat}))
    (root / name / "config.json").write_text(json.dumps({"run_key": key}))


def test_pending_counts_interrupted_and_stale_running_but_not_live_running(tmp_path, capsys):
    import datetime

    root = tmp_path / "store"
    now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)  # Sacred writes naive UTC
    fresh, stale = (now - datetime.timedelta(seconds=30)).isoformat(), (now - datetime.timedelta(hours=2)).isoformat()
    _fake_run(root, "1", "COMPLETED", "done", stale)
    _fake_run(root, "2", "INTERRUPTED", "cut", stale)
    _fake_run(root, "3", "RUNNING", "dead", stale)  # a killed job: its heartbeat stopped 2 h ago
    _fake_run(root, "4", "RUNNING", "live", fresh)
    _fake_run(root, "5", "INTERRUPTED", "resumed", stale)  # interrupted, and its resumption is running now
    _fake_run(root, "6", "RUNNING", "resumed", fresh)
    cmds = tmp_path / "cmds.txt"
    cmds.write_text("".join(f"python x.py -F {root} with run_key={k}\n"
                            for k in ("done", "cut", "dead", "live", "resumed")))
    assert pending.main([str(cmds)]) == 0
    out = capsys.readouterr()
    assert out.out.strip() == "2-3" and "2 line(s) RUNNING with a heartbeat under 10 min old" in out.err
    assert pending.main([str(cmds), "--stale-after", "0.1"]) == 0  # 6 s: the 30 s old heartbeat is stale too
    assert capsys.readouterr().out.strip() == "2-5"


def test_pending_reads_live_mongo_runs_by_heartbeat(monkeypatch, tmp_path, capsys):
    import datetime

    mongomock = pytest.importorskip("mongomock")
    client = mongomock.MongoClient()
    monkeypatch.setattr(store, "mongo_client", lambda url: client)
    now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    client["dln"]["runs"].insert_many([
        {"status": "RUNNING", "config": {"run_key": "live"}, "heartbeat": now - datetime.timedelta(seconds=20)},
        {"status": "RUNNING", "config": {"run_key": "dead"}, "heartbeat": now - datetime.timedelta(hours=1)},
        {"status": "INTERRUPTED", "config": {"run_key": "cut"}, "heartbeat": now},
    ])
    cmds = tmp_path / "cmds.txt"
    cmds.write_text("".join(f"python -c pass -m localhost:27017:dln with run_key={k}\n"
                            for k in ("live", "dead", "cut")))
    assert pending.main([str(cmds)]) == 0
    assert capsys.readouterr().out.strip() == "2-3"
