"""The SGD-regimes engine against the original's semantics (issue 13 items 6, 8, 9, 10b).

Most checks use the perceptron f(w, x) = w·x/√d, where every gradient is a closed form:
pred_i = (w − w₀)·x_i/√d, ∇L = (1/P) Σ ℓ'_i x_i/√d with ℓ' = ∂ℓ_α/∂pred written out by hand.
"""
import math

import pytest
import torch

from data.regimes import build_dataset
from dynamics.regimes_drift import drifts, gradient_flow
from dynamics.regimes_steps import alpha_loss, gd_sde_gradient
from dynamics.regimes_train import RegimesConfig, flat_metrics, train_regimes
from models.regimes import build_model

F64 = torch.float64


def perceptron(ptr=12, pte=10, d=6, seed=0, chi=0.0):
    data = build_dataset("depleted_sign", ptr, pte, seed_trainset=seed, seed_testset=seed + 1, d=d, chi=chi)
    data = data.to(dtype=F64)
    model = build_model("linear", (d,), 1, "relu", None, torch.Generator().manual_seed(seed)).to(F64)
    return model, {k: v.detach() for k, v in model.named_parameters()}, data


def run(model, params, data, seed=0, teacher=None, **cfg):
    cfg.setdefault("max_wall", 60.0)
    return train_regimes(model, params, data, RegimesConfig(**cfg), torch.Generator().manual_seed(seed),
                         teacher=teacher)


def w_of(params):
    return params["readout.weight"][0]


def mse_grad(w, w0, x, y, alpha):
    """∇ of mean_i (α pred_i − y_i)²/(2α) for the perceptron: ℓ'_i = α pred_i − y_i."""
    d = x.shape[1]
    pred = x @ (w - w0) / math.sqrt(d)
    return ((alpha * pred - y)[:, None] * x).mean(0) / math.sqrt(d)


def hinge_dl(w, w0, x, y, alpha):
    """ℓ'_i of the α-hinge max(0, 1 − α pred y)/α: −y_i where α pred_i y_i < 1, else 0."""
    pred = x @ (w - w0) / math.sqrt(x.shape[1])
    return torch.where(alpha * pred * y < 1, -y, torch.zeros_like(y))


# --- item 6: mse stops like the original --------------------------------------------------------

def test_mse_run_stops_once_alpha_loss_is_below_1e9():
    model, params, data = perceptron(ptr=8, d=16)  # P < d: the mse minimum is 0
    # Hessian α XᵀX/(P d): largest eigenvalue ~ α (1 + √(P/d))²/P ≈ 0.73 here, so α·dt = 2 is stable
    out = run(model, params, data, alpha=2.0, dt=1.0, bs=8, loss="mse", dynamics="gd", max_step=100_000,
              mind_stop=None)
    last = out.checkpoints[-1]
    assert out.stop_reason == "mse_converged"
    assert 0 < last["train"]["aloss"] < 1e-9 and last["train"]["aloss"] == pytest.approx(2.0 * last["train"]["loss"])
    assert last["step"] < 100_000
    # the threshold is on α·L (the original's alpha * current_loss), so at α = 64 L itself must fall below 1e-9/64
    out_big = run(model, params, data, alpha=64.0, dt=1.0 / 32, bs=8, loss="mse", dynamics="gd", max_step=100_000,
                  mind_stop=None)
    assert out_big.stop_reason == "mse_converged" and out_big.checkpoints[-1]["train"]["loss"] < 1e-9 / 64


# --- item 10b: gd_sde's two noise forms -----------------------------------------------------------

def test_gd_sde_original_noise_is_the_originals_formula():
    """g = ∇L + σ (1/P) Σ ζ_i ∇f(x_i), σ² = (1/bs − 1/P) Σ ℓ'_i² (edm/dynamics.py:gd_sde), by hand."""
    model, params, data = perceptron(ptr=9, d=5)
    x, y, alpha, bs = data.xtr, data.ytr, 0.7, 3
    w0 = w_of(params)
    w = w0 + 0.4 * torch.randn(5, generator=torch.Generator().manual_seed(2), dtype=F64)
    zeta = torch.randn(9, generator=torch.Generator().manual_seed(3), dtype=F64)

    def f(p, xx):
        return torch.func.functional_call(model, p, (xx,))

    out0 = f(params, x)
    _, g = gd_sde_gradient(f, alpha_loss("mse", alpha), {"readout.weight": w[None]}, x, y, out0, bs, zeta)
    pred = x @ (w - w0) / math.sqrt(5)
    dl = alpha * pred - y
    sigma = math.sqrt((1 / bs - 1 / 9) * float((dl ** 2).sum()))
    expected = mse_grad(w, w0, x, y, alpha) + sigma * (zeta[:, None] * x).mean(0) / math.sqrt(5)
    torch.testing.assert_close(g["readout.weight"][0], expected, rtol=1e-12, atol=1e-14)
    _, g_full = gd_sde_gradient(f, alpha_loss("mse", alpha), {"readout.weight": w[None]}, x, y, out0, 9, zeta)
    torch.testing.assert_close(g_full["readout.weight"][0], mse_grad(w, w0, x, y, alpha), rtol=1e-12, atol=1e-14)


