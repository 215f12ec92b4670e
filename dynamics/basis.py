"""Conjugate-kernel basis of a trained network and its coefficients β_i(θ_t).

Ma, Guo & Fattahi (2022), "Behind the Scenes of Gradient Descent: A Trajectory
Analysis via Basis Function Decomposition"; docs/basis_decomposition.md. Given the final
network's penultimate features Φ (N, p) on N evaluation points and its bias-free
head W (C, p):

    Φ = U S Vᵀ           thin SVD: U (N, r), S (r,), V (p, r), r = min(N, p)
    B = W V S / √N       (C, r)
    B = u s vᵀ           thin SVD: u (C, k), s (k,), v (r, k), k = min(C, r)

The basis functions are the (N, C) matrices φ_i = √N · U v_i u_iᵀ, orthonormal
for ⟨A, B⟩_N = tr(AᵀB) / N. The coefficient of any output matrix F (N, C), such
as the network's outputs on the evaluation points at time t, is

    β_i(F) = ⟨Fᵀ U / √N, u_i v_iᵀ⟩ = u_iᵀ Fᵀ U v_i / √N = ⟨F, φ_i⟩_N,

and the coefficient matrix β_ij(F) = u_iᵀ Fᵀ U v_j / √N has β_i on its diagonal
(small_init reads it at θ_0). At the final network F = Φ Wᵀ, so Fᵀ U / √N = B:
β_i = s_i exactly and F = Σ_i s_i φ_i.

Because ∂β_i/∂F = U v_i u_iᵀ / √N does not depend on θ, ∇_θ β_i = J(θ)ᵀ vec(∂β_i/∂F)
is one vector-Jacobian product; :func:`beta_gradients` vmaps it over i.
All basis tensors are float64.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.func import vjp, vmap

from core import checks
from core.types import FlatModel


@dataclass(frozen=True)
class ConjugateKernelBasis:
    """The basis u_i v_iᵀ (in class × kernel-eigenvector space) built from Φ and W.

    Attributes:
        U: (N, r) left singular vectors of Φ.
        S: (r,) singular values of Φ, descending.
        V: (p, r) right singular vectors of Φ.
        u: (C, k) left singular vectors of B = W V S / √N.
        s: (k,) singular values of B, descending: the final coefficients β_i(θ_T).
        v: (r, k) right singular vectors of B.
        feature_rank: numerical rank of Φ (singular values above max(N, p)·eps·S_max).
    """

    U: Tensor
    S: Tensor
    V: Tensor
    u: Tensor
    s: Tensor
    v: Tensor
    feature_rank: int

    @property
    def num_points(self) -> int:
        return self.U.shape[0]

    @property
    def num_classes(self) -> int:
        return self.u.shape[0]

    @property
    def size(self) -> int:
        """k = min(C, r), the number of basis functions."""
        return self.s.shape[0]

    def _outputs(self, F: Tensor) -> Tensor:
        n, c = self.num_points, self.num_classes
        if F.ndim < 2 or tuple(F.shape[-2:]) != (n, c):
            raise ValueError(f"F must have shape (..., N, C) = (..., {n}, {c}); got {tuple(F.shape)}")
        return F.to(device=self.U.device, dtype=self.U.dtype)

    def kernel_projection(self, F: Tensor) -> Tensor:
        """Fᵀ U / √N: (..., N, C) -> (..., C, r)."""
        return torch.einsum("...nc,nr->...cr", self._outputs(F), self.U) / math.sqrt(self.num_points)

    def coefficient_matrix(self, F: Tensor) -> Tensor:
        """β_ij(F) = u_iᵀ Fᵀ U v_j / √N: (..., N, C) -> (..., k, k)."""
        return self.u.T @ self.kernel_projection(F) @ self.v

    def coefficients(self, F: Tensor) -> Tensor:
        """β_i(F) = u_iᵀ Fᵀ U v_i / √N: (..., N, C) -> (..., k)."""
        return torch.einsum("ci,...cr,ri->...i", self.u, self.kernel_projection(F), self.v)

    def basis_functions(self, num: int | None = None) -> Tensor:
        """φ_i = √N · U v_i u_iᵀ for i < num (default k): (num, N, C)."""
        num = self._num(num)
        Uv = self.U @ self.v[:, :num]  # (N, num)
        return math.sqrt(self.num_points) * torch.einsum("ni,ci->inc", Uv, self.u[:, :num])

    def cotangents(self, num: int | None = None) -> Tensor:
        """∂β_i/∂F = U v_i u_iᵀ / √N = φ_i / N for i < num: (num, N, C)."""
        return self.basis_functions(num) / self.num_points

    def reconstruct(self, beta: Tensor) -> Tensor:
        """Σ_i β_i φ_i for the first len(beta) coefficients: (..., m) -> (..., N, C)."""
        beta = beta.to(device=self.U.device, dtype=self.U.dtype)
        return torch.einsum("...i,inc->...nc", beta, self.basis_functions(beta.shape[-1]))

    def residual(self, F: Tensor, num: int | None = None) -> Tensor:
        """The part of F outside the top-``num`` basis: F − Σ_{i<num} β_i(F) φ_i, (..., N, C)."""
        num = self._num(num)
        F = self._outputs(F)
        return F - self.reconstruct(self.coefficients(F)[..., :num])

    def relative_residual(self, F: Tensor, num: int | None = None) -> Tensor:
        """‖residual(F, num)‖_F / ‖F‖_F: (..., N, C) -> (...)."""
        res = self.residual(F, num)
        return torch.linalg.vector_norm(res, dim=(-2, -1)) / torch.linalg.vector_norm(self._outputs(F), dim=(-2, -1))

    def _num(self, num: int | None) -> int:
        if num is None:
            return self.size
        return checks.integer("num", num, lo=1, hi=self.size, why=f"the basis has k = {self.size} functions")


def conjugate_kernel_basis(phi: Tensor, W: Tensor) -> ConjugateKernelBasis:
    """Build the basis from features Φ (N, p) and the bias-free head W (C, p), in float64.

    Raises:
        ValueError: Φ or W not 2-D, or their feature dimensions differ.
    """
    if phi.ndim != 2 or W.ndim != 2:
        raise ValueError(f"phi must be (N, p) and W (C, p); got {tuple(phi.shape)} and {tuple(W.shape)}")
    if phi.shape[1] != W.shape[1]:
        raise ValueError(f"phi (N, p) and W (C, p) must share p; got phi {tuple(phi.shape)} and W {tuple(W.shape)}")
    n = phi.shape[0]
    phi, W = phi.double(), W.to(device=phi.device, dtype=torch.float64)
    U, S, Vh = torch.linalg.svd(phi, full_matrices=False)  # (N, r), (r,), (r, p)
    B = W @ Vh.T * S / math.sqrt(n)  # (C, r)
    u, s, vh = torch.linalg.svd(B, full_matrices=False)  # (C, k), (k,), (k, r)
    tol = max(phi.shape) * torch.finfo(phi.dtype).eps * (float(S[0]) if S.numel() else 0.0)
    return ConjugateKernelBasis(U=U, S=S, V=Vh.T, u=u, s=s, v=vh.T, feature_rank=int((S > tol).sum()))


# --- gradients of the coefficients --------------------------------------------------

@dataclass(frozen=True)
class BetaGradients:
    """β_i(θ) and ∇_θ β_i(θ) for i < n at one parameter θ.

    Attributes:
        beta: (n,) coefficients β_i(f(θ, X)).
        grads: (n, P) gradients ∇_θ β_i.
        outputs: (N, C) the outputs f(θ, X) they were computed from.
    """

    beta: Tensor
    grads: Tensor
    outputs: Tensor

    @property
    def norms(self) -> Tensor:
        """‖∇β_i‖: (n,)."""
        return torch.linalg.vector_norm(self.grads, dim=1)

    @property
    def cosines(self) -> Tensor:
        """cos(∇β_i, ∇β_j) = ⟨∇β_i, ∇β_j⟩ / (‖∇β_i‖ ‖∇β_j‖): (n, n); NaN where a norm is 0."""
        norms = self.norms
        return (self.grads @ self.grads.T) / (norms[:, None] * norms[None, :])

    def max_offdiag_abs_cosine(self) -> float:
        """max_{i≠j} |cos(∇β_i, ∇β_j)| (grad_indep); NaN for n = 1."""
        cos = self.cosines.abs()
        n = cos.shape[0]
        if n < 2:
            return float("nan")
        return float(cos[~torch.eye(n, dtype=torch.bool, device=cos.device)].max())


def beta_gradients(f: FlatModel, w: Tensor, x: Tensor, basis: ConjugateKernelBasis, num: int | None = None,
                   eval_batch_size: int | None = None) -> BetaGradients:
    """β_i and ∇_θ β_i for i < num at the flat parameter w, by one vmapped VJP per data chunk.

    ∇β_i = Σ_chunks J_chunk(w)ᵀ vec(U_chunk v_i u_iᵀ / √N): the forward pass on each
    chunk is done once and its pullback is vmapped over the ``num`` cotangents (no
    Python loop over i). Gradients are in w's dtype; β in float64.

    Args:
        f: f(w (P,), x (b, ...)) -> (b, C), e.g. from llc.estimate.flat_model_for_module
            (with the module in eval mode, so BatchNorm uses running statistics).
        w: (P,) parameters.
        x: (N, ...) the evaluation points the basis was built on, in the same order.
        basis: the basis.
        num: number of coefficients (default k).
        eval_batch_size: chunk size over the N points; None -> all at once.

    Returns:
        BetaGradients with grads (num, P).
    """
    n = basis.num_points
    if x.shape[0] != n:
        raise ValueError(f"x must hold the basis's N = {n} evaluation points; got {x.shape[0]}")
    chunk = n if eval_batch_size is None else checks.integer("eval_batch_size", eval_batch_size, lo=1, none_ok=True)
    cot = basis.cotangents(num).to(device=w.device, dtype=w.dtype)  # (num, N, C)
    grads = torch.zeros(cot.shape[0], w.numel(), device=w.device, dtype=w.dtype)  # (num, P)
    outputs = []
    for start in range(0, n, chunk):
        xb = x[start:start + chunk]
        out, pullback = vjp(lambda u: f(u, xb), w)  # out (b, C)
        grads += vmap(pullback)(cot[:, start:start + chunk])[0]
        outputs.append(out.detach())
    outputs = torch.cat(outputs)  # (N, C)
    beta = basis.coefficients(outputs)[: cot.shape[0]]
    return BetaGradients(beta=beta, grads=grads, outputs=outputs)


# --- summaries of β_i(t) trajectories ------------------------------------------------

def nonnegative_increment_fraction(series, start: int = 0) -> float:
    """Fraction of increments series[t+1] − series[t] >= 0 for t >= start (NaN if none)."""
    diffs = np.diff(np.asarray(series, dtype=float)[start:])
    return float((diffs >= 0).mean()) if diffs.size else float("nan")


def saturation_times(times, beta, final=None, level: float = 0.9) -> np.ndarray:
    """First recorded time at which β_i(t) reaches ``level`` · final_i, for each i.

    Args:
        times: (T,) recording times.
        beta: (T, m) coefficients.
        final: (m,) targets; None -> the last row of beta.
        level: fraction of the target, in (0, 1].

    Returns:
        (m,) float array of times; NaN where β_i never reaches the level (or final_i <= 0).
    """
    beta = np.asarray(beta, dtype=float)
    times = np.asarray(times, dtype=float)
    final = beta[-1] if final is None else np.asarray(final, dtype=float)
    checks.number("level", level, lo=0, hi=1, strict=True)
    out = np.full(beta.shape[1], np.nan)
    for i in range(beta.shape[1]):
        if final[i] > 0:
            hit = np.nonzero(beta[:, i] >= level * final[i])[0]
            if hit.size:
                out[i] = times[hit[0]]
    return out
