"""SGLD on the localized, tempered posterior, vectorised over chains with vmap.

The target is (Lau et al., "Quantifying degeneracy in singular models via the
learning coefficient"; docs/notes/llc.md#sgld-estimator)

    p(w) ∝ exp(-nβ L_n(w) - (γ/2) ||w - w*||²)

and one SGLD step on a minibatch B is

    Δw = -(ε/2) (nβ ∇L_B(w) + γ (w - w*)) + sqrt(ε) ξ,    ξ ~ N(0, I).

L is a *mean* over the batch (the caller's ``loss_fn`` decides what it means:
MSE over batch and outputs with no 1/2 for regression, mean cross-entropy for
classification). The chains are one (C, P) tensor of flat parameter vectors; each
step gathers every chain's minibatch with one index_select, evaluates
``vmap(loss_fn)`` on all chains, and takes one backward pass through the sum (the
chains do not interact, so that is each chain's own gradient). With
``SGLDConfig.compile`` True, or "auto" (the default) on a run of at least
``COMPILE_AUTO_MIN_CHAIN_STEPS`` chain-steps, the whole step is compiled with
torch.compile instead; the trace records which path ran.

Randomness: chain c owns a ``torch.Generator`` seeded from (seed, c) via numpy's
SeedSequence, and draws its minibatch indices (with replacement) and its noise
from it in blocks of K steps, K depending only on the parameter count. Chain c
therefore draws the same batches and noise whatever the number of chains, and the
same seed gives the same chains. Its trajectory is bit-identical for any two chain
counts >= 2; one chain runs unvmapped (faster on CPU) and matches to float rounding.
"""
from __future__ import annotations

import math
import types
import warnings
import weakref
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import Tensor
from torch.func import grad_and_value, vmap

from core.runtime import derived_seed
from core.types import FlatLoss

StepCallback = Callable[[int, Tensor, Tensor, Tensor], None]  # (t, w_t (C, P), w_{t+1} (C, P), idx_t (C, B))

# Noise is drawn in blocks of K steps per chain; K * P is capped at this many numbers.
_NOISE_BLOCK_NUMEL = 1 << 20
_MAX_BLOCK_STEPS = 128

# compile="auto" compiles runs of num_chains * num_steps >= this many chain-steps: the
# break-even point where the first call's compile cost is repaid by the per-step saving,
# measured by bench/compile_threshold.py (BENCHMARKS.md, "compile='auto' threshold").
COMPILE_AUTO_MIN_CHAIN_STEPS = 50_000
COMPILE_CHOICES = ("auto", True, False)


class SGLDDivergenceError(FloatingPointError):
    """A chain produced a non-finite loss; carries the chain and step index."""

    def __init__(self, chain: int, step: int, value: float):
        self.chain, self.step, self.value = chain, step, value
        super().__init__(
            f"SGLD diverged: chain {chain} has non-finite loss {value} at step {step} "
            "(try a smaller epsilon or a larger gamma)"
        )


