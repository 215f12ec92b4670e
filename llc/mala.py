"""Full-batch MALA on the localized, tempered posterior, vectorised over chains.

The Metropolis-adjusted Langevin algorithm (Roberts & Tweedie 1996) samples exactly
the target llc.sgld approximates,

    p(w) ∝ exp(-U(w)),    U(w) = nβ L_n(w) + (γ/2) ||w - w*||²,

with L_n the *mean* loss over all n points. From w it proposes

    w' = w - (ε/2) ∇U(w) + sqrt(ε) ξ,    ξ ~ N(0, I),

and accepts with probability min(1, exp(U(w) - U(w') + log q(w | w') - log q(w' | w))),
where log q(a | b) = -||a - b + (ε/2) ∇U(b)||² / (2ε). Every step costs one full-data
forward and backward pass (SGLD's costs one minibatch), which is what the MALA vs
SGLD comparison measures; in exchange there is no step-size bias.

The chains are one (C, P) tensor; U and ∇U of all chains come from one vmapped
forward per data chunk and one backward. With ``adapt_step_size`` each chain tunes
its own ε during burn-in by a Robbins-Monro rule on log ε towards
``target_acceptance`` (0.574 is optimal for MALA, Roberts & Rosenthal 1998); ε is
then fixed at the geometric mean of its values over the second half of burn-in, so every kept draw comes from one MH kernel. The λ̂ trace is the
exact L_n(w_t) of each state, a by-product of the proposal's evaluation.

Randomness: chain c owns ``chain_generators(seed, C)[c]`` and draws its proposal
noise and its uniform in blocks of steps, so chain c does not depend on C.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.func import vmap

from core.types import FlatLoss
from llc.estimate import LLCResult
from llc.psgld import COMPILE_TRUE_ERROR, initial_loss, llc_result
from llc.sgld import SGLDDivergenceError, chain_generators, check_compile

_NOISE_BLOCK_NUMEL = 1 << 20
_MAX_BLOCK_STEPS = 128


@dataclass(frozen=True)
class MALAConfig:
    """Hyperparameters of one multi-chain MALA run.

    Attributes:
        epsilon: step size ε (> 0); the starting value when ``adapt_step_size``.
        gamma: localisation strength γ (>= 0).
        num_steps: MALA steps per chain, burn-in included.
        num_chains: chains, vectorised with vmap.
        nbeta: n·β; None means n / log n.
        num_burnin_steps: draws discarded before averaging (and the adaptation
            window); None means the first 90%.
        adapt_step_size: tune each chain's ε during burn-in.
        target_acceptance: the acceptance probability the tuning aims at, in (0, 1).
        compile: "auto" (default), True or False, as SGLDConfig's. MALA has no compiled
            step, so "auto" and False run eager and True is a ValueError (not a silent
            eager run); the result's ``compile_mode`` is "eager".
    """

    epsilon: float = 1e-5
    gamma: float = 10.0
    num_steps: int = 5000
    num_chains: int = 4
    nbeta: float | None = None
    num_burnin_steps: int | None = None
    adapt_step_size: bool = True
    target_acceptance: float = 0.574
    compile: bool | str = "auto"

    def __post_init__(self):
        check_compile(self.compile)
        if self.compile is True:
            raise ValueError(COMPILE_TRUE_ERROR.format(sampler="MALA (llc.mala)"))
        def _int(name, lo):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
                raise ValueError(f"{name} must be an integer >= {lo}; got {v!r}")

        if not (isinstance(self.epsilon, (int, float)) and math.isfinite(self.epsilon) and self.epsilon > 0):
            raise ValueError(f"epsilon must be a finite number > 0; got {self.epsilon!r}")
        if not (isinstance(self.gamma, (int, float)) and math.isfinite(self.gamma) and self.gamma >= 0):
            raise ValueError(f"gamma must be a finite number >= 0; got {self.gamma!r}")
        _int("num_steps", 1)
        _int("num_chains", 1)
        if self.nbeta is not None and not (isinstance(self.nbeta, (int, float)) and self.nbeta > 0):
            raise ValueError(f"nbeta must be None or a number > 0; got {self.nbeta!r}")
        if self.num_burnin_steps is not None:
            _int("num_burnin_steps", 0)
            if self.num_burnin_steps >= self.num_steps:
                raise ValueError(f"num_burnin_steps must be < num_steps ({self.num_steps}); got {self.num_burnin_steps}")
        if not isinstance(self.adapt_step_size, bool):
            raise ValueError(f"adapt_step_size must be True or False; got {self.adapt_step_size!r}")
        if not (isinstance(self.target_acceptance, (int, float)) and 0 < self.target_acceptance < 1):
            raise ValueError(f"target_acceptance must be in (0, 1); got {self.target_acceptance!r}")

    def burnin(self) -> int:
        return int(0.9 * self.num_steps) if self.num_burnin_steps is None else self.num_burnin_steps

    def resolve_nbeta(self, n: int) -> float:
        if self.nbeta is not None:
            return float(self.nbeta)
        if n < 2:
            raise ValueError(f"nbeta = n / log n needs n >= 2; got n={n}")
        return n / math.log(n)


@dataclass
class MALATrace:
    """Raw output of :func:`run_mala`.

    Attributes:
        loss: (C, T) float64 full-data losses L_n(w_t) of the chain states, on CPU.
        final_w: (C, P) last state of each chain.
        acceptance_rate: (C,) mean acceptance probability over the kept draws.
        epsilon: (C,) each chain's step size after burn-in.
        nbeta: the n·β used.
        burnin: number of discarded leading draws.
    """

    loss: Tensor
    final_w: Tensor
    acceptance_rate: np.ndarray
    epsilon: np.ndarray
    nbeta: float
    burnin: int


@dataclass
class MALAResult:
    """λ̂ from MALA (an LLCResult) with the sampler's own diagnostics."""

    llc: LLCResult
    acceptance_rate: np.ndarray
    epsilon: np.ndarray

    def summary(self) -> dict:
        return {
            **self.llc.summary(),
            "acceptance_rate": float(self.acceptance_rate.mean()),
            "acceptance_rate_per_chain": [float(a) for a in self.acceptance_rate],
            "epsilon_per_chain": [float(e) for e in self.epsilon],
        }


