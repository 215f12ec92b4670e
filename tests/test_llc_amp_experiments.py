"""sgld_config.amp in the three LLC experiments: bf16 runs the autocast step on CPU; bad values fail first.

CPU autocast supports bfloat16 only, so fp16 (CUDA) is checked for its refusal here, not run.
"""
import math

import pytest
import torch

import llc.precision
import llc.sgld
from tests.conftest import load_experiment
from tests.test_samplers_experiments import tiny_curve

DLN = dict(layer_widths=[3, 2], input_dim=3, num_training_data=200, device="cpu", seed=1,
           sgld_config=dict(num_steps=60, batch_size=20, num_chains=2, epsilon=1e-5, gamma=10.0))
SADDLE = dict(device="cpu", width=3, num_training_data=200, logging_period=20, seed=2,
              training_config=dict(num_steps=40, batch_size=20, learning_rate=1e-3),
              sgld_config=dict(num_steps=10, batch_size=20, num_chains=2))


def _run(expt, cfg, **sgld):
    expt.ex.observers[:] = []
    return expt.ex.run(config_updates={**cfg, "sgld_config": {**cfg["sgld_config"], **sgld}})


@pytest.fixture
def autocast_calls(monkeypatch):
    """The amp values the SGLD step's autocast context was entered with (llc.sgld imports it by name)."""
    calls = []

    def spy(amp, device):
        calls.append((amp, torch.device(device).type))
        return llc.precision.autocast(amp, device)

    monkeypatch.setattr(llc.sgld, "autocast", spy)
    return calls


def test_expt_dln_bf16_runs_the_autocast_step_and_records_it(autocast_calls):
    expt = load_experiment("expt_dln")
    plain = _run(expt, DLN)
    assert set(autocast_calls) == {(None, "cpu")}  # amp=None: the plain step (a no-op context)
    autocast_calls.clear()
    low = _run(expt, DLN, amp="bf16")
    assert set(autocast_calls) == {("bf16", "cpu")} and len(autocast_calls) >= 60  # every step, every chain batch
    assert plain.result["amp"] is None and low.result["amp"] == "bf16"
    assert all(math.isfinite(v) for v in low.result["lambdahat_per_chain"])
    # Same draws, bf16-rounded forward: λ̂ moves (by the rounding bias), so the autocast path did run.
    assert low.result["lambdahat_per_chain"] != plain.result["lambdahat_per_chain"]


def test_expt_dln_saddle_dynamics_bf16_runs_the_autocast_step(autocast_calls):
    expt = load_experiment("expt_dln_saddle_dynamics")
    r = _run(expt, SADDLE, amp="bf16")
    checkpoints = r.info["checkpoints"]
    assert checkpoints and all(c["status"] == "ok" and math.isfinite(c["lambdahat"]) for c in checkpoints)
    assert autocast_calls and set(autocast_calls) == {("bf16", "cpu")}


def test_expt_llc_curve_passes_amp_to_estimate_llc(tmp_path, monkeypatch, autocast_calls):
    r = _run(load_experiment("expt_llc_curve"), tiny_curve(tmp_path, monkeypatch), amp="bf16")
    assert all(c["status"] == "ok" and math.isfinite(c["lambdahat"]) for c in r.info["checkpoints"])
    assert autocast_calls and set(autocast_calls) == {("bf16", "cpu")}


@pytest.mark.parametrize("name, cfg, compute", [
    ("expt_dln", DLN, "build_problem"),
    ("expt_dln_saddle_dynamics", SADDLE, "teacher_data"),
])
@pytest.mark.parametrize("amp, match", [
    ("fp32", r"sgld_config.amp must be one of \(None, 'bf16', 'fp16'\); got 'fp32'"),
    (True, r"sgld_config.amp must be one of \(None, 'bf16', 'fp16'\); got True"),
    ("fp16", r"sgld_config.amp='fp16' needs a CUDA device"),
])
def test_bad_amp_fails_before_compute_naming_the_key(name, cfg, compute, amp, match, monkeypatch):
    expt = load_experiment(name)

    def no_compute(*a, **k):
        raise AssertionError("compute started before validation")

    monkeypatch.setattr(expt, compute, no_compute)
    with pytest.raises(ValueError, match=match):
        _run(expt, cfg, amp=amp)
