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
torch.compile instead; "auto" on CUDA captures the eager step in a CUDA graph
(llc.cuda_graph) instead. The trace records which path ran (:func:`step_path`).

The step is a kernel on llc.chain's driver, which owns the randomness: chain c owns
a ``torch.Generator`` seeded from (seed, c) via numpy's SeedSequence and draws its
minibatch indices (with replacement) and its noise from it in blocks of K steps, K
depending only on the parameter count. Chain c therefore draws the same batches and
noise whatever the number of chains, and the same seed gives the same chains. Its
trajectory is bit-identical for any two chain counts >= 2; one chain runs unvmapped
(faster on CPU) and matches to float rounding.
"""
from __future__ import annotations

import math
import types
import warnings
import weakref
from dataclasses import dataclass
from typing import Callable, ClassVar

import torch
from torch import Tensor
from torch.func import grad_and_value, vmap

from core import checks
from core.types import FlatLoss
from llc.chain import (
    COMPILE_CHOICES,
    ChainConfig,
    ChainDivergenceError,
    Draws,
    StepCallback,
    Stream,
    chain_generators,
    check_compile,
    check_int,
    data_size,
    full_data_loss,
    run_minibatch_chains,
)
from llc.chain import (
    MAX_BLOCK_STEPS as _MAX_BLOCK_STEPS,
)
from llc.chain import (
    NOISE_BLOCK_NUMEL as _NOISE_BLOCK_NUMEL,
)
from llc.chain import (
    check_finite as _check_finite,
)
from llc.cuda_graph import first_graph_call
from llc.diagnostics import mala_acceptance_probability  # re-exported: its callers import it from here
from llc.minibatch import Minibatches
from llc.minibatch import gather_rows as _gather
from llc.precision import autocast, check_amp_device

__all__ = [
    "COMPILE_AUTO_MIN_CHAIN_STEPS", "COMPILE_CHOICES", "FlatLoss", "SGLDConfig", "SGLDDivergenceError",
    "SGLDTrace", "StepCallback", "chain_generators", "check_compile", "full_data_loss",
    "mala_acceptance_probability", "run_sgld", "step_path", "_MAX_BLOCK_STEPS", "_NOISE_BLOCK_NUMEL", "_check_finite",
]

# The one divergence error of llc/ (llc.chain.ChainDivergenceError), under its historical name.
SGLDDivergenceError = ChainDivergenceError

# compile="auto" compiles runs of num_chains * num_steps >= this many chain-steps: the
# break-even point where the first call's compile cost is repaid by the per-step saving,
# measured by bench/compile_threshold.py (BENCHMARKS.md, "compile='auto' threshold").
COMPILE_AUTO_MIN_CHAIN_STEPS = 50_000


def step_path(compile: bool | str, chain_steps: int, device_type: str, amp: str | None, streamed: bool = False) -> str:
    """The step a run takes: "eager", "compiled" (torch.compile), "cuda-graph" or "eager-amp".

    False: eager. True: compiled. "auto": eager below COMPILE_AUTO_MIN_CHAIN_STEPS chain-steps
    (num_chains * num_steps), else the CUDA graph on a "cuda" device and compiled elsewhere;
    streamed rows (llc.streaming: new x, y tensors every step, which a graph cannot follow)
    keep compiled. With amp, any step but eager becomes "eager-amp" (the eager autocast step).
    """
    if compile == "auto":
        if chain_steps < COMPILE_AUTO_MIN_CHAIN_STEPS:
            return "eager"
        path = "cuda-graph" if device_type == "cuda" and not streamed else "compiled"
    else:
        path = "compiled" if compile else "eager"
    return "eager-amp" if amp is not None and path != "eager" else path


@dataclass(frozen=True, kw_only=True)
class SGLDConfig(ChainConfig):
    """Hyperparameters of one multi-chain SGLD run: llc.chain.ChainConfig's and these.

    Attributes:
        batch_size: minibatch size for ∇L_B (and for the trace if minibatch).
        loss_trace_minibatch: average L_B(w_t) from the gradient's own batch (free),
            or the full-data L_n(w_t) after burn-in (costs a full pass per draw).
        compile: "auto" (default), True or False. True: torch.compile the whole step
            (gather, vmap(grad), update); the first step then takes a few seconds to
            compile on CPU and later steps are cheaper, which pays off for long runs
            only. "auto": compile when num_chains * num_steps >=
            COMPILE_AUTO_MIN_CHAIN_STEPS (the measured break-even), else eager; on a
            CUDA device, such a long run captures the eager step in a CUDA graph
            instead (llc.cuda_graph; compile=True keeps torch.compile).
            Results match the eager step up to float rounding, not bit for bit.
            Falls back to the eager step, with a warning, if compilation or capture
            fails (or the graph's first step disagrees with the eager one).
            With ``amp`` set the compiled step is not attempted: the run takes the
            eager autocast step and records compile_mode "eager-amp".
    """

    batch_size: int = 100
    loss_trace_minibatch: bool = True
    sampler_name: ClassVar[str] = "sgld"  # the kernel this config runs (SGNHTConfig / SGHMCConfig subclass it)

    def _check_more(self) -> None:
        check_int("batch_size", self.batch_size, 1)
        checks.boolean("loss_trace_minibatch", self.loss_trace_minibatch)

    def asks_compile(self) -> bool:
        """Whether compile asks for a non-eager step: compile=True, or "auto" on a long run (:func:`step_path`)."""
        return step_path(self.compile, self.num_chains * self.num_steps, "cpu", None) != "eager"

    def wants_compile(self) -> bool:
        """Whether this run attempts the compiled step: asked for, and no amp (autocast runs eager)."""
        return self.asks_compile() and self.amp is None


@dataclass
class SGLDTrace:
    """Raw output of :func:`run_sgld`.

    Attributes:
        loss: (C, T) float64 loss trace on CPU; minibatch losses at every step,
            or full-data losses at steps >= burn-in (NaN before) when not minibatch.
        final_w: (C, P) last state of each chain.
        nbeta: the n·β used.
        burnin: number of discarded leading draws.
        compile_mode: the step that ran: "eager" (not attempted), "compiled"
            (torch.compile), "cuda-graph" (the eager step replayed from a CUDA graph),
            "eager-fallback" (torch.compile or the graph capture was attempted and
            failed), or "eager-amp" (compile asked for, skipped because amp runs the
            eager autocast step).
    """

    loss: Tensor
    final_w: Tensor
    nbeta: float
    burnin: int
    compile_mode: str = "eager"

    @property
    def compiled(self) -> bool:
        return self.compile_mode == "compiled"


def run_sgld(
    loss_fn: FlatLoss,
    w_star: Tensor,
    x: Tensor,
    y: Tensor,
    config: SGLDConfig,
    seed: int,
    eval_batch_size: int = 4096,
    callback: StepCallback | None = None,
    stream: Stream | None = None,
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
        stream: the rows on the host instead of x, y (both None; llc.streaming.StreamedData).

    Returns:
        SGLDTrace with the (C, T) loss trace.

    Raises:
        ValueError: batch_size > n.
        SGLDDivergenceError: a chain's loss became NaN or inf.
    """
    if config.sampler_name != "sgld":
        raise ValueError(f"config: run_sgld runs SGLD; a {type(config).__name__} belongs to llc.samplers.run_sampler")
    n = data_size(x, stream, config.batch_size, w_star)
    kernel = SGLDKernel(loss_fn, w_star, x, y, config, config.resolve_nbeta(n))
    trace, w = run_minibatch_chains(kernel, loss_fn, w_star, x, y, config, seed, eval_batch_size, callback, stream)
    return SGLDTrace(loss=trace.cpu(), final_w=w, nbeta=kernel.nbeta, burnin=config.burnin(),
                     compile_mode=compile_mode(kernel.path, kernel.step_fn, kernel.eager))


class SGLDKernel:
    """The SGLD step as an llc.chain kernel: eager, or compiled or captured on the first call.

    w <- w + Δw with Δw = (εγ/2)(w* - w) - (ε nβ/2) g + sqrt(ε) ξ summed first. In float32
    the old form (1 - εγ/2) w rounds the factor itself (ε=5e-7, γ=1: γ off by 4.6%);
    summed into Δw, the pull's rounding is dithered by the noise and has no bias.
    """

    name = "SGLD"
    uniform = False

    def __init__(self, loss_fn: FlatLoss, w_star: Tensor, x: Tensor, y: Tensor, config: SGLDConfig, nbeta: float):
        eps = config.epsilon
        self.batch_size, self.nbeta = config.batch_size, nbeta
        self.x, self.y, self.w_star = x, y, w_star.detach()
        check_amp_device(config.amp, w_star.device, w_star.dtype)
        pull, drift, noise = eps * config.gamma / 2, -eps * nbeta / 2, math.sqrt(eps)
        self.eager = _eager_step(loss_fn, pull, drift, noise, config.amp, Minibatches(x, y))
        self.step_fn = self.eager
        # x is None on streamed rows (llc.streaming sets x, y per step)
        self.path = step_path(config.compile, config.num_chains * config.num_steps, w_star.device.type, config.amp,
                              streamed=x is None)
        if self.path == "compiled":
            coef = torch.tensor([pull, drift, noise], dtype=w_star.dtype, device=w_star.device)
            self.step_fn = _compiled_step(loss_fn, coef)

    def init(self, w: Tensor, gens) -> None:
        pass

    def step(self, t: int, w: Tensor, draws: Draws) -> Tensor:
        return self.advance(t, (w, draws.idx, draws.xi, self.x, self.y, self.w_star))

    def advance(self, t: int, args: tuple) -> Tensor:
        """One step on args = (w, idx, xi, x, y, w*); the first one compiles or captures, or falls back to eager."""
        if t == 0 and self.path == "cuda-graph":
            self.step_fn, loss = first_graph_call(self.eager, args)
            return loss
        if t == 0 and self.step_fn is not self.eager:
            self.step_fn, loss = _first_compiled_call(self.step_fn, self.eager, args)
            return loss
        return self.step_fn(*args)  # (C,) L_B(w_t); w becomes w_{t+1} in place


StepFn = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor], Tensor]
# step(w (C, P), idx (C, B), xi (C, P), x (n, ...), y (n, ...), w* (P,)) -> L_B(w) (C,), with w
# updated in place to w + pull (w* - w) + drift ∇L_B(w) + noise xi.


