"""dynamics.basis: the conjugate-kernel basis, β_i, vmapped ∇β and the trajectory summaries.

References: a linear model whose basis has a closed form, dense float64 Jacobians (jacrev) for ∇β.
"""
import math

import numpy as np
import pytest
import torch
from torch.func import jacrev

from dynamics.basis import beta_gradients, conjugate_kernel_basis, nonnegative_increment_fraction, saturation_times
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
