"""Symmetric eigendecompositions, possibly truncated to the range, and the ``eps_eigh`` shift.

Shared by the dense route (``dynamics.hessian``) and the layer-structured MLP route
(``dynamics.mlp_hessian``), which both import it; neither imports the other at load time.

``eps_eigh`` (docs/notes/chaos.md#hessian) stabilises eigh by a shift of the matrix:

* ``identity`` (default): eigh of H + eps·I, eigenvalues shifted back by eps; the
  eigenpairs are those of H (the original's documented intent, "A + eps_eigh * I").
* ``all_entries`` (the original's code, ``hessian + self.eps_eigh``): eigh of
  H + eps·11ᵀ, eps added to every entry, not shifted back. That is a rank-one change
  of H: it moves the eigenpairs overlapping the all-ones direction.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from core import checks

EPS_EIGH_MODES = ("identity", "all_entries")


@dataclass(frozen=True)
class SymEig:
    """Eigendecomposition of a symmetric P x P matrix, possibly truncated to its range.

    H = U diag(λ) Uᵀ exactly, where U (P, r) has orthonormal columns; every eigenvalue
    of the (P − r)-dimensional complement of U is exactly 0 (r = P for dense
    decompositions).

    Attributes:
        eigenvalues: (r,) ascending.
        eigenvectors: (P, r), column i belongs to eigenvalues[i].
        dim: P.
    """

    eigenvalues: Tensor
    eigenvectors: Tensor
    dim: int

    @property
    def rank_bound(self) -> int:
        return self.eigenvalues.numel()

    def matmul(self, y: Tensor) -> Tensor:
        """H y for y (P,) or (P, K)."""
        u = self.eigenvectors
        coef = u.T @ y
        return u @ (self.eigenvalues.reshape(-1, *([1] * (y.ndim - 1))) * coef)

    def zero_threshold(self, rtol: float | None = None) -> float:
        """|λ| at or below which an eigenvalue counts as 0: rtol · max|λ|, rtol = P · eps by default."""
        if self.eigenvalues.numel() == 0:
            return 0.0
        if rtol is None:
            rtol = self.dim * torch.finfo(self.eigenvalues.dtype).eps
        return float(rtol * self.eigenvalues.abs().max())

    def all_eigenvalues(self) -> Tensor:
        """All P eigenvalues, ascending (the implicit zeros included)."""
        zeros = self.eigenvalues.new_zeros(self.dim - self.rank_bound)
        return torch.sort(torch.cat([self.eigenvalues, zeros])).values

    def counts(self, rtol: float | None = None) -> dict[str, int]:
        """Numbers of positive, negative and zero eigenvalues (|λ| <= zero_threshold is zero)."""
        thr = self.zero_threshold(rtol)
        pos = int((self.eigenvalues > thr).sum())
        neg = int((self.eigenvalues < -thr).sum())
        return {"num_pos": pos, "num_neg": neg, "num_zero": self.dim - pos - neg}


def _check_eps(eps_eigh: float, mode: str) -> None:
    checks.one_of("eps_eigh_mode", mode, EPS_EIGH_MODES)
    checks.number("eps_eigh", eps_eigh, lo=0)


def dense_eigh(h: Tensor, eps_eigh: float = 0.0, mode: str = "identity") -> SymEig:
    """Full eigendecomposition of a symmetric (P, P) matrix.

    Args:
        h: the matrix (symmetrised here).
        eps_eigh: if > 0, decompose h + eps_eigh·I and subtract eps_eigh from the
            eigenvalues again (``identity``), or decompose h + eps_eigh·11ᵀ as it is
            (``all_entries``, the original's code).
        mode: 'identity' | 'all_entries'.
    """
    if h.ndim != 2 or h.shape[0] != h.shape[1]:
        raise ValueError(f"h must be a square matrix (P, P); got shape {tuple(h.shape)}")
    _check_eps(eps_eigh, mode)
    sym = 0.5 * (h + h.T)
    if eps_eigh > 0 and mode == "all_entries":
        return SymEig(*torch.linalg.eigh(sym + eps_eigh), h.shape[0])
    if eps_eigh > 0:
        sym = sym + eps_eigh * torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    evals, evecs = torch.linalg.eigh(sym)
    return SymEig(evals - eps_eigh, evecs, h.shape[0])


def add_to_all_entries(eig: SymEig, eps: float) -> SymEig:
    """The eigendecomposition of U diag(λ) Uᵀ + eps·11ᵀ from that of a range-only H = U diag(λ) Uᵀ.

    The sum lives in span(U, 1), at most r + 1 dimensions: with Q (P, r') an orthonormal
    basis of it, eigh of the small Qᵀ(H + eps·11ᵀ)Q gives every eigenpair outside the
    exact zeros. This is the original's ``all_entries`` shift without forming P x P.
    """
    _check_eps(eps, "all_entries")
    if eps == 0:
        return eig
    u, lam = eig.eigenvectors, eig.eigenvalues
    ones = torch.ones(eig.dim, 1, dtype=u.dtype, device=u.device)
    resid = ones - u @ (u.T @ ones)  # (P, 1), the part of 1 outside span(U)
    if float(resid.norm()) > math.sqrt(eig.dim) * eig.dim * torch.finfo(u.dtype).eps:
        q = torch.cat([u, resid / resid.norm()], dim=1)  # (P, r + 1)
        lam = torch.cat([lam, lam.new_zeros(1)])
    else:
        q = u
    c = q.T @ ones  # (r', 1)
    small = torch.diag(lam) + eps * (c @ c.T)
    evals, evecs = torch.linalg.eigh(0.5 * (small + small.T))
    return SymEig(evals, q @ evecs, eig.dim)
