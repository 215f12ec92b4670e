"""dynamics.regimes_observables against loops over samples and pairs, closed forms on tiny cases, and autograd."""
import math

import pytest
import torch
from torch.func import functional_call

from dynamics.regimes_observables import (
    diagonal_observables,
    gradient_overlaps,
    gradient_stats,
    linear_observables,
    mean_relative_distance,
    per_sample_jacobian,
    prediction_stats,
    weight_norms,
)
from models.regimes import build_model

F64 = torch.float64
# float64 throughout: sums of <= 10^3 terms of size O(1) agree to ~1e-13, far inside assert_close's 1e-7 default


def hinge(alpha):
    """The original's ℓ_α(pred, y) = relu(1 − α·pred·y)/α, per sample."""
    return lambda p, y: torch.relu(1.0 - alpha * p * y) / alpha


def mse(alpha):
    """The original's ℓ_α(pred, y) = ½(α·pred − y)²/α, per sample."""
    return lambda p, y: 0.5 * (alpha * p - y) ** 2 / alpha


def _net(arch="mlp_bias", d=4, seed=0):
    model = build_model(arch, (d,), 3, "tanh", 2 if arch.startswith("mlp") else None,
                        torch.Generator().manual_seed(seed)).to(F64)
    return model, {k: v.detach() for k, v in model.named_parameters()}


# --- predictions ---------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(7,), (6, 3)])
def test_mean_relative_distance_is_the_pair_average(shape):
    """Σ_{i≠j} |p_i − p_j|² / (n² − n) by a double loop over pairs."""
    p = torch.randn(*shape, generator=torch.Generator().manual_seed(1), dtype=F64) + 5.0  # offset: p̄ is not 0
    n = shape[0]
    pairs = sum(float(((p[i] - p[j]) ** 2).sum()) for i in range(n) for j in range(n) if i != j)
    assert mean_relative_distance(p) == pytest.approx(pairs / (n * n - n), rel=1e-12)
    assert mean_relative_distance(torch.full((5,), 3.0, dtype=F64)) == pytest.approx(0.0, abs=1e-12)
    assert math.isnan(mean_relative_distance(p[:1]))


def test_prediction_stats_by_loops():
    gen = torch.Generator().manual_seed(2)
    pred = torch.randn(9, generator=gen, dtype=F64)
    y = torch.where(torch.rand(9, generator=gen) > 0.5, 1.0, -1.0).to(F64)
    alpha = 3.0
    stats = prediction_stats(pred, y, alpha)
    assert stats["pred_bias"] == pytest.approx(sum(alpha * pred[i].item() * y[i].item() for i in range(9)) / 9,
                                               rel=1e-12)
    assert stats["pred_var"] == pytest.approx(sum((alpha * pred[i].item()) ** 2 for i in range(9)) / 9, rel=1e-12)
    assert stats["mean_relative_distance"] == pytest.approx(mean_relative_distance(pred), rel=1e-14)
    # raw predictions: the distance does not scale with α, unlike pred_var
    assert prediction_stats(pred, y, 1.0)["mean_relative_distance"] == pytest.approx(
        stats["mean_relative_distance"], rel=1e-14)


# --- gradients -----------------------------------------------------------------------

def _jacobian_by_loop(model, params, x):
    """One autograd.grad per sample: (N, P)."""
    leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    rows = []
    for i in range(x.shape[0]):
        out = functional_call(model, leaves, (x[i:i + 1],))[0]
        rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(out, list(leaves.values()))]))
    return torch.stack(rows)


def test_per_sample_jacobian():
    model, params = _net()
    x = torch.randn(5, 4, dtype=F64)
    torch.testing.assert_close(per_sample_jacobian(model, params, x), _jacobian_by_loop(model, params, x))
    lin, lp = _net("linear", d=4)
    torch.testing.assert_close(per_sample_jacobian(lin, lp, x), x / 2.0)  # ∂(w·x/sqrt(4))/∂w = x/2


