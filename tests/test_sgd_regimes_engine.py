"""dynamics.regimes_train: losses, one step of every dynamics against closed forms, ladders, stopping."""
import itertools
import math

import numpy as np
import pytest
import torch
from torch.func import functional_call

from data.regimes import BinaryDataset, build_dataset
from dynamics.regimes_train import (LossLadder, RegimesConfig, alpha_loss, fast_ladder, flat_metrics,
                                    gd_sde_gradient, loss_and_grad, slow_ladder, train_regimes, unfit_first_batch)
from models.regimes import build_model

F64 = torch.float64


def perceptron_case(ptr=40, pte=50, d=4, seed=0, chi=0.0):
    data = build_dataset("depleted_sign", ptr, pte, seed_trainset=seed, seed_testset=seed, d=d, chi=chi)
    model = build_model("linear", (d,), 1, "relu", None, torch.Generator().manual_seed(seed)).to(F64)
    return model, {k: v.detach() for k, v in model.named_parameters()}, data


def mlp_case(ptr=24, pte=16, d=4, h=8, L=2, seed=0):
    data = build_dataset("sign", ptr, pte, seed_trainset=seed, seed_testset=seed, d=d)
    model = build_model("mlp", (d,), h, "gelu", L, torch.Generator().manual_seed(seed)).to(F64)
    return model, {k: v.detach() for k, v in model.named_parameters()}, data


def run(model, params, data, seed=0, **cfg):
    cfg.setdefault("max_wall", 60.0)
    return train_regimes(model, params, data, RegimesConfig(**cfg), torch.Generator().manual_seed(seed))


# --- losses ---------------------------------------------------------------------------

@pytest.mark.parametrize("alpha", [0.1, 1.0, 64.0])
def test_alpha_losses_closed_forms(alpha):
    pred = torch.tensor([-2.0, 0.0, 0.3, 5.0], dtype=F64) / alpha
    y = torch.tensor([1.0, 1.0, -1.0, 1.0], dtype=F64)
    m = alpha * pred * y  # margins of α·pred
    expected = {
        "hinge": torch.clamp(1 - m, min=0) / alpha,
        "quadhinge": torch.clamp(1 - m, min=0) ** 2 / alpha,
        "mse": 0.5 * (alpha * pred - y) ** 2 / alpha,
    }
    for name, value in expected.items():
        torch.testing.assert_close(alpha_loss(name, alpha)(pred, y), value)
    soft = alpha_loss("softhinge", alpha)(pred, y)
    u = 1 - m
    torch.testing.assert_close(soft[u > 0], (u * torch.exp(-1 / (2 * u)))[u > 0] / alpha)
    assert soft[3] == 0.0  # margin 5 >= 1: exactly zero
    # at init (pred = 0) every hinge-type loss is ℓ(0)/α: the margin on the raw output is 1/α
    zero = torch.zeros(3, dtype=F64)
    assert torch.allclose(alpha_loss("hinge", alpha)(zero, y[:3]), torch.full((3,), 1 / alpha, dtype=F64))


def test_softhinge_gradient_is_finite_and_smooth():
    pred = torch.linspace(-1, 3, 41, dtype=F64, requires_grad=True)
    (g,) = torch.autograd.grad(alpha_loss("softhinge", 1.0)(pred, torch.ones(41, dtype=F64)).sum(), pred)
    assert torch.isfinite(g).all() and (g[pred.detach() >= 1] == 0).all() and (g[pred.detach() < 0.9] < 0).all()


def test_unknown_loss_and_bad_config():
    with pytest.raises(ValueError, match="loss must be one of"):
        alpha_loss("logistic", 1.0)
    with pytest.raises(ValueError, match="dynamics must be one of"):
        RegimesConfig(alpha=1.0, dt=0.1, bs=1, dynamics="adam")
    with pytest.raises(ValueError, match="alpha must be a finite number > 0"):
        RegimesConfig(alpha=0.0, dt=0.1, bs=1)
    with pytest.raises(ValueError, match="max_step must be an integer >= 1 or None"):
        RegimesConfig(alpha=1.0, dt=0.1, bs=1, max_step=0)
    model, params, data = perceptron_case()
    with pytest.raises(ValueError, match=r"bs must be <= ptr \(40\)"):
        run(model, params, data, alpha=1.0, dt=0.1, bs=41)


# --- one step of each dynamics -------------------------------------------------------------

def perceptron_gd_direction(data, idx=None):
    """Closed form at w₀: ∇ mean hinge_α = −(1/B) Σ_i y_i x_i / sqrt(d), every point unfitted (centred pred = 0)."""
    x, y = (data.xtr, data.ytr) if idx is None else (data.xtr[idx], data.ytr[idx])
    return -(y[:, None] * x).sum(0) / math.sqrt(x.shape[1]) / len(y)


