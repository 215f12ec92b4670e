"""Interrupt expt_sgd_regimes and expt_basis_decomposition once mid-run, resume, compare with an uninterrupted run.

The pattern of tests/test_preempt_experiments.py: DLT_PREEMPT_TEST_SIGNAL makes the run send
itself a signal at one step boundary; the rerun of the same config (same run_key) resumes
from the checkpoint. Everything is compared exactly (CPU, float64 where the engine allows),
except the wall-clock fields of the regimes records, which no two runs share.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from dynamics.regimes_config import RegimesConfig
from tests.conftest import load_experiment
from tests.datasets import write_mnist
from tests.test_preempt_experiments import SESSION_INFO, interrupted_then_resumed, read
from tracking.checkpoint import checkpoint_files
from tracking.preempt import TEST_ENV, Preempted

REGIMES = dict(  # every piece of loop state in use: minibatch generator, tracked loss, both ladders, the
    # early (ckpt_save_mult) schedule, NTK at w0 (ckpt_grad_stats), kept kernels, predictions, parameters,
    # and the gradient-overlap accumulator
    arch="linear", dataset="depleted_sign", d=4, ptr=40, pte=30, alpha=2.0, bs=8, dt=0.5, max_wall=600.0,
    max_step=60, mind_stop=None, device="cpu", dtype="f64", seed=1, run_key="regimes-test", ckpt_save_mult=16,
    ckpt_grad_stats=10, ckpt_kernels=True, ckpt_save_pred=1, ckpt_save_parameters=1, ckpt_save_gradoverlap=1,
)
WALL_METRICS = ("time/wall",)


def _strip_wall(obj):
    """Records and results without their wall-clock fields."""
    if isinstance(obj, dict):
        return {k: _strip_wall(v) for k, v in obj.items() if k != "wall"}
    if isinstance(obj, list):
        return [_strip_wall(v) for v in obj]
    return obj


def assert_same_run(full_dir, cut_dir, resumed_dir, step, signame, skip_metrics=()):
    full, cut, res = read(full_dir), read(cut_dir), read(resumed_dir)
    assert cut["run"]["status"] == "INTERRUPTED" and res["run"]["status"] == "COMPLETED"
    assert cut["info"]["interrupted"]["signal"] == signame and cut["info"]["interrupted"]["step"] == step
    assert cut["metrics"], "the interrupted run's metrics were flushed"
    assert res["info"]["resumed_from"]["run_dir"] == str(cut_dir) and res["info"]["resumed_from"]["step"] == step
    assert _strip_wall(res["run"]["result"]) == _strip_wall(full["run"]["result"])  # JSON floats round-trip exactly
    assert sorted(res["metrics"]) == sorted(full["metrics"])
    for name, series in full["metrics"].items():  # nothing duplicated or lost
        assert res["metrics"][name]["steps"] == series["steps"], name
        if name not in skip_metrics:
            assert res["metrics"][name]["values"] == series["values"], name
    strip = lambda info: _strip_wall({k: v for k, v in info.items() if k not in SESSION_INFO})  # noqa: E731
    assert strip(res["info"]) == strip(full["info"])
    assert res["arrays"].keys() == full["arrays"].keys() and full["arrays"]
    for name, arrays in full["arrays"].items():
        assert res["arrays"][name].keys() == arrays.keys(), name
        for key, value in arrays.items():
            np.testing.assert_array_equal(res["arrays"][name][key], value, err_msg=f"{name}:{key}")
    assert not checkpoint_files(res["info"]["checkpoint_dir"]), "checkpoints are deleted on completion"
    return full, res


@pytest.mark.parametrize("step,signame", [(23, "SIGTERM"), (16, "SIGUSR1")])  # 16: right after an early checkpoint
def test_sgd_regimes_resumes_bit_for_bit(tmp_path, monkeypatch, step, signame):
    expt = load_experiment("expt_sgd_regimes")
    dirs = interrupted_then_resumed(expt, tmp_path, monkeypatch, REGIMES, step, signame)
    full, res = assert_same_run(*dirs, step, signame, skip_metrics=WALL_METRICS)
    cut = read(dirs[1])
    assert 0 < len(cut["metrics"]["train/loss"]["steps"]) < len(full["metrics"]["train/loss"]["steps"])
    params = [torch.load(d / "parameters.pt", weights_only=True) for d in (dirs[0], dirs[2])]
    assert [p["step"] for p in params[0]] == [p["step"] for p in params[1]] == [0, 60]
    for a, b in zip(*params):
        for k in a["params"]:
            torch.testing.assert_close(b["params"][k], a["params"][k], rtol=0, atol=0)  # bit for bit (values O(1))
    walls = [c["wall"] for c in res["info"]["checkpoints"]]
    assert walls == sorted(walls), "wall time runs on across the resume"


class _Stop(Exception):
    pass


def _tiny_engine(max_wall=600.0, max_step=40):
    from data.regimes import build_dataset
    from models.regimes import build_model

    data = build_dataset("depleted_sign", 40, 30, 1, 0, d=4, chi=0.0, dtype=torch.float64)
    model = build_model("linear", (4,), 1, "relu", None, torch.Generator().manual_seed(0)).double()
    params0 = {k: v.detach() for k, v in model.named_parameters()}
    cfg = RegimesConfig(alpha=2.0, dt=0.5, bs=8, loss="hinge", dynamics="sgd", max_wall=max_wall, max_step=max_step,
                        mind_stop=None, ckpt_modulo=1, ckpt_save_mult=0, ckpt_grad_stats=0, ntk_method="auto",
                        ckpt_drift_n0=16, sde_noise="original", regularizer=None, regu_scale=0.0, gf_tol=1e-5,
                        gf_mindt=1e-10, gf_maxdt=1.0, gf_first_stage="fixed")
    return model, params0, data, cfg


def _state_at(step, **kw):
    """train_regimes' captured state after ``step`` steps, through a torch.save / weights-only load round trip."""
    import io

    from dynamics.regimes_train import train_regimes

    model, params0, data, cfg = _tiny_engine(**kw)
    saved = {}

    def boundary(t, capture):
        if t == step:
            buf = io.BytesIO()
            torch.save(capture(), buf)
            buf.seek(0)
            saved["state"] = torch.load(buf, weights_only=True)
            raise _Stop

    with pytest.raises(_Stop):
        train_regimes(model, params0, data, cfg, torch.Generator().manual_seed(3), boundary=boundary)
    return saved["state"]