def check_compile(value) -> None:
    """ValueError naming the key unless value is "auto", True or False (not 1, 0 or "true")."""
    if not (value == "auto" and isinstance(value, str) or isinstance(value, bool)):
        raise ValueError(f"compile must be one of 'auto', True, False; got {value!r}")


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
        compile: "auto" (default), True or False. True: torch.compile the whole step
            (gather, vmap(grad), update); the first step then takes a few seconds to
            compile on CPU and later steps are cheaper, which pays off for long runs
            only. "auto": compile when num_chains * num_steps >=
            COMPILE_AUTO_MIN_CHAIN_STEPS (the measured break-even), else eager.
            Results match the eager step up to float rounding, not bit for bit.
            Falls back to the eager step, with a warning, if compilation fails.
    """

    epsilon: float = 1e-5
    gamma: float = 10.0
    num_steps: int = 5000
    batch_size: int = 100
    num_chains: int = 4
    nbeta: float | None = None
    num_burnin_steps: int | None = None
    loss_trace_minibatch: bool = True
    compile: bool | str = "auto"

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
        check_compile(self.compile)

    def wants_compile(self) -> bool:
        """Whether this run attempts the compiled step: compile=True, or "auto" on a long run."""
        if self.compile == "auto":
            return self.num_chains * self.num_steps >= COMPILE_AUTO_MIN_CHAIN_STEPS
        return self.compile

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
        compile_mode: the step that ran: "eager" (not attempted), "compiled", or
            "eager-fallback" (torch.compile was attempted and failed).
    """

    loss: Tensor
    final_w: Tensor
    nbeta: float
    burnin: int
    compile_mode: str = "eager"

    @property
    def compiled(self) -> bool:
        return self.compile_mode == "compiled"


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
    callback: StepCallback | None = None,
) -> SGLDTrace:
    """Run ``config.num_chains`` SGLD chains started at w*, all in one vectorised step.

    Args:
        loss_fn: mean loss of flat parameters on a batch, (P,), (B, ...), (B, ...) -> ().
        w_star: (P,) centre of localisation and starting point; sets device and dtype.
        x, y: the n training points, on w*'s device.
        config: sampler hyperparameters.
        seed: base seed of the per-chain generators.
        eval_batch_size: chunk size for full-data losses.
        callback: ``callback(t, w_t (C, P), w_{t+1} (C, P), idx_t (C, B))`` after every
            step, e.g. for distances or MALA acceptance probabilities (costs a copy of w).

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
    device, C, T, P, B = w_star.device, config.num_chains, config.num_steps, w_star.numel(), config.batch_size
    nbeta, burnin, eps = config.resolve_nbeta(n), config.burnin(), config.epsilon
    gens = chain_generators(seed, C, device)
    block = max(1, min(_MAX_BLOCK_STEPS, _NOISE_BLOCK_NUMEL // P, T))

    # w <- w + Δw with Δw = (εγ/2)(w* - w) - (ε nβ/2) g + sqrt(ε) ξ summed first. In float32
    # the old form (1 - εγ/2) w rounds the factor itself (ε=5e-7, γ=1: γ off by 4.6%);
    # summed into Δw, the pull's rounding is dithered by the noise and has no bias.
    pull, drift, noise = eps * config.gamma / 2, -eps * nbeta / 2, math.sqrt(eps)
    w_star = w_star.detach()
    eager = _eager_step(loss_fn, pull, drift, noise)
    if config.wants_compile():
        coef = torch.tensor([pull, drift, noise], dtype=w_star.dtype, device=device)
        step = _compiled_step(loss_fn, coef)
    else:
        step = eager

    w = w_star.expand(C, P).clone()  # (C, P)
    trace = torch.full((C, T), float("nan"), dtype=torch.float64, device=device)
    # Each chain's draws land in its own contiguous slice, so the numbers equal
    # torch.randint(k, B) then torch.randn(k, P) from that chain's generator.
    idx = torch.empty(C, block, B, dtype=torch.long, device=device)  # (C, K, B)
    xi = torch.empty(C, block, P, dtype=w.dtype, device=device)  # (C, K, P)
    with torch.no_grad():
        for t0 in range(0, T, block):
            k = min(block, T - t0)
            for c, g in enumerate(gens):
                torch.randint(0, n, (k, B), generator=g, device=device, out=idx[c, :k])
                torch.randn(k, P, generator=g, device=device, dtype=w.dtype, out=xi[c, :k])
            # (k, C, ...) copies: each step's draws contiguous, with strides that do not depend
            # on k or C (a compiled step guards on strides and would otherwise recompile).
            idx_by_step = torch.empty(k, C, B, dtype=idx.dtype, device=device).copy_(idx[:, :k].transpose(0, 1))
            xi_by_step = torch.empty(k, C, P, dtype=xi.dtype, device=device).copy_(xi[:, :k].transpose(0, 1))
            losses = []
            for j in range(k):
                t = t0 + j
                if not config.loss_trace_minibatch and t >= burnin:
                    trace[:, t] = full_data_loss(loss_fn, w, x, y, eval_batch_size)  # L_n(w_t), before the step
                args = (w, idx_by_step[j], xi_by_step[j], x, y, w_star)
                w_t = w.clone() if callback is not None else None
                if t == 0 and step is not eager:
                    step, loss = _first_compiled_call(step, eager, args)
                else:
                    loss = step(*args)  # (C,) L_B(w_t); w becomes w_{t+1} in place
                losses.append(loss)
                if callback is not None:
                    callback(t, w_t, w, idx_by_step[j])
            if config.loss_trace_minibatch:
                trace[:, t0:t0 + k] = torch.stack(losses, 1)
            _check_finite(trace[:, t0:t0 + k], t0, skip_nan_before=None if config.loss_trace_minibatch else burnin)
    if not torch.isfinite(w).all():
        bad = int(torch.nonzero(~torch.isfinite(w).all(dim=1))[0])
        raise SGLDDivergenceError(bad, T, float("nan"))
    return SGLDTrace(loss=trace.cpu(), final_w=w, nbeta=nbeta, burnin=burnin,
                     compile_mode=compile_mode(config, step, eager))


def mala_acceptance_probability(
    loss_fn: FlatLoss, w: Tensor, w_next: Tensor, xb: Tensor, yb: Tensor, w_star: Tensor,
    eps: float, nbeta: float, gamma: float,
) -> Tensor:
    """MALA acceptance probability of the SGLD transitions w -> w_next, one per chain.

    With the minibatch potential U(w) = nβ L_B(w) + (γ/2)||w - w*||² (the SGLD step's
    own target, llc/mala.py's U with L_n replaced by L_B) and the Langevin proposal
    log q(a | b) = -||a - b + (ε/2) ∇U(b)||² / (2ε),

        α = min(1, exp(U(w) - U(w') + log q(w | w') - log q(w' | w))),

    the diagnostic the original's sgld_utils.mala_acceptance_probability records:
    values near 1 say ε is small enough for the discretisation bias to be small.

    Args:
        w, w_next: (C, P) states before and after one step.
        xb, yb: (C, B, ...) each chain's minibatch.
    Returns:
        (C,) float64 probabilities.
    """
    def potential(wc, xc, yc):
        diff = wc - w_star
        return nbeta * loss_fn(wc, xc, yc) + 0.5 * gamma * (diff * diff).sum()

    grad_u = vmap(grad_and_value(potential))
    g0, u0 = grad_u(w, xb, yb)  # (C, P), (C,)
    g1, u1 = grad_u(w_next, xb, yb)
    fwd = w_next - w + 0.5 * eps * g0  # log q(w' | w) residual
    bwd = w - w_next + 0.5 * eps * g1  # log q(w | w') residual
    log_alpha = (u0 - u1).double() + ((fwd * fwd).sum(1) - (bwd * bwd).sum(1)).double() / (2 * eps)
    return torch.exp(torch.clamp(log_alpha, max=0.0))


StepFn = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor], Tensor]
# step(w (C, P), idx (C, B), xi (C, P), x (n, ...), y (n, ...), w* (P,)) -> L_B(w) (C,), with w
# updated in place to w + pull (w* - w) + drift ∇L_B(w) + noise xi.


def _gather(data: Tensor, idx: Tensor) -> Tensor:
    """Rows idx (C, B) of data (n, ...) as (C, B, ...), one gather for every chain.

    index_select on the flat indices is several times faster on CPU than advanced
    indexing ``data[idx]`` and returns the same rows.
    """
    return data.index_select(0, idx.reshape(-1)).view(*idx.shape, *data.shape[1:])


def _eager_step(loss_fn: FlatLoss, pull: float, drift: float, noise: float) -> StepFn:
    """The SGLD step for every chain at once: vmapped forward, one backward.

    A single chain skips vmap: on CPU, vmap turns each Linear into a bmm and
    cross-entropy into a generic batched rule, which cost twice a plain forward
    for small models; the unbatched call runs the ordinary kernels.
    """
    batched_loss = vmap(loss_fn)

    def step(w, idx, xi, x, y, w_star):
        xb, yb = _gather(x, idx), _gather(y, idx)  # (C, B, ...)
        with torch.enable_grad():
            wg = w.detach().requires_grad_(True)
            if wg.shape[0] == 1:
                loss = loss_fn(wg[0], xb[0], yb[0]).reshape(1)  # (1,)
            else:
                loss = batched_loss(wg, xb, yb)  # (C,)
            # The chains do not interact, so the gradient of the sum is each chain's own
            # gradient; one backward through the vmapped forward is cheaper than vmap(grad).
            (g,) = torch.autograd.grad(loss.sum(), wg)  # (C, P)
        g.mul_(drift).add_(xi, alpha=noise).add_(w_star - w, alpha=pull)  # Δw, summed before it meets w
        w.add_(g)
        return loss.detach()

    return step


# loss_fn -> its compiled step. Entries die with their loss_fn: the step holds it weakly.
_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _compiled_step(loss_fn: FlatLoss, coef: Tensor) -> StepFn:
    """torch.compile of the whole step (gather, vmap(grad), update), cached per loss_fn.

    ε, γ and nβ enter as the tensor coef = [pull, drift, noise], not as constants,
    so a later run with the same loss_fn and shapes reuses the compiled code; new
    shapes (chains, batch, dtype) recompile.
    """
    compiled = _COMPILED.get(loss_fn) if _weakrefable(loss_fn) else None
    if compiled is None:
        compiled = _compile_step(loss_fn)
        if _weakrefable(loss_fn):
            _COMPILED[loss_fn] = compiled

    def step(w, idx, xi, x, y, w_star):
        return compiled(w, idx, xi, x, y, w_star, coef)

    return step


def _weakrefable(obj) -> bool:
    try:
        weakref.ref(obj)
        return True
    except TypeError:
        return False


def _compile_step(loss_fn: FlatLoss) -> Callable[..., Tensor]:
    """torch.compile(step(w, idx, xi, x, y, w*, coef)); compilation happens at the first call."""
    loss_ref = weakref.ref(loss_fn) if _weakrefable(loss_fn) else (lambda: loss_fn)

    def step(w, idx, xi, x, y, w_star, coef):
        g, loss = vmap(grad_and_value(loss_ref()))(w, _gather(x, idx), _gather(y, idx))  # (C, P), (C,)
        w.add_((w_star - w) * coef[0] + g * coef[1] + xi * coef[2])
        return loss

    # A fresh code object gives each loss_fn its own dynamo cache: otherwise every new
    # loss_fn would count as a recompilation of one shared function, and dynamo
    # drops to eager after its recompile limit.
    fresh = types.FunctionType(step.__code__.replace(), step.__globals__, step.__name__, None, step.__closure__)
    return torch.compile(fresh, dynamic=False)


def _first_compiled_call(step: StepFn, eager: StepFn, args: tuple) -> tuple[StepFn, Tensor]:
    """Run the first step compiled (compiling it); on any failure, warn and go eager.

    Returns the step to use from now on and the first step's loss. w (args[0]) is
    restored before the eager retry, so a failed compile leaves no trace.
    """
    w_before = args[0].clone()
    try:
        return step, step(*args)
    except Exception as err:  # any compiler failure: the eager step is always correct
        warnings.warn(
            f"SGLDConfig.compile asked for the compiled step but torch.compile failed ({type(err).__name__}: {str(err)[:300]}); "
            "running the eager step instead",
            RuntimeWarning,
            stacklevel=3,
        )
        args[0].copy_(w_before)
        return eager, eager(*args)


def compile_mode(config: SGLDConfig, step: StepFn, eager: StepFn) -> str:
    """The path a finished run took: "eager", "compiled" or "eager-fallback"."""
    if not config.wants_compile():
        return "eager"
    return "eager-fallback" if step is eager else "compiled"


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