@pytest.mark.parametrize("loss", [hinge, mse])
def test_gradient_stats_by_loop(loss):
    """Means and variances of j_i and ℓ'_i j_i by a loop over samples; ḡ_ℓ is also ∇_w of the mean loss."""
    model, params = _net()
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(8, 4, generator=gen, dtype=F64)
    y = torch.where(torch.rand(8, generator=gen) > 0.5, 1.0, -1.0).to(F64)
    out0 = 0.3 * torch.randn(8, generator=gen, dtype=F64)  # so that pred = f − out0 fits some points
    alpha = 10.0
    lossf = loss(alpha)
    stats, g_f, g_l = gradient_stats(model, params, x, y, out0, lossf)

    J = _jacobian_by_loop(model, params, x)
    pred = functional_call(model, params, (x,)) - out0
    if loss is hinge:
        unfit = alpha * pred * y < 1
        assert 0 < int(unfit.sum()) < 8  # both branches of the hinge are exercised
        dl = torch.where(unfit, -y, torch.zeros_like(y))  # ∂ℓ/∂pred by hand
    else:
        dl = alpha * pred - y
    LJ = torch.stack([dl[i] * J[i] for i in range(8)])
    mf, ml = J.mean(0), LJ.mean(0)
    torch.testing.assert_close(g_f, mf)
    torch.testing.assert_close(g_l, ml)
    assert stats["grad_f_norm"] == pytest.approx(float(mf @ mf), rel=1e-12)
    assert stats["grad_l_norm"] == pytest.approx(float(ml @ ml), rel=1e-12)
    assert stats["grad_f_var"] == pytest.approx(sum(float(((J[i] - mf) ** 2).sum()) for i in range(8)) / 8, rel=1e-12)
    assert stats["grad_l_var"] == pytest.approx(sum(float(((LJ[i] - ml) ** 2).sum()) for i in range(8)) / 8, rel=1e-12)

    leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    mean_loss = lossf(functional_call(model, leaves, (x,)) - out0, y).mean()
    grad = torch.cat([g.reshape(-1) for g in torch.autograd.grad(mean_loss, list(leaves.values()))])
    torch.testing.assert_close(g_l, grad)


def test_gradient_stats_perceptron_closed_form():
    """Linear f = w·x/sqrt(d): j_i = x_i/sqrt(d), so ḡ_f = x̄/sqrt(d) and the variance is mean|x_i − x̄|²/d."""
    d = 5
    model, params = _net("linear", d=d)
    x = torch.randn(11, d, dtype=F64)
    y = torch.ones(11, dtype=F64)
    stats, g_f, _ = gradient_stats(model, params, x, y, torch.zeros(11, dtype=F64), hinge(1.0))
    torch.testing.assert_close(g_f, x.mean(0) / math.sqrt(d))
    assert stats["grad_f_var"] == pytest.approx(float(((x - x.mean(0)) ** 2).sum(1).mean()) / d, rel=1e-12)


def test_gradient_overlaps_are_train_test_gradient_products():
    """grad_l_overlap = ∇L_train·∇L_test by autograd; grad_f_overlap = x̄_tr·x̄_te/d for the perceptron."""
    d = 4
    model, params = _net("mlp", d=d)
    gen = torch.Generator().manual_seed(4)
    xtr, xte = torch.randn(6, d, generator=gen, dtype=F64), torch.randn(5, d, generator=gen, dtype=F64)
    ytr, yte = torch.ones(6, dtype=F64), -torch.ones(5, dtype=F64)
    lossf = mse(2.0)
    _, gftr, gltr = gradient_stats(model, params, xtr, ytr, torch.zeros(6, dtype=F64), lossf)
    _, gfte, glte = gradient_stats(model, params, xte, yte, torch.zeros(5, dtype=F64), lossf)

    def grad(x, y):
        leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
        loss = lossf(functional_call(model, leaves, (x,)), y).mean()
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(leaves.values()))])

    ov = gradient_overlaps(gftr, gltr, gfte, glte)
    assert ov["grad_l_overlap"] == pytest.approx(float(grad(xtr, ytr) @ grad(xte, yte)), rel=1e-10)
    lin, lp = _net("linear", d=d)
    _, a, b = gradient_stats(lin, lp, xtr, ytr, torch.zeros(6, dtype=F64), lossf)
    _, c, e = gradient_stats(lin, lp, xte, yte, torch.zeros(5, dtype=F64), lossf)
    assert gradient_overlaps(a, b, c, e)["grad_f_overlap"] == pytest.approx(
        float(xtr.mean(0) @ xte.mean(0)) / d, rel=1e-12)


def test_weight_norms_per_tensor():
    _, params0 = _net(seed=0)
    _, params = _net(seed=1)
    norms = weight_norms(params, params0)
    names = list(params)
    assert len(norms["weights_norm"]) == len(names) == 5  # 2 hidden weights, 2 biases, readout
    for k, name in enumerate(names):
        flat, flat0 = params[name].reshape(-1).tolist(), params0[name].reshape(-1).tolist()
        assert norms["weights_norm"][k] == pytest.approx(sum(v * v for v in flat), rel=1e-12)
        assert norms["delta_weights_norm"][k] == pytest.approx(sum((a - b) ** 2 for a, b in zip(flat, flat0)),
                                                               rel=1e-12)


