"""Extreme eigenpairs of a symmetric operator from matrix-vector products alone.

* :func:`lanczos`: thick-restart Lanczos (Wu & Simon 2000) with full
  re-orthogonalisation. The projected matrix T = Vᵀ H V is formed from the
  Gram–Schmidt coefficients (so it is exact even after restarts), and a Ritz pair
  (θ, y = V s) has residual ‖H y − θ y‖ = |β_m s_m|, which is the stopping test.
* :func:`power_iteration`: PyHessian's method (Yao et al. 2020, ``hessian.eigenvalues``):
  one eigenvalue at a time, deflated by orthogonalising against the ones found,
  stopped when the Rayleigh quotient changes by less than ``tol`` relatively.

Both take ``matvec(v (P,)) -> H v (P,)``; :func:`hessian_matvec` makes one from a
flat loss (``dynamics.hessian``), so the cost of either is counted in HVPs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

Matvec = Callable[[Tensor], Tensor]
WHICH = ("LA", "SA", "LM")  # largest algebraic, smallest algebraic, largest magnitude


@dataclass(frozen=True)
class EigResult:
    """k eigenpairs found from matvecs.

    Attributes:
        eigenvalues: (k,) in the order of ``which`` (LA: descending, SA: ascending, LM: |λ| descending).
        eigenvectors: (P, k) orthonormal columns.
        residuals: (k,) ‖H v − λ v‖ (Lanczos: the exact Ritz residual; power iteration: NaN).
        num_matvecs: products H v used.
        converged: every pair met the tolerance.
        num_restarts: Lanczos restarts (0 for power iteration).
    """

    eigenvalues: Tensor
    eigenvectors: Tensor
    residuals: Tensor
    num_matvecs: int
    converged: bool
    num_restarts: int = 0


def hessian_matvec(loss_fn, w: Tensor, x: Tensor, y: Tensor) -> Matvec:
    """v -> H v for the mean loss ``loss_fn(w, x, y)`` at w (forward-over-reverse HVP)."""
    from dynamics.hessian import hvp

    return lambda v: hvp(loss_fn, w, v, x, y)


def _order(theta: Tensor, which: str) -> Tensor:
    if which == "LA":
        return torch.argsort(theta, descending=True)
    if which == "SA":
        return torch.argsort(theta)
    return torch.argsort(theta.abs(), descending=True)


def _check(dim: int, k: int, which: str) -> None:
    if which not in WHICH:
        raise ValueError(f"which must be one of {WHICH}; got {which!r}")
    if not 1 <= k <= dim:
        raise ValueError(f"k must be in [1, dim={dim}]; got {k}")


def _orthogonalise(w: Tensor, basis: Tensor) -> tuple[Tensor, Tensor]:
    """w minus its projection on the rows of ``basis``, twice (Kahan's 'twice is enough'); (w, coefficients)."""
    h = basis @ w
    w = w - basis.T @ h
    h2 = basis @ w
    return w - basis.T @ h2, h + h2


def _random_unit(dim: int, gen: torch.Generator | None, dtype, device, against: Tensor | None = None) -> Tensor:
    v = torch.randn(dim, generator=gen, dtype=dtype, device=device if gen is None else gen.device).to(device)
    if against is not None and against.shape[0] > 0:
        v, _ = _orthogonalise(v, against)
    return v / v.norm()


def lanczos(
    matvec: Matvec,
    dim: int,
    k: int,
    *,
    which: str = "LA",
    tol: float = 1e-6,
    max_basis: int | None = None,
    max_matvecs: int | None = None,
    v0: Tensor | None = None,
    gen: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
) -> EigResult:
    """k extreme eigenpairs of a symmetric operator by thick-restart Lanczos.

    Args:
        matvec: v (P,) -> H v (P,), H symmetric.
        dim: P.
        k: number of eigenpairs.
        which: 'LA', 'SA' or 'LM'.
        tol: stop when every wanted Ritz pair has ‖H y − θ y‖ <= tol · max(|θ|, ‖T‖·eps^(2/3)).
        max_basis: basis size m before a restart; None -> min(P, max(2k + 10, 20)).
        max_matvecs: budget of products; None -> 100·m.
        v0: start vector (P,); None -> Gaussian from ``gen``.
        gen: generator for the start vector and for new directions after a breakdown.
        dtype, device: of the basis (the matvec must accept and return it).

    Returns:
        EigResult (converged=False if the budget ran out first).
    """
    _check(dim, k, which)
    m = min(dim, max(2 * k + 10, 20)) if max_basis is None else max_basis
    if not k < m <= dim and not m == k == dim:
        raise ValueError(f"max_basis must be in ({k}, dim={dim}]; got {m}")
    if tol <= 0:
        raise ValueError(f"tol must be > 0; got {tol}")
    budget = 100 * m if max_matvecs is None else max_matvecs
    basis = torch.zeros(m + 1, dim, dtype=dtype, device=device)  # rows v_0 .. v_m
    t = torch.zeros(m, m, dtype=dtype, device=device)  # upper triangle of Vᵀ H V
    basis[0] = _random_unit(dim, gen, dtype, device) if v0 is None else v0.to(dtype) / v0.norm()
    start, matvecs, restarts = 0, 0, 0
    small = torch.finfo(dtype).eps ** (2 / 3)
    while True:
        for j in range(start, m):
            w, h = _orthogonalise(matvec(basis[j]).to(dtype), basis[:j + 1])
            matvecs += 1
            t[:j + 1, j] = h
            beta = float(w.norm())
            if beta <= dim * torch.finfo(dtype).eps * max(float(t[:j + 1, :j + 1].abs().max()), 1e-300):
                beta = 0.0  # invariant subspace: go on with a fresh orthogonal direction
                if j + 1 < dim:
                    basis[j + 1] = _random_unit(dim, gen, dtype, device, against=basis[:j + 1])
            else:
                basis[j + 1] = w / beta
            n = j + 1
            if n < k:
                continue
            # Rayleigh–Ritz on the current basis (an n x n eigh: negligible next to a matvec).
            sym = torch.triu(t[:n, :n]) + torch.triu(t[:n, :n], 1).T
            theta, s = torch.linalg.eigh(sym)
            order = _order(theta, which)
            want = order[:k]
            res = (beta * s[-1, want]).abs()
            floor = small * float(theta.abs().max())
            ok = n == dim or bool((res <= tol * torch.clamp(theta[want].abs(), min=floor)).all())
            if ok or matvecs >= budget:
                vecs = basis[:n].T @ s[:, want]  # (P, k)
                return EigResult(theta[want], vecs, res, matvecs, ok, restarts)
        # Thick restart: keep the best Ritz vectors and the residual direction v_m.
        keep = min(m - 1, k + (m - k) // 2)
        sel = order[:keep]
        basis[:keep] = (basis[:m].T @ s[:, sel]).T
        basis[keep] = basis[m]
        t.zero_()
        t[:keep, :keep] = torch.diag(theta[sel])
        start, restarts = keep, restarts + 1


def power_iteration(
    matvec: Matvec,
    dim: int,
    k: int,
    *,
    tol: float = 1e-3,
    max_iter: int = 100,
    gen: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
) -> EigResult:
    """Top-k eigenvalues (by magnitude) one at a time, as PyHessian computes them.

    For each i: v ~ N(0, I) normalised; repeat (at most ``max_iter`` times) v <- v
    orthonormalised against the eigenvectors found so far (deflation), θ' = vᵀ H v,
    v <- H v / ‖H v‖, and stop once |θ − θ'| / (|θ| + 1e-6) < tol, keeping θ (PyHessian
    keeps the previous estimate).

    Returns:
        EigResult in the order found; converged is False if some eigenvalue hit max_iter.
    """
    _check(dim, k, "LM")
    vals, vecs, matvecs, converged = [], [], 0, True
    for _ in range(k):
        found = torch.stack(vecs) if vecs else torch.zeros(0, dim, dtype=dtype, device=device)
        v = _random_unit(dim, gen, dtype, device)
        theta, done = None, False
        for _ in range(max_iter):
            v, _ = _orthogonalise(v, found)
            v = v / v.norm()
            hv = matvec(v).to(dtype)
            matvecs += 1
            new = float(hv @ v)
            v = hv / hv.norm()
            if theta is not None and abs(theta - new) / (abs(theta) + 1e-6) < tol:
                done = True
                break
            theta = new
        converged &= done
        v, _ = _orthogonalise(v, found)
        vals.append(theta)
        vecs.append(v / v.norm())
    nan = torch.full((k,), math.nan, dtype=dtype, device=device)
    return EigResult(torch.tensor(vals, dtype=dtype, device=device), torch.stack(vecs, dim=1), nan, matvecs, converged)


def lanczos_tridiagonal(matvec: Matvec, v0: Tensor, num_steps: int) -> Tensor:
    """The m x m Lanczos matrix T = Vᵀ H V of the Krylov space of v0 (full re-orthogonalisation).

    Stops early (smaller T) when the Krylov space is invariant. Used by stochastic
    Lanczos quadrature: with T = S diag(θ) Sᵀ, Σ_j S[0, j]² θ_j^p = v0ᵀ H^p v0 / ‖v0‖²
    for every p <= 2m − 1.
    """
    dim = v0.numel()
    m = min(num_steps, dim)
    basis = torch.zeros(m, dim, dtype=v0.dtype, device=v0.device)
    t = torch.zeros(m, m, dtype=v0.dtype, device=v0.device)
    basis[0] = v0 / v0.norm()
    for j in range(m):
        w, h = _orthogonalise(matvec(basis[j]).to(v0.dtype), basis[:j + 1])
        t[:j + 1, j] = h
        beta = float(w.norm())
        if j + 1 == m:
            break
        if beta <= dim * torch.finfo(v0.dtype).eps * max(float(t[:j + 1, :j + 1].abs().max()), 1e-300):
            m = j + 1
            break
        basis[j + 1] = w / beta
    return torch.triu(t[:m, :m]) + torch.triu(t[:m, :m], 1).T
