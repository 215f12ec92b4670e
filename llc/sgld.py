"""SGLD on the localized, tempered posterior, vectorised over chains with vmap.

The target is (Lau et al., "Quantifying degeneracy in singular models via the
learning coefficient"; reference.md section 1)

    p(w) ∝ exp(-nβ L_n(w) - (γ/2) ||w - w*||²)

and one SGLD step on a minibatch B is

    Δw = -(ε/2) (nβ ∇L_B(w) + γ (w - w*)) + sqrt(ε) ξ,    ξ ~ N(0, I).

L is a *mean* over the batch (the caller's ``loss_fn`` decides what it means:
MSE over batch and outputs with no 1/2 for regression, mean cross-entropy for
classification). The chains are one (C, P) tensor of flat parameter vectors, and
``vmap(grad_and_value(loss_fn))`` computes every chain's gradient in one call.

Randomness: chain c owns a ``torch.Generator`` seeded from (seed, c) via numpy's
SeedSequence, and draws its minibatch indices (with replacement) and its noise
from it in blocks of K steps, K depending only on the parameter count. Chain c is
therefore the same whatever the number of chains, and the same seed gives the
same chains.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import Tensor
from torch.func import grad_and_value, vmap

from models.device import derived_seed

FlatLoss = Callable[[Tensor, Tensor, Tensor], Tensor]  # (w (P,), x (B,...), y (B,...)) -> ()

# Noise is drawn in blocks of K steps per chain; K * P is capped at this many numbers.
_NOISE_BLOCK_NUMEL = 1 << 20
_MAX_BLOCK_STEPS = 128


class SGLDDivergenceError(FloatingPointError):
    """A chain produced a non-finite loss; carries the chain and step index."""

    def __init__(self, chain: int, step: int, value: float):
        self.chain, self.step, self.value = chain, step, value
        super().__init__(
            f"SGLD diverged: chain {chain} has non-finite loss {value} at step {step} "
            "(try a smaller epsilon or a larger gamma)"
        )


@dataclass(frozen=True)
class SGLDConfig:
    """Hyperparameters of one multi-chain SGLD run.

    Attributes:
        epsilon: step size ε (> 0).
        gamma: localisation strength γ (>= 0).
        num_steps: SGLD steps per chain, burn-in included.
        batch_size: minibatch size for ∇L_B (and for the trace if minibatch).
        num_chains: chains, vectorised with vmap.
        nbeta: n·β; None means n / log n (β = 1/log n).
        num_burnin_steps: draws discarded before averaging; None means the first
            90% (the original notebook kept the last 10% of the trace).
        loss_trace_minibatch: average L_B(w_t) from the gradient's own batch (free),
            or the full-data L_n(w_t) after burn-in (costs a full pass per draw).
    """

    epsilon: float = 1e-5
    gamma: float = 10.0
    num_steps: int = 5000
    batch_size: int = 100
    num_chains: int = 4
    nbeta: float | None = None
    num_burnin_steps: int | None = None
    loss_trace_minibatch: bool = True

    def __post_init__(self):
        def _int(name, lo):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
                raise ValueError(f"{name} must be an integer >= {lo}; got {v!r}")

        if not (isinstance(self.epsilon, (int, float)) and math.isfinite(self.epsilon) and self.epsilon > 0):
            raise ValueError(f"epsilon must be a finite number > 0; got {self.epsilon!r}")
        if not (isinstance(self.gamma, (int, float)) and math.isfinite(self.gamma) and self.gamma >= 0):
            raise ValueError(f"gamma must be a finite number >= 0; got {self.gamma!r}")
        _int("num_steps", 1)
        _int("batch_size", 1)
        _int("num_chains", 1)
        if self.nbeta is not None and not (isinstance(self.nbeta, (int, float)) and self.nbeta > 0):
            raise ValueError(f"nbeta must be None or a number > 0; got {self.nbeta!r}")
        if self.num_burnin_steps is not None:
            _int("num_burnin_steps", 0)
            if self.num_burnin_steps >= self.num_steps:
                raise ValueError(
                    f"num_burnin_steps must be < num_steps ({self.num_steps}); got {self.num_burnin_steps}"
                )
        if not isinstance(self.loss_trace_minibatch, bool):
            raise ValueError(f"loss_trace_minibatch must be True or False; got {self.loss_trace_minibatch!r}")

    def burnin(self) -> int:
        return int(0.9 * self.num_steps) if self.num_burnin_steps is None else self.num_burnin_steps

    def resolve_nbeta(self, n: int) -> float:
        """n·β for n training points: the configured value, else n / log n."""
        if self.nbeta is not None:
            return float(self.nbeta)
        if n < 2:
            raise ValueError(f"nbeta = n / log n needs n >= 2; got n={n}")
        return n / math.log(n)


@dataclass
class SGLDTrace:
    """Raw output of :func:`run_sgld`.

    Attributes:
        loss: (C, T) float64 loss trace on CPU; minibatch losses at every step,
            or full-data losses at steps >= burn-in (NaN before) when not minibatch.
        final_w: (C, P) last state of each chain.
        nbeta: the n·β used.
        burnin: number of discarded leading draws.
    """

    loss: Tensor
    final_w: Tensor
    nbeta: float
    burnin: int


def chain_generators(seed: int, num_chains: int, device: torch.device) -> list[torch.Generator]:
    """One generator per chain, seeded from SeedSequence(seed, spawn_key=(c,))."""
    return [torch.Generator(device=device).manual_seed(derived_seed(seed, c)) for c in range(num_chains)]


def full_data_loss(
    loss_fn: FlatLoss, w: Tensor, x: Tensor, y: Tensor, eval_batch_size: int = 4096
) -> Tensor:
    """Mean loss over all n points for each row of w: (C, P) -> (C,), in chunks of x."""
    n = x.shape[0]
    per_chain = vmap(loss_fn, in_dims=(0, None, None))
    total = torch.zeros(w.shape[0], dtype=torch.float64, device=w.device)
    for start in range(0, n, eval_batch_size):
        xb, yb = x[start:start + eval_batch_size], y[start:start + eval_batch_size]
        total += per_chain(w, xb, yb).double() * xb.shape[0]  # mean -> sum over chunk
    return total / n


def run_sgld(
    loss_fn: FlatLoss,
    w_star: Tensor,
    x: Tensor,
    y: Tensor,
    config: SGLDConfig,
    seed: int,
    eval_batch_size: int = 4096,
) -> SGLDTrace:
    """Run ``config.num_chains`` SGLD chains started at w*, all in one vmapped step.

    Args:
        loss_fn: mean loss of flat parameters on a batch, (P,), (B, ...), (B, ...) -> ().
        w_star: (P,) centre of localisation and starting point; sets device and dtype.
        x, y: the n training points, on w*'s device.
        config: sampler hyperparameters.
        seed: base seed of the per-chain generators.
        eval_batch_size: chunk size for full-data losses.

    Returns:
        SGLDTrace with the (C, T) loss trace.

    Raises:
        ValueError: batch_size > n.
        SGLDDivergenceError: a chain's loss became NaN or inf.
    """
    n = x.shape[0]
    if config.batch_size > n:
        raise ValueError(f"batch_size must be <= the number of data points ({n}); got {config.batch_size}")
    if w_star.ndim != 1:
        raise ValueError(f"w_star must be a flat (P,) vector; got shape {tuple(w_star.shape)}")
    device, C, T, P = w_star.device, config.num_chains, config.num_steps, w_star.numel()
    nbeta, burnin, eps = config.resolve_nbeta(n), config.burnin(), config.epsilon
    gens = chain_generators(seed, C, device)
    block = max(1, min(_MAX_BLOCK_STEPS, _NOISE_BLOCK_NUMEL // P, T))

    # w <- (1 - εγ/2) w + (εγ/2) w* - (ε nβ/2) g + sqrt(ε) ξ, all in place.
    shrink, pull, drift, noise_scale = 1 - eps * config.gamma / 2, eps * config.gamma / 2, -eps * nbeta / 2, math.sqrt(eps)
    step_grad = vmap(grad_and_value(loss_fn))

    w = w_star.detach().expand(C, P).clone()  # (C, P)
    trace = torch.full((C, T), float("nan"), dtype=torch.float64, device=device)
    with torch.no_grad():
        for t0 in range(0, T, block):
            k = min(block, T - t0)
            idx = torch.stack([torch.randint(0, n, (k, config.batch_size), generator=g, device=device) for g in gens], 1)  # (k, C, B)
            xi = torch.stack([torch.randn(k, P, generator=g, device=device, dtype=w.dtype) for g in gens], 1)  # (k, C, P)
            for j in range(k):
                xb, yb = x[idx[j]], y[idx[j]]  # (C, B, ...): one gather serves every chain
                g, loss = step_grad(w, xb, yb)  # (C, P), (C,)
                if config.loss_trace_minibatch:
                    trace[:, t0 + j] = loss
                elif t0 + j >= burnin:
                    trace[:, t0 + j] = full_data_loss(loss_fn, w, x, y, eval_batch_size)
                w.mul_(shrink).add_(w_star, alpha=pull).add_(g, alpha=drift).add_(xi[j], alpha=noise_scale)
            _check_finite(trace[:, t0:t0 + k], t0, skip_nan_before=None if config.loss_trace_minibatch else burnin)
    if not torch.isfinite(w).all():
        bad = int(torch.nonzero(~torch.isfinite(w).all(dim=1))[0])
        raise SGLDDivergenceError(bad, T, float("nan"))
    return SGLDTrace(loss=trace.cpu(), final_w=w, nbeta=nbeta, burnin=burnin)


def _check_finite(block: Tensor, t0: int, skip_nan_before: int | None) -> None:
    """Raise SGLDDivergenceError at the first non-finite entry of a (C, k) trace block."""
    if skip_nan_before is not None:  # full-data traces hold NaN placeholders before burn-in
        start = max(0, skip_nan_before - t0)
        block, t0 = block[:, start:], t0 + start
    bad = ~torch.isfinite(block)
    if bool(bad.any()):
        step_first = bad.any(dim=0).nonzero()[0].item()
        chain = bad[:, step_first].nonzero()[0].item()
        raise SGLDDivergenceError(chain, t0 + step_first, block[chain, step_first].item())
