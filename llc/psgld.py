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

Randomness follows llc.sgld: chain c owns the generator
``chain_generators(seed, C)[c]`` and draws minibatch indices and noise from it in
blocks, so chain c does not depend on the number of chains.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor
from torch.func import vmap

from core.types import FlatLoss
from llc.diagnostics import split_rhat
from llc.estimate import LLCResult, llc_from_trace
from llc.sgld import SGLDConfig, SGLDDivergenceError, chain_generators, check_compile, full_data_loss

# Noise is drawn in blocks of K steps per chain; K * P is capped at this many numbers.
_NOISE_BLOCK_NUMEL = 1 << 20
_MAX_BLOCK_STEPS = 128


LOCALISATIONS = ("relative", "absolute")
# compile=True where a sampler has no compiled step (pSGLD here, MALA in llc.mala).
COMPILE_TRUE_ERROR = ("compile=True: {sampler} has no compiled step (only llc.sgld's is compiled); "
                      "use compile='auto' or False, which run the eager step")


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
        check_compile(self.compile)
        if self.compile is True:
            raise ValueError(COMPILE_TRUE_ERROR.format(sampler="pSGLD (llc.psgld)"))
        if self.localisation not in LOCALISATIONS:
            raise ValueError(f"localisation must be one of {LOCALISATIONS}; got {self.localisation!r}")
        if not (isinstance(self.rho, (int, float)) and 0 <= self.rho < 1):
            raise ValueError(f"rho must be a number in [0, 1); got {self.rho!r}")
        for key in ("delta", "kappa"):
            v = getattr(self, key)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"{key} must be a finite number > 0; got {v!r}")
        a = self.adapt_steps
        if a is not None and (isinstance(a, bool) or not isinstance(a, (int, np.integer)) or a < 0):
            raise ValueError(f"adapt_steps must be None or an integer >= 0; got {a!r}")

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
) -> PSGLDTrace:
    """Run ``config.num_chains`` preconditioned SGLD chains from w*, vectorised over chains.

    Args:
        loss_fn: mean loss of flat parameters on a batch, (P,), (B, ...), (B, ...) -> ().
        w_star: (P,) centre of localisation and starting point; sets device and dtype.
        x, y: the n training points, on w*'s device.
        config: step size ε (dimensionless here, see the module docstring), γ, steps,
            batch, chains, nβ, burn-in and trace kind, as for plain SGLD.
        precond: the preconditioner's and the localiser's settings.
        seed: base seed of the per-chain generators.
        segments: numel of each parameter tensor in w's order (the unit of the floor,
            of D_0 and of the relative localiser); None treats w as one tensor.
        eval_batch_size: chunk size for full-data losses.
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
    from llc.mala import mala_log_ratio  # llc.mala imports this module's llc_result

    n = x.shape[0]
    if config.batch_size > n:
        raise ValueError(f"batch_size must be <= the number of data points ({n}); got {config.batch_size}")
    if w_star.ndim != 1:
        raise ValueError(f"w_star must be a flat (P,) vector; got shape {tuple(w_star.shape)}")
    device, C, T, P, B = w_star.device, config.num_chains, config.num_steps, w_star.numel(), config.batch_size
    nbeta, burnin, eps, gamma = config.resolve_nbeta(n), config.burnin(), config.epsilon, config.gamma
    adapt = precond.resolve_adapt_steps(config) if preconditioner is None else 0
    if preconditioner is not None and (preconditioner.shape != (P,) or not bool((preconditioner > 0).all())):
        raise ValueError(f"preconditioner must be a positive ({P},) vector; got shape {tuple(preconditioner.shape)}")
    if scales is not None and (scales.shape != (P,) or not bool(((scales > 0) & torch.isfinite(scales)).all())):
        raise ValueError(f"scales must be a positive finite ({P},) vector; got shape {tuple(scales.shape)}")
    if accept_every is not None and (isinstance(accept_every, bool) or not isinstance(accept_every, int) or accept_every < 1):
        raise ValueError(f"accept_every must be None or an integer >= 1; got {accept_every!r}")
    seg = segment_ids(segments, P, device)
    counts = torch.bincount(seg).to(w_star.dtype)
    gens = chain_generators(seed, C, device)
    block = max(1, min(_MAX_BLOCK_STEPS, _NOISE_BLOCK_NUMEL // P, T))
    batched_loss = vmap(loss_fn)

    w_star = w_star.detach()
    w = w_star.expand(C, P).clone()  # (C, P)
    m = tensor_scale(w_star, seg) if scales is None else scales.to(device=device, dtype=w.dtype)  # (P,)
    loc = gamma / m if precond.localisation == "relative" else torch.full_like(m, gamma)  # (P,) γ / m
    v = (1.0 / (precond.kappa * m)).expand(C, P).clone()  # (C, P) running E[g²], V_0 = 1 / (κ m)
    d = 1.0 / (v + precond.delta * _segment_mean(v, seg, counts))  # (C, P) preconditioner D
    if preconditioner is not None:
        d = preconditioner.to(device=device, dtype=w.dtype).expand(C, P).clone()
    noise_scale = torch.sqrt(eps * d)
    trace = torch.full((C, T), float("nan"), dtype=torch.float64, device=device)
    idx = torch.empty(C, block, B, dtype=torch.long, device=device)  # (C, K, B)
    xi = torch.empty(C, block, P, dtype=w.dtype, device=device)  # (C, K, P)
    accept_probs = []  # (C,) per recorded transition
    with torch.no_grad():
        for t0 in range(0, T, block):
            k = min(block, T - t0)
            for c, g in enumerate(gens):
                torch.randint(0, n, (k, B), generator=g, device=device, out=idx[c, :k])
                torch.randn(k, P, generator=g, device=device, dtype=w.dtype, out=xi[c, :k])
            for j in range(k):
                t = t0 + j
                if not config.loss_trace_minibatch and t >= burnin:
                    trace[:, t] = full_data_loss(loss_fn, w, x, y, eval_batch_size)  # L_n(w_t)
                flat_idx = idx[:, j].reshape(-1)
                xb = x.index_select(0, flat_idx).view(C, B, *x.shape[1:])  # (C, B, ...)
                yb = y.index_select(0, flat_idx).view(C, B, *y.shape[1:])
                with torch.enable_grad():
                    wg = w.detach().requires_grad_(True)
                    loss = batched_loss(wg, xb, yb)  # (C,) L_B(w_t)
                    (grad,) = torch.autograd.grad(loss.sum(), wg)  # (C, P): chains do not interact
                grad = grad * nbeta
                if t < adapt:
                    v.mul_(precond.rho).addcmul_(grad, grad, value=1 - precond.rho)
                    d = 1.0 / (v + precond.delta * _segment_mean(v, seg, counts))
                    noise_scale = torch.sqrt(eps * d)
                drift = grad.add_(loc * (w - w_star))  # ∇U = nβ ∇L_B + γ (w - w*) / m
                check = accept_every is not None and (t + 1) % accept_every == 0
                if check:
                    w_old, u_old, drift_old = w.clone(), _potential(loss.detach(), w, w_star, loc, nbeta), drift.clone()
                w.addcmul_(d, drift, value=-eps / 2).addcmul_(noise_scale, xi[:, j])
                if check:
                    with torch.enable_grad():
                        wg = w.detach().requires_grad_(True)
                        loss_new = batched_loss(wg, xb, yb)  # (C,) L_B(w_{t+1}) on the same batch
                        (grad_new,) = torch.autograd.grad(loss_new.sum(), wg)
                    u_new = _potential(loss_new.detach(), w, w_star, loc, nbeta)
                    grad_new = grad_new * nbeta + loc * (w - w_star)
                    log_r = mala_log_ratio(w_old, w, u_old, u_new, drift_old, grad_new, eps,
                                           None if accept_identity_density else d)
                    log_r = torch.where(torch.isnan(log_r), torch.full_like(log_r, -math.inf), log_r)
                    accept_probs.append(log_r.clamp(max=0).exp())
                if config.loss_trace_minibatch:
                    trace[:, t] = loss.detach()
            _check_finite(trace[:, t0:t0 + k], t0, None if config.loss_trace_minibatch else burnin)
    if not torch.isfinite(w).all():
        bad = int(torch.nonzero(~torch.isfinite(w).all(dim=1))[0])
        raise SGLDDivergenceError(bad, T, float("nan"))
    accept = torch.stack(accept_probs, 1).cpu().numpy() if accept_every is not None and accept_probs else None
    if accept_every is not None and accept is None:
        accept = np.zeros((C, 0))
    return PSGLDTrace(loss=trace.cpu(), final_w=w, preconditioner=d, nbeta=nbeta, burnin=burnin,
                      mala_acceptance=accept)


def _potential(loss: Tensor, w: Tensor, w_star: Tensor, loc: Tensor, nbeta: float) -> Tensor:
    """U_B(w) = nβ L_B(w) + ½ Σ loc (w - w*)², (C,), the minibatch potential the chain follows."""
    diff = w - w_star
    return nbeta * loss + 0.5 * (loc * diff * diff).sum(1)


def _check_finite(block: Tensor, t0: int, skip_nan_before: int | None) -> None:
    """Raise SGLDDivergenceError at the first non-finite entry of a (C, k) trace block."""
    if skip_nan_before is not None:  # full-data traces hold NaN placeholders before burn-in
        start = max(0, skip_nan_before - t0)
        block, t0 = block[:, start:], t0 + start
    bad = ~torch.isfinite(block)
    if bool(bad.any()):
        step = int(bad.any(dim=0).nonzero()[0])
        chain = int(bad[:, step].nonzero()[0])
        raise SGLDDivergenceError(chain, t0 + step, float(block[chain, step]))


def llc_result(loss_trace: Tensor, init_loss: float, nbeta: float, burnin: int, config,
               compile_mode: str = "eager") -> LLCResult:
    """LLCResult (λ̂ mean, std, per chain, R-hat) from a (C, T) trace and L_n(w*).

    compile_mode: the step that ran (an SGLDTrace's ``compile_mode``; pSGLD never compiles).
    """
    per_chain = llc_from_trace(loss_trace, init_loss, nbeta, burnin)
    post = loss_trace[:, burnin:].numpy()
    return LLCResult(
        lambdahat=float(per_chain.mean()),
        lambdahat_std=float(per_chain.std(ddof=1)) if per_chain.size > 1 else 0.0,
        lambdahat_per_chain=per_chain,
        rhat=split_rhat(post) if per_chain.size > 1 else float("nan"),
        init_loss=init_loss,
        nbeta=nbeta,
        loss_trace=loss_trace.numpy(),
        burnin=burnin,
        config=config,
        compile_mode=compile_mode,
    )


def initial_loss(loss_fn: FlatLoss, w_star: Tensor, x: Tensor, y: Tensor, eval_batch_size: int = 4096) -> float:
    """L_n(w*), the full-data loss at the centre; FloatingPointError if it is not finite."""
    with torch.no_grad():
        value = float(full_data_loss(loss_fn, w_star[None], x, y, eval_batch_size)[0])
    if not math.isfinite(value):
        raise FloatingPointError(f"L_n(w*) is not finite ({value}); cannot estimate the LLC there")
    return value


def estimate_llc_psgld(
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
    scales: Tensor | None = None,
) -> LLCResult:
    """λ̂ = nβ (E_t[L(w_t)] - L_n(w*)) from preconditioned SGLD; arguments as for :func:`run_psgld`.

    Raises:
        SGLDDivergenceError: a chain diverged (names the chain and step).
    """
    return estimate_llc_psgld_traced(loss_fn, w_star, x, y, config, precond, seed, segments, eval_batch_size,
                                     preconditioner, scales=scales)[0]


def estimate_llc_psgld_traced(
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
) -> tuple[LLCResult, PSGLDTrace]:
    """As :func:`estimate_llc_psgld`, also returning the raw trace (D, MALA acceptance probabilities)."""
    init = initial_loss(loss_fn, w_star, x, y, eval_batch_size)
    trace = run_psgld(loss_fn, w_star, x, y, config, precond, seed, segments, eval_batch_size, preconditioner,
                      accept_every, scales, accept_identity_density)
    return llc_result(trace.loss, init, trace.nbeta, trace.burnin, config), trace