def test_gd_first_step_is_the_closed_form():
    model, params, data = perceptron_case()
    out = run(model, params, data, alpha=2.0, dt=0.3, bs=40, dynamics="gd", max_step=1)
    expected = params["readout.weight"][0] - 0.3 * perceptron_gd_direction(data)
    torch.testing.assert_close(out.params["readout.weight"][0], expected)
    full_sgd = run(model, params, data, alpha=2.0, dt=0.3, bs=40, dynamics="sgd", max_step=1)
    torch.testing.assert_close(full_sgd.params["readout.weight"], out.params["readout.weight"])


def test_sgd_step_uses_bs_distinct_points_from_the_batch_seed():
    model, params, data = perceptron_case()
    out = run(model, params, data, seed=5, alpha=1.0, dt=0.5, bs=7, max_step=1)
    idx = torch.randperm(40, generator=torch.Generator().manual_seed(5))[:7]
    expected = params["readout.weight"][0] - 0.5 * perceptron_gd_direction(data, idx)
    torch.testing.assert_close(out.params["readout.weight"][0], expected)


def test_unfit_first_batch():
    y = torch.ones(6, dtype=F64)
    pred = torch.tensor([2.0, 0.0, 2.0, 0.5, 2.0, 2.0], dtype=F64)  # unfit (α pred y < 1): 1 and 3
    perm = torch.tensor([5, 3, 0, 1, 4, 2])
    assert unfit_first_batch(pred, y, 1.0, perm, 1).tolist() == [3]
    assert unfit_first_batch(pred, y, 1.0, perm, 4).tolist() == [3, 1, 5, 0]  # topped up in permutation order
    assert sorted(unfit_first_batch(pred, y, 0.1, perm, 6).tolist()) == list(range(6))  # α = 0.1: all unfit


def test_gd_sde_noise_has_exactly_the_minibatch_covariance():
    """ξ is linear in ζ: its covariance over ζ ~ N(0, I) is Nᵀ N with N's rows the responses to e_k,
    equal to the covariance of the mean gradient over all C(P, bs) batches (closed form, float64)."""
    model, params, data = mlp_case(ptr=7, h=3, L=1)
    lossf = alpha_loss("softhinge", 0.7)

    def f(p, x):
        return functional_call(model, p, (x,))

    out0 = f(params, data.xtr).detach()
    # move away from w₀ so that the per-sample gradients differ
    params = {k: v + 0.3 * torch.randn(v.shape, generator=torch.Generator().manual_seed(1), dtype=F64)
              for k, v in params.items()}
    flat = lambda g: torch.cat([v.reshape(-1) for v in g.values()])  # noqa: E731
    P, bs = 7, 3
    _, drift = gd_sde_gradient(f, lossf, params, data.xtr, data.ytr, out0, bs, torch.zeros(P, dtype=F64))
    _, full = loss_and_grad(f, lossf, params, data.xtr, data.ytr, out0)
    torch.testing.assert_close(flat(drift), flat(full))
    N = torch.stack([flat(gd_sde_gradient(f, lossf, params, data.xtr, data.ytr, out0, bs, e)[1]) - flat(drift)
                     for e in torch.eye(P, dtype=F64)])  # (P, num_params)
    batches = [flat(loss_and_grad(f, lossf, params, data.xtr[list(b)], data.ytr[list(b)], out0[list(b)])[1])
               for b in itertools.combinations(range(P), bs)]
    G = torch.stack(batches) - flat(full)
    torch.testing.assert_close(N.T @ N, G.T @ G / len(batches), rtol=1e-10, atol=1e-14)


# --- ladders -----------------------------------------------------------------------------------

def test_ladders():
    fast = fast_ladder()
    assert fast.min() == pytest.approx(2.0**-24) and (fast < 1).sum() > 90 and (fast > 1).sum() == 31
    assert len(fast_ladder(4)) == len(fast[::4])
    slow = slow_ladder()
    assert len(slow) < len(fast) / 4 and slow.max() < 1


def test_loss_ladder_counts_new_lows_and_rises_above_the_start():
    ladder = LossLadder(np.array([0.25, 0.5, 0.75, 1.5, 2.0]), 1.0)
    assert (ladder.below, ladder.above) == (0.75, 1.5)
    assert not ladder.update(0.9)
    assert ladder.update(0.4)  # crossed 0.75 and 0.5
    assert not ladder.update(0.6) and not ladder.update(0.3)  # noise between rungs already passed: ignored
    assert ladder.update(0.2)
    assert ladder.update(1.6)  # back above the starting loss: every rung there counts
    assert not ladder.update(1.7) and ladder.update(2.5)


# --- whole runs: stopping, checkpoints, observables ------------------------------------------------