def test_gd_sde_only_unfit_two_steps_by_hand():
    """Step 1 sees every point (pred = 0); step 2 only the unfitted ones, with P replaced by their number n."""
    model, params, data = perceptron(ptr=20, d=4, chi=1.0)
    x, y, alpha, dt, bs = data.xtr, data.ytr, 1.0, 3.0, 4
    out = run(model, params, data, seed=5, alpha=alpha, dt=dt, bs=bs, dynamics="gd_sde_only_unfit", max_step=2,
              mind_stop=None, ckpt_save_parameters=True)
    gen = torch.Generator().manual_seed(5)
    w0 = w = w_of(params)
    for _ in range(2):
        pred = x @ (w - w0) / 2.0
        unfit = alpha * pred * y < 1
        xs, ys = x[unfit], y[unfit]
        n = int(unfit.sum())
        zeta = torch.randn(n, generator=gen, dtype=F64)
        dl = hinge_dl(w, w0, xs, ys, alpha)
        sigma = math.sqrt(max(0.0, 1 / bs - 1 / n) * float((dl ** 2).sum()))
        g = (dl[:, None] * xs).mean(0) / 2.0 + sigma * (zeta[:, None] * xs).mean(0) / 2.0
        w = w - dt * g
    assert 0 < n < 20  # the second step really ran on a subset
    torch.testing.assert_close(w_of(out.parameters[-1]["params"]), w, rtol=1e-12, atol=1e-14)


# --- item 8: regularizers ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["l2", "l1", "norm_grad_loss", "norm_grad_net"])
def test_regularizers_one_gd_step(name):
    """w₁ = w₀ − dt (∇L + ∇R); the original's regularizer.py returns −∇R of these R (by hand)."""
    model, params, data = perceptron(ptr=10, d=6)
    x, y, alpha, dt, s = data.xtr, data.ytr, 1.5, 0.3, 0.2
    out = run(model, params, data, alpha=alpha, dt=dt, bs=10, loss="mse", dynamics="gd", max_step=1,
              regularizer=name, regu_scale=s, ckpt_save_parameters=True)
    w0 = w_of(params)
    gl = mse_grad(w0, w0, x, y, alpha)
    H = alpha * x.T @ x / (10 * 6)  # Hessian of the α-mse loss of the perceptron
    grad_r = {"l2": s * w0, "l1": s * torch.sign(w0), "norm_grad_loss": 2 * s * H @ gl,
              "norm_grad_net": torch.zeros_like(w0)}[name]  # |∇ mean pred|² is constant in w for a linear model
    torch.testing.assert_close(w_of(out.parameters[-1]["params"]), w0 - dt * (gl + grad_r), rtol=1e-12, atol=1e-14)
    assert out.checkpoints[-1]["train"]["loss"] == pytest.approx(
        float(((alpha * x @ (w_of(out.parameters[-1]["params"]) - w0) / math.sqrt(6) - y) ** 2).mean() / (2 * alpha)),
        rel=1e-12)  # the recorded loss has no penalty in it


def test_bad_regularizer_and_gradoverlap_need_grad_stats():
    with pytest.raises(ValueError, match="regularizer"):
        RegimesConfig(alpha=1.0, dt=1.0, bs=1, regularizer="l3")
    with pytest.raises(ValueError, match="ckpt_grad_stats"):
        RegimesConfig(alpha=1.0, dt=1.0, bs=1, ckpt_save_gradoverlap=True)
    with pytest.raises(ValueError, match="gf_mindt"):
        RegimesConfig(alpha=1.0, dt=1.0, bs=1, gf_mindt=2.0, gf_maxdt=1.0)
    with pytest.raises(ValueError, match="ckpt_drift"):
        RegimesConfig(alpha=1.0, dt=1.0, bs=1, ckpt_drift=2)  # 0/1 and False/True only


# --- item 8: checkpoint options -------------------------------------------------------------------------

