"""dynamics.basis (conjugate-kernel basis, β_i, vmapped ∇β) and dynamics.schedules (LR, losses, optimizers).

References: a linear model whose basis has a closed form, dense float64 Jacobians
(jacrev) for ∇β, torch's own LR schedulers for the closed-form schedules.
"""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.func import jacrev

from dynamics.basis import beta_gradients, conjugate_kernel_basis, nonnegative_increment_fraction, saturation_times
from dynamics.schedules import (
    LRSchedule,
    decay_groups,
    km_mse_loss,
    make_loss,
    make_optimizer,
    one_cycle_lr,
    set_lr,
    warmup_step_lr,
)
from llc.estimate import flat_model_for_module
from models.basis_nets import InputShape, build_model

D = torch.float64


def orthonormal(rows, cols, gen):
    q, _ = torch.linalg.qr(torch.randn(rows, cols, dtype=D, generator=gen))
    return q


def linear_case(N=40, p=7, C=4, seed=0):
    """Φ = U0 S0 V0ᵀ and W chosen so that B = W V0 S0 / √N = u0 diag(s0) v0ᵀ exactly."""
    gen = torch.Generator().manual_seed(seed)
    U0, V0 = orthonormal(N, p, gen), orthonormal(p, p, gen)
    S0 = torch.linspace(3.0, 0.5, p, dtype=D)
    u0, v0 = orthonormal(C, C, gen), orthonormal(p, C, gen)
    s0 = torch.tensor([2.0, 1.5, 0.7, 0.2], dtype=D)[:C]
    phi = U0 * S0 @ V0.T
    W = math.sqrt(N) * (u0 * s0) @ v0.T @ torch.diag(1 / S0) @ V0.T
    return phi, W, dict(U0=U0, S0=S0, V0=V0, u0=u0, s0=s0, v0=v0)


# --- the basis ----------------------------------------------------------------------------

def test_linear_model_basis_has_its_closed_form():
    phi, W, ref = linear_case()
    b = conjugate_kernel_basis(phi, W)
    assert b.size == 4 and b.num_points == 40 and b.feature_rank == 7
    torch.testing.assert_close(b.S, ref["S0"])
    torch.testing.assert_close(b.s, ref["s0"])
    # singular vectors agree up to sign (all singular values are distinct)
    torch.testing.assert_close((b.U.T @ ref["U0"]).abs(), torch.eye(7, dtype=D))
    torch.testing.assert_close((b.u.T @ ref["u0"]).abs(), torch.eye(4, dtype=D))
    # v lives in the coordinates of Φ's right singular vectors: V v = V0 v0 up to sign
    torch.testing.assert_close(((b.V @ b.v).T @ (ref["V0"] @ ref["v0"])).abs(), torch.eye(4, dtype=D))


def test_basis_functions_are_orthonormal_and_final_outputs_reconstruct_exactly():
    phi, W, _ = linear_case()
    b = conjugate_kernel_basis(phi, W)
    G = b.basis_functions()  # (k, N, C)
    torch.testing.assert_close(torch.einsum("inc,jnc->ij", G, G) / b.num_points, torch.eye(4, dtype=D))
    torch.testing.assert_close(b.cotangents(), G / b.num_points)
    F_final = phi @ W.T
    torch.testing.assert_close(b.coefficients(F_final), b.s)
    torch.testing.assert_close(b.coefficient_matrix(F_final), torch.diag(b.s))
    torch.testing.assert_close(b.reconstruct(b.coefficients(F_final)), F_final)
    assert float(b.residual(F_final).abs().max()) < 1e-12
    # dropping the last function leaves exactly s_k φ_k: relative residual s_k / ‖s‖
    torch.testing.assert_close(b.relative_residual(F_final, 3), b.s[3] / b.s.norm())


def test_coefficients_are_inner_products_and_residual_is_orthogonal():
    phi, W, _ = linear_case()
    b = conjugate_kernel_basis(phi, W)
    gen = torch.Generator().manual_seed(1)
    F_t = torch.randn(3, 40, 4, dtype=D, generator=gen)  # (T, N, C)
    G = b.basis_functions()
    dense = torch.stack([torch.stack([(F_t[t] * G[i]).sum() / 40 for i in range(4)]) for t in range(3)])
    torch.testing.assert_close(b.coefficients(F_t), dense)
    torch.testing.assert_close(b.coefficients(F_t)[1], b.coefficients(F_t[1]))
    torch.testing.assert_close(torch.diagonal(b.coefficient_matrix(F_t), dim1=-2, dim2=-1), dense)
    res = b.residual(F_t, 2)
    assert torch.einsum("tnc,inc->ti", res, G[:2]).abs().max() < 1e-12
    # the functions after the first two are still in the residual
    torch.testing.assert_close(torch.einsum("tnc,inc->ti", res, G[2:]) / 40, dense[:, 2:])