def test_hinge_stops_at_zero_loss_with_every_margin_fitted():
    model, params, data = perceptron_case(ptr=30, d=4, chi=3.0)  # well separated
    out = run(model, params, data, alpha=4.0, dt=2.0, bs=5, mind_stop=None)
    last = out.checkpoints[-1]
    assert out.stop_reason == "zero_loss" and last["train"]["loss"] == 0.0
    assert last["train"]["margin_min"] >= 1.0 and last["train"]["unfit"] == 0 and last["trigger"] == "stop"
    first = out.checkpoints[0]
    assert first["train"]["loss"] == pytest.approx(1 / 4.0) and first["train"]["err"] == 1.0  # centred: pred = 0
    assert first["weights"]["delta"] == 0.0 and first["step"] == 0
    # ladder checkpoints see new lows only
    ladder_losses = [c["train"]["loss"] for c in out.checkpoints if c["trigger"] == "ladder"]
    assert ladder_losses == sorted(ladder_losses, reverse=True)
    assert last["t"] == pytest.approx(last["step"] * 2.0)


def test_mind_stop_max_step_and_max_wall():
    model, params, data = perceptron_case(ptr=30, d=4, chi=3.0)
    out = run(model, params, data, alpha=4.0, dt=0.05, bs=5, mind_stop=0.0, loss="softhinge")
    assert out.stop_reason == "mind_stop" and out.checkpoints[-1]["train"]["margin_min"] >= 0.0
    out = run(model, params, data, alpha=4.0, dt=1e-3, bs=5, max_step=7, ckpt_save_mult=4)
    assert out.stop_reason == "max_step" and out.checkpoints[-1]["step"] == 7
    assert {1, 2, 4, 7} <= {c["step"] for c in out.checkpoints}  # early ones (or ladder crossings) and the last
    out = run(model, params, data, alpha=4.0, dt=1e-6, bs=5, max_wall=0.05)
    assert out.stop_reason == "max_wall"


def test_divergence_is_recorded_not_raised():
    model, params, data = mlp_case()
    out = run(model, params, data, alpha=1.0, dt=1e6, bs=24, loss="mse", dynamics="gd")
    assert out.stop_reason == "diverged"
    assert not math.isfinite(out.checkpoints[-1]["train"]["loss"])
    assert all(math.isfinite(v) or "loss" in k or "grad" in k or "margin" in k or "weights" in k
               for k, v in flat_metrics(out.checkpoints[0]).items())


@pytest.mark.parametrize("dynamics", ["sgd", "sgd_only_unfit", "gd_sde", "gd"])
def test_every_dynamics_reduces_the_loss_and_is_reproducible(dynamics):
    model, params, data = mlp_case()
    cfg = dict(alpha=1.0, dt=2.0, bs=24 if dynamics == "gd" else 6, dynamics=dynamics, max_step=60)
    a, b = run(model, params, data, seed=3, **cfg), run(model, params, data, seed=3, **cfg)
    assert a.checkpoints[-1]["train"]["loss"] < 0.7 * a.checkpoints[0]["train"]["loss"]
    assert [c["train"]["loss"] for c in a.checkpoints] == [c["train"]["loss"] for c in b.checkpoints]


def test_ntk_observables_lazy_perceptron_and_mlp_alpha():
    """The perceptron's NTK never moves; an MLP's NTK moves more at small α (feature learning)."""
    model, params, data = perceptron_case()
    out = run(model, params, data, alpha=1.0, dt=1.0, bs=40, dynamics="gd", max_step=20, ckpt_grad_stats=10,
              ckpt_kernels=True)
    assert out.checkpoints[0]["ntk"]["train"]["rel_change"] == 0.0
    assert out.checkpoints[-1]["ntk"]["train"]["rel_change"] == pytest.approx(0.0, abs=1e-14)
    assert len(out.kernels) >= 2 and out.kernels[0]["train"].shape == (10, 10)
    metrics = flat_metrics(out.checkpoints[-1])
    assert {"ntk/train/rel_change", "ntk/test/yKy", "ntk/test/eig_0", "weights/delta/readout.weight",
            "train/grad_norm", "time/t"} <= set(metrics)
    model, params, data = mlp_case(h=16)
    change = {}
    for alpha in (0.05, 20.0):
        # the outputs must move by ~1/α: far at α = 0.05 (features change), barely at α = 20 (lazy)
        r = run(model, params, data, alpha=alpha, dt=4.0, bs=24, dynamics="gd", ckpt_grad_stats=12, max_step=400)
        change[alpha] = r.checkpoints[-1]["ntk"]["train"]["rel_change"]
    assert change[0.05] > 10 * change[20.0]


def test_evaluation_of_an_external_dataset_object():
    model, params, data = perceptron_case()
    tiny = BinaryDataset(data.xtr[:5], data.ytr[:5], data.xte[:3], data.yte[:3])
    out = run(model, params, tiny, alpha=1.0, dt=1.0, bs=5, max_step=3)
    assert out.checkpoints[-1]["test"]["unfit"] <= 3
