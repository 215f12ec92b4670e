"""The Hessian toolkit against dense float64 references, closed forms and each other."""
import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import grad

from dynamics.hessian import (
    SymEig,
    batched_hvp,
    check_dense_hessian_size,
    dense_eigh,
    dense_hessian,
    hutchinson_trace,
    hvp,
    mlp_hessian,
    mlp_hessian_eigh,
    warn_if_stochastic_layers,
)
from dynamics.lanczos import hessian_matvec, lanczos, lanczos_tridiagonal, power_iteration
from dynamics.mlp_hessian import mlp_params_from_flat
from dynamics.spectral import hutchpp_trace, slq_density
from llc.estimate import flat_loss_for_module, flat_model_for_module
from models.chaos_nets import build_model

F64 = torch.float64


def cross_entropy(z, y):
    # Written out: differentiated twice by forward-over-reverse.
    return (torch.logsumexp(z, dim=1) - z.gather(1, y[:, None])[:, 0]).mean()


def mlp_case(sizes=(6, 5, 4, 3), n=7, seed=0, activation="relu", bias=True, loss="cross_entropy"):
    """A random MLP, flat loss and batch in float64."""
    gen = torch.Generator().manual_seed(seed)
    p = sum(o * i + (o if bias else 0) for i, o in zip(sizes[:-1], sizes[1:]))
    w = torch.randn(p, generator=gen, dtype=F64) * 0.7
    x = torch.randn(n, sizes[0], generator=gen, dtype=F64)
    if loss == "cross_entropy":
        y = torch.randint(0, sizes[-1], (n,), generator=gen)
    else:
        y = torch.randn(n, sizes[-1], generator=gen, dtype=F64)

    def f(w, x):
        ws, bs = mlp_params_from_flat(w, sizes, bias)
        a = x
        for i, (wi, bi) in enumerate(zip(ws, bs)):
            a = a @ wi.T + (bi if bi is not None else 0)
            if i < len(ws) - 1 and activation == "relu":
                a = torch.relu(a)
        return a

    def loss_fn(w, x, y):
        z = f(w, x)
        return cross_entropy(z, y) if loss == "cross_entropy" else ((z - y) ** 2).mean()

    return loss_fn, w, x, y, sizes


def reference_hessian(loss_fn, w, x, y):
    return torch.autograd.functional.hessian(lambda u: loss_fn(u, x, y), w)


# ----------------------------------------------------------------------------- HVP and dense Hessian

def test_dense_hessian_matches_autograd_and_finite_differences():
    loss, w, x, y, _ = mlp_case()
    h = dense_hessian(loss, w, x, y, chunk_size=16)
    ref = reference_hessian(loss, w, x, y)
    torch.testing.assert_close(h, ref, rtol=1e-10, atol=1e-12)
    # Central differences of the gradient along a few basis vectors.
    g = grad(loss)
    step = 1e-6
    for p in (0, 7, w.numel() - 1):
        e = torch.zeros_like(w)
        e[p] = step
        fd = (g(w + e, x, y) - g(w - e, x, y)) / (2 * step)
        torch.testing.assert_close(fd, h[p], rtol=1e-5, atol=1e-7)


