"""The chain driver every sampler in llc/ runs on, and the configuration they share.

A sampler is a *step kernel*: ``kernel.step(t, w, draws)`` moves every chain from
w_t to w_{t+1} in place and returns the (C,) loss the trace records for w_t. The
driver :func:`run_chains` owns everything around it:

* one ``torch.Generator`` per chain, seeded from (seed, c) by numpy's SeedSequence;
* the random numbers, drawn per chain in blocks of K steps (K depends only on the
  parameter count), always in the order minibatch indices, Gaussian noise, uniform
  (each only if the kernel asks for it), so chain c draws the same numbers
  whatever the number of chains;
* the (C, T) float64 loss trace, with optional full-data losses L_n(w_t) at the
  draws t >= burn-in (recorded before the step);
* the finite checks and one divergence error, :class:`ChainDivergenceError`.

Step convention: "step t" is the draw index of the trace, i.e. the state w_t
(w_0 = w*) whose recorded loss is not finite; a final state w_T that is not finite
is reported as step T.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np
import torch
from torch import Tensor
from torch.func import vmap

from core import checks
from core.runtime import derived_seed
from core.types import FlatLoss
from llc.precision import check_amp

StepCallback = Callable[[int, Tensor, Tensor, Tensor], None]  # (t, w_t (C, P), w_{t+1} (C, P), idx_t (C, B))

# Noise is drawn in blocks of K steps per chain; K * P is capped at this many numbers.
NOISE_BLOCK_NUMEL = 1 << 20
MAX_BLOCK_STEPS = 128
COMPILE_CHOICES = ("auto", True, False)


class ChainDivergenceError(FloatingPointError):
    """A chain produced a non-finite loss; carries the chain and step (draw) index."""

    def __init__(self, chain: int, step: int, value: float, sampler: str = "SGLD"):
        self.chain, self.step, self.value, self.sampler = chain, step, value, sampler
        super().__init__(
            f"{sampler} diverged: chain {chain} has non-finite loss {value} at step {step} "
            "(try a smaller epsilon or a larger gamma)"
        )


def check_compile(value) -> None:
    """ValueError naming the key unless value is "auto", True or False (not 1, 0 or "true")."""
    if not (value == "auto" and isinstance(value, str) or isinstance(value, bool)):
        raise ValueError(f"compile must be one of 'auto', True, False; got {value!r}")


# compile=True where a sampler has no compiled step (all but llc.sgld).
COMPILE_TRUE_ERROR = ("compile=True: {sampler} has no compiled step (only llc.sgld's is compiled); "
                      "use compile='auto' or False, which run the eager step")


def reject_compile_true(value, sampler: str) -> None:
    """compile must be valid, and not True for a sampler without a compiled step."""
    check_compile(value)
    if value is True:
        raise ValueError(COMPILE_TRUE_ERROR.format(sampler=sampler))


def check_int(name: str, value, lo: int, none_ok: bool = False) -> None:
    """core.checks.integer (CheckError naming ``name``), also taking numpy integers as before."""
    checks.integer(name, value.item() if isinstance(value, np.integer) else value, lo=lo, none_ok=none_ok)


def check_number(name: str, value, lo: float | None = None, hi: float | None = None, *, strict: bool = False,
                 hi_open: bool = False, none_ok: bool = False) -> None:
    """core.checks.number (finite, lo < value with ``strict``, <= hi), also taking numpy floats as before.

    ``hi_open``: value < hi (core.checks' upper bound is closed), e.g. [0, 1) or (0, 1).
    """
    value = value.item() if isinstance(value, np.floating) else value
    try:
        checks.number(name, value, lo=lo, hi=hi, strict=strict, none_ok=none_ok)
        if hi_open and value == hi:
            raise checks.CheckError(name, "", value)
    except checks.CheckError:
        if not hi_open:
            raise
        raise checks.CheckError(name, f"a number in {'(' if strict else '['}{lo}, {hi})", value) from None


@dataclass(frozen=True, kw_only=True)
class ChainConfig:
    """What every sampler shares.

    Keyword-only, like every subclass, so no positional call can shift a value
    into another key.

    Attributes:
        epsilon: step size ε (> 0).
        gamma: localisation strength γ (>= 0).
        num_steps: steps per chain, burn-in included.
        num_chains: chains, vectorised over one (C, P) state.
        nbeta: n·β; None means n / log n (β = 1/log n).
        num_burnin_steps: draws discarded before averaging; None means the first
            90% (the original notebook kept the last 10% of the trace).
        compile: "auto", True or False (only llc.sgld has a compiled step).
        amp: None (the run's dtype throughout), "bf16" or "fp16" (CUDA only): the
            loss forward and backward under torch.autocast, w, the update, the noise
            and the trace in the run's dtype (llc.precision). Not for MALA.
    """

    epsilon: float = 1e-5
    gamma: float = 10.0
    num_steps: int = 5000
    num_chains: int = 4
    nbeta: float | None = None
    num_burnin_steps: int | None = None
    compile: bool | str = "auto"
    amp: str | None = None

    def __post_init__(self):
        check_number("epsilon", self.epsilon, 0, strict=True)
        check_number("gamma", self.gamma, 0)
        check_int("num_steps", self.num_steps, 1)
        self._check_more()
        check_int("num_chains", self.num_chains, 1)
        checks.number("nbeta", self.nbeta, lo=0, strict=True, none_ok=True, finite=False)  # as before: inf passes
        check_int("num_burnin_steps", self.num_burnin_steps, 0, none_ok=True)
        if self.num_burnin_steps is not None:
            if self.num_burnin_steps >= self.num_steps:
                raise ValueError(
                    f"num_burnin_steps must be < num_steps ({self.num_steps}); got {self.num_burnin_steps}"
                )
        check_compile(self.compile)
        check_amp(self.amp)

    def _check_more(self) -> None:
        """Subclass keys validated between num_steps and num_chains (SGLDConfig's batch_size)."""

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
class Draws:
    """One step's random numbers for every chain.

    Attributes:
        idx: (C, B) minibatch indices, or None for a full-batch kernel.
        xi: (C, P) standard normal noise.
        log_u: (C,) float64 log of a uniform(0, 1), or None.
    """

    idx: Tensor | None
    xi: Tensor
    log_u: Tensor | None


class Kernel(Protocol):
    """One sampler's step; attributes tell the driver what to draw."""

    name: str  # used in the divergence error ("SGLD", "SGNHT", ...)
    batch_size: int | None  # minibatch indices per step and chain; None: none drawn
    uniform: bool  # draw one uniform per step and chain (Metropolis tests)

    def init(self, w: Tensor, gens: list[torch.Generator]) -> None:
        """Draw any initial state (e.g. a momentum) from the chains' generators."""

    def step(self, t: int, w: Tensor, draws: Draws) -> Tensor:
        """Move w (C, P) from w_t to w_{t+1} in place; return the (C,) loss recorded for w_t."""

    # Optional: ``begin_block(idx_by_step (k, C, B))`` is called before each block's k steps.


def chain_generators(seed: int, num_chains: int, device: torch.device) -> list[torch.Generator]:
    """One generator per chain, seeded from SeedSequence(seed, spawn_key=(c,))."""
    return [torch.Generator(device=device).manual_seed(derived_seed(seed, c)) for c in range(num_chains)]


def block_steps(num_params: int, num_steps: int) -> int:
    """K, the steps whose noise is drawn at once: at most MAX_BLOCK_STEPS, K·P <= NOISE_BLOCK_NUMEL."""
    return max(1, min(MAX_BLOCK_STEPS, NOISE_BLOCK_NUMEL // num_params, num_steps))


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


def check_finite(block: Tensor, t0: int, skip_nan_before: int | None, sampler: str = "SGLD") -> None:
    """Raise ChainDivergenceError at the first non-finite entry of a (C, k) trace block."""
    if skip_nan_before is not None:  # full-data traces hold NaN placeholders before burn-in
        start = max(0, skip_nan_before - t0)
        block, t0 = block[:, start:], t0 + start
    bad = ~torch.isfinite(block)
    if bool(bad.any()):
        step_first = bad.any(dim=0).nonzero()[0].item()
        chain = bad[:, step_first].nonzero()[0].item()
        raise ChainDivergenceError(chain, t0 + step_first, block[chain, step_first].item(), sampler)


def check_final_state(w: Tensor, num_steps: int, sampler: str = "SGLD") -> None:
    """Raise ChainDivergenceError (step T) if a chain's final state is not finite."""
    if not torch.isfinite(w).all():
        bad = int(torch.nonzero(~torch.isfinite(w).all(dim=1))[0])
        raise ChainDivergenceError(bad, num_steps, float("nan"), sampler)


def check_batch(batch_size: int, n: int, w_star: Tensor) -> None:
    """The input checks every minibatch sampler shares."""
    checks.at_most("batch_size", batch_size, "the number of data points", n)
    check_flat(w_star)


def check_flat(w_star: Tensor) -> None:
    if w_star.ndim != 1:
        raise ValueError(f"w_star must be a flat (P,) vector; got shape {tuple(w_star.shape)}")


class Stream(Protocol):
    """Minibatch rows that live off the device (llc.streaming.StreamedData): n and a driver of its own."""

    n: int

    def run(self, kernel: Kernel, loss_fn: FlatLoss, w_star: Tensor, config: ChainConfig, seed: int,
            eval_batch_size: int) -> tuple[Tensor, Tensor]:
        """run_chains with ``kernel`` fed the streamed rows; returns the (C, T) trace and w_T."""


def data_size(x: Tensor | None, stream: Stream | None, batch_size: int, w_star: Tensor) -> int:
    """n, from the in-memory x or from the stream, after the minibatch samplers' input checks."""
    n = x.shape[0] if stream is None else stream.n
    check_batch(batch_size, n, w_star)
    return n


def run_minibatch_chains(
    kernel: Kernel,
    loss_fn: FlatLoss,
    w_star: Tensor,
    x: Tensor | None,
    y: Tensor | None,
    config: ChainConfig,
    seed: int,
    eval_batch_size: int,
    callback: StepCallback | None = None,
    stream: Stream | None = None,
) -> tuple[Tensor, Tensor]:
    """:func:`run_chains` for a minibatch kernel (SGLD, pSGLD, SGNHT, SGHMC) on (x, y) or on ``stream``.

    In memory, the trace holds full-data losses L_n(w_t) after burn-in when
    ``config.loss_trace_minibatch`` is False. With ``stream`` (x, y None) the rows come
    from the host instead (llc.streaming), and the stream carries its own callback hook.
    """
    if stream is not None:
        if callback is not None:
            raise ValueError("callback: streamed data takes the stream's own hook (llc.callbacks.batch_hook)")
        return stream.run(kernel, loss_fn, w_star, config, seed, eval_batch_size)
    full = None if config.loss_trace_minibatch else (lambda w: full_data_loss(loss_fn, w, x, y, eval_batch_size))
    return run_chains(kernel, w_star, x.shape[0], config, seed, full_loss=full, callback=callback)


def run_chains(
    kernel: Kernel,
    w_star: Tensor,
    n: int,
    config: ChainConfig,
    seed: int,
    full_loss: Callable[[Tensor], Tensor] | None = None,
    callback: StepCallback | None = None,
) -> tuple[Tensor, Tensor]:
    """Run ``config.num_chains`` chains of ``kernel`` from w*; return the (C, T) trace and w_T.

    Args:
        kernel: the step (see :class:`Kernel`).
        w_star: (P,) starting point; sets device and dtype.
        n: data points the minibatch indices range over.
        config: steps, chains and burn-in.
        seed: base seed of the per-chain generators.
        full_loss: w (C, P) -> L_n(w) (C,); when given, the trace holds it at draws
            t >= burn-in (NaN before) instead of the kernel's loss.
        callback: ``callback(t, w_t, w_{t+1}, idx_t)`` after every step (costs a copy of w).

    Returns:
        (C, T) float64 trace on w*'s device and the (C, P) final states.

    Raises:
        ChainDivergenceError: a recorded loss or a final state is not finite.
    """
    device, C, T, P = w_star.device, config.num_chains, config.num_steps, w_star.numel()
    B, burnin = kernel.batch_size, config.burnin()
    gens = chain_generators(seed, C, device)
    block = block_steps(P, T)
    w = w_star.detach().expand(C, P).clone()  # (C, P)
    trace = torch.full((C, T), float("nan"), dtype=torch.float64, device=device)
    # Each chain's draws land in its own contiguous slice, so the numbers equal
    # torch.randint(k, B), then torch.randn(k, P), then torch.rand(k) from that chain's generator.
    idx = torch.empty(C, block, B, dtype=torch.long, device=device) if B is not None else None  # (C, K, B)
    xi = torch.empty(C, block, P, dtype=w.dtype, device=device)  # (C, K, P)
    unif = torch.empty(C, block, dtype=torch.float64, device=device) if kernel.uniform else None  # (C, K)
    with torch.no_grad():
        kernel.init(w, gens)
        for t0 in range(0, T, block):
            k = min(block, T - t0)
            for c, g in enumerate(gens):
                if idx is not None:
                    torch.randint(0, n, (k, B), generator=g, device=device, out=idx[c, :k])
                torch.randn(k, P, generator=g, device=device, dtype=w.dtype, out=xi[c, :k])
                if unif is not None:
                    torch.rand(k, generator=g, device=device, dtype=torch.float64, out=unif[c, :k])
            # (k, C, ...) copies: each step's draws contiguous, with strides that do not depend
            # on k or C (a compiled step guards on strides and would otherwise recompile).
            idx_by_step = _by_step(idx, k)
            xi_by_step = _by_step(xi, k)
            if hasattr(kernel, "begin_block"):  # e.g. llc.streaming's kernel starts gathering the block's rows
                kernel.begin_block(idx_by_step)
            log_u = unif[:, :k].log().t() if unif is not None else None  # (k, C)
            losses = []
            for j in range(k):
                t = t0 + j
                if full_loss is not None and t >= burnin:
                    trace[:, t] = full_loss(w)  # L_n(w_t), before the step
                draws = Draws(None if idx is None else idx_by_step[j], xi_by_step[j],
                              None if log_u is None else log_u[j])
                w_t = w.clone() if callback is not None else None
                losses.append(kernel.step(t, w, draws))  # (C,); w becomes w_{t+1} in place
                if callback is not None:
                    callback(t, w_t, w, draws.idx)
            if full_loss is None:
                trace[:, t0:t0 + k] = torch.stack(losses, 1)
            check_finite(trace[:, t0:t0 + k], t0, None if full_loss is None else burnin, kernel.name)
    check_final_state(w, T, kernel.name)
    return trace, w


def _by_step(buf: Tensor | None, k: int) -> Tensor | None:
    """(C, K, ...) buffer -> contiguous (k, C, ...) copy of its first k steps."""
    if buf is None:
        return None
    return torch.empty(k, *buf.shape[:1], *buf.shape[2:], dtype=buf.dtype, device=buf.device).copy_(
        buf[:, :k].transpose(0, 1))