def _eager_step(loss_fn: FlatLoss, pull: float, drift: float, noise: float, amp: str | None = None,
                batches: Minibatches | None = None) -> StepFn:
    """The SGLD step for every chain at once: vmapped forward, one backward.

    A single chain skips vmap: on CPU, vmap turns each Linear into a bmm and
    cross-entropy into a generic batched rule, which cost twice a plain forward
    for small models; the unbatched call runs the ordinary kernels. A fused loss
    (llc.fused: a stack of Linear layers) gives every chain's loss and gradient at
    once (``value_and_grad``: batched matmuls, a closed-form backward where it has
    one), without vmap or an autograd graph.

    With ``amp`` (llc.precision) the forward and backward run under torch.autocast
    and the fused value_and_grad is skipped (its closed-form backward would return a
    low-precision gradient); the gradient of the run-dtype leaf w and the update stay
    in w's dtype, and the loss is cast back to it.

    ``batches`` (llc.minibatch) gathers the minibatch from the step's own x and y,
    packed into one gather where that is faster; without it x and y are gathered apart.
    """
    batches = Minibatches(None, None) if batches is None else batches  # never packed: separate gathers
    batched_loss = vmap(loss_fn)
    value_and_grad = getattr(loss_fn, "value_and_grad", None) if amp is None else None
    takes_views = getattr(loss_fn, "takes_row_views", lambda batch_size: False)

    def step(w, idx, xi, x, y, w_star):
        fused = value_and_grad is not None and w.shape[0] > 1
        # Packed rows stay strided views where the fused gradient lays them out itself.
        views = fused and takes_views(idx.shape[1])
        xb, yb = batches(x, y, idx, copy=not views)  # (C, B, ...)
        if fused:
            loss, g = value_and_grad(w, xb, yb)  # (C,), (C, P)
            g.mul_(drift).add_(xi, alpha=noise).add_(w_star - w, alpha=pull)
            w.add_(g)
            return loss.detach()
        with torch.enable_grad(), autocast(amp, w.device):
            wg = w.detach().requires_grad_(True)
            if wg.shape[0] == 1:
                loss = loss_fn(wg[0], xb[0], yb[0]).reshape(1)  # (1,)
            else:
                loss = batched_loss(wg, xb, yb)  # (C,)
            # The chains do not interact, so the gradient of the sum is each chain's own
            # gradient; one backward through the vmapped forward is cheaper than vmap(grad).
            (g,) = torch.autograd.grad(loss.sum(), wg)  # (C, P), w's dtype (the leaf's)
        g.mul_(drift).add_(xi, alpha=noise).add_(w_star - w, alpha=pull)  # Δw, summed before it meets w
        w.add_(g)
        return loss.detach().to(w.dtype)

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
            "SGLDConfig.compile asked for the compiled step but torch.compile failed "
            f"({type(err).__name__}: {str(err)[:300]}); "
            "running the eager step instead",
            RuntimeWarning,
            stacklevel=3,
        )
        args[0].copy_(w_before)
        return eager, eager(*args)


def compile_mode(path: str, step: StepFn, eager: StepFn) -> str:
    """The path a finished run took: :func:`step_path`'s, or "eager-fallback" where it fell back to eager."""
    if path in ("compiled", "cuda-graph") and step is eager:
        return "eager-fallback"
    return path