def test_float32_inputs_give_a_float64_basis():
    phi, W, _ = linear_case()
    b = conjugate_kernel_basis(phi.float(), W.float())
    assert b.U.dtype == D and b.s.dtype == D
    torch.testing.assert_close(b.coefficients((phi @ W.T).float()), b.s, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("phi_shape, W_shape, match", [
    ((10, 3), (4, 5), r"share p; got phi \(10, 3\) and W \(4, 5\)"),
    ((10,), (4, 3), r"phi must be \(N, p\)"),
])
def test_basis_shape_errors_state_expected_and_actual(phi_shape, W_shape, match):
    with pytest.raises(ValueError, match=match):
        conjugate_kernel_basis(torch.zeros(phi_shape), torch.zeros(W_shape))


def test_outputs_and_counts_are_checked():
    phi, W, _ = linear_case()
    b = conjugate_kernel_basis(phi, W)
    with pytest.raises(ValueError, match=r"\(\.\.\., 40, 4\); got \(40, 5\)"):
        b.coefficients(torch.zeros(40, 5))
    with pytest.raises(ValueError,
                       match=r"num must be an integer in \[1, 4\] \(the basis has k = 4 functions\); got 5"):
        b.basis_functions(5)
    with pytest.raises(ValueError, match="N = 40"):
        beta_gradients(lambda w, x: x @ w.view(4, 7).T, W.reshape(-1), phi[:10], b)


# --- gradients of β ------------------------------------------------------------------------

def test_linear_model_gradients_have_closed_form_norms_and_are_orthogonal():
    """f(W, Φ) = Φ Wᵀ: ∇_W β_i = u_i (V S v_i)ᵀ / √N, so ‖∇β_i‖ = ‖S v_i‖ / √N and cos = 0 for i ≠ j."""
    phi, W, _ = linear_case()
    b = conjugate_kernel_basis(phi, W)
    g = beta_gradients(lambda w, x: x @ w.view(4, 7).T, W.reshape(-1), phi, b, eval_batch_size=9)
    torch.testing.assert_close(g.norms, (b.S[:, None] * b.v).norm(dim=0) / math.sqrt(40))
    torch.testing.assert_close(g.cosines, torch.eye(4, dtype=D), atol=1e-12, rtol=0)
    assert g.max_offdiag_abs_cosine() < 1e-12
    torch.testing.assert_close(g.beta, b.s)


def _tiny_mlp(seed=0):
    gen = torch.Generator().manual_seed(seed)
    A = torch.randn(5, 6, dtype=D, generator=gen)
    W = torch.randn(3, 6, dtype=D, generator=gen)
    x = torch.randn(20, 5, dtype=D, generator=gen)

    def f(w, xb):  # Φ(x) = tanh(x A), head W
        A_, W_ = w[:30].view(5, 6), w[30:].view(3, 6)
        return torch.tanh(xb @ A_) @ W_.T

    return f, torch.cat([A.reshape(-1), W.reshape(-1)]), x, torch.tanh(x @ A), W


def test_vmapped_gradients_match_dense_float64_jacobian():
    f, w, x, phi, W = _tiny_mlp()
    b = conjugate_kernel_basis(phi, W)
    J = jacrev(lambda u: f(u, x).reshape(-1))(w)  # (N*C, P)
    dense = b.cotangents().reshape(3, -1) @ J  # (k, P): Jᵀ vec(∂β_i/∂F)
    for chunk in (None, 7, 20):
        g = beta_gradients(f, w, x, b, eval_batch_size=chunk)
        torch.testing.assert_close(g.grads, dense)
        torch.testing.assert_close(g.outputs, f(w, x))
    norms = dense.norm(dim=1)
    g = beta_gradients(f, w, x, b, num=2)
    assert g.grads.shape == (2, w.numel())
    torch.testing.assert_close(g.cosines, (dense[:2] @ dense[:2].T) / (norms[:2, None] * norms[None, :2]))


def test_gradients_through_a_real_network_in_eval_mode_match_jacrev():
    """cnn3 (conv, max-pool, BatchNorm1d in eval mode) through flat_model_for_module, float64."""
    net = build_model("cnn3", InputShape(1, 8, 4), width=2, seed=0).double().eval()
    x = torch.randn(6, 1, 8, 8, dtype=D, generator=torch.Generator().manual_seed(0))
    f, w = flat_model_for_module(net, D, torch.device("cpu"))
    with torch.no_grad():
        b = conjugate_kernel_basis(net.features(x), net.head.weight)
    J = jacrev(lambda u: f(u, x).reshape(-1))(w)
    g = beta_gradients(f, w, x, b, eval_batch_size=4)
    torch.testing.assert_close(g.grads, b.cotangents().reshape(b.size, -1) @ J)
    torch.testing.assert_close(g.beta, b.s)


# --- trajectory summaries ------------------------------------------------------------------

def test_increment_fraction_and_saturation_times():
    assert nonnegative_increment_fraction([0, 1, 1, 0.5, 2]) == 0.75
    assert nonnegative_increment_fraction([5, 0, 1, 2], start=1) == 1.0
    assert math.isnan(nonnegative_increment_fraction([1.0]))
    times = [0, 10, 20, 30]
    beta = np.array([[0.0, 0.0, 0.0], [0.95, 0.1, 0.0], [1.0, 0.9, 0.0], [1.0, 1.0, -1.0]])
    np.testing.assert_array_equal(saturation_times(times, beta, [1.0, 1.0, 1.0], 0.9)[:2], [10, 20])
    assert np.isnan(saturation_times(times, beta, [1.0, 1.0, 1.0])[2])  # never reached
    np.testing.assert_array_equal(saturation_times(times, beta[:, :2], level=0.5), [10, 20])  # final = last row
    with pytest.raises(ValueError, match="level"):
        saturation_times(times, beta, level=0)


# --- learning-rate schedules -----------------------------------------------------------------

def _torch_warmup_step(lr_max, warm, lr_warm, rate, size, epochs):
    """The schedule train.py meant, built from torch schedulers with the warm-up applied once."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr_max)
    warmup = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: (lr_warm + (lr_max - lr_warm) * e / warm) / lr_max)
    decay = torch.optim.lr_scheduler.StepLR(opt, step_size=size, gamma=rate)
    sched = torch.optim.lr_scheduler.SequentialLR(opt, [warmup, decay], milestones=[warm])
    lrs = []
    for _ in range(epochs):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def test_warmup_step_schedule_matches_torch_schedulers_at_every_epoch():
    lr_max, warm, lr_warm, rate, size = 0.1, 5, 0.01, 0.33, 7
    ref = _torch_warmup_step(lr_max, warm, lr_warm, rate, size, 40)
    s = LRSchedule(lr_max, warm, lr_warm, rate, size)
    ours = [s.lr(e * 3, steps_per_epoch=3, total_steps=120) for e in range(40)]
    np.testing.assert_allclose(ours, ref, rtol=1e-12)
    closed = [lr_warm + (lr_max - lr_warm) * e / warm if e < warm else lr_max * rate ** ((e - warm) // size)
              for e in range(40)]
    np.testing.assert_allclose(ours, closed, rtol=1e-12)


def test_warmup_is_applied_once():
    s = LRSchedule(lr_max=2.0, epoch_warm=4, lr_warm=0.05, decay_rate=0.5, decay_stepsize=10)
    assert s.lr(0, 10, 1000) == 0.05  # train.py's LambdaLR gave lr_warm · lr_max = 0.1 here
    assert s.lr(19, 10, 1000) == 0.05 + (2.0 - 0.05) / 4  # constant within epoch 1
    assert s.lr(40, 10, 1000) == 2.0  # warm-up over: lr_max, not lr_max²
    assert s.lr(139, 10, 1000) == 2.0 and s.lr(140, 10, 1000) == 1.0


def test_no_warmup_and_iteration_unit_match_a_per_iteration_steplr():
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=2.0)
    steplr = torch.optim.lr_scheduler.StepLR(opt, step_size=50, gamma=0.33)
    s = LRSchedule(2.0, 0, 2.0, 0.33, 50, unit="iteration")
    for t in range(300):
        assert s.lr(t, steps_per_epoch=118, total_steps=1180) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12)
        opt.step()
        steplr.step()


def test_onecycle_matches_torch_per_iteration():
    total = 97
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0, momentum=0.9)
    ref = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.003, total_steps=total)
    s = LRSchedule(0.003, 0, 0.003, 0.33, 50, scheduler="onecycle")
    for t in range(total):
        assert s.lr(t, 10, total) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-10)
        assert one_cycle_lr(t, total, 0.003) == s.lr(t, 10, total)
        opt.step()
        ref.step()


@pytest.mark.parametrize("kwargs, match", [
    (dict(lr_max=0.0), r"lr_setting\[0\]"),
    (dict(epoch_warm=-1), r"lr_setting\[1\]"),
    (dict(epoch_warm=2.5), r"lr_setting\[1\]"),
    (dict(lr_warm=-0.1), r"lr_setting\[2\]"),
    (dict(decay_rate=0.0), "decay_rate"),
    (dict(decay_stepsize=0), "decay_stepsize"),
    (dict(scheduler="cosine"), "scheduler must be one of"),
    (dict(unit="batch"), "schedule_unit must be one of"),
])
def test_schedule_validation_names_the_key(kwargs, match):
    base = dict(lr_max=0.1, epoch_warm=5, lr_warm=0.01, decay_rate=0.33, decay_stepsize=50)
    with pytest.raises(ValueError, match=match):
        LRSchedule(**{**base, **kwargs})


def test_warmup_step_lr_is_the_closed_form():
    assert warmup_step_lr(0, 1.0, 0, 0.5, 0.1, 2) == 1.0  # no warm-up
    assert warmup_step_lr(3, 1.0, 0, 0.5, 0.1, 2) == pytest.approx(0.1)


# --- losses ---------------------------------------------------------------------------------

def test_km_mse_matches_its_formula():
    gen = torch.Generator().manual_seed(0)
    out, labels = torch.randn(6, 5, dtype=D, generator=gen), torch.tensor([0, 4, 2, 2, 1, 3])
    k, M = 5.0, 3.0
    total = 0.0
    for n in range(6):
        for c in range(5):
            hot = float(labels[n] == c)
            total += (k * hot + 1) * (float(out[n, c]) - M * hot) ** 2
    assert float(km_mse_loss(out, labels, k, M)) == pytest.approx(total / 30, rel=1e-12)
    assert float(make_loss("mse_loss", (k, M))(out, labels)) == pytest.approx(total / 30, rel=1e-12)
    torch.testing.assert_close(make_loss("mse_loss")(out, labels), F.mse_loss(out, F.one_hot(labels, 5).to(D)))
    torch.testing.assert_close(make_loss("ce_loss")(out, labels), F.cross_entropy(out, labels))


def test_loss_errors():
    with pytest.raises(ValueError, match="loss_fn must be one of"):
        make_loss("l1_loss")
    with pytest.raises(ValueError, match="k_M applies to mse_loss"):
        make_loss("ce_loss", (5.0, 5.0))


# --- optimizers -----------------------------------------------------------------------------

def test_optimizers_are_train_py_settings_lars_ours_and_timm_lamb():
    from timm.optim import Lamb

    from dynamics.lars import LARS

    p = [torch.nn.Parameter(torch.ones(3))]
    sgd = make_optimizer("sgd", p, 0.1)
    assert isinstance(sgd, torch.optim.SGD)
    assert sgd.defaults["momentum"] == 0.9 and sgd.defaults["weight_decay"] == 1e-4
    lars = make_optimizer("lars", p, 2.0)
    assert isinstance(lars, LARS) and lars.defaults["momentum"] == 0.9 and lars.defaults["weight_decay"] == 1e-4
    assert lars.defaults["trust_coefficient"] == 1e-3  # flash's default, used by every original script
    lamb = make_optimizer("lamb", p, 0.01)
    assert isinstance(lamb, Lamb) and lamb.defaults["weight_decay"] == 0.0
    assert lamb.defaults["always_adapt"] and lamb.defaults["max_grad_norm"] is None
    adamw = make_optimizer("adamw", p, 1e-3)
    assert isinstance(adamw, torch.optim.AdamW) and adamw.defaults["weight_decay"] == 0.01
    assert make_optimizer("adamw", p, 1e-3, weight_decay=0.0).defaults["weight_decay"] == 0.0
    set_lr(sgd, 0.5)
    assert sgd.param_groups[0]["lr"] == 0.5
    with pytest.raises(ValueError, match="optimizer must be one of"):
        make_optimizer("adam", p, 0.1)


# --- LARS ------------------------------------------------------------------------------------

def _lars_reference(w, grads, lr, momentum, wd, eta=1e-3, eps=1e-8):
    """The LARS update written out per step (flash's formula with the ratio at every λ), float64 lists."""
    w, v, out = w.clone(), None, []
    for g in grads:
        wn, gn = float(w.norm()), float(g.norm())
        d = eta * wn / (gn + wd * wn + eps) * (g + wd * w) if wn > 0 and gn > 0 else g.clone()
        v = d.clone() if v is None else momentum * v + d
        w = w - lr * v
        out.append(w.clone())
    return out


def test_lars_step_norm_is_trust_ratio_scaled_at_zero_weight_decay():
    from dynamics.lars import LARS

    gen = torch.Generator().manual_seed(0)
    w0 = torch.randn(5, 3, dtype=D, generator=gen)
    g = 40.0 * torch.randn(5, 3, dtype=D, generator=gen)
    p = torch.nn.Parameter(w0.clone())
    opt = LARS([p], lr=0.5, momentum=0.9, weight_decay=0.0)
    p.grad = g.clone()
    opt.step()
    # first step: ‖Δw‖ = lr · η ‖w‖ / (‖g‖ + ε) · ‖g‖ = lr · η · ‖w‖ (up to ε/‖g‖ ~ 1e-10), not lr · ‖g‖
    want = 0.5 * 1e-3 * float(w0.norm()) * float(g.norm()) / (float(g.norm()) + 1e-8)
    assert math.isclose(float((p.detach() - w0).norm()), want, rel_tol=1e-12)


@pytest.mark.parametrize("wd", [0.0, 1e-4, 0.3])
def test_lars_matches_the_update_written_out_over_steps(wd):
    from dynamics.lars import LARS

    gen = torch.Generator().manual_seed(1)
    w0 = torch.randn(4, 6, dtype=D, generator=gen)
    grads = [torch.randn(4, 6, dtype=D, generator=gen) for _ in range(4)]
    p = torch.nn.Parameter(w0.clone())
    opt = LARS([p], lr=2.0, momentum=0.9, weight_decay=wd)
    for g, want in zip(grads, _lars_reference(w0, grads, 2.0, 0.9, wd)):
        p.grad = g.clone()
        opt.step()
        torch.testing.assert_close(p.detach(), want, rtol=1e-12, atol=1e-14)  # float64 round-off of O(1) entries


def test_lars_zero_weights_take_the_raw_gradient_step_and_timm_lars_differs_at_zero_decay():
    from timm.optim import Lars

    from dynamics.lars import LARS

    p = torch.nn.Parameter(torch.zeros(3, dtype=D))
    opt = LARS([p], lr=0.1, momentum=0.0, weight_decay=1e-4)
    p.grad = torch.tensor([1.0, -2.0, 0.5], dtype=D)
    opt.step()
    torch.testing.assert_close(p.detach(), -0.1 * torch.tensor([1.0, -2.0, 0.5], dtype=D), rtol=0, atol=1e-15)
    # why not timm: at weight_decay 0 its Lars is momentum SGD (no trust ratio)
    w0, g = torch.ones(3, dtype=D), torch.full((3,), 10.0, dtype=D)
    q = torch.nn.Parameter(w0.clone())
    timm_opt = Lars([q], lr=0.1, momentum=0.9, weight_decay=0.0)
    q.grad = g.clone()
    timm_opt.step()
    torch.testing.assert_close(q.detach(), w0 - 0.1 * g, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("kwargs, match", [(dict(lr=0.0), "lr must be a finite number > 0; got 0.0"),
                                           (dict(momentum=-1.0), "momentum"), (dict(weight_decay=-1.0), "weight_decay"),
                                           (dict(trust_coefficient=0.0), "trust_coefficient")])
def test_lars_rejects_bad_hyperparameters(kwargs, match):
    from dynamics.lars import LARS

    with pytest.raises(ValueError, match=match):
        LARS([torch.nn.Parameter(torch.ones(2))], **{"lr": 0.1, **kwargs})


@pytest.mark.parametrize("name, lr", [("sgd", 0.05), ("lars", 5.0), ("lamb", 0.01), ("adamw", 0.01)])
def test_each_optimizer_decreases_a_least_squares_loss(name, lr):
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 4, generator=gen), torch.randn(64, 2, generator=gen)
    lin = torch.nn.Linear(4, 2)
    opt = make_optimizer(name, lin.parameters(), lr)
    first = float(((lin(x) - y) ** 2).mean().detach())
    for _ in range(30):
        loss = ((lin(x) - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(((lin(x) - y) ** 2).mean().detach()) < first


def test_decay_groups_decay_conv_and_linear_weights_only():
    """train.py's separate_parameters: Linear / Conv2d weights decayed; biases, norms, gates, position tables not."""
    net = build_model("vit", InputShape(3, 8, 10), width=2, seed=0)
    decay, no_decay = decay_groups(net, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in net.named_parameters()}
    got = {names[id(p)] for p in decay["params"]}
    want = {n for n, m in net.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))
            for n in [f"{n}.weight"]}
    assert got == want and "head.weight" in got
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(net.parameters()))
