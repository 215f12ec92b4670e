"""Interrupt once mid-run (a deterministic self-signal at step k), resume, compare with an uninterrupted run.

For expt_dln with training, expt_dln_saddle_dynamics and expt_llc_curve: the resumed
run's result, metrics (every name, step and value), info and artifacts equal the
uninterrupted run's exactly on CPU, with no metric duplicated or lost.
"""
import json

import numpy as np
import pytest

from tests.conftest import load_experiment, run_experiment
from tracking.checkpoint import checkpoint_files
from tracking.preempt import TEST_ENV, Preempted

SESSION_INFO = ("checkpoint_dir", "resumed_from", "interrupted", "checkpoint_warnings")

SADDLE = dict(
    device="cpu", width=3, num_training_data=200, logging_period=20, run_key="saddle-test",
    training_config=dict(num_steps=40, batch_size=20, learning_rate=1e-3),
    sgld_config=dict(num_steps=10, batch_size=20, num_chains=2),
)
DLN = dict(
    layer_widths=[3, 2], input_dim=3, num_training_data=200, device="cpu", seed=3, run_key="dln-test",
    sgld_config=dict(num_steps=60, batch_size=20, num_chains=2, epsilon=1e-5, gamma=10.0),
    do_training=True, do_compute_distance=True,
    training_config=dict(num_steps=30, batch_size=20, learning_rate=1e-3),  # lr 1e-3: see test_expt_dln's smoke test
)


def run(expt, store, config):
    return run_experiment(expt, config, store)


def read(run_dir):
    out = {name: json.loads((run_dir / f"{name}.json").read_text()) for name in ("run", "metrics", "info", "config")}
    out["arrays"] = {p.name: dict(np.load(p)) for p in sorted(run_dir.glob("*.npz"))}
    return out


def interrupted_then_resumed(expt, tmp_path, monkeypatch, config, step, signame):
    """(uninterrupted run dir, interrupted run dir, resumed run dir)."""
    full = run(expt, tmp_path / "full", config)
    monkeypatch.setenv(TEST_ENV, f"{step}:{signame}")
    with pytest.raises(Preempted, match=f"{signame}: stopped at step {step}"):
        run(expt, tmp_path / "store", config)
    monkeypatch.delenv(TEST_ENV)
    resumed = run(expt, tmp_path / "store", config)  # the same command line again
    root = tmp_path / "store"
    return root.parent / "full" / str(full._id), root / "1", root / str(resumed._id)


def assert_resumed_equals_uninterrupted(full_dir, cut_dir, resumed_dir, step, signame):
    full, cut, res = read(full_dir), read(cut_dir), read(resumed_dir)
    assert cut["run"]["status"] == "INTERRUPTED" and res["run"]["status"] == "COMPLETED"
    assert cut["info"]["interrupted"]["signal"] == signame and cut["info"]["interrupted"]["step"] == step
    assert cut["metrics"], "the interrupted run's metrics were flushed"
    assert res["info"]["resumed_from"]["run_dir"] == str(cut_dir) and res["info"]["resumed_from"]["step"] == step
    assert res["run"]["result"] == full["run"]["result"]  # bit for bit: JSON floats round-trip exactly
    assert sorted(res["metrics"]) == sorted(full["metrics"])
    for name, series in full["metrics"].items():  # nothing duplicated or lost, same values
        assert res["metrics"][name]["steps"] == series["steps"], name
        assert res["metrics"][name]["values"] == series["values"], name
    strip = lambda info: {k: v for k, v in info.items() if k not in SESSION_INFO}  # noqa: E731
    assert strip(res["info"]) == strip(full["info"])
    assert res["arrays"].keys() == full["arrays"].keys()
    for name, arrays in full["arrays"].items():
        for key, value in arrays.items():
            np.testing.assert_array_equal(res["arrays"][name][key], value, err_msg=f"{name}:{key}")
    assert not checkpoint_files(res["info"]["checkpoint_dir"]), "checkpoints are deleted on completion"


def resumes_bit_for_bit(name, tmp_path, monkeypatch, config, step, signame):
    """experiments/<name>.py run uninterrupted, then interrupted by ``signame`` at ``step`` and resumed: asserts the
    resumed run equals the uninterrupted one and returns the (uninterrupted, interrupted) records (:func:`read`)."""
    dirs = interrupted_then_resumed(load_experiment(name), tmp_path, monkeypatch, config, step, signame)
    assert_resumed_equals_uninterrupted(*dirs, step, signame)
    return read(dirs[0]), read(dirs[1])