def test_hvp_and_batched_hvp_match_dense():
    loss, w, x, y, _ = mlp_case()
    h = reference_hessian(loss, w, x, y)
    vs = torch.randn(5, w.numel(), dtype=F64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(hvp(loss, w, vs[0], x, y), h @ vs[0])
    # Chunked over the data: exact for a mean loss.
    torch.testing.assert_close(batched_hvp(loss, w, vs, x, y, eval_batch_size=3), vs @ h)


def test_linear_regression_hessian_closed_form():
    # L = mean_n (x_nᵀw + b − y_n)² -> H = (2/N) [x, 1]ᵀ [x, 1].
    loss, w, x, y, sizes = mlp_case(sizes=(4, 1), n=9, loss="mse")
    xa = torch.cat([x, torch.ones(9, 1, dtype=F64)], dim=1)
    expected = 2 * xa.T @ xa / 9
    torch.testing.assert_close(dense_hessian(loss, w, x, y), expected)
    ws, bs = mlp_params_from_flat(w, sizes)
    torch.testing.assert_close(mlp_hessian(ws, bs, x, y, loss="mse"), expected)


def test_hvp_through_torch_mse_loss_matches_the_closed_form():
    """F.mse_loss breaks forward-over-reverse in PyTorch (#123996); hvp falls back and stays exact.

    Linear regression through a flat loss using F.mse_loss, and the fused Linear-stack loss
    built from F.mse_loss: H = (2/(N·out)) [x, 1]ᵀ[x, 1] per output, from the closed form.
    """
    x = torch.randn(9, 4, generator=torch.Generator().manual_seed(3), dtype=F64)
    y = torch.randn(9, 1, generator=torch.Generator().manual_seed(4), dtype=F64)
    xa = torch.cat([x, torch.ones(9, 1, dtype=F64)], dim=1)
    expected = 2 * xa.T @ xa / 9  # (5, 5), rows ordered (w_1..w_4, b)

    def flat(w, xb, yb):
        return torch.nn.functional.mse_loss(xb @ w[:4].unsqueeze(1) + w[4], yb)

    w = torch.randn(5, dtype=F64)
    v = torch.randn(5, dtype=F64)
    torch.testing.assert_close(hvp(flat, w, v, x, y), expected @ v)
    torch.testing.assert_close(dense_hessian(flat, w, x, y), expected)
    net = nn.Sequential(nn.Linear(4, 1)).to(F64)
    fused, w0 = flat_loss_for_module(net, torch.nn.functional.mse_loss, F64, torch.device("cpu"))
    assert fused.path == "fused"
    torch.testing.assert_close(dense_hessian(fused, w0, x, y), expected)  # w0 = (weight, bias): the same order


@pytest.mark.parametrize("sizes,bias,activation,loss", [
    ((6, 5, 4, 3), True, "relu", "cross_entropy"),
    ((6, 5, 4, 3), False, "relu", "cross_entropy"),
    ((5, 4, 3, 4, 2), True, "relu", "mse"),
    ((6, 5, 3), True, "linear", "cross_entropy"),
])
def test_structured_mlp_hessian_matches_dense_reference(sizes, bias, activation, loss):
    loss_fn, w, x, y, _ = mlp_case(sizes=sizes, bias=bias, activation=activation, loss=loss)
    ref = reference_hessian(loss_fn, w, x, y)
    ws, bs = mlp_params_from_flat(w, sizes, bias)
    h = mlp_hessian(ws, bs, x, y, activation, loss)
    torch.testing.assert_close(h, ref, rtol=1e-10, atol=1e-12)
    out = torch.full_like(h, float("nan"))
    assert mlp_hessian(ws, bs, x, y, activation, loss, out=out) is out
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    # The range-restricted eigendecomposition reproduces H (dense fallback on these tiny nets).
    eig = mlp_hessian_eigh(ws, bs, x, y, activation, loss)
    torch.testing.assert_close(eig.matmul(torch.eye(h.shape[0], dtype=F64)), ref, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_eigh_in_the_input_span_matches_dense_reference(loss):
    # n = 3 < d_0 = 6: the first layer is reduced to the inputs' span (P' = 5·3 + 20 + 15 = 50 of 65).
    loss_fn, w, x, y, sizes = mlp_case(sizes=(6, 5, 3), n=3, loss=loss, seed=4)
    ref = reference_hessian(loss_fn, w, x, y)
    ws, bs = mlp_params_from_flat(w, sizes)
    eig = mlp_hessian_eigh(ws, bs, x, y, "relu", loss)
    assert eig.rank_bound == 5 * 3 + 5 + 3 * 5 + 3
    torch.testing.assert_close(eig.matmul(torch.eye(w.numel(), dtype=F64)), ref, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(torch.sort(eig.all_eigenvalues()).values, torch.linalg.eigvalsh(ref),
                               rtol=1e-9, atol=1e-11)


def test_low_rank_eigh_of_the_usps_mlp_is_exact():
    # 256-20-10 at batch 8 (5,350 parameters): the range has dimension far below P.
    gen = torch.Generator().manual_seed(3)
    sizes = (256, 20, 10)
    p = 256 * 20 + 20 + 20 * 10 + 10
    w = torch.randn(p, generator=gen, dtype=F64) * 0.1
    x = torch.randn(8, 256, generator=gen, dtype=F64)
    y = torch.randint(0, 10, (8,), generator=gen)
    ws, bs = mlp_params_from_flat(w, sizes)
    eig = mlp_hessian_eigh(ws, bs, x, y)
    assert eig.dim == p and eig.rank_bound == 20 * 8 + 20 + 200 + 10  # W_0 restricted to the 8 inputs' span
    u = eig.eigenvectors
    torch.testing.assert_close(u.T @ u, torch.eye(u.shape[1], dtype=F64), atol=1e-10, rtol=0)
    h = mlp_hessian(ws, bs, x, y)
    torch.testing.assert_close(h @ u, u * eig.eigenvalues, atol=1e-11, rtol=0)
    # H vanishes on the complement of U, and one HVP agrees with both.
    v = torch.randn(p, generator=gen, dtype=F64)
    v_perp = v - u @ (u.T @ v)
    assert (h @ v_perp).abs().max() < 1e-11
    net = build_model("mlp", (1, 16, 16), 10, torch.Generator().manual_seed(0)).double()
    f, _ = flat_model_for_module(net, F64, torch.device("cpu"))
    hv = hvp(lambda u_, xb, yb: cross_entropy(f(u_, xb), yb), w, v, x.view(8, 1, 16, 16), y)
    torch.testing.assert_close(hv, h @ v, atol=1e-11, rtol=0)
    counts = eig.counts()
    assert counts["num_neg"] > 0 and counts["num_pos"] > 0
    assert sum(counts.values()) == p
    assert eig.all_eigenvalues().numel() == p


def test_dense_eigh_shift_and_counts():
    a = torch.diag(torch.tensor([-2.0, 0.0, 0.0, 1e-20, 3.0], dtype=F64))
    plain, shifted = dense_eigh(a), dense_eigh(a, eps_eigh=0.5)
    torch.testing.assert_close(plain.eigenvalues, shifted.eigenvalues)
    assert plain.counts() == {"num_pos": 1, "num_neg": 1, "num_zero": 3}
    with pytest.raises(ValueError, match="square"):
        dense_eigh(torch.zeros(3, 4))
    low = SymEig(torch.tensor([-1.0, 2.0], dtype=F64), torch.eye(4, dtype=F64)[:, :2], 4)
    torch.testing.assert_close(low.all_eigenvalues(), torch.tensor([-1.0, 0.0, 0.0, 2.0], dtype=F64))


def test_eps_eigh_all_entries_is_the_originals_hessian_plus_eps():
    # The original's code: eigh(hessian + eps_eigh), a scalar added to every entry, no shift back.
    gen = torch.Generator().manual_seed(5)
    b = torch.randn(6, 6, generator=gen, dtype=F64)
    h = b + b.T
    eps = 0.3
    ref = torch.linalg.eigvalsh(h + eps * torch.ones(6, 6, dtype=F64))  # written out independently
    orig = dense_eigh(h, eps_eigh=eps, mode="all_entries")
    torch.testing.assert_close(orig.eigenvalues, ref, rtol=1e-12, atol=1e-12)  # O(eps_64 · ‖H‖) eigh round-off
    # The default (identity, shifted back) keeps the eigenvalues of H itself.
    torch.testing.assert_close(dense_eigh(h, eps_eigh=eps).eigenvalues, torch.linalg.eigvalsh(h),
                               rtol=1e-12, atol=1e-12)
    assert (orig.eigenvalues - torch.linalg.eigvalsh(h)).abs().max() > 0.05  # the two modes differ here
    with pytest.raises(ValueError, match="eps_eigh_mode"):
        dense_eigh(h, eps_eigh=eps, mode="diag")


def test_eps_eigh_all_entries_on_the_structured_mlp_matches_the_dense_shift():
    # Range-only route (n = 3 < d_0): the rank-one update in span(U, 1) equals eigh of the full H + eps·11ᵀ.
    loss_fn, w, x, y, sizes = mlp_case(sizes=(6, 5, 3), n=3, seed=4)
    ws, bs = mlp_params_from_flat(w, sizes)
    eps = 0.05
    full = reference_hessian(loss_fn, w, x, y) + eps * torch.ones(w.numel(), w.numel(), dtype=F64)
    eig = mlp_hessian_eigh(ws, bs, x, y, eps_eigh=eps, eps_eigh_mode="all_entries")
    assert eig.rank_bound == 5 * 3 + 5 + 3 * 5 + 3 + 1  # the range plus the part of 1 outside it
    torch.testing.assert_close(eig.matmul(torch.eye(w.numel(), dtype=F64)), full, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(eig.all_eigenvalues(), torch.linalg.eigvalsh(full), rtol=1e-9, atol=1e-11)


def test_hessian_modules_import_without_a_cycle():
    # dynamics.mlp_hessian must not import dynamics.hessian (which re-exports it), not even lazily in
    # mlp_hessian_eigh: load and use it alone in a fresh interpreter.
    import subprocess
    import sys
    code = ("import sys, torch; from dynamics.mlp_hessian import mlp_hessian_eigh; "
            "e = mlp_hessian_eigh([torch.ones(2, 3, dtype=torch.float64), torch.ones(2, 2, dtype=torch.float64)], "
            "[None, None], torch.ones(1, 3, dtype=torch.float64), torch.tensor([0])); "
            "assert 'dynamics.hessian' not in sys.modules, 'cycle'; import dynamics.hessian")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_too_large_dense_hessian_is_refused_with_size_and_memory():
    with pytest.raises(ValueError, match=r"1,000,000 parameters needs about 22351\.7 GiB"):
        check_dense_hessian_size(1_000_000, F64, 8 * 2**30, key="model")
    check_dense_hessian_size(5350, F64, 8 * 2**30)


def test_batchnorm_in_train_mode_warns():
    net = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    with pytest.warns(UserWarning, match="BatchNorm1d.*train mode"):
        warn_if_stochastic_layers(net)
    net.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_stochastic_layers(net)


# ----------------------------------------------------------------------------- eigenpairs

@pytest.fixture(scope="module")
def small_hessian():
    loss, w, x, y, _ = mlp_case(sizes=(8, 6, 5), n=20, seed=2)
    h = reference_hessian(loss, w, x, y)
    evals = torch.linalg.eigvalsh(h)
    return loss, w, x, y, h, evals


@pytest.mark.parametrize("which", ["LA", "SA", "LM"])
def test_lanczos_matches_dense_eigh(small_hessian, which):
    loss, w, x, y, h, evals = small_hessian
    k = 4
    # HVPs through the loss for one case; the dense reference matrix for the others (same operator, faster).
    mv = hessian_matvec(loss, w, x, y) if which == "LA" else (lambda v: h @ v)
    res = lanczos(mv, w.numel(), k, which=which, tol=1e-10, gen=torch.Generator().manual_seed(0))
    expected = {"LA": evals.flip(0), "SA": evals, "LM": evals[evals.abs().argsort(descending=True)]}[which][:k]
    assert res.converged
    torch.testing.assert_close(res.eigenvalues, expected, rtol=1e-8, atol=1e-10)
    v = res.eigenvectors
    torch.testing.assert_close(v.T @ v, torch.eye(k, dtype=F64), atol=1e-8, rtol=0)
    assert (h @ v - v * res.eigenvalues).norm(dim=0).max() < 1e-8 * evals.abs().max()
    torch.testing.assert_close(res.residuals, (h @ v - v * res.eigenvalues).norm(dim=0), atol=1e-8, rtol=0)


def test_lanczos_restarts_and_budget():
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(200, 200, generator=gen, dtype=F64))
    evals = 10 * torch.linspace(0, 1, 200, dtype=F64) ** 3  # top gaps ~1.5%: restarts with a small basis
    a = q @ torch.diag(evals) @ q.T
    res = lanczos(lambda v: a @ v, 200, 3, max_basis=10, tol=1e-9, gen=gen)
    assert res.converged and res.num_restarts > 0
    torch.testing.assert_close(res.eigenvalues, evals.flip(0)[:3], rtol=1e-8, atol=1e-9)
    short = lanczos(lambda v: a @ v, 200, 3, max_basis=10, max_matvecs=12, gen=gen)
    assert not short.converged and short.num_matvecs <= 13
    with pytest.raises(ValueError, match="which"):
        lanczos(lambda v: v, 5, 1, which="BE")
    with pytest.raises(ValueError, match="k must be"):
        lanczos(lambda v: v, 5, 6)


def test_lanczos_on_a_low_rank_operator_returns_exact_zeros():
    gen = torch.Generator().manual_seed(1)
    q, _ = torch.linalg.qr(torch.randn(60, 3, generator=gen, dtype=F64))
    a = q @ torch.diag(torch.tensor([5.0, -3.0, 2.0], dtype=F64)) @ q.T
    res = lanczos(lambda v: a @ v, 60, 4, which="LM", tol=1e-10, gen=gen)
    torch.testing.assert_close(res.eigenvalues[:3], torch.tensor([5.0, -3.0, 2.0], dtype=F64))
    assert abs(float(res.eigenvalues[3])) < 1e-12


def test_power_iteration_finds_the_dominant_eigenvalues_with_deflation():
    # A clear spectral gap, as PyHessian assumes.
    gen = torch.Generator().manual_seed(2)
    q, _ = torch.linalg.qr(torch.randn(50, 50, generator=gen, dtype=F64))
    lam = torch.cat([torch.tensor([10.0, -6.0, 3.0], dtype=F64), torch.linspace(-0.5, 0.5, 47, dtype=F64)])
    a = q @ torch.diag(lam) @ q.T
    res = power_iteration(lambda v: a @ v, 50, 3, tol=1e-8, max_iter=500, gen=gen)
    assert res.converged
    torch.testing.assert_close(res.eigenvalues, torch.tensor([10.0, -6.0, 3.0], dtype=F64), rtol=1e-5, atol=0)
    capped = power_iteration(lambda v: a @ v, 50, 1, tol=1e-14, max_iter=3, gen=gen)
    assert not capped.converged and capped.num_matvecs == 3


# ----------------------------------------------------------------------------- trace and density

def test_hutchpp_is_exact_on_low_rank_and_beats_hutchinson(small_hessian):
    gen = torch.Generator().manual_seed(5)
    q, _ = torch.linalg.qr(torch.randn(100, 5, generator=gen, dtype=F64))
    a = q @ torch.diag(torch.tensor([4.0, -2.0, 1.0, 7.0, 0.5], dtype=F64)) @ q.T
    assert hutchpp_trace(lambda vs: vs @ a, 100, 15, gen) == pytest.approx(10.5, abs=1e-10)
    loss, w, x, y, h, evals = small_hessian
    true, p = float(evals.sum()), w.numel()
    mv = lambda vs: batched_hvp(loss, w, vs, x, y)  # noqa: E731
    assert hutchpp_trace(mv, p, 30, torch.Generator().manual_seed(0)) == pytest.approx(
        hutchpp_trace(lambda vs: vs @ h, p, 30, torch.Generator().manual_seed(0)), rel=1e-10)
    # Same 30 products: Hutch++ has the smaller mean error (dense operator for speed).
    errs_pp, errs_h = [], []
    for s in range(40):
        errs_pp.append(abs(hutchpp_trace(lambda vs: vs @ h, p, 30, torch.Generator().manual_seed(s)) - true))
        r = torch.randint(0, 2, (30, p), generator=torch.Generator().manual_seed(100 + s)).to(F64) * 2 - 1
        errs_h.append(abs(float(((r @ h) * r).sum(1).mean()) - true))
    assert np.mean(errs_pp) < np.mean(errs_h)
    with pytest.raises(ValueError, match="num_matvecs"):
        hutchpp_trace(mv, p, 2, gen)


def test_hutchinson_within_3p5_sigma(small_hessian):
    loss, w, x, y, h, evals = small_hessian
    est, sem = hutchinson_trace(loss, w, x, y, 64, torch.Generator().manual_seed(0), probes_per_batch=64)
    assert abs(est - float(evals.sum())) < 3.5 * sem


def test_slq_quadrature_is_exact_for_low_moments(small_hessian):
    loss, w, x, y, h, evals = small_hessian
    v = torch.randn(w.numel(), dtype=F64, generator=torch.Generator().manual_seed(0))
    m = 6
    t = lanczos_tridiagonal(hessian_matvec(loss, w, x, y), v, m)
    theta, s = torch.linalg.eigh(t)
    u = v / v.norm()
    for p in range(2 * m):  # Gauss quadrature: exact up to degree 2m - 1
        quad = float((s[0] ** 2 * theta**p).sum())
        exact = float(u @ torch.linalg.matrix_power(h, p) @ u)
        assert quad == pytest.approx(exact, rel=1e-8, abs=1e-10)
    # Distinct eigenvalues and m = P: every probe's nodes are the eigenvalues.
    lam = torch.linspace(-1.0, 3.0, 40, dtype=F64)
    q, _ = torch.linalg.qr(torch.randn(40, 40, dtype=F64, generator=torch.Generator().manual_seed(2)))
    a = q @ torch.diag(lam) @ q.T
    full = slq_density(lambda z: a @ z, 40, num_probes=3, num_steps=40, gen=torch.Generator().manual_seed(1))
    np.testing.assert_allclose(np.sort(full.nodes[1]), lam.numpy(), atol=1e-8)
    # Moments average to tr(H^p)/P within 3.5σ of the Rademacher probes.
    num_probes = 30
    dens = slq_density(lambda z: h @ z, w.numel(), num_probes, 10, gen=torch.Generator().manual_seed(1))
    assert dens.moment(0) == pytest.approx(1.0)
    off_diag = float((h**2).sum() - (torch.diagonal(h) ** 2).sum())
    sd = math.sqrt(2 * off_diag) / w.numel() / math.sqrt(num_probes)  # Var vᵀHv = 2 Σ_{i≠j} H_ij²
    assert abs(dens.moment(1) - float(evals.mean())) < 3.5 * sd
    grid = np.linspace(float(evals.min()) - 1, float(evals.max()) + 1, 4001)
    assert np.trapezoid(dens.on_grid(grid, 0.05), grid) == pytest.approx(1.0, abs=1e-3)
