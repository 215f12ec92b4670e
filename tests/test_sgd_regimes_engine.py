"""dynamics.regimes_train: losses, one step of every dynamics against closed forms, ladders, stopping."""
import itertools
import math

import numpy as np
import pytest
import torch
from torch.func import functional_call

from data.regimes import BinaryDataset, build_dataset
from dynamics.regimes_ladders import FastLadder, SlowLadder, next_early_step
from dynamics.regimes_train import (
    RegimesConfig,
    alpha_loss,
    fast_ladder,
    flat_metrics,
    gd_sde_gradient,
    loss_and_grad,
    slow_ladder,
    train_regimes,
    unfit_first_batch,
)
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
    with pytest.raises(ValueError, match="max_step must be None or an integer >= 1; got 0"):
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


def test_gd_sde_minibatch_noise_has_exactly_the_minibatch_covariance():
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
    _, drift = gd_sde_gradient(f, lossf, params, data.xtr, data.ytr, out0, bs, torch.zeros(P, dtype=F64), "minibatch")
    _, full = loss_and_grad(f, lossf, params, data.xtr, data.ytr, out0)
    torch.testing.assert_close(flat(drift), flat(full))
    N = torch.stack([flat(gd_sde_gradient(f, lossf, params, data.xtr, data.ytr, out0, bs, e, "minibatch")[1])
                     - flat(drift) for e in torch.eye(P, dtype=F64)])  # (P, num_params)
    batches = [flat(loss_and_grad(f, lossf, params, data.xtr[list(b)], data.ytr[list(b)], out0[list(b)])[1])
               for b in itertools.combinations(range(P), bs)]
    G = torch.stack(batches) - flat(full)
    torch.testing.assert_close(N.T @ N, G.T @ G / len(batches), rtol=1e-10, atol=1e-14)


# --- ladders -----------------------------------------------------------------------------------

def original_fast_fractions() -> list[float]:
    """The original's fast ladder, written out in exact binary fractions (float64)."""
    low = [2.0 ** (k / 2) for k in range(-48, -18)]  # 2^-24 ... 2^-9.5
    return sorted(set(low + [j / 512 for j in range(1, 512)] + [1 - v for v in low]
                      + [1 + 2.0 ** (k / 2) for k in range(-10, 20)]))  # 1 + 2^-5 ... 1 + 2^9.5


def test_fast_ladder_is_the_originals():
    ref = np.array(original_fast_fractions())
    assert len(ref) == 601
    # the half-integer powers come from np.power here and math.pow above: equal to a few ulps
    np.testing.assert_allclose(fast_ladder(), ref, rtol=4e-16, atol=0)
    f32 = fast_ladder(dtype=np.float32)
    assert f32.dtype == np.float32 and len(f32) == 600  # float32 (the original's default): 1 - 2^-23.5 -> 1 - 2^-24
    assert set(ref.astype(np.float32).tolist()) == set(f32.tolist())
    for m in (2, 4, 7):  # every m-th rung from the lowest, as ckpt_loss_fast[::ckpt_modulo]
        assert fast_ladder(m).tolist() == fast_ladder()[::m].tolist()
    assert len(fast_ladder(4, np.float32)) == 150


def test_slow_ladder_is_the_originals():
    ref = sorted([2.0 ** (k / 2) for k in range(-40, -4)] + [0.25 + j / 16 for j in range(12)] + [1 - 2.0 ** -20])
    assert len(ref) == 49
    np.testing.assert_allclose(slow_ladder(), ref, rtol=4e-16, atol=0)
    assert len(slow_ladder(np.float32)) == 49


def test_fast_ladder_follows_the_originals_bracket_rules():
    """The original: a checkpoint when the loss leaves (below, above); a fall drops the rungs >= below."""
    ladder = FastLadder(np.array([0.25, 0.5, 0.75, 1.5, 2.0]), 1.0)
    assert (ladder.below, ladder.above) == (0.75, 1.5)
    trace = [(0.9, False, (0.75, 1.5)), (0.4, True, (0.25, 0.5)), (0.45, False, (0.25, 0.5)),
             (0.6, True, (0.5, math.inf)),  # 0.5 survived the fall from (0.75, 1.5): a rise over it counts
             (0.3, True, (0.25, math.inf)), (0.2, True, (0.0, 0.25)), (1.6, True, (0.25, math.inf)),
             (1.7, False, (0.25, math.inf))]
    for loss, due, bracket in trace:
        assert ladder.update(loss) is due, loss
        assert (ladder.below, ladder.above) == bracket, loss


def test_slow_ladder_follows_the_originals_rules():
    """Closed bracket [below, above] starting at [L0, L0]; rungs in (below, above] dropped; below
    ckpt_save_mult: due when step >= 2x the last slow step."""
    ladder = SlowLadder(np.array([0.25, 0.5, 0.75]), 1.0)
    assert ladder.due(1.0, 0)  # step 0 <= save_mult 0: 0 - 0 >= 0
    assert (ladder.below, ladder.above) == (0.75, math.inf)
    assert not ladder.due(0.8, 5)
    assert ladder.due(0.6, 9) and (ladder.below, ladder.above) == (0.5, 0.75)  # nothing in (0.75, inf] to drop
    assert not ladder.due(0.75, 10)  # closed bracket
    assert ladder.due(0.1, 11) and ladder.rungs.tolist() == [0.25, 0.5] and (ladder.below, ladder.above) == (0.0, 0.25)
    early = SlowLadder(np.array([0.5]), 1.0, save_mult=10)
    assert [s for s in (0, 1, 2, 3, 5, 8, 9, 10) if early.due(1.0, s)] == [0, 1, 2, 5, 10]


def test_early_checkpoints_double_the_step_like_the_original():
    # dt = 1e-12: the loss moves by ~1e-12 L0 over the run, below the finest rung (1 - 2^-24): no ladder checkpoint
    model, params, data = perceptron_case()
    out = run(model, params, data, alpha=1.0, dt=1e-12, bs=40, dynamics="gd", max_step=20, ckpt_save_mult=10,
              ckpt_grad_stats=4)
    assert [c["step"] for c in out.checkpoints] == [0, 1, 2, 4, 8, 16, 20]  # 8 < 10 still runs 8 more steps
    assert [c["step"] for c in out.checkpoints if c["slow"]] == [0, 1, 2, 4, 8, 20]
    assert all((c["ntk"] is not None) == c["slow"] for c in out.checkpoints)
    assert [next_early_step(s, 10) for s in (0, 1, 4, 9, 10)] == [1, 2, 8, 18, None]


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


@pytest.mark.parametrize("dynamics", ["sgd", "sgd_only_unfit", "gd_sde", "gd_sde_only_unfit", "gd"])
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


def test_slow_checkpoints_are_checkpoints_whatever_ckpt_modulo():
    """The original's slow rungs are not all fast rungs (2^-8.5 is not a multiple of 2^-9), so a slow
    checkpoint is decided only where a fast one is taken: with ckpt_modulo = 8 slow ones still appear
    between the start and the stop."""
    assert not np.isin(slow_ladder(), fast_ladder()).all() and 2.0 ** -8.5 not in fast_ladder()
    model, params, data = perceptron_case(ptr=30, d=4, chi=3.0)
    out = run(model, params, data, alpha=4.0, dt=0.5, bs=5, ckpt_modulo=8, ckpt_grad_stats=4, mind_stop=None)
    slow = [c for c in out.checkpoints if c["slow"]]
    assert len(slow) > 2 and all(c["ntk"] is not None for c in slow)
    assert all(c["ntk"] is None for c in out.checkpoints if not c["slow"])
