"""Hessian-vector products and Hessian trace estimates with torch.func.

Every routine takes a loss over a flat parameter vector, loss(w (P,), x, y) -> (),
a *mean* over the batch, so H = ∇²L_n(w) is the Hessian of the mean loss.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor
from torch.func import grad, jvp, vmap

FlatLoss = Callable[[Tensor, Tensor, Tensor], Tensor]


def hvp(loss_fn: FlatLoss, w: Tensor, v: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """H v by forward-over-reverse: the JVP of ∇L along v. Shapes (P,) -> (P,)."""
    return jvp(lambda u: grad(loss_fn)(u, x, y), (w,), (v,))[1]


def batched_hvp(
    loss_fn: FlatLoss, w: Tensor, vs: Tensor, x: Tensor, y: Tensor, eval_batch_size: int = 4096
) -> Tensor:
    """H v_k for a stack of directions, vmapped: (K, P) -> (K, P).

    The data are processed in chunks; chunk HVPs are weighted by chunk size, which
    is exact for a mean loss.
    """
    n = x.shape[0]
    many = vmap(hvp, in_dims=(None, None, 0, None, None))
    out = torch.zeros_like(vs)
    for start in range(0, n, eval_batch_size):
        xb, yb = x[start:start + eval_batch_size], y[start:start + eval_batch_size]
        out += many(loss_fn, w, vs, xb, yb) * (xb.shape[0] / n)
    return out


def hutchinson_trace(
    loss_fn: FlatLoss,
    w: Tensor,
    x: Tensor,
    y: Tensor,
    num_probes: int,
    gen: torch.Generator,
    probes_per_batch: int = 16,
    eval_batch_size: int = 4096,
) -> tuple[float, float]:
    """Hutchinson's estimate tr(H) ≈ mean_k v_kᵀ H v_k with Rademacher v_k.

    Returns (estimate, standard error of the mean over probes).
    """
    if num_probes < 1:
        raise ValueError(f"num_probes must be >= 1; got {num_probes}")
    quad = []
    for start in range(0, num_probes, probes_per_batch):
        k = min(probes_per_batch, num_probes - start)
        vs = torch.randint(0, 2, (k, w.numel()), generator=gen, device=w.device).to(w.dtype) * 2 - 1  # (k, P)
        quad.append((vs * batched_hvp(loss_fn, w, vs, x, y, eval_batch_size)).sum(dim=1))
    q = torch.cat(quad).double()
    sem = float(q.std(unbiased=True) / num_probes**0.5) if num_probes > 1 else float("nan")
    return float(q.mean()), sem
