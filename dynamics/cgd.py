"""CGD: SGD with the gradient's components along chosen curvature directions removed.

Given orthonormal directions V (the minibatch Hessian's eigenvectors, or stored
Lyapunov vectors with ``prune_global``) and a pruned subset V_p of them, the step uses

    g' = g − V_p V_pᵀ g  (+ noise_fac · V_p ξ,  ξ ~ N(0, I), with ``noise``)

i.e. the projection onto the kept directions (eigenvectors of zero eigenvalues are
always kept). The pruned set (reference.md §3): ``prune_set`` chaotic (locally
expanding, λ < 0 or λ > 2(1 + μ)/lr), pos (λ > 0) or neg (λ < 0); of those, ``k``
(None: all) chosen by ``prune_k`` top_abs (largest |λ|) or rand (uniformly at
random). For Lyapunov vectors the sets are chaotic and pos: χ > 0, neg: χ < 0.
Pruning starts at step ``prune_start``; the update is PyTorch's SGD with momentum
(v ← μ v + g', w ← w − lr v).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

OPTIMIZERS = ("sgd", "cgd")
PRUNE_SETS = ("chaotic", "pos", "neg")
PRUNE_K = ("top_abs", "rand")


@dataclass(frozen=True)
class OptimConfig:
    """SGD, or CGD pruning (field names as in the original's ``optim`` group).

    Attributes:
        name: 'sgd' | 'cgd'.
        lr: learning rate (> 0).
        momentum: heavy-ball μ in [0, 1).
        k: number of directions pruned per step (None: the whole prune set).
        prune_set: 'chaotic' | 'pos' | 'neg'.
        prune_k: 'top_abs' | 'rand'.
        prune_start: first step that prunes (earlier steps are plain SGD).
        noise: replace the pruned components by noise_fac · N(0, 1) along them.
        noise_fac: noise scale (required with noise).
        prune_global: prune fixed stored Lyapunov vectors instead of Hessian eigenvectors.
        prune_global_checkpoint: eigenthings file for prune_global (None: the run's eigenthings source).
    """

    name: str = "sgd"
    lr: float = 1e-3
    momentum: float = 0.0
    k: int | None = None
    prune_set: str = "chaotic"
    prune_k: str = "top_abs"
    prune_start: int = 0
    noise: bool = False
    noise_fac: float | None = None
    prune_global: bool = False
    prune_global_checkpoint: str | None = None

    def __post_init__(self):
        if self.name not in OPTIMIZERS:
            raise ValueError(f"name must be one of {OPTIMIZERS}; got {self.name!r}")
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not self.lr > 0:
            raise ValueError(f"lr must be a number > 0; got {self.lr!r}")
        if isinstance(self.momentum, bool) or not isinstance(self.momentum, (int, float)) or not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1); got {self.momentum!r}")
        if self.k is not None and (isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1):
            raise ValueError(f"k must be None or an integer >= 1; got {self.k!r}")
        if self.prune_set not in PRUNE_SETS:
            raise ValueError(f"prune_set must be one of {PRUNE_SETS}; got {self.prune_set!r}")
        if self.prune_k not in PRUNE_K:
            raise ValueError(f"prune_k must be one of {PRUNE_K}; got {self.prune_k!r}")
        if isinstance(self.prune_start, bool) or not isinstance(self.prune_start, int) or self.prune_start < 0:
            raise ValueError(f"prune_start must be an integer >= 0; got {self.prune_start!r}")
        if self.noise and (self.noise_fac is None or not self.noise_fac >= 0):
            raise ValueError(f"noise_fac must be a number >= 0 when noise is on; got {self.noise_fac!r}")
        if self.name == "sgd" and (self.prune_global or self.noise):
            raise ValueError("prune_global and noise need name='cgd'")

    @property
    def prunes(self) -> bool:
        return self.name == "cgd"


def prune_candidates(values: Tensor, prune_set: str, lr: float, momentum: float = 0.0,
                     zero_threshold: float = 0.0, lyapunov: bool = False) -> Tensor:
    """Boolean mask of the directions in ``prune_set`` given eigenvalues λ (or exponents χ if ``lyapunov``)."""
    if prune_set not in PRUNE_SETS:
        raise ValueError(f"prune_set must be one of {PRUNE_SETS}; got {prune_set!r}")
    if lyapunov:
        return values < 0 if prune_set == "neg" else values > 0
    if prune_set == "pos":
        return values > zero_threshold
    if prune_set == "neg":
        return values < -zero_threshold
    return (values < -zero_threshold) | (values > 2 * (1 + momentum) / lr)


def select_pruned(values: Tensor, config: OptimConfig, gen: torch.Generator, zero_threshold: float = 0.0,
                  lyapunov: bool = False) -> Tensor:
    """Indices of the pruned directions: the candidates, or k of them by |value| or at random."""
    mask = prune_candidates(values, config.prune_set, config.lr, config.momentum, zero_threshold, lyapunov)
    idx = torch.nonzero(mask).flatten()
    if config.k is None or config.k >= idx.numel():
        return idx
    if config.prune_k == "top_abs":
        return idx[torch.argsort(values[idx].abs(), descending=True)[:config.k]]
    perm = torch.randperm(idx.numel(), generator=gen, device=gen.device).to(idx.device)
    return idx[perm[:config.k]]


def project_gradient(g: Tensor, vectors: Tensor, pruned: Tensor, noise_fac: float | None = None,
                     gen: torch.Generator | None = None) -> tuple[Tensor, float]:
    """g' = g − V_p V_pᵀ g (+ noise_fac · V_p ξ); also the fraction ‖V_pᵀ g‖² / ‖g‖² removed.

    Args:
        g: (P,) gradient.
        vectors: (P, r) orthonormal directions.
        pruned: indices into the columns of ``vectors``.
        noise_fac: if not None, add noise_fac · N(0, 1) along each pruned direction.
        gen: generator for the noise.
    """
    if pruned.numel() == 0:
        return g, 0.0
    vp = vectors[:, pruned].to(g.dtype)
    coef = vp.T @ g  # (k,)
    out = g - vp @ coef
    if noise_fac is not None:
        xi = torch.randn(pruned.numel(), generator=gen, dtype=g.dtype, device=gen.device).to(g.device)
        out = out + noise_fac * (vp @ xi)
    norm2 = float(g @ g)
    return out, float(coef @ coef) / norm2 if norm2 > 0 else 0.0


def sgd_step(w: Tensor, buf: Tensor | None, g: Tensor, lr: float, momentum: float) -> tuple[Tensor, Tensor | None]:
    """PyTorch's SGD: buf ← μ buf + g (buf = g on the first step), w ← w − lr buf. No momentum: buf stays None."""
    if momentum == 0:
        return w - lr * g, None
    buf = g.clone() if buf is None else momentum * buf + g
    return w - lr * buf, buf
