"""The local runner and the resubmission helper.

Most tests drive ``gen_commands.run.main`` in-process over a stand-in experiment
(a 20-line script that records to a Sacred-like file store in milliseconds); one
runs a real Sacred experiment to check that Ctrl-C leaves it INTERRUPTED, and one
runs real ``experiments/expt_dln.py`` lines written by the generator.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gen_commands import expt_dln as gen
from gen_commands import pending, run, store, sweep
from gen_commands.commands import config_overrides

REPO = Path(__file__).resolve().parents[1]

FAKE_EXPT = r'''
import ast, json, os, sys, time
argv = sys.argv[1:]
root = argv[argv.index("-F") + 1]
cfg = {}
for arg in argv[argv.index("with") + 1:]:
    k, v = arg.split("=", 1)
    try:
        v = ast.literal_eval(v)
    except (ValueError, SyntaxError):
        pass
    cfg[k] = v
os.makedirs(root, exist_ok=True)
i = 1
while True:  # next run id, as Sacred's FileStorageObserver does
    try:
        os.mkdir(os.path.join(root, str(i)))
        break
    except FileExistsError:
        i += 1
run_dir = os.path.join(root, str(i))
json.dump(cfg, open(os.path.join(run_dir, "config.json"), "w"))
status = lambda s: json.dump({"status": s}, open(os.path.join(run_dir, "run.json"), "w"))
status("RUNNING")
start = time.time()
time.sleep(cfg.get("sleep", 0))
with open(os.path.join(root, "intervals.txt"), "a") as fh:
    fh.write(f"{start} {time.time()}\n")
if cfg.get("fail") and not os.path.exists(str(cfg.get("fixed_by"))):
    print("progress on stdout")
    print("Traceback (most recent call last):\nValueError: boom on purpose", file=sys.stderr)
    status("FAILED")
    sys.exit(3)
status("COMPLETED")
'''

SLEEPY_SACRED = r'''
import os, time
from sacred import Experiment
ex = Experiment("sleepy")

@ex.config
def cfg():
    run_key = None
    seconds = 120
    pid_file = None

@ex.main
def main(seconds, pid_file):
    with open(pid_file, "w") as fh:
        fh.write(str(os.getpid()))
    time.sleep(seconds)

if __name__ == "__main__":
    ex.run_commandline()
'''


@pytest.fixture
def fake(tmp_path):
    """(script path, store dir, make_lines) for the stand-in experiment."""
    script = tmp_path / "fake_expt.py"
    script.write_text(FAKE_EXPT)
    root = tmp_path / "store"

    def make_lines(overrides_list, name="cmds.txt"):
        lines = [sweep.format_command(str(script), "fake", ov, sweep.observer_flag(file_storage=str(root)))
                 for ov in overrides_list]
        path = tmp_path / name
        path.write_text("".join(x + "\n" for x in lines))
        return path, lines

    return script, root, make_lines


def statuses(root) -> dict:
    return store.Store("file", str(root)).statuses()


def run_main(*args) -> int:
    return run.main([*map(str, args), "--no-progress"])


def test_runs_at_most_jobs_at_once_and_skips_completed(fake, capsys):
    _, root, make_lines = fake
    cmds, lines = make_lines([{"seed": i, "sleep": 1.0} for i in range(4)])
    assert run_main(cmds, "--jobs", "2") == 0
    keys = [sweep.run_key("fake", {"seed": i, "sleep": 1.0}) for i in range(4)]
    assert statuses(root) == {k: {"COMPLETED"} for k in keys}
    intervals = [tuple(map(float, x.split())) for x in (root / "intervals.txt").read_text().splitlines()]
    overlap = max(sum(s <= t < e for s, e in intervals) for t, _ in intervals)
    assert overlap == 2
    assert "4 line(s): 4 done, 0 failed, 0 skipped" in capsys.readouterr().out
    # Second pass: everything is COMPLETED in the store named on the lines.
    assert run_main(cmds, "--jobs", "2") == 0
    assert "4 line(s): 0 done, 0 failed, 4 skipped" in capsys.readouterr().out
    assert len([d for d in root.iterdir() if d.is_dir()]) == 4
    assert not run.failures_path(cmds).exists()


def test_failure_is_reported_by_line_and_others_still_run(fake, tmp_path, capsys):
    _, root, make_lines = fake
    fix = tmp_path / "fixed"
    overrides = [{"seed": 1}, {"seed": 2, "fail": True, "fixed_by": str(fix)}, {"seed": 3}]
    cmds, lines = make_lines(overrides)
    assert run_main(cmds, "--jobs", "2") == run.EXIT_FAILED
    out = capsys.readouterr().out
    assert "3 line(s): 2 done, 1 failed, 0 skipped" in out
    assert "FAILED line 2 (exit 3" in out and "ValueError: boom on purpose" in out
    record = json.loads(run.failures_path(cmds).read_text())
    assert [(f["line"], f["exit_code"], f["command"]) for f in record["failures"]] == [(2, 3, lines[1])]
    assert record["failures"][0]["stderr_tail"][-1] == "ValueError: boom on purpose"
    assert (Path(str(cmds) + ".logs") / "line00002.out").read_text() == "progress on stdout\n"
    assert pending.main([str(cmds)]) == 0
    assert capsys.readouterr().out.strip() == "2"

    # --retry-failed runs only line 2; now it succeeds and the record goes away.
    fix.touch()
    assert run_main(cmds, "--jobs", "2", "--retry-failed") == 0
    assert "1 line(s): 1 done, 0 failed, 0 skipped" in capsys.readouterr().out
    assert not run.failures_path(cmds).exists()
    assert sorted(len(s) for s in statuses(root).values()) == [1, 1, 2]  # line 2: FAILED then COMPLETED
    assert run_main(cmds, "--retry-failed") == 0
    assert "nothing to retry" in capsys.readouterr().err


def test_retry_failed_refuses_a_changed_line(fake, capsys):
    _, root, make_lines = fake
    cmds, _ = make_lines([{"seed": 1, "fail": True}])
    assert run_main(cmds) == run.EXIT_FAILED
    make_lines([{"seed": 2, "fail": True}])
    assert run_main(cmds, "--retry-failed") == run.EXIT_USAGE
    assert "cmds.txt:1 changed since it failed" in capsys.readouterr().err


def test_store_override_decides_what_is_skipped(fake, tmp_path, capsys):
    _, root, make_lines = fake
    cmds, _ = make_lines([{"seed": 1}, {"seed": 2}])
    other = tmp_path / "other"
    (other / "7").mkdir(parents=True)
    (other / "7" / "run.json").write_text(json.dumps({"status": "COMPLETED"}))
    (other / "7" / "config.json").write_text(json.dumps({"run_key": sweep.run_key("fake", {"seed": 2})}))
    assert run_main(cmds, "--store", other, "--dry-run") == 0
    out = capsys.readouterr().out.splitlines()
    assert [x.split("\t")[:2] for x in out] == [["1", "run"], ["2", "skip"]]
    assert pending.main([str(cmds), "--store", str(other)]) == 0
    assert capsys.readouterr().out.strip() == "1"


def test_mongo_store_is_read_by_run_key(monkeypatch, tmp_path, capsys):
    mongomock = pytest.importorskip("mongomock")
    client = mongomock.MongoClient()
    monkeypatch.setattr(store, "mongo_client", lambda url: client)
    runs = client["dln"]["runs"]
    runs.insert_many([
        {"status": "COMPLETED", "config": {"run_key": "k1"}},
        {"status": "FAILED", "config": {"run_key": "k2"}},
        {"status": "COMPLETED", "config": {"run_key": "k3"}},
    ])
    cmds = tmp_path / "cmds.txt"
    cmds.write_text("".join(f"python -c pass -m localhost:27017:dln with run_key={k}\n" for k in ("k1", "k2", "k4")))
    assert store.Store.parse("mongo", "localhost:27017:dln").completed(["k1", "k2", "k4"]) == {"k1"}
    assert pending.main([str(cmds)]) == 0
    assert capsys.readouterr().out.strip() == "2-3"
    assert pending.main([str(cmds), "--mongo", "h:1:other"]) == 0
    assert capsys.readouterr().out.strip() == "1-3"

    def unreachable(url):
        import pymongo.errors
        raise pymongo.errors.ServerSelectionTimeoutError(f"{url}: connection refused")

    monkeypatch.setattr(store, "mongo_client", unreachable)
    assert run_main(cmds) == run.EXIT_USAGE
    assert "cannot read Mongo store 'localhost:27017:dln'" in capsys.readouterr().err


@pytest.mark.parametrize("content, message", [
    (None, "commands file"),
    ("python a.py -F runs with x=1\npython a.py with x='unclosed\n", "cmds.txt:2: malformed line"),
])
def test_bad_commands_file_is_a_clear_error(tmp_path, capsys, content, message):
    cmds = tmp_path / "cmds.txt"
    if content is not None:
        cmds.write_text(content)
    assert run_main(cmds, "--jobs", "2") == run.EXIT_USAGE
    err = capsys.readouterr().err
    assert message in err and ("not found" in err or content is not None)
    assert pending.main([str(cmds)]) == 2


@pytest.mark.parametrize("jobs", ["0", "-1", "two", "1.5"])
def test_nonsense_jobs_is_rejected(tmp_path, capsys, jobs):
    with pytest.raises(SystemExit) as exc:
        run.main([str(tmp_path / "cmds.txt"), "--jobs", jobs])
    assert exc.value.code == 2
    assert f"argument -j/--jobs: must be an integer >= 1; got '{jobs}'" in capsys.readouterr().err


def _ignore_sigint():
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.parametrize("stop, preexec", [(signal.SIGINT, None), (signal.SIGTERM, _ignore_sigint)],
                         ids=["ctrl-c", "sigterm-to-a-runner-started-with-sigint-ignored"])
def test_ctrl_c_interrupts_children_and_sacred_records_it(tmp_path, stop, preexec):
    """Also when the runner was started in the background of a script (SIGINT ignored, inherited by
    its children unless the runner resets it): the lines must still get SIGINT and record INTERRUPTED."""
    script = tmp_path / "sleepy.py"
    script.write_text(SLEEPY_SACRED)
    root = tmp_path / "store"
    pids = [tmp_path / f"pid{i}" for i in range(3)]
    cmds = tmp_path / "cmds.txt"
    cmds.write_text("".join(sweep.format_command(str(script), "sleepy", {"pid_file": str(p)}, f"-F {root}") + "\n"
                            for p in pids))
    proc = subprocess.Popen([sys.executable, "-m", "gen_commands.run", str(cmds), "--jobs", "2", "--grace", "20",
                             "--no-progress"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True, preexec_fn=preexec)
    try:
        deadline = time.monotonic() + 60
        while not (pids[0].exists() and pids[1].exists()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert pids[0].exists() and pids[1].exists(), proc.communicate(timeout=5)[0] if proc.poll() else ""
        time.sleep(0.5)  # let both processes enter sleep()
        proc.send_signal(stop)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == run.EXIT_INTERRUPTED, out
    assert "2 interrupted, 1 not started" in out
    assert not pids[2].exists()
    recorded = [json.loads((d / "run.json").read_text())["status"] for d in root.iterdir() if d.name.isdigit()]
    assert recorded == ["INTERRUPTED", "INTERRUPTED"]
    for p in pids[:2]:
        with pytest.raises(ProcessLookupError):
            os.kill(int(p.read_text()), 0)


def test_real_expt_dln_lines_run_and_a_typo_fails_through_sacred(tmp_path, capsys):
    """Generated lines are accepted by Sacred; an unknown key fails with ConfigAddedError."""
    root = tmp_path / "runs"
    tiny = ["--num-runs", "1", "--widths", "2", "3", "--layers", "1", "2", "--n", "100", "--steps", "20",
            "--batch", "10", "--num-chains", "2", "--device", "cpu", "-F", str(root)]
    good = tmp_path / "good.txt"
    bad = tmp_path / "bad.txt"
    assert gen.main([str(good), *tiny, "--seeds", "1", "2"]) == 0
    assert gen.main([str(bad), *tiny, "--grid", "sgld_config.epsilonn=[1e-3]"]) == 0
    cmds = tmp_path / "cmds.txt"
    lines = good.read_text().splitlines() + bad.read_text().splitlines()
    cmds.write_text("".join(x + "\n" for x in lines))
    capsys.readouterr()
    assert run.main([str(cmds), "--jobs", "2", "--no-progress"]) == run.EXIT_FAILED
    out = capsys.readouterr().out
    assert "FAILED line 3" in out and "ConfigAddedError" in out and "epsilonn" in out
    for line in lines[:2]:
        key = sweep.run_key(gen.EXPERIMENT, {k: v for k, v in config_overrides(line).items() if k != "run_key"})
        (run_dir,) = [d for d in root.iterdir() if (d / "config.json").exists()
                      and json.loads((d / "config.json").read_text()).get("run_key") == key]
        assert json.loads((run_dir / "run.json").read_text())["status"] == "COMPLETED"
        config = json.loads((run_dir / "config.json").read_text())
        for k, v in config_overrides(line).items():
            node = config
            for part in k.split("."):
                node = node[part]
            assert node == v, k
