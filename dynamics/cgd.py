"""CGD: SGD with the gradient's components along chosen curvature directions removed.

Given orthonormal directions V (the minibatch Hessian's eigenvectors, or stored
Lyapunov vectors with ``prune_global``) and a pruned subset V_p of them, the step uses

    g' = g − V_p V_pᵀ g  (+ noise_fac · V_p ξ,  ξ ~ N(0, I), with ``noise``)

i.e. the projection onto the kept directions; ``noise_fac=None`` scales the noise by
mean_i |g_i| of the unprojected gradient, each step (the original's default). The step
then uses (1 − γ) g + γ g' (``gamma``, 1 by default: g' alone; the original's CGD argument).
Which directions form V_p (the prune sets chaotic, pos, neg; k of them by top_abs or rand; and the original's rules) is
``dynamics.cgd_select``. Pruning starts at step ``prune_start``; the update is PyTorch's
SGD with momentum (v ← μ v + g', w ← w − lr v).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from core import checks

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
        noise_fac: noise scale (None: mean |g_i| of that step's gradient, as the original).
        gamma: the step uses (1 − gamma) g + gamma g', gamma in [0, 1] (the original's CGD ``gamma``).
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
    gamma: float = 1.0
    prune_global: bool = False
    prune_global_checkpoint: str | None = None

    def __post_init__(self):
        checks.one_of("name", self.name, OPTIMIZERS)
        checks.number("lr", self.lr, lo=0, strict=True)
        checks.number("momentum", self.momentum, lo=0, hi=1, hi_open=True)
        checks.integer("k", self.k, lo=1, none_ok=True)
        checks.one_of("prune_set", self.prune_set, PRUNE_SETS)
        checks.one_of("prune_k", self.prune_k, PRUNE_K)
        checks.integer("prune_start", self.prune_start, lo=0)
        checks.number("noise_fac", self.noise_fac, lo=0, none_ok=True, why="None: mean |g| of each step")
        checks.number("gamma", self.gamma, lo=0, hi=1)
        if self.name == "sgd" and (self.prune_global or self.noise or self.gamma != 1):
            raise ValueError("prune_global, noise and gamma need name='cgd'")

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
    removed = float((coef @ coef).detach())
    if null_of is not None:
        u = null_of.to(g.dtype)
        perp = out - u @ (u.T @ out)  # (P,) the part of g outside span(U) (V_p lies in span(U))
        out, removed = out - perp, removed + float((perp @ perp).detach())
    if noise_fac is not None:
        xi = torch.randn(pruned.numel(), generator=gen, dtype=g.dtype, device=gen.device).to(g.device)
        out = out + noise_fac * (vp @ xi)
        if null_of is not None:
            zeta = torch.randn(g.shape[0], generator=gen, dtype=g.dtype, device=gen.device).to(g.device)
            out = out + noise_fac * (zeta - u @ (u.T @ zeta))
    norm2 = float((g @ g).detach())
    return out, removed / norm2 if norm2 > 0 else 0.0


def noise_scale(g: Tensor, noise_fac: float | None) -> float:
    """The noise scale of one step: noise_fac, or the original's default mean_i |g_i| (g (P,) unprojected)."""
    return float(g.abs().mean()) if noise_fac is None else float(noise_fac)


def cgd_gradient(g: Tensor, vectors: Tensor, config: OptimConfig, gen: torch.Generator | None = None,
                 null_of: Tensor | None = None) -> tuple[Tensor, float]:
    """The CGD step direction (1 − γ) g + γ g' with g' from :func:`project_gradient`, and the fraction of ‖g‖² removed.

    Args:
        g: (P,) gradient.
        vectors: (P, m) the pruned directions V_p (orthonormal), all of them pruned.
        config: noise, noise_fac, gamma.
        null_of: as in :func:`project_gradient`.
    """
    fac = noise_scale(g, config.noise_fac) if config.noise else None
    out, frac = project_gradient(g, vectors, torch.arange(vectors.shape[1], device=vectors.device), fac, gen, null_of)
    if config.gamma != 1:
        out = (1 - config.gamma) * g + config.gamma * out
    return out, frac


def sgd_step(w: Tensor, buf: Tensor | None, g: Tensor, lr: float, momentum: float) -> tuple[Tensor, Tensor | None]:
    """PyTorch's SGD: buf ← μ buf + g (buf = g on the first step), w ← w − lr buf. No momentum: buf stays None."""
    if momentum == 0:
        return w - lr * g, None
    buf = g.clone() if buf is None else momentum * buf + g
    return w - lr * buf, buf
