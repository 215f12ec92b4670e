"""Trace and spectral density of a symmetric operator from matrix-vector products.

* :func:`hutchpp_trace`: Hutch++ (Meyer, Musco, Musco & Woodruff 2021). With m
  products: S (P, m/3) and G (P, m/3) Rademacher, Q = orth(H S), then

      tr(H) ≈ tr(Qᵀ H Q) + (3/m) tr(Gᵀ (I − QQᵀ) H (I − QQᵀ) G).

  Exact when rank(H) <= m/3; variance O(1/m²) instead of Hutchinson's O(1/m).
  (Hutchinson's estimator is ``dynamics.hessian.hutchinson_trace``.)
* :func:`slq_density`: stochastic Lanczos quadrature (Ubaru, Chen & Saad 2017;
  Ghorbani, Krishnan & Xiao 2019; PyHessian's ``density``). For each unit probe v,
  m Lanczos steps give T = S diag(θ) Sᵀ, and the nodes θ_j with weights S[0, j]²
  integrate every polynomial of degree <= 2m − 1 exactly against the probe's spectral
  measure Σ_i (vᵀu_i)² δ(λ − λ_i), whose mean over probes is the spectral density
  (1/P) Σ_i δ(λ − λ_i).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from dynamics.lanczos import Matvec, lanczos_tridiagonal

BatchMatvec = Callable[[Tensor], Tensor]  # (K, P) -> (K, P): H applied to each row


def _rademacher(k: int, dim: int, gen: torch.Generator, dtype, device) -> Tensor:
    return (torch.randint(0, 2, (k, dim), generator=gen, device=gen.device).to(device=device, dtype=dtype) * 2 - 1)


def hutchpp_trace(
    matvecs: BatchMatvec, dim: int, num_matvecs: int, gen: torch.Generator,
    dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu",
) -> float:
    """Hutch++ estimate of tr(H) with ``num_matvecs`` products (a multiple of 3 is used in full).

    Args:
        matvecs: rows (K, P) -> H applied to each row, (K, P); e.g.
            ``lambda vs: batched_hvp(loss, w, vs, x, y)``.
        dim: P.
        num_matvecs: m >= 3; m // 3 sketch, m // 3 projection and m − 2(m // 3) Hutchinson probes.
        gen: generator for the Rademacher probes.

    Raises:
        ValueError: num_matvecs < 3.
    """
    return hutchpp_trace_sem(matvecs, dim, num_matvecs, gen, dtype, device)[0]


def hutchpp_trace_sem(
    matvecs: BatchMatvec, dim: int, num_matvecs: int, gen: torch.Generator,
    dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu",
) -> tuple[float, float]:
    """:func:`hutchpp_trace` and its standard error given the sketch Q.

    tr(Qᵀ H Q) has no sampling error once Q is drawn; the error is that of the Hutchinson
    part, the mean of g_iᵀ (I − QQᵀ) H (I − QQᵀ) g_i over its m − 2(m // 3) probes, whose
    standard error is their standard deviation / sqrt(count) (NaN with one probe). Same
    arguments and the same draws as :func:`hutchpp_trace`.

    Returns:
        (estimate, standard error).
    """
    if num_matvecs < 3:
        raise ValueError(f"num_matvecs must be >= 3; got {num_matvecs}")
    k = num_matvecs // 3
    s = _rademacher(k, dim, gen, dtype, device)
    g = _rademacher(num_matvecs - 2 * k, dim, gen, dtype, device)
    q, _ = torch.linalg.qr(matvecs(s).to(dtype).T)  # (P, k) orthonormal
    hq = matvecs(q.T.contiguous()).to(dtype)  # (k, P)
    low_rank = torch.trace(q.T @ hq.T)
    g_perp = g - (g @ q) @ q.T  # (I − QQᵀ) G, rows
    quad = (g_perp * matvecs(g_perp).to(dtype)).sum(dim=1)  # (m − 2k,)
    sem = float(quad.std(unbiased=True) / quad.numel() ** 0.5) if quad.numel() > 1 else float("nan")
    return float(low_rank + quad.mean()), sem


@dataclass(frozen=True)
class SpectralDensity:
    """Gauss quadrature of the spectral density from SLQ.

    Attributes:
        nodes: (num_probes, m) Ritz values θ_j per probe (NaN-padded if a probe's Krylov space closed early).
        weights: (num_probes, m) S[0, j]², each row sums to 1 (0 where padded).
        dim: P.
    """

    nodes: np.ndarray
    weights: np.ndarray
    dim: int

    def moment(self, p: int) -> float:
        """≈ tr(H^p) / P: exact per probe for p <= 2m − 1, averaged over probes."""
        nodes = np.nan_to_num(self.nodes)
        return float(np.mean(np.sum(self.weights * nodes**p, axis=1)))

    def on_grid(self, grid: np.ndarray, sigma: float) -> np.ndarray:
        """Density (integrates to 1) on ``grid``, each node broadened by a Gaussian of width sigma."""
        if sigma <= 0:
            raise ValueError(f"sigma must be > 0; got {sigma}")
        grid = np.asarray(grid, dtype=float)
        nodes, weights = np.nan_to_num(self.nodes).ravel(), self.weights.ravel()
        kernel = np.exp(-0.5 * ((grid[:, None] - nodes[None, :]) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
        return kernel @ weights / self.nodes.shape[0]


def slq_density(
    matvec: Matvec, dim: int, num_probes: int, num_steps: int, gen: torch.Generator,
    dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu",
) -> SpectralDensity:
    """Stochastic Lanczos quadrature with Rademacher probes.

    Args:
        matvec: v (P,) -> H v.
        dim: P.
        num_probes: independent probes (PyHessian's n_v).
        num_steps: Lanczos steps m per probe (PyHessian's iter); costs num_probes · m matvecs.
        gen: generator for the probes.
    """
    if num_probes < 1 or num_steps < 1:
        raise ValueError(f"num_probes and num_steps must be >= 1; got {num_probes} and {num_steps}")
    m = min(num_steps, dim)
    nodes = np.full((num_probes, m), np.nan)
    weights = np.zeros((num_probes, m))
    for i in range(num_probes):
        v = _rademacher(1, dim, gen, dtype, device)[0]
        t = lanczos_tridiagonal(matvec, v, m)
        theta, s = torch.linalg.eigh(t)
        nodes[i, :theta.numel()] = theta.cpu().numpy()
        weights[i, :theta.numel()] = (s[0] ** 2).cpu().numpy()
    return SpectralDensity(nodes, weights, dim)