def test_gradoverlap_accumulates_grad_at_the_last_checkpoint_dot_each_step():
    """g_norm at a checkpoint = Σ over the steps since the previous checkpoint c of ∇L(w_c)·Δw."""
    model, params, data = perceptron(ptr=10, d=6)
    x, y, alpha, dt = data.xtr, data.ytr, 1.0, 0.5
    out = run(model, params, data, alpha=alpha, dt=dt, bs=10, loss="mse", dynamics="gd", max_step=4,
              ckpt_save_mult=100, ckpt_grad_stats=10, ckpt_save_gradoverlap=True, mind_stop=None)
    w0 = w_of(params)
    ws = [w0]
    for _ in range(4):
        ws.append(ws[-1] - dt * mse_grad(ws[-1], w0, x, y, alpha))
    steps = [c["step"] for c in out.checkpoints]
    assert steps == [0, 1, 2, 4]
    for prev, cur, rec in zip(steps, steps[1:], out.checkpoints[1:]):
        expected = sum(float(mse_grad(ws[prev], w0, x, y, alpha) @ (ws[k + 1] - ws[k])) for k in range(prev, cur))
        assert rec["train"]["g_norm"] == pytest.approx(expected, rel=1e-10)
    plain = run(model, params, data, alpha=alpha, dt=dt, bs=10, loss="mse", dynamics="gd", max_step=4)
    assert all(c["train"]["g_norm"] == 0.0 for c in plain.checkpoints)  # the original's 0.0 when off


@pytest.mark.parametrize("dynamics", ["sgd", "gd_sde"])
def test_delta_pred_is_the_next_step_and_leaves_training_alone(dynamics):
    """The original takes the extra step with the batch key it does not advance: the same draw as the next step."""
    model, params, data = perceptron(ptr=12, d=6)
    cfg = dict(alpha=1.0, dt=0.5, bs=3, dynamics=dynamics, max_step=1, ckpt_save_parameters=True)
    probe = run(model, params, data, seed=4, ckpt_delta_pred=True, **cfg)
    plain = run(model, params, data, seed=4, **cfg)
    w0, w1 = w_of(probe.parameters[0]["params"]), w_of(probe.parameters[-1]["params"])
    torch.testing.assert_close(w1, w_of(plain.parameters[-1]["params"]), rtol=0, atol=0)  # training unaffected
    for split, x in (("train", data.xtr), ("test", data.xte)):
        moved = (x @ (w1 - w0)).abs() / math.sqrt(6)
        summary = probe.checkpoints[0]["delta_pred"][split]
        assert summary["min"] == pytest.approx(float(moved.min()), rel=1e-12)
        assert summary["max"] == pytest.approx(float(moved.max()), rel=1e-12)
        assert summary["median"] == pytest.approx(float(moved.quantile(0.5)), rel=1e-12)
    assert plain.checkpoints[0]["delta_pred"] is None


def test_predictions_at_the_stop_parameters_and_observables_are_recorded():
    model, params, data = perceptron(ptr=12, d=6)
    teacher = torch.zeros(6, dtype=F64)
    teacher[0] = 1.0  # depleted_sign's teacher is e₁
    out = run(model, params, data, alpha=1.0, dt=0.5, bs=4, max_step=30, ckpt_grad_stats=6, teacher=teacher,
              ckpt_save_parameters=True)
    assert len(out.predictions) == 1  # the stop only, as the original without ckpt_save_pred
    last, final = out.checkpoints[-1], out.predictions[-1]
    w0, w = w_of(params), w_of(out.params)
    assert final["step"] == last["step"] and [p["step"] for p in out.parameters] == [0, last["step"]]
    torch.testing.assert_close(final["train_pred"], data.xtr @ (w - w0) / math.sqrt(6))
    torch.testing.assert_close(final["test_label"], data.yte)
    assert last["linear"]["w_para"] == pytest.approx(float(w[0]), rel=1e-12)
    assert last["train"]["pred_bias"] == pytest.approx(float((final["train_pred"] * data.ytr).mean()), rel=1e-12)
    metrics = flat_metrics(last)
    assert {"grads/train/grad_l_norm", "grads/test/grad_f_var", "train_test/grad_l_overlap", "test/pred_var",
            "train/mean_relative_distance", "linear/ampli_factor", "train/g_norm"} <= set(metrics)
    # grad_l at the stop is the gradient of the mean loss on the first 6 training points (hinge, by hand)
    dl = hinge_dl(w, w0, data.xtr[:6], data.ytr[:6], 1.0)
    g_l = (dl[:, None] * data.xtr[:6]).mean(0) / math.sqrt(6)
    assert metrics["grads/train/grad_l_norm"] == pytest.approx(float(g_l @ g_l), rel=1e-10, abs=1e-300)
    with_pred = run(model, params, data, alpha=1.0, dt=0.5, bs=4, max_step=30, ckpt_save_pred=True)
    assert [p["step"] for p in with_pred.predictions] == [c["step"] for c in with_pred.checkpoints if c["slow"]]


# --- item 8: gradient flow and drifts --------------------------------------------------------------------

def quadratic(n=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=F64))
    lam = torch.linspace(0.1, 3.0, n, dtype=F64)
    w_star = torch.randn(n, generator=g, dtype=F64)
    H = q @ torch.diag(lam) @ q.T

    def exact(w0, t):
        return w_star + q @ (torch.exp(-lam * t) * (q.T @ (w0 - w_star)))

    return H, w_star, exact


