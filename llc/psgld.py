"""Preconditioned SGLD with an RMSprop-style diagonal preconditioner, vectorised over chains.

Plain SGLD (llc.sgld) is not equivariant under reparameterisation: rescaling layer 1
by α and layer 2 by 1/α leaves a ReLU network's function unchanged but multiplies
the effective step size of the two layers by 1/α² and α², and its isotropic
localiser (γ/2)||w - w*||² is not invariant either. This sampler targets

    p(w) ∝ exp(-nβ L_n(w) - (γ/2) Σ_s ||w_s - w*_s||² / m_s),

with s running over w's parameter tensors and m_s = mean(w*_s²) under the default
``localisation='relative'`` (each tensor localised relative to its own size), or
m_s = 1 under ``'absolute'`` (plain SGLD's target). One step on a minibatch B
(preconditioned SGLD, Li et al. 2016, "Preconditioned stochastic gradient Langevin
dynamics for deep neural networks"; the Γ correction term is dropped because D is
constant once frozen) is

    g_t     = nβ ∇L_B(w_t)                                   (L a mean over the batch)
    V_t     = ρ V_{t-1} + (1 - ρ) g_t ⊙ g_t                  (only while adapting)
    D_t     = 1 / (V_t + δ · mean_s V_t)                     (mean over w's tensor s)
    w_{t+1} = w_t - (ε/2) D_t ⊙ (g_t + γ (w_t - w*) / m) + sqrt(ε D_t) ⊙ ξ_t.

V is RMSprop's running second moment of the loss gradient (the localiser's gradient
is left out of it, so D measures the loss landscape and does not depend on γ). D is its inverse
rather than the inverse square root used by RMSprop and Li et al.: under w -> S w
with S diagonal, g -> S⁻¹ g and V -> S⁻² V, so D -> S² D transforms like a metric;
with S constant on each tensor m -> S² m too, and the chain seen in the original
coordinates is unchanged. The sampler is then equivariant and λ̂ invariant under any
per-tensor rescaling (up to float rounding), which the inverse square root (D -> S D)
is not. Because D ≈ (nβ ∇²L)⁻¹ at equilibrium, ε is dimensionless here: every
direction relaxes at about ε/2 per step, so ε ~ 1e-2 where plain SGLD needs
ε ~ 1/(nβ · largest curvature). With D ≡ 1 and m ≡ 1 the step is llc.sgld's.

A fixed preconditioner instead (``run_psgld(..., preconditioner=D)``) skips V: D is the
given (P,) vector throughout. rescaling_invariance.ipynb uses D = S² with S the rescaling
map (models.relu_mlp.layer_preconditioner), under which the chain at α is the α = 1
chain rescaled; D ≡ 1 with ``localisation='absolute'`` is plain SGLD.

With ``accept_every = k`` the run also records, every k-th step, the probability
with which MALA would accept that SGLD transition w_t -> w_{t+1}, on the step's own
minibatch (llc.mala.mala_log_ratio with this step's D): the diagnostic the original
notebooks print every 20 steps. It costs one more minibatch gradient per k steps.
``accept_identity_density=True`` evaluates the proposal density with D = 1 whatever
the chain's D, as rescaling_invariance.ipynb does for its preconditioned chain: that
is not the acceptance probability of the chain that ran when D ≠ 1.

Adaptation runs for ``adapt_steps`` steps (default: the burn-in), then D is frozen,
so every kept draw comes from one fixed Markov kernel.

V starts at V_0 = 1 / (κ m_s) per tensor (m_s = mean(w*_s²) in both localisations):
the first steps move each tensor by a fraction ~sqrt(εκ) of its own scale, which
again is rescaling-equivariant. (At a realisable w* the gradient is exactly zero, so
it cannot seed V.) A tensor that is all zero at w* (a zero bias) has no scale of its
own: :func:`tensor_scale` gives it the mean over all of w*, which is *not*
equivariant (at α = 1e-4 it is set by the 1/α-scaled layer, D_0 of a zero first-layer
bias comes out ~1e10 times too large and the chain is thrown off on its first step).
Callers that know the network pass ``scales`` instead (expt_rescaling_invariance: a
zero bias takes the mean square of the pre-activations it is added to).

The step is a kernel on llc.chain's driver, which owns the randomness as for llc.sgld:
chain c owns the generator ``chain_generators(seed, C)[c]`` and draws minibatch
indices and noise from it in blocks, so chain c does not depend on the number of chains.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor
from torch.func import vmap

from core import checks
from core.types import FlatLoss
from llc.chain import (
    Draws,
    StepCallback,
    Stream,
    check_int,
    check_number,
    data_size,
    reject_compile_true,
    run_minibatch_chains,
)
from llc.minibatch import Minibatches
from llc.precision import autocast, check_amp_device
from llc.result import LLCResult, initial_loss, llc_result
from llc.sgld import SGLDConfig

__all__ = ["PSGLDConfig", "PSGLDTrace", "estimate_llc_psgld", "estimate_llc_psgld_traced", "initial_loss",
           "llc_result", "run_psgld", "segment_ids", "tensor_scale"]

LOCALISATIONS = ("relative", "absolute")


@dataclass(frozen=True)
class PSGLDConfig:
    """What :func:`run_psgld` adds to an SGLDConfig: the preconditioner and the localiser.

    Attributes:
        rho: decay of the running second moment V (RMSprop's α), in [0, 1).
        delta: relative floor: D = 1 / (V + δ mean_s V), so D is at most
            1 / (δ mean_s V) in parameters whose gradient vanishes (> 0).
        kappa: initial D_0 = κ · mean_s(w*²) per tensor (> 0).
        adapt_steps: steps during which V is updated; None -> the burn-in. 0 keeps D_0.
        localisation: 'relative' (γ/2 Σ_s ||w_s - w*_s||² / mean(w*_s²): equivariant)
            or 'absolute' (γ/2 ||w - w*||²: plain SGLD's target).
        compile: "auto" (default), True or False, as SGLDConfig's. pSGLD has no compiled
            step, so "auto" and False run eager and True is a ValueError (not a silent
            eager run). :func:`run_psgld` reads this key, not its SGLDConfig's ``compile``.
    """

    rho: float = 0.99
    delta: float = 1e-3
    kappa: float = 1e-4
    adapt_steps: int | None = None
    localisation: str = "relative"
    compile: bool | str = "auto"

    def __post_init__(self):
        reject_compile_true(self.compile, "pSGLD (llc.psgld)")
        checks.one_of("localisation", self.localisation, LOCALISATIONS)
        check_number("rho", self.rho, 0, 1, hi_open=True)  # ρ = 1 would never update V
        for key in ("delta", "kappa"):
            check_number(key, getattr(self, key), 0, strict=True)
        check_int("adapt_steps", self.adapt_steps, 0, none_ok=True)

    def resolve_adapt_steps(self, config: SGLDConfig) -> int:
        return config.burnin() if self.adapt_steps is None else min(int(self.adapt_steps), config.num_steps)


@dataclass
class PSGLDTrace:
    """Raw output of :func:`run_psgld`.

    Attributes:
        loss: (C, T) float64 loss trace on CPU (as llc.sgld.SGLDTrace.loss).
        final_w: (C, P) last state of each chain.
        preconditioner: (C, P) the frozen D of each chain.
        nbeta: the n·β used.
        burnin: number of discarded leading draws.
        mala_acceptance: (C, K) MALA acceptance probability of every ``accept_every``-th
            transition (steps k-1, 2k-1, ...), float64 on CPU; None when not recorded.
    """

    loss: Tensor
    final_w: Tensor
    preconditioner: Tensor
    nbeta: float
    burnin: int
    mala_acceptance: np.ndarray | None = None


def segment_ids(sizes: Sequence[int] | None, num_params: int, device: torch.device) -> Tensor:
    """(P,) tensor index of every parameter; ``sizes`` are the tensors' numels (None: one tensor)."""
    sizes = [num_params] if sizes is None else [int(s) for s in sizes]
    if any(s < 1 for s in sizes) or sum(sizes) != num_params:
        raise ValueError(f"segment sizes must be positive and sum to the parameter count {num_params}; got {sizes}")
    return torch.repeat_interleave(torch.arange(len(sizes), device=device), torch.tensor(sizes, device=device))


def _segment_mean(v: Tensor, seg: Tensor, counts: Tensor) -> Tensor:
    """Mean of v (C, P) over each segment, broadcast back to (C, P)."""
    sums = torch.zeros(v.shape[0], counts.numel(), dtype=v.dtype, device=v.device).index_add_(1, seg, v)
    return (sums / counts)[:, seg]


def tensor_scale(w_star: Tensor, seg: Tensor) -> Tensor:
    """m (P,) = mean(w*_s²) over each parameter's segment s.

    A segment that is all zero takes the mean over all of w*; an all-zero w* takes 1.
    That fallback is not rescaling-equivariant (module docstring); pass ``scales`` to
    :func:`run_psgld` where it matters.
    """
    counts = torch.bincount(seg).to(w_star.dtype)
    ms = _segment_mean((w_star.detach() ** 2)[None], seg, counts)[0]
    overall = float((w_star.detach() ** 2).mean()) if w_star.numel() else 0.0
    return torch.where(ms > 0, ms, torch.full_like(ms, overall if overall > 0 else 1.0))


def run_psgld(
    loss_fn: FlatLoss,
    w_star: Tensor,
    x: Tensor,
    y: Tensor,
    config: SGLDConfig,
    precond: PSGLDConfig,
    seed: int,
    segments: Sequence[int] | None = None,
    eval_batch_size: int = 4096,
    preconditioner: Tensor | None = None,
    accept_every: int | None = None,
    scales: Tensor | None = None,
    accept_identity_density: bool = False,
    callback: StepCallback | None = None,
    stream: Stream | None = None,
) -> PSGLDTrace:
    """Run ``config.num_chains`` preconditioned SGLD chains from w*, vectorised over chains.

    ``loss_fn``, ``w_star``, ``x``, ``y``, ``seed``, ``eval_batch_size``, ``callback`` and
    ``stream`` are as for llc.sgld.run_sgld.

    Args:
        config: step size ε (dimensionless here, see the module docstring), γ, steps,
            batch, chains, nβ, burn-in and trace kind, as for plain SGLD.
        precond: the preconditioner's and the localiser's settings.
        segments: numel of each parameter tensor in w's order (the unit of the floor,
            of D_0 and of the relative localiser); None treats w as one tensor.
        preconditioner: (P,) fixed diagonal D (> 0); None adapts D as above (``precond``'s
            rho, delta, kappa and adapt_steps are then unused, its localisation is used).
        accept_every: record the MALA acceptance probability of every k-th transition; None: not.
        scales: (P,) positive m per parameter, the unit of D_0 and of the relative localiser;
            None -> :func:`tensor_scale` (mean(w*²) per tensor).
        accept_identity_density: the acceptance probability with D = 1 in the proposal
            density (the notebook's formula) instead of the chain's D.

    Returns:
        PSGLDTrace with the (C, T) loss trace and each chain's frozen D.

    Raises:
        ValueError: batch_size > n, segments that do not add up to P, a preconditioner
            or scales that are not (P,) and positive and finite, or accept_every < 1.
        SGLDDivergenceError: a chain's loss became NaN or inf.
    """
    n = data_size(x, stream, config.batch_size, w_star)
    P = w_star.numel()
    if preconditioner is not None and (preconditioner.shape != (P,) or not bool((preconditioner > 0).all())):
        raise ValueError(f"preconditioner must be a positive ({P},) vector; got shape {tuple(preconditioner.shape)}")
    if scales is not None and (scales.shape != (P,) or not bool(((scales > 0) & torch.isfinite(scales)).all())):
        raise ValueError(f"scales must be a positive finite ({P},) vector; got shape {tuple(scales.shape)}")
    bad_every = isinstance(accept_every, bool) or not isinstance(accept_every, int) or accept_every < 1
    if accept_every is not None and bad_every:
        raise ValueError(f"accept_every must be None or an integer >= 1; got {accept_every!r}")
    kernel = PSGLDKernel(loss_fn, w_star, x, y, config, precond, config.resolve_nbeta(n), segments, preconditioner,
                         accept_every, scales, accept_identity_density)
    trace, w = run_minibatch_chains(kernel, loss_fn, w_star, x, y, config, seed, eval_batch_size, callback, stream)
    accept = None
    if accept_every is not None:
        accept = torch.stack(kernel.accept_probs, 1).cpu().numpy() if kernel.accept_probs else np.zeros((w.shape[0], 0))
    return PSGLDTrace(loss=trace.cpu(), final_w=w, preconditioner=kernel.d, nbeta=kernel.nbeta,
                      burnin=config.burnin(), mala_acceptance=accept)


class PSGLDKernel:
    """The preconditioned SGLD step (module docstring) as an llc.chain kernel; holds V, D and m."""

    name = "SGLD"
    uniform = False

    def __init__(self, loss_fn: FlatLoss, w_star: Tensor, x: Tensor, y: Tensor, config: SGLDConfig,
                 precond: PSGLDConfig, nbeta: float, segments: Sequence[int] | None, preconditioner: Tensor | None,
                 accept_every: int | None, scales: Tensor | None, accept_identity_density: bool):
        device, C, P = w_star.device, config.num_chains, w_star.numel()
        self.batch_size, self.nbeta, self.eps, self.precond = config.batch_size, nbeta, config.epsilon, precond
        self.loss_fn, self.batched_loss, self.x, self.y = loss_fn, vmap(loss_fn), x, y
        self.batches = Minibatches(x, y)  # (x, y, idx (C, B)) -> their rows (llc.minibatch)
        self.w_star = w_star = w_star.detach()
        check_amp_device(config.amp, device, w_star.dtype)
        self.amp = config.amp
        self.accept_every, self.identity_density, self.accept_probs = accept_every, accept_identity_density, []
        self.adapt = precond.resolve_adapt_steps(config) if preconditioner is None else 0
        self.seg = segment_ids(segments, P, device)
        self.counts = torch.bincount(self.seg).to(w_star.dtype)
        m = tensor_scale(w_star, self.seg) if scales is None else scales.to(device=device, dtype=w_star.dtype)  # (P,)
        self.loc = config.gamma / m if precond.localisation == "relative" else torch.full_like(m, config.gamma)  # γ / m
        self.v = (1.0 / (precond.kappa * m)).expand(C, P).clone()  # (C, P) running E[g²], V_0 = 1 / (κ m)
        self.d = 1.0 / (self.v + precond.delta * _segment_mean(self.v, self.seg, self.counts))  # (C, P) D
        if preconditioner is not None:
            self.d = preconditioner.to(device=device, dtype=w_star.dtype).expand(C, P).clone()
        self.noise_scale = torch.sqrt(self.eps * self.d)

    def init(self, w: Tensor, gens) -> None:
        pass

    def step(self, t: int, w: Tensor, draws: Draws) -> Tensor:
        from llc.mala import mala_log_ratio  # llc.mala imports this module

        eps, nbeta, loc, w_star, precond = self.eps, self.nbeta, self.loc, self.w_star, self.precond
        xb, yb = self.batches(self.x, self.y, draws.idx)  # (C, B, ...)
        with torch.enable_grad(), autocast(self.amp, w.device):  # amp: llc.precision
            wg = w.detach().requires_grad_(True)
            loss = self.batched_loss(wg, xb, yb).to(w.dtype)  # (C,) L_B(w_t)
            (grad,) = torch.autograd.grad(loss.sum(), wg)  # (C, P): chains do not interact
        grad = grad * nbeta
        if t < self.adapt:
            self.v.mul_(precond.rho).addcmul_(grad, grad, value=1 - precond.rho)
            self.d = 1.0 / (self.v + precond.delta * _segment_mean(self.v, self.seg, self.counts))
            self.noise_scale = torch.sqrt(eps * self.d)
        d = self.d
        drift = grad.add_(loc * (w - w_star))  # ∇U = nβ ∇L_B + γ (w - w*) / m
        check = self.accept_every is not None and (t + 1) % self.accept_every == 0
        if check:
            w_old, u_old, drift_old = w.clone(), _potential(loss.detach(), w, w_star, loc, nbeta), drift.clone()
        w.addcmul_(d, drift, value=-eps / 2).addcmul_(self.noise_scale, draws.xi)
        if check:
            with torch.enable_grad(), autocast(self.amp, w.device):
                wg = w.detach().requires_grad_(True)
                loss_new = self.batched_loss(wg, xb, yb).to(w.dtype)  # (C,) L_B(w_{t+1}) on the same batch
                (grad_new,) = torch.autograd.grad(loss_new.sum(), wg)
            u_new = _potential(loss_new.detach(), w, w_star, loc, nbeta)
            grad_new = grad_new * nbeta + loc * (w - w_star)
            log_r = mala_log_ratio(w_old, w, u_old, u_new, drift_old, grad_new, eps,
                                   None if self.identity_density else d)
            log_r = torch.where(torch.isnan(log_r), torch.full_like(log_r, -math.inf), log_r)
            self.accept_probs.append(log_r.clamp(max=0).exp())
        return loss.detach()


def _potential(loss: Tensor, w: Tensor, w_star: Tensor, loc: Tensor, nbeta: float) -> Tensor:
    """U_B(w) = nβ L_B(w) + ½ Σ loc (w - w*)², (C,), the minibatch potential the chain follows."""
    diff = w - w_star
    return nbeta * loss + 0.5 * (loc * diff * diff).sum(1)


def estimate_llc_psgld(loss_fn: FlatLoss, w_star: Tensor, x: Tensor, y: Tensor, config: SGLDConfig,
                       precond: PSGLDConfig, seed: int, segments: Sequence[int] | None = None,
                       eval_batch_size: int = 4096, preconditioner: Tensor | None = None,
                       scales: Tensor | None = None) -> LLCResult:
    """λ̂ = nβ (E_t[L(w_t)] - L_n(w*)) from preconditioned SGLD; arguments as for :func:`run_psgld`.

    Raises:
        SGLDDivergenceError: a chain diverged (names the chain and step).
    """
    return estimate_llc_psgld_traced(loss_fn, w_star, x, y, config, precond, seed, segments, eval_batch_size,
                                     preconditioner, scales=scales)[0]


def estimate_llc_psgld_traced(loss_fn: FlatLoss, w_star: Tensor, x: Tensor, y: Tensor, config: SGLDConfig,
                              precond: PSGLDConfig, seed: int, segments: Sequence[int] | None = None,
                              eval_batch_size: int = 4096, preconditioner: Tensor | None = None,
                              accept_every: int | None = None, scales: Tensor | None = None,
                              accept_identity_density: bool = False) -> tuple[LLCResult, PSGLDTrace]:
    """As :func:`estimate_llc_psgld`, also returning the raw trace (D, MALA acceptance probabilities).

    Arguments as for :func:`run_psgld`.
    """
    init = initial_loss(loss_fn, w_star, x, y, eval_batch_size)
    trace = run_psgld(loss_fn, w_star, x, y, config, precond, seed, segments, eval_batch_size, preconditioner,
                      accept_every, scales, accept_identity_density)
    return llc_result(trace.loss, init, trace.nbeta, trace.burnin, config), trace