# --- perceptron and diagonal network -------------------------------------------------------

def _hand_case():
    """d = 3, teacher e₁: w = (3, 4, 0), w0 = (1, 1, 1), Δw = (2, 3, −1)."""
    w = torch.tensor([3.0, 4.0, 0.0], dtype=F64)
    w0 = torch.tensor([1.0, 1.0, 1.0], dtype=F64)
    x = torch.tensor([[0.5, 0.1, 0.2], [-2.0, 0.0, 1.0], [1.0, -1.0, 0.0], [0.05, 0.1, 0.1]], dtype=F64)
    y = torch.tensor([1.0, -1.0, 1.0, 1.0], dtype=F64)
    return w, w0, torch.tensor([1.0, 0.0, 0.0], dtype=F64), x, y


def test_linear_observables_by_hand():
    w, w0, t, x, y = _hand_case()
    alpha = 1.0
    pred = x @ (w - w0) / math.sqrt(3)  # f(w, x) − f(w0, x); x·Δw = 1.1, −5, −1, 0.3 (times y: 1.1, 5, −1, 0.3)
    obs = linear_observables(w, w0, t, x, y, pred, alpha)
    assert obs["w_para"] == pytest.approx(3.0, rel=1e-14) and obs["w_perp"] == pytest.approx(4.0, rel=1e-14)
    assert obs["ampli_factor"] == pytest.approx(2 * 9 / 16, rel=1e-14)  # (d − 1) w∥²/|w⊥|²
    assert obs["ampli_factor_original"] == pytest.approx(9 / 16 / 2, rel=1e-14)  # w∥²/|w⊥|²/(d − 1)
    assert obs["dw1"] == pytest.approx(2.0, rel=1e-14) and obs["dw_para"] == pytest.approx(4.0, rel=1e-14)
    assert obs["dw_perp"] == pytest.approx((9 + 1) / 2, rel=1e-14)
    # α·pred·y = 0.64, 2.89, −0.58, 0.17: points 0, 2, 3 unfit; without 1/sqrt(3), 1.1 > 1 fits point 0
    assert obs["mean_x1_unfit"] == pytest.approx((0.5 + 1.0 + 0.05) / 3, rel=1e-14)
    assert obs["mean_x1_unfit_original"] == pytest.approx((1.0 + 0.05) / 2, rel=1e-14)
    fitted = linear_observables(w, w0, t, x, y, 10 * y, alpha)
    assert math.isnan(fitted["mean_x1_unfit"])  # no unfit point: the original's empty mean


def test_linear_observables_are_rotation_invariant():
    """A random unit teacher t = Q e₁ with everything rotated by Q gives the e₁ values: the projections are on t."""
    w, w0, e1, x, y = _hand_case()
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(5), dtype=F64))
    pred = x @ (w - w0) / math.sqrt(3)
    ref = linear_observables(w, w0, e1, x, y, pred, 1.0)
    rot = linear_observables(q @ w, q @ w0, q @ e1, x @ q.T, y, pred, 1.0)
    assert rot.keys() == ref.keys()
    for key, value in ref.items():
        assert rot[key] == pytest.approx(value, rel=1e-12), key


def test_diagonal_observables_by_hand():
    """β = w^L splits along t; Δw (not Δβ) for dw. L = 2: w = (−2, 1, 3) -> β = (4, 1, 9)."""
    w = torch.tensor([-2.0, 1.0, 3.0], dtype=F64)
    w0 = torch.ones(3, dtype=F64)
    obs = diagonal_observables(w, w0, torch.tensor([1.0, 0.0, 0.0], dtype=F64), 2)
    assert obs["w_para"] == pytest.approx(4.0, rel=1e-14)
    assert obs["w_perp"] == pytest.approx(math.sqrt(1 + 81), rel=1e-14)
    assert obs["ampli_factor"] == pytest.approx(2 * 16 / 82, rel=1e-14)
    assert obs["dw_para"] == pytest.approx(9.0, rel=1e-14)  # Δw = (−3, 0, 2)
    assert obs["dw_perp"] == pytest.approx(4 / 2, rel=1e-14)
    # at the original's init (ones) with teacher e₁: β = 1, the SNR is (d − 1)·1/(d − 1) = 1
    ones = torch.ones(6, dtype=F64)
    e1 = torch.eye(6, dtype=F64)[0]
    assert diagonal_observables(ones, ones, e1, 3)["ampli_factor"] == pytest.approx(1.0, rel=1e-14)
