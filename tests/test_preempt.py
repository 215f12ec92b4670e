"""tracking.checkpoint and tracking.preempt: file format, atomic writes, fallback, signals, resume checks."""
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import REPO
from tracking import checkpoint as ckpt
from tracking.checkpoint import CheckpointError, CorruptCheckpoint
from tracking.preempt import TEST_ENV, Preempted, Session, parse_every

# ------------------------------------------------------------------ checkpoint_every

@pytest.mark.parametrize("value, expected", [
    (600, ("seconds", 600.0)), (0.5, ("seconds", 0.5)), ("10min", ("seconds", 600.0)), ("2h", ("seconds", 7200.0)),
    ("30s", ("seconds", 30.0)), ("1.5m", ("seconds", 90.0)), ("5steps", ("steps", 5)), ("1 step", ("steps", 1)),
])
def test_checkpoint_every_forms(value, expected):
    assert parse_every(value) == expected


@pytest.mark.parametrize("value", [0, -1, "0min", "-5s", "abc", True, None, "2.5steps", "0steps", float("inf"), "10"])
def test_checkpoint_every_not_positive_or_unknown_is_an_error_naming_the_key(value):
    with pytest.raises(ValueError, match="checkpoint_every must be"):
        parse_every(value)


# ------------------------------------------------------------------ the file format

def payload():
    return {"step": 3, "state": {"w": torch.randn(4, 3, dtype=torch.float64), "n": [1, 2.5, None, "x"]},
            "rngs": ckpt.capture_global_rngs()}


def test_write_then_read_gives_back_every_tensor_and_value_exactly(tmp_path):
    p = payload()
    path = ckpt.write_checkpoint(tmp_path, 3, p)
    assert path.name == "ckpt-000000000003.pt" and [x.name for x in tmp_path.iterdir()] == [path.name]  # no tmp left
    got = ckpt.read_checkpoint(path)
    assert torch.equal(got["state"]["w"], p["state"]["w"]) and got["state"]["n"] == [1, 2.5, None, "x"]


