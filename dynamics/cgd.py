"""CGD: SGD with the gradient's components along chosen curvature directions removed.

Given orthonormal directions V (the minibatch Hessian's eigenvectors, or stored
Lyapunov vectors with ``prune_global``) and a pruned subset V_p of them, the step uses

    g' = g − V_p V_pᵀ g  (+ noise_fac · V_p ξ,  ξ ~ N(0, I), with ``noise``)

i.e. the projection onto the kept directions. Which directions form V_p (the prune sets
chaotic, pos, neg; k of them by top_abs or rand; and the original's rules) is
``dynamics.cgd_select``. Pruning starts at step ``prune_start``; the update is PyTorch's
SGD with momentum (v ← μ v + g', w ← w − lr v).
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


def project_gradient(g: Tensor, vectors: Tensor, pruned: Tensor, noise_fac: float | None = None,
                     gen: torch.Generator | None = None, null_of: Tensor | None = None) -> tuple[Tensor, float]:
    """g' = g − V_p V_pᵀ g (+ noise_fac · V_p ξ); also the fraction of ‖g‖² removed.

    Args:
        g: (P,) gradient.
        vectors: (P, r) orthonormal directions.
        pruned: indices into the columns of ``vectors``.
        noise_fac: if not None, add noise_fac · N(0, 1) along each pruned direction.
        gen: generator for the noise.
        null_of: (P, r') orthonormal U; if given, the whole complement of span(U) is pruned too
            (g − UUᵀg removed; its noise is the projection of N(0, I_P), isotropic there),
            without building a basis of it.
    """
    if pruned.numel() == 0 and null_of is None:
        return g, 0.0
    vp = vectors[:, pruned].to(g.dtype)
    coef = vp.T @ g  # (k,)
    out = g - vp @ coef
    removed = float(coef @ coef)
    if null_of is not None:
        u = null_of.to(g.dtype)
        perp = out - u @ (u.T @ out)  # (P,) the part of g outside span(U) (V_p lies in span(U))
        out, removed = out - perp, removed + float(perp @ perp)
    if noise_fac is not None:
        xi = torch.randn(pruned.numel(), generator=gen, dtype=g.dtype, device=gen.device).to(g.device)
        out = out + noise_fac * (vp @ xi)
        if null_of is not None:
            zeta = torch.randn(g.shape[0], generator=gen, dtype=g.dtype, device=gen.device).to(g.device)
            out = out + noise_fac * (zeta - u @ (u.T @ zeta))
    norm2 = float(g @ g)
    return out, removed / norm2 if norm2 > 0 else 0.0


def sgd_step(w: Tensor, buf: Tensor | None, g: Tensor, lr: float, momentum: float) -> tuple[Tensor, Tensor | None]:
    """PyTorch's SGD: buf ← μ buf + g (buf = g on the first step), w ← w − lr buf. No momentum: buf stays None."""
    if momentum == 0:
        return w - lr * g, None
    buf = g.clone() if buf is None else momentum * buf + g
    return w - lr * buf, buf