def full_data_value_and_grad(
    loss_fn: FlatLoss, w: Tensor, x: Tensor, y: Tensor, eval_batch_size: int = 4096
) -> tuple[Tensor, Tensor]:
    """L_n(w) (C,) and ∇L_n(w) (C, P) for each row of w (C, P), in chunks of the data.

    Each chunk's mean loss is weighted by its share of n, so the sum is the mean over n.
    """
    n = x.shape[0]
    per_chain = vmap(loss_fn, in_dims=(0, None, None))
    value = torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
    grad = torch.zeros_like(w)
    for start in range(0, n, eval_batch_size):
        xb, yb = x[start:start + eval_batch_size], y[start:start + eval_batch_size]
        with torch.enable_grad():
            wg = w.detach().requires_grad_(True)
            chunk = per_chain(wg, xb, yb) * (xb.shape[0] / n)  # (C,)
            (g,) = torch.autograd.grad(chunk.sum(), wg)  # chains do not interact
        value += chunk.detach()
        grad += g
    return value, grad


def mala_log_ratio(
    w: Tensor, prop: Tensor, u: Tensor, u_p: Tensor, grad_u: Tensor, grad_p: Tensor, eps: Tensor | float,
    d: Tensor | None = None,
) -> Tensor:
    """log of the Metropolis-Hastings ratio of a Langevin proposal w -> w', in float64, (C,).

    With the proposal q(w' | w) = N(w - (ε/2) D ∇U(w), ε D) (D diagonal; None means I),

        log r = U(w) - U(w') + log q(w | w') - log q(w' | w),
        log q(a | b) = -Σ (a - b + (ε/2) D ∇U(b))² / (2 ε D)  (up to a constant that cancels).

    The acceptance probability is min(1, exp(log r)). The original notebooks evaluate it
    every 20 SGLD steps on the step's minibatch (their ``mala_acceptance_probability``,
    D = I), as a diagnostic of the SGLD step size.

    Args:
        w, prop: (C, P) current and proposed states.
        u, u_p: (C,) potentials U(w), U(w').
        grad_u, grad_p: (C, P) their gradients.
        eps: step size, a float or broadcastable to (C, P) (e.g. (C, 1) per chain).
        d: (C, P) or (P,) diagonal preconditioner, or None.
    """
    scale = eps if d is None else eps * d  # ε D

    def log_q(to, frm, grad_frm):
        r = to - frm + 0.5 * scale * grad_frm
        return -(r * r / (2 * scale)).sum(1)

    return (u - u_p + log_q(w, prop, grad_p) - log_q(prop, w, grad_u)).double()