def test_global_rngs_are_restored_exactly():
    import random

    state = ckpt.capture_global_rngs()
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    ckpt.restore_global_rngs(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first


def test_only_the_two_newest_files_are_kept(tmp_path):
    for step in (1, 5, 9):
        ckpt.write_checkpoint(tmp_path, step, payload())
    assert [p.name for p in ckpt.checkpoint_files(tmp_path)] == ["ckpt-000000000009.pt", "ckpt-000000000005.pt"]


@pytest.mark.parametrize("damage, message", [
    (lambda raw: raw[: len(raw) // 2], "checksum mismatch"),  # truncated by a kill mid-copy
    (lambda raw: raw[:-100] + bytes([raw[-100] ^ 1]) + raw[-99:], "checksum mismatch"),  # one flipped bit
    (lambda raw: b"PK" + raw[2:], "bad header"),
    (lambda raw: b"", "bad header"),
])
def test_damaged_files_are_reported_as_corrupt(tmp_path, damage, message):
    path = ckpt.write_checkpoint(tmp_path, 1, payload())
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(CorruptCheckpoint, match=message):
        ckpt.read_checkpoint(path)


def _mark(path):
    Path(path).write_text("code ran")


class Evil:
    def __init__(self, flag):
        self.flag = flag

    def __reduce__(self):
        return _mark, (self.flag,)


def test_loading_never_runs_pickled_code(tmp_path):
    flag = tmp_path / "flag"
    buf = io.BytesIO()
    torch.save({"format": ckpt.FORMAT, "x": Evil(str(flag))}, buf)
    data = buf.getvalue()
    import hashlib

    path = tmp_path / "ckpt-000000000001.pt"
    path.write_bytes(ckpt.MAGIC + hashlib.sha256(data).digest() + data)  # a valid digest: only weights_only stops it
    with pytest.raises(CorruptCheckpoint, match="unreadable"):
        ckpt.read_checkpoint(path)
    assert not flag.exists()


def test_a_failed_write_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    ckpt.write_checkpoint(tmp_path, 1, payload())

    def fail(*a):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        ckpt.write_checkpoint(tmp_path, 2, payload())
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt-000000000001.pt"]  # no half-written file, no tmp
    assert ckpt.read_checkpoint(tmp_path / "ckpt-000000000001.pt")["step"] == 3


def test_corrupt_newest_falls_back_to_the_previous_and_all_corrupt_is_an_error(tmp_path):
    assert ckpt.newest_readable(tmp_path / "none") == (None, None, [])
    ckpt.write_checkpoint(tmp_path, 1, {**payload(), "step": 1})
    newest = ckpt.write_checkpoint(tmp_path, 2, {**payload(), "step": 2})
    newest.write_bytes(newest.read_bytes()[:100])
    got, path, warnings = ckpt.newest_readable(tmp_path)
    assert got["step"] == 1 and path.name == "ckpt-000000000001.pt"
    assert len(warnings) == 1 and newest.name in warnings[0]
    path.write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="no readable checkpoint.*Delete the directory"):
        ckpt.newest_readable(tmp_path)


def test_config_differences_name_the_dotted_keys():
    saved = {"lr": 0.1, "sgld": {"epsilon": 1e-5, "gamma": 1.0}, "gone": 1}
    now = {"lr": 0.1, "sgld": {"epsilon": 2e-5, "gamma": 1.0}, "new": 2}
    assert ckpt.config_differences(saved, now) == [
        "gone (checkpoint 1, now unset)", "new (checkpoint unset, now 2)", "sgld.epsilon (checkpoint 1e-05, now 2e-05)"]


# ------------------------------------------------------------------ the session, with a stand-in for Sacred's Run

class FakeRun:
    def __init__(self):
        self.observers, self.experiment_info, self.info, self._id = [], {"name": "fake"}, {}, None
        self.logged, self.artifacts = [], {}

    def log_scalar(self, name, value, step=None):
        self.logged.append((name, value, step))

    def add_artifact(self, filename, name=None, metadata=None, content_type=None):
        self.artifacts[name] = Path(filename).read_bytes()


def config(tmp_path, **kw):
    return {"checkpoint_every": "10min", "checkpoint_dir": str(tmp_path), "keep_checkpoints": False,
            "resume_from": None, "run_key": "k", "lr": 0.1, "verbose": False, **kw}


def test_signal_inside_the_loop_waits_for_the_boundary_then_saves_and_raises(tmp_path):
    run = FakeRun()
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Preempted, match="SIGTERM: stopped at step 4"):
        with Session(run, config(tmp_path)) as s, s.deferring():
            run.log_scalar("loss", 1.5, 0)
            os.kill(os.getpid(), signal.SIGTERM)  # handled: the process lives on
            run.log_scalar("loss", 1.25, 1)  # the step finishes
            s.boundary(4, lambda: {"x": torch.tensor([1.0])})
    assert signal.getsignal(signal.SIGTERM) is before  # handlers restored
    assert run.info["interrupted"]["signal"] == "SIGTERM" and run.info["interrupted"]["step"] == 4
    (path,) = ckpt.checkpoint_files(tmp_path / "fake" / "k")
    assert json.loads(ckpt.read_checkpoint(path)["metrics"]) == [["loss", 1.5, 0], ["loss", 1.25, 1]]


def test_signal_outside_the_loop_interrupts_at_once(tmp_path):
    run = FakeRun()
    with pytest.raises(Preempted, match="SIGUSR1 outside the checkpointed loop"):
        with Session(run, config(tmp_path)):
            os.kill(os.getpid(), signal.SIGUSR1)
            pytest.fail("not reached")
    assert run.info["interrupted"]["signal"] == "SIGUSR1" and run.info["interrupted"]["checkpoint"] is None


def test_a_second_sigint_stops_at_once(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with Session(FakeRun(), config(tmp_path)) as s, s.deferring():
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
            pytest.fail("not reached")


def test_resume_replays_metrics_info_and_artifacts_and_checks_the_config(tmp_path):
    run = FakeRun()
    art = tmp_path / "a.bin"
    art.write_bytes(b"\x00\x01payload")
    with pytest.raises(Preempted):
        with Session(run, config(tmp_path)) as s, s.deferring():
            run.log_scalar("m", 2.0, 7)
            run.info["records"] = [{"t": 0, "v": float("nan")}]
            run.add_artifact(str(art), "a.bin")
            os.kill(os.getpid(), signal.SIGTERM)
            s.boundary(7, lambda: {"counter": 7})
    with pytest.raises(CheckpointError, match=r"different config: lr \(checkpoint 0.1, now 0.2\)"):
        Session(FakeRun(), config(tmp_path, lr=0.2)).__enter__()
    again = FakeRun()
    with Session(again, config(tmp_path, checkpoint_every=5, verbose=True)) as s:  # free keys may change
        assert s.state == {"counter": 7} and s.resumed_step == 7
        assert again.logged == [("m", 2.0, 7)] and again.artifacts == {"a.bin": b"\x00\x01payload"}
        assert np.isnan(again.info["records"][0]["v"]) and again.info["resumed_from"]["step"] == 7
    assert not (tmp_path / "fake" / "k").exists()  # completed: checkpoints deleted


def test_keep_checkpoints_keeps_them(tmp_path):
    with Session(FakeRun(), config(tmp_path, keep_checkpoints=True, checkpoint_every="1steps")) as s, s.deferring():
        s.boundary(1, lambda: {})
    assert len(ckpt.checkpoint_files(tmp_path / "fake" / "k")) == 1


def test_a_second_process_on_the_same_run_is_refused(tmp_path):
    with Session(FakeRun(), config(tmp_path, checkpoint_every="1steps")) as s, s.deferring():
        s.boundary(1, lambda: {})
        other = FakeRun()
        with pytest.raises(CheckpointError, match="another process is running this run"):
            Session(other, config(tmp_path)).__enter__()  # flock is per open file: a second open conflicts


# ------------------------------------------------------------------ through an experiment

SADDLE = dict(
    device="cpu", width=3, num_training_data=200, logging_period=20,
    training_config=dict(num_steps=40, batch_size=20, learning_rate=1e-3),
    sgld_config=dict(num_steps=10, batch_size=20, num_chains=2),
)


def saddle(store, **updates):
    from sacred.observers import FileStorageObserver

    from tests.conftest import load_experiment

    expt = load_experiment("expt_dln_saddle_dynamics")
    expt.ex.observers[:] = [FileStorageObserver(str(store))]
    try:
        return expt.ex.run(config_updates={**SADDLE, **updates})
    finally:
        expt.ex.observers[:] = []


@pytest.mark.parametrize("updates, key", [
    (dict(checkpoint_every=0), "checkpoint_every"), (dict(checkpoint_every="soon"), "checkpoint_every"),
    (dict(keep_checkpoints="yes"), "keep_checkpoints"), (dict(resume_from="/no/such/run"), "resume_from"),
])
def test_bad_checkpoint_keys_fail_before_compute(tmp_path, monkeypatch, updates, key):
    from tests.conftest import load_experiment

    expt = load_experiment("expt_dln_saddle_dynamics")
    monkeypatch.setattr(expt, "teacher_data", lambda *a, **k: pytest.fail("compute started"))
    with pytest.raises(ValueError, match=key):
        saddle(tmp_path, **updates)


def test_a_different_config_is_refused_naming_the_keys(tmp_path, monkeypatch):
    monkeypatch.setenv(TEST_ENV, "27")
    with pytest.raises(Preempted):
        saddle(tmp_path, run_key="k")
    monkeypatch.delenv(TEST_ENV)
    with pytest.raises(CheckpointError, match=r"training_config.learning_rate \(checkpoint 0.001, now 0.002\)"):
        saddle(tmp_path, run_key="k", training_config=dict(num_steps=40, batch_size=20, learning_rate=2e-3))


def test_corrupt_newest_checkpoint_falls_back_to_the_previous_with_the_same_result(tmp_path, monkeypatch):
    full = saddle(tmp_path / "full", run_key="k")
    monkeypatch.setenv(TEST_ENV, "27")
    with pytest.raises(Preempted):
        saddle(tmp_path / "s", run_key="k", checkpoint_every="10steps")  # files at steps 20 and 27
    monkeypatch.delenv(TEST_ENV)
    files = ckpt.checkpoint_files(tmp_path / "s" / "_checkpoints" / "k")
    assert [p.name for p in files] == ["ckpt-000000000027.pt", "ckpt-000000000020.pt"]
    files[0].write_bytes(files[0].read_bytes()[:-10])  # truncated
    resumed = saddle(tmp_path / "s", run_key="k", checkpoint_every="10steps")
    assert resumed.result == full.result
    assert resumed.info["resumed_from"]["step"] == 20
    assert "ckpt-000000000027.pt" in resumed.info["checkpoint_warnings"][0]


def test_ad_hoc_run_resumes_with_resume_from_its_run_dir(tmp_path, monkeypatch):
    full = saddle(tmp_path / "full")
    monkeypatch.setenv(TEST_ENV, "33:SIGUSR1")
    with pytest.raises(Preempted):
        saddle(tmp_path / "s")  # run_key None: the checkpoint lives in the run's own directory
    monkeypatch.delenv(TEST_ENV)
    assert ckpt.checkpoint_files(tmp_path / "s" / "1" / "checkpoints")
    resumed = saddle(tmp_path / "s", resume_from=str(tmp_path / "s" / "1"))
    assert resumed.result == full.result and resumed.info["resumed_from"]["run_id"] == "1"
    assert not ckpt.checkpoint_files(tmp_path / "s" / "1" / "checkpoints")  # superseded checkpoints removed


def test_command_line_run_is_recorded_interrupted_then_resumed(tmp_path):
    """The issue's scenario through the CLI: the signal (here self-sent at step 27) leaves INTERRUPTED,
    a rerun completes."""
    line = [sys.executable, "experiments/expt_dln_saddle_dynamics.py", "-F", str(tmp_path), "with", "device=cpu",
            "width=3", "num_training_data=200", "logging_period=20", "training_config.num_steps=40",
            "training_config.batch_size=20", "sgld_config.num_steps=10", "sgld_config.batch_size=20",
            "sgld_config.num_chains=2", "run_key=cli"]
    env = {**os.environ, "PYTHONPATH": str(REPO), TEST_ENV: "27:SIGTERM"}
    first = subprocess.run(line, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 1 and "SIGTERM: stopped at step 27" in first.stderr  # Sacred exits 1 on an interrupt
    run1 = json.loads((tmp_path / "1" / "run.json").read_text())
    assert run1["status"] == "INTERRUPTED" and json.loads((tmp_path / "1" / "metrics.json").read_text())
    del env[TEST_ENV]
    second = subprocess.run(line, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-2000:]
    assert json.loads((tmp_path / "2" / "run.json").read_text())["status"] == "COMPLETED"
    assert not (tmp_path / "_checkpoints").exists()


# ------------------------------------------------------------------ dynamics.train's state capture

@pytest.mark.parametrize("optim, extra", [("sgd", dict(momentum=0.9, l2_regularization=1e-3)), ("adam", {})])
def test_train_resumed_from_its_captured_state_equals_the_uninterrupted_run(optim, extra, tmp_path):
    from dynamics.train import TrainingConfig, train

    gen_data = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 3, generator=gen_data), torch.randn(64, 2, generator=gen_data)
    cfg = TrainingConfig(optim=optim, learning_rate=1e-2, batch_size=8, num_steps=10, **extra)
    mse = lambda out, t: ((out - t) ** 2).mean()  # noqa: E731

    def fresh():
        torch.manual_seed(1)
        return torch.nn.Linear(3, 2), torch.Generator().manual_seed(2)

    model, gen = fresh()
    full = train(model, mse, x, y, cfg, gen)
    captured = {}

    class Stop(Exception):
        pass

    def boundary(done, capture):
        if done == 4:
            captured.update(capture())
            raise Stop

    cut, gen_cut = fresh()
    with pytest.raises(Stop):
        train(cut, mse, x, y, cfg, gen_cut, boundary=boundary)
    state = ckpt.read_checkpoint(ckpt.write_checkpoint(tmp_path, 4, {"state": captured}))["state"]  # via the file
    resumed, gen_new = fresh()  # a new process: fresh model, optimizer and generator, then the saved state
    rest = train(resumed, mse, x, y, cfg, gen_new, resume=state)
    np.testing.assert_array_equal(rest, full)  # losses of all 10 steps, the first 4 restored
    for a, b in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_a_signal_outside_any_loop_records_the_run_interrupted(tmp_path):
    """The issue's report: kill -TERM left run.json RUNNING forever. expt_dln without training has no loop to
    checkpoint; the run is now recorded INTERRUPTED with the signal."""
    import time

    line = [sys.executable, "experiments/expt_dln.py", "-F", str(tmp_path), "with", "device=cpu", "input_dim=3",
            "layer_widths=[3, 2]", "num_training_data=200", "sgld_config.num_steps=10000000",
            "sgld_config.batch_size=20", "sgld_config.num_chains=2", "mala_acceptance_every=0",
            "sgld_config.compile=False"]  # 2e7 chain-steps would compile under "auto": minutes before the first step
    proc = subprocess.Popen(line, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    run_json, info_json = tmp_path / "1" / "run.json", tmp_path / "1" / "info.json"

    def handlers_in_place():  # info.checkpoint_dir is set once they are, and reaches info.json at a heartbeat
        try:
            return "checkpoint_dir" in json.loads(info_json.read_text())
        except (OSError, ValueError):
            return False

    for _ in range(1800):  # wait (up to 3 min): not a timing assertion
        if handlers_in_place() or proc.poll() is not None:
            break
        time.sleep(0.1)
    assert json.loads(run_json.read_text())["status"] == "RUNNING"  # RUNNING forever, before this change
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert json.loads(run_json.read_text())["status"] == "INTERRUPTED", err[-2000:]
    assert json.loads((tmp_path / "1" / "info.json").read_text())["interrupted"]["signal"] == "SIGTERM"
