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
then fixed at the geometric mean of its values over the second half of burn-in, so
every kept draw comes from one MH kernel. The λ̂ trace is the
exact L_n(w_t) of each state, a by-product of the proposal's evaluation.

The step is a kernel on llc.chain's driver, which owns the randomness: chain c owns
``chain_generators(seed, C)[c]`` and draws its proposal noise and its uniform in
blocks of steps, so chain c does not depend on C.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.func import vmap

from core import checks
from core.types import FlatLoss
from llc.chain import (
    ChainConfig,
    ChainDivergenceError,
    Draws,
    StepCallback,
    check_flat,
    check_number,
    reject_compile_true,
    run_chains,
)
from llc.result import LLCResult, initial_loss, llc_result


@dataclass(frozen=True, kw_only=True)
class MALAConfig(ChainConfig):
    """Hyperparameters of one multi-chain MALA run: llc.chain.ChainConfig's and these.

    ``epsilon`` is the starting value when ``adapt_step_size``; the burn-in is also the
    adaptation window.

    Attributes:
        adapt_step_size: tune each chain's ε during burn-in.
        target_acceptance: the acceptance probability the tuning aims at, in (0, 1).
        compile: "auto" (default), True or False, as SGLDConfig's. MALA has no compiled
            step, so "auto" and False run eager and True is a ValueError (not a silent
            eager run); the result's ``compile_mode`` is "eager".
    """

    adapt_step_size: bool = True
    target_acceptance: float = 0.574

    def __post_init__(self):
        reject_compile_true(self.compile, "MALA (llc.mala)")
        super().__post_init__()
        checks.boolean("adapt_step_size", self.adapt_step_size)
        check_number("target_acceptance", self.target_acceptance, 0, 1, strict=True, hi_open=True)


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


def run_mala(loss_fn: FlatLoss, w_star: Tensor, x: Tensor, y: Tensor, config: MALAConfig, seed: int,
             eval_batch_size: int = 4096, callback: StepCallback | None = None) -> MALATrace:
    """Run ``config.num_chains`` MALA chains started at w*, all in one vectorised step.

    ``loss_fn``, ``w_star``, ``x``, ``y`` and ``seed`` are as for llc.sgld.run_sgld.

    Args:
        config: sampler hyperparameters.
        eval_batch_size: chunk size of the full-data passes.
        callback: ``callback(t, w_t, w_{t+1}, None)`` after every step (no minibatch: idx is None);
            llc.calibrate measures the accepted moves with it.

    Returns:
        MALATrace.

    Raises:
        ChainDivergenceError: a chain's current loss is not finite (a non-finite
            proposal is simply rejected).
    """
    check_flat(w_star)
    n = x.shape[0]
    kernel = MALAKernel(loss_fn, w_star, x, y, config, config.resolve_nbeta(n), eval_batch_size)
    trace, w = run_chains(kernel, w_star, n, config, seed, callback=callback)
    T, burnin = config.num_steps, config.burnin()
    return MALATrace(
        loss=trace.cpu(),
        final_w=w,
        acceptance_rate=(kernel.accept_sum / max(T - burnin, 1)).cpu().numpy(),
        epsilon=kernel.log_eps.exp().cpu().numpy(),
        nbeta=kernel.nbeta,
        burnin=burnin,
    )


class MALAKernel:
    """The MALA step (module docstring) as an llc.chain kernel: full batch, one uniform per step."""

    name = "MALA"
    batch_size = None
    uniform = True

    def __init__(self, loss_fn: FlatLoss, w_star: Tensor, x: Tensor, y: Tensor, config: MALAConfig, nbeta: float,
                 eval_batch_size: int):
        C, device = config.num_chains, w_star.device
        self.loss_fn, self.x, self.y, self.eval_batch_size = loss_fn, x, y, eval_batch_size
        self.w_star, self.nbeta, self.gamma, self.config = w_star.detach(), nbeta, config.gamma, config
        self.burnin = config.burnin()
        self.adapt = self.burnin if config.adapt_step_size else 0
        self.log_eps = torch.full((C,), math.log(config.epsilon), dtype=torch.float64, device=device)
        self.log_eps_sum = torch.zeros(C, dtype=torch.float64, device=device)  # over the second half of adaptation
        self.accept_sum = torch.zeros(C, dtype=torch.float64, device=device)

    def potential(self, w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """U (C,), ∇U (C, P), L_n (C,)."""
        loss, g = full_data_value_and_grad(self.loss_fn, w, self.x, self.y, self.eval_batch_size)
        diff = w - self.w_star
        return self.nbeta * loss + 0.5 * self.gamma * (diff * diff).sum(1), self.nbeta * g + self.gamma * diff, loss

    def init(self, w: Tensor, gens) -> None:
        self.u, self.grad_u, self.loss = self.potential(w)
        if not torch.isfinite(self.u).all():
            raise ChainDivergenceError(int((~torch.isfinite(self.u)).nonzero()[0]), 0, float("nan"), self.name)

    def step(self, t: int, w: Tensor, draws: Draws) -> Tensor:
        current = self.loss  # L_n(w_t), the trace's entry t
        eps = self.log_eps.exp().to(w.dtype)  # (C,)
        prop = w - 0.5 * eps[:, None] * self.grad_u + eps.sqrt()[:, None] * draws.xi
        u_p, grad_p, loss_p = self.potential(prop)
        log_alpha = mala_log_ratio(w, prop, self.u, u_p, self.grad_u, grad_p, eps[:, None])
        log_alpha = torch.where(torch.isfinite(log_alpha), log_alpha, torch.full_like(log_alpha, -math.inf))
        accept = draws.log_u < log_alpha  # (C,)
        a_prob = log_alpha.clamp(max=0).exp()
        if t < self.adapt:
            # Robbins-Monro on log ε with gain (t+1)^-0.6; the ε kept is the geometric mean
            # over the second half of adaptation, which averages out the last steps' noise.
            self.log_eps += (a_prob - self.config.target_acceptance) * (t + 1) ** -0.6
            if t >= self.adapt // 2:
                self.log_eps_sum += self.log_eps
            if t == self.adapt - 1:
                self.log_eps = self.log_eps_sum / (self.adapt - self.adapt // 2)
        elif t >= self.burnin:
            self.accept_sum += a_prob
        keep = accept[:, None]
        w.copy_(torch.where(keep, prop, w))
        self.grad_u = torch.where(keep, grad_p, self.grad_u)
        self.u = torch.where(accept, u_p, self.u)
        self.loss = torch.where(accept, loss_p, self.loss)
        return current


def estimate_llc_mala(loss_fn: FlatLoss, w_star: Tensor, x: Tensor, y: Tensor, config: MALAConfig, seed: int,
                      eval_batch_size: int = 4096) -> MALAResult:
    """λ̂ = nβ (E_t[L_n(w_t)] - L_n(w*)) from MALA; arguments as for :func:`run_mala`."""
    init = initial_loss(loss_fn, w_star, x, y, eval_batch_size)
    trace = run_mala(loss_fn, w_star, x, y, config, seed, eval_batch_size)
    return MALAResult(
        llc=llc_result(trace.loss, init, trace.nbeta, trace.burnin, config, compile_mode="eager"),  # no compiled step
        acceptance_rate=trace.acceptance_rate,
        epsilon=trace.epsilon,
    )