def run_mala(
    loss_fn: FlatLoss,
    w_star: Tensor,
    x: Tensor,
    y: Tensor,
    config: MALAConfig,
    seed: int,
    eval_batch_size: int = 4096,
) -> MALATrace:
    """Run ``config.num_chains`` MALA chains started at w*, all in one vectorised step.

    Args:
        loss_fn: mean loss of flat parameters on a batch, (P,), (B, ...), (B, ...) -> ().
        w_star: (P,) centre of localisation and starting point; sets device and dtype.
        x, y: the n training points, on w*'s device.
        config: sampler hyperparameters.
        seed: base seed of the per-chain generators.
        eval_batch_size: chunk size of the full-data passes.

    Returns:
        MALATrace.

    Raises:
        SGLDDivergenceError: a chain's current loss is not finite (a non-finite
            proposal is simply rejected).
    """
    if w_star.ndim != 1:
        raise ValueError(f"w_star must be a flat (P,) vector; got shape {tuple(w_star.shape)}")
    n = x.shape[0]
    device, C, T, P = w_star.device, config.num_chains, config.num_steps, w_star.numel()
    nbeta, burnin, gamma = config.resolve_nbeta(n), config.burnin(), config.gamma
    gens = chain_generators(seed, C, device)
    block = max(1, min(_MAX_BLOCK_STEPS, _NOISE_BLOCK_NUMEL // P, T))
    adapt = burnin if config.adapt_step_size else 0

    def potential(w):  # U (C,), ∇U (C, P), L_n (C,)
        loss, g = full_data_value_and_grad(loss_fn, w, x, y, eval_batch_size)
        diff = w - w_star
        return nbeta * loss + 0.5 * gamma * (diff * diff).sum(1), nbeta * g + gamma * diff, loss

    w_star = w_star.detach()
    w = w_star.expand(C, P).clone()  # (C, P)
    log_eps = torch.full((C,), math.log(config.epsilon), dtype=torch.float64, device=device)
    log_eps_sum = torch.zeros(C, dtype=torch.float64, device=device)  # over the second half of adaptation
    with torch.no_grad():
        u, grad_u, loss = potential(w)
    if not torch.isfinite(u).all():
        raise SGLDDivergenceError(int((~torch.isfinite(u)).nonzero()[0]), 0, float("nan"))
    trace = torch.empty((C, T), dtype=torch.float64, device=device)
    accept_sum = torch.zeros(C, dtype=torch.float64, device=device)
    xi = torch.empty(C, block, P, dtype=w.dtype, device=device)  # (C, K, P)
    log_unif = torch.empty(C, block, dtype=torch.float64, device=device)  # (C, K)
    with torch.no_grad():
        for t0 in range(0, T, block):
            k = min(block, T - t0)
            for c, g in enumerate(gens):
                torch.randn(k, P, generator=g, device=device, dtype=w.dtype, out=xi[c, :k])
                torch.rand(k, generator=g, device=device, dtype=torch.float64, out=log_unif[c, :k])
            log_unif[:, :k].log_()
            for j in range(k):
                t = t0 + j
                trace[:, t] = loss
                eps = log_eps.exp().to(w.dtype)  # (C,)
                prop = w - 0.5 * eps[:, None] * grad_u + eps.sqrt()[:, None] * xi[:, j]
                u_p, grad_p, loss_p = potential(prop)
                log_alpha = mala_log_ratio(w, prop, u, u_p, grad_u, grad_p, eps[:, None])
                log_alpha = torch.where(torch.isfinite(log_alpha), log_alpha, torch.full_like(log_alpha, -math.inf))
                accept = log_unif[:, j] < log_alpha  # (C,)
                a_prob = log_alpha.clamp(max=0).exp()
                if t < adapt:
                    # Robbins-Monro on log ε with gain (t+1)^-0.6; the ε kept is the geometric mean
                    # over the second half of adaptation, which averages out the last steps' noise.
                    log_eps += (a_prob - config.target_acceptance) * (t + 1) ** -0.6
                    if t >= adapt // 2:
                        log_eps_sum += log_eps
                    if t == adapt - 1:
                        log_eps = log_eps_sum / (adapt - adapt // 2)
                elif t >= burnin:
                    accept_sum += a_prob
                keep = accept[:, None]
                w = torch.where(keep, prop, w)
                grad_u = torch.where(keep, grad_p, grad_u)
                u = torch.where(accept, u_p, u)
                loss = torch.where(accept, loss_p, loss)
    return MALATrace(
        loss=trace.cpu(),
        final_w=w,
        acceptance_rate=(accept_sum / max(T - burnin, 1)).cpu().numpy(),
        epsilon=log_eps.exp().cpu().numpy(),
        nbeta=nbeta,
        burnin=burnin,
    )


def estimate_llc_mala(
    loss_fn: FlatLoss,
    w_star: Tensor,
    x: Tensor,
    y: Tensor,
    config: MALAConfig,
    seed: int,
    eval_batch_size: int = 4096,
) -> MALAResult:
    """λ̂ = nβ (E_t[L_n(w_t)] - L_n(w*)) from MALA; arguments as for :func:`run_mala`."""
    init = initial_loss(loss_fn, w_star, x, y, eval_batch_size)
    trace = run_mala(loss_fn, w_star, x, y, config, seed, eval_batch_size)
    return MALAResult(
        llc=llc_result(trace.loss, init, trace.nbeta, trace.burnin, config, compile_mode="eager"),  # no compiled step
        acceptance_rate=trace.acceptance_rate,
        epsilon=trace.epsilon,
    )
