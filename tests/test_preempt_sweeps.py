"""The n sweep of expt_mala_vs_sgld and the α sweep of expt_rescaling_invariance: interrupt, resume, compare.

The unit of work is one (n, sampler) or (α, sampler) estimate; a signal lets the running
estimate finish, then the checkpoint is written. The resumed run's result, metrics and
info equal an uninterrupted run's exactly on CPU (each estimate's chains have their own
seed), except, in the MALA sweep, the wall-clock fields, which no two runs share: for
those only the steps are compared (nothing duplicated or lost), and the estimates done
before the cut keep the interrupted run's times.
"""
import os
import signal

import pytest

from tests.conftest import load_experiment
from tests.test_preempt_experiments import (
    SESSION_INFO,
    assert_resumed_equals_uninterrupted,
    interrupted_then_resumed,
    read,
    run,
)
from tracking.checkpoint import CheckpointError, checkpoint_files
from tracking.preempt import TEST_ENV, Preempted

MALA = dict(device="cpu", input_dim=3, layer_widths=[4, 2], num_training_data=[50, 100, 150], epsilon=1e-3,
            num_steps=30, num_chains=2, sgld_config=dict(batch_size=20), mala_acceptance_every=10, run_key="mala-test",
            seed=3)
RESCALE = dict(
    device="cpu", layer_sizes=[3, 4, 2], num_training_data=100, alphas=[0.01, 1.0, 100.0],
    samplers=["psgld_fixed", "psgld", "sgld"], degenerate_units=[2], mala_acceptance_every=10, run_key="rescale-test",
    seed=3,
    psgld_config=dict(num_steps=30, batch_size=20, num_chains=2, num_burnin_steps=15),
    sgld_config=dict(epsilon=1e-4, num_steps=30, batch_size=20, num_chains=2, num_burnin_steps=15),
)
TIME_FIELDS = ("time_s", "time_per_chain_step_s", "diagnostic_time_s")
TIME_METRICS = ("sgld/time_s", "mala/time_s", "compare/time_ratio")


def untimed(result):
    out = {k: v for k, v in result.items() if k != "time_ratio"}
    for name in ("sgld", "mala"):
        out[name] = {k: v for k, v in result[name].items() if k not in TIME_FIELDS}
    return out


def assert_mala_resumed(full_dir, cut_dir, resumed_dir, step, signame):
    full, cut, res = read(full_dir), read(cut_dir), read(resumed_dir)
    assert cut["run"]["status"] == "INTERRUPTED" and res["run"]["status"] == "COMPLETED"
    assert cut["info"]["interrupted"]["signal"] == signame and cut["info"]["interrupted"]["step"] == step
    assert res["info"]["resumed_from"]["run_dir"] == str(cut_dir) and res["info"]["resumed_from"]["step"] == step
    assert untimed(res["run"]["result"]) == untimed(full["run"]["result"])  # bit for bit: JSON floats round-trip
    assert sorted(res["metrics"]) == sorted(full["metrics"])
    for name, series in full["metrics"].items():
        assert res["metrics"][name]["steps"] == series["steps"], name  # nothing duplicated or lost
        if name not in TIME_METRICS:
            assert res["metrics"][name]["values"] == series["values"], name
    for name in ("sgld/time_s", "mala/time_s"):  # the estimates done before the cut keep their recorded times
        before = cut["metrics"].get(name, {"values": []})["values"]
        assert res["metrics"][name]["values"][:len(before)] == before, name
    strip = lambda info: {k: v for k, v in info.items() if k not in SESSION_INFO}  # noqa: E731
    assert strip(res["info"]) == strip(full["info"])
    assert not checkpoint_files(res["info"]["checkpoint_dir"]), "checkpoints are deleted on completion"


@pytest.mark.parametrize("step,signame", [(3, "SIGTERM"), (4, "SIGUSR1")])  # after n=100's SGLD; after its MALA
def test_mala_sweep_resumes_bit_for_bit(tmp_path, monkeypatch, step, signame):
    expt = load_experiment("expt_mala_vs_sgld")
    dirs = interrupted_then_resumed(expt, tmp_path, monkeypatch, MALA, step, signame)
    assert len(read(dirs[1])["metrics"]["sgld/lambdahat"]["steps"]) == 2  # the cut run had done n=50 and n=100's SGLD
    assert_mala_resumed(*dirs, step, signame)


def test_mala_sweep_signal_mid_estimate_finishes_it_first(tmp_path, monkeypatch):
    """A SIGTERM while n=50's MALA runs: that estimate completes, and the checkpoint at unit 2 holds it."""
    expt = load_experiment("expt_mala_vs_sgld")
    full = run(expt, tmp_path / "full", MALA)
    original = expt.estimate_llc_mala
    calls = []

    def signalled(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the first call is the untimed warm-up; the second is n=50's estimate
            os.kill(os.getpid(), signal.SIGTERM)  # arrives inside the estimate
        return original(*args, **kwargs)

    monkeypatch.setattr(expt, "estimate_llc_mala", signalled)
    with pytest.raises(Preempted, match="SIGTERM: stopped at step 2"):
        run(expt, tmp_path / "store", MALA)
    monkeypatch.setattr(expt, "estimate_llc_mala", original)
    cut = read(tmp_path / "store" / "1")
    assert cut["metrics"]["mala/lambdahat"]["steps"] == [50]  # finished, not abandoned
    resumed = run(expt, tmp_path / "store", MALA)
    assert_mala_resumed(tmp_path / "full" / str(full._id), tmp_path / "store" / "1",
                        tmp_path / "store" / str(resumed._id), 2, "SIGTERM")


@pytest.mark.parametrize("step,signame", [(4, "SIGTERM"), (6, "SIGINT")])  # mid-α (α=1 psgld_fixed done); α boundary
def test_rescaling_sweep_resumes_bit_for_bit(tmp_path, monkeypatch, step, signame):
    expt = load_experiment("expt_rescaling_invariance")
    dirs = interrupted_then_resumed(expt, tmp_path, monkeypatch, RESCALE, step, signame)
    assert_resumed_equals_uninterrupted(*dirs, step, signame)


def test_rescaling_resume_refuses_a_different_config(tmp_path, monkeypatch):
    expt = load_experiment("expt_rescaling_invariance")
    monkeypatch.setenv(TEST_ENV, "2")
    with pytest.raises(Preempted):
        run(expt, tmp_path / "store", RESCALE)
    monkeypatch.delenv(TEST_ENV)
    with pytest.raises(CheckpointError, match=r"alphas \(checkpoint \[0.01, 1.0, 100.0\], now \[0.01, 1.0\]\)"):
        run(expt, tmp_path / "store", {**RESCALE, "alphas": [0.01, 1.0]})