def test_regimes_engine_resume_equals_uninterrupted_and_counts_saved_wall_time():
    from dynamics.regimes_train import train_regimes

    model, params0, data, cfg = _tiny_engine()
    full = train_regimes(model, params0, data, cfg, torch.Generator().manual_seed(3))
    state = _state_at(17)
    # seed: restored
    resumed = train_regimes(model, params0, data, cfg, torch.Generator().manual_seed(99), resume=state)
    assert resumed.stop_reason == full.stop_reason == "max_step"
    assert (_strip_wall(json.loads(json.dumps(resumed.checkpoints)))
            == _strip_wall(json.loads(json.dumps(full.checkpoints))))
    for k in full.params:
        assert torch.equal(resumed.params[k], full.params[k]), k
    # wall time: the resumed run counts on from the saved training time (here made 1000 s), so a
    # max_wall of 500 s stops it at its first evaluation; a reset clock would run on to max_step
    model, params0, data, cfg = _tiny_engine(max_wall=500.0)
    state = {**_state_at(17, max_wall=500.0), "elapsed": 1000.0}
    late = train_regimes(model, params0, data, cfg, torch.Generator(), resume=state)
    assert late.stop_reason == "max_wall" and late.checkpoints[-1]["wall"] >= 1000.0
    assert late.checkpoints[-1]["step"] <= 17 + math.ceil(40 / 8)  # evaluated at least once an epoch (P/bs steps)


@pytest.fixture
def mnist(tmp_path):
    root = tmp_path / "data"
    write_mnist(root, n_train=64, n_test=32)
    return root