def test_gradient_flow_matches_the_exponential_of_a_quadratic():
    H, w_star, exact = quadratic()
    w0 = torch.zeros(5, dtype=F64)
    grad = lambda w: H @ (w - w_star)  # noqa: E731
    tol = 1e-9
    ratio = lambda w, err: float(err.abs().max()) / tol  # noqa: E731
    w, steps = gradient_flow(grad, ratio, w0, 4.0, 1e-10, 1.0)
    assert steps > 4  # max_dt = 1 forces several accepted steps
    # local error <= tol per step; the flow contracts, so the global error stays below steps·tol
    assert float((w - exact(w0, 4.0)).abs().max()) < steps * tol
    # the original's FSAL sign flip: every later step's error estimate is off by ~e₀·dt·2|∇L| > tol, so dt
    # falls to gf_mindt and stays there (at the default 1e-10 that is ~4e10 steps here: use 1e-2)
    w_orig, n_orig = gradient_flow(grad, ratio, w0, 4.0, 1e-2, 1.0, first_stage="original")
    assert n_orig > 0.9 * 4.0 / 1e-2 and float((w_orig - exact(w0, 4.0)).abs().max()) > 1e-2
    one, n1 = gradient_flow(grad, lambda w, err: 0.0, w0, 0.01, 1e-10, 1.0)
    one_orig, _ = gradient_flow(grad, lambda w, err: 0.0, w0, 0.01, 1e-10, 1.0, first_stage="original")
    assert n1 == 1 and torch.equal(one, one_orig)  # a single step never reuses a stage
    forced, nf = gradient_flow(grad, lambda w, err: math.inf, w0, 2.0, 0.25, 0.25)
    assert nf == 8  # every step rejected down to gf_mindt and forced through there: 2.0 / 0.25 steps


def test_drifts_of_the_perceptron_by_hand():
    """gd: two GD steps; sgd: one step on a batch then one full step, averaged over n0 batches; gf: exact."""
    model, params, data = perceptron(ptr=12, d=4)
    x, y, alpha, dt, bs, n0 = data.xtr, data.ytr, 1.0, 0.3, 3, 4
    w0 = w_of(params)
    w = w0 + 0.5 * torch.randn(4, generator=torch.Generator().manual_seed(1), dtype=F64)

    def f(p, xx):
        return torch.func.functional_call(model, p, (xx,))

    out0 = f(params, x)
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(7))
    got = drifts(f, alpha_loss("mse", alpha), {"readout.weight": w[None]}, x, y, out0, dt, bs, n0, perm,
                 1e-10, 1e-12, 1.0)
    H = alpha * x.T @ x / (12 * 4)
    w_star = torch.linalg.lstsq(H, H @ w - mse_grad(w, w0, x, y, alpha)).solution  # ∇L = H (w − w*)
    lam, q = torch.linalg.eigh(H)
    dw_gf = q @ ((torch.exp(-lam * 2 * dt) - 1) * (q.T @ (w - w_star)))
    g = lambda v: mse_grad(v, w0, x, y, alpha)  # noqa: E731
    dw_gd = -dt * g(w) - dt * g(w - dt * g(w))
    parts = []
    for b in perm[:n0 * bs].reshape(n0, bs):
        gb = mse_grad(w, w0, x[b], y[b], alpha)
        parts.append(-dt * gb - dt * g(w - dt * gb))
    dw_sgd = torch.stack(parts).mean(0)
    sq = lambda v: float((v ** 2).sum())  # noqa: E731
    assert got["gd_gf"]["readout.weight"] == pytest.approx(sq(dw_gd - dw_gf), rel=1e-5)  # gf_tol 1e-10 on ~1e-3 drifts
    assert got["sgd_gf"]["readout.weight"] == pytest.approx(sq(dw_sgd - dw_gf), rel=1e-5)
    assert got["gd_sgd"]["readout.weight"] == pytest.approx(sq(dw_gd - dw_sgd), rel=1e-12)
    none = drifts(f, alpha_loss("mse", alpha), {"readout.weight": w[None]}, x, y, out0, dt, bs, 5, perm,
                  1e-5, 1e-10, 1.0)
    assert none["sgd_gf"] is None and none["gd_sgd"] is None and none["gd_gf"] is not None  # 5·3 > 12


def test_drift_is_recorded_at_slow_checkpoints_only():
    model, params, data = perceptron(ptr=12, d=4)
    out = run(model, params, data, alpha=1.0, dt=0.5, bs=3, max_step=40, ckpt_drift=True, ckpt_drift_n0=2)
    assert all((c["drift"] is not None) == c["slow"] for c in out.checkpoints)
    assert "drift/gd_sgd" in flat_metrics(out.checkpoints[-1])