def test_saddle_dynamics_resumes_bit_for_bit(tmp_path, monkeypatch):
    # step 27: between the λ̂ records at 20 and 40
    resumes_bit_for_bit("expt_dln_saddle_dynamics", tmp_path, monkeypatch, SADDLE, 27, "SIGTERM")


def test_saddle_dynamics_resumes_at_a_record_step(tmp_path, monkeypatch):
    # step 20: right after the t=20 record
    resumes_bit_for_bit("expt_dln_saddle_dynamics", tmp_path, monkeypatch, SADDLE, 20, "SIGUSR1")


def test_dln_with_training_resumes_bit_for_bit(tmp_path, monkeypatch):
    resumes_bit_for_bit("expt_dln", tmp_path, monkeypatch, DLN, 13, "SIGINT")


def llc_config(root):
    return dict(
        data_root=str(root), device="cpu", logging_period=2, run_key="llc-test",
        model_data_config=dict(model_name="resnet18", layer_width_factor=2),
        training_config=dict(num_steps=5, batch_size=8, learning_rate=1e-2, momentum=0.9),  # momentum: optimizer state
        sgld_config=dict(num_steps=6, batch_size=8, num_chains=2, epsilon=1e-5),
    )


def test_llc_curve_resumes_bit_for_bit(tmp_path, monkeypatch, cifar):
    resumes_bit_for_bit("expt_llc_curve", tmp_path, monkeypatch, llc_config(cifar), 3, "SIGTERM")


def test_runner_retry_failed_resumes_the_interrupted_line(tmp_path, monkeypatch, capsys):
    """gen_commands.run: a line stopped by a signal is retried with --retry-failed and resumes, same result."""
    import shlex

    from gen_commands import run as runner
    from tests.conftest import REPO

    overrides = ["device=cpu", "width=3", "num_training_data=200", "logging_period=20", "training_config.num_steps=40",
                 "training_config.batch_size=20", "training_config.learning_rate=0.001", "sgld_config.num_steps=10",
                 "sgld_config.batch_size=20", "sgld_config.num_chains=2"]
    script = shlex.quote(str(REPO / "experiments" / "expt_dln_saddle_dynamics.py"))
    line = lambda store, key: f"python {script} -F {store} with {' '.join(overrides)} run_key={key}\n"  # noqa: E731
    cmds = tmp_path / "cmds.txt"
    cmds.write_text(line(tmp_path / "cut", "a"))
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.setenv(TEST_ENV, "27:SIGTERM")  # the line stops at step 27, as on a SIGTERM there
    assert runner.main([str(cmds), "--no-progress"]) == runner.EXIT_FAILED
    assert "FAILED line 1" in capsys.readouterr().out
    monkeypatch.delenv(TEST_ENV)
    assert runner.main([str(cmds), "--no-progress", "--retry-failed"]) == 0
    assert "1 line(s): 1 done" in capsys.readouterr().out
    cut, resumed = read(tmp_path / "cut" / "1"), read(tmp_path / "cut" / "2")
    assert cut["run"]["status"] == "INTERRUPTED" and resumed["info"]["resumed_from"]["step"] == 27
    full = run(load_experiment("expt_dln_saddle_dynamics"), tmp_path / "full",
               {k: v for k, v in SADDLE.items() if k != "run_key"})  # the same config, in-process, uninterrupted
    assert resumed["run"]["result"] == full.result


def test_saddle_dynamics_interrupted_twice_still_equals_the_uninterrupted_run(tmp_path, monkeypatch):
    expt = load_experiment("expt_dln_saddle_dynamics")
    full = run(expt, tmp_path / "full", SADDLE)
    for step in (13, 27):  # the second cut comes after the first resume: replayed metrics must be kept again
        monkeypatch.setenv(TEST_ENV, str(step))
        with pytest.raises(Preempted):
            run(expt, tmp_path / "store", SADDLE)
    monkeypatch.delenv(TEST_ENV)
    resumed = run(expt, tmp_path / "store", SADDLE)
    assert resumed.info["resumed_from"]["run_dir"] == str(tmp_path / "store" / "2")
    assert_resumed_equals_uninterrupted(tmp_path / "full" / str(full._id), tmp_path / "store" / "2",
                                        tmp_path / "store" / str(resumed._id), 27, "SIGTERM")