def basis_config(root):
    # 64 images in batches of 16: 4 steps an epoch, 8 in all. BatchNorm (running statistics), SGD
    # momentum, augmentation (its own generator), the gradient pass (weights saved per recording),
    # log='detail' (per-step losses) and the re-initialised grad_indep run all take part.
    return dict(data="mnist", data_root=str(root), model="fig2_cnn_bn1d", width=2, batch_size=16, num_epoch=2,
                optimizer="sgd", lr_setting=[0.05, 1, 0.01], decay_stepsize=1, early_points=3, n_basis=3, device="cpu",
                eval_batch_size=13, augment=True, gradient=True, log="detail", grad_indep=True,
                rerun_config=dict(iterations=5, every=2, num_basis=3), seed=2, run_key="basis-test")


@pytest.mark.parametrize("step,signame", [(6, "SIGTERM"),  # mid-epoch: the epoch's order and running sums
                                          (8, "SIGUSR1")])  # the last step: only pass 2 is left to do
def test_basis_decomposition_resumes_bit_for_bit(tmp_path, monkeypatch, mnist, step, signame):
    expt = load_experiment("expt_basis_decomposition")
    dirs = interrupted_then_resumed(expt, tmp_path, monkeypatch, basis_config(mnist), step, signame)
    full, res = assert_same_run(*dirs, step, signame)
    assert {"basis.npz", "detail.npz", "rerun.npz"} <= set(full["arrays"])
    assert "basis/grad_norm_1" in full["metrics"]
    assert full["metrics"]["eval/loss"]["steps"] == [0, 1, 2, 4, 8]  # t = 0, early, ends
    cut = read(dirs[1])
    assert "basis/beta_1" not in cut["metrics"]  # the cut came before pass 2
    assert not (tmp_path / "store" / "_checkpoints").exists(), "the gradient pass's weights are removed too"


def test_sgd_regimes_interrupted_twice_still_equals_the_uninterrupted_run(tmp_path, monkeypatch):
    from tests.test_preempt_experiments import run

    expt = load_experiment("expt_sgd_regimes")
    full = run(expt, tmp_path / "full", REGIMES)
    for step in (9, 31):  # the second cut resumes from records that went through one checkpoint already
        monkeypatch.setenv(TEST_ENV, str(step))
        with pytest.raises(Preempted, match=f"stopped at step {step}"):
            run(expt, tmp_path / "store", REGIMES)
    monkeypatch.delenv(TEST_ENV)
    resumed = run(expt, tmp_path / "store", REGIMES)
    assert resumed.info["resumed_from"]["run_dir"] == str(tmp_path / "store" / "2")
    assert_same_run(tmp_path / "full" / str(full._id), tmp_path / "store" / "2", tmp_path / "store" / str(resumed._id),
                    31, "SIGTERM", skip_metrics=WALL_METRICS)


def test_basis_decomposition_ad_hoc_resume_from_a_run_dir_finds_the_gradient_weights(tmp_path, monkeypatch, mnist):
    """No run_key: resume_from=<the interrupted run's dir>; the weights saved before the cut live in that run's
    checkpoint directory and are used, then removed with it."""
    from tests.test_preempt_experiments import run

    expt = load_experiment("expt_basis_decomposition")
    config = {k: v for k, v in basis_config(mnist).items() if k != "run_key"}
    full = run(expt, tmp_path / "full", config)
    monkeypatch.setenv(TEST_ENV, "3")  # after the recordings at t = 0, 1, 2
    with pytest.raises(Preempted, match="stopped at step 3"):
        run(expt, tmp_path / "store", config)
    monkeypatch.delenv(TEST_ENV)
    cut_dir = tmp_path / "store" / "1"
    states = sorted(p.name for p in (cut_dir / "checkpoints" / "gradient_states").iterdir())
    assert states == ["ckpt_000000000.pt", "ckpt_000000001.pt", "ckpt_000000002.pt"]
    resumed = run(expt, tmp_path / "store", {**config, "resume_from": str(cut_dir)})
    assert_same_run(tmp_path / "full" / str(full._id), cut_dir, tmp_path / "store" / str(resumed._id), 3, "SIGTERM")
    assert not (cut_dir / "checkpoints").exists(), "the interrupted run's checkpoints and weights are removed"
