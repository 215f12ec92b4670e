"""λ̂ estimation for any ``nn.Module``: the public entry point.

    λ̂ = nβ (E_t[L(w_t)] - L_n(w*)),

with E_t the average over each chain's post-burn-in SGLD draws (llc.sgld) and
L_n(w*) the exact full-data loss at the centre. The baseline is computed once on
all n points rather than on one shared minibatch, so it adds no noise and no
correlation between the chains' estimates.
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.utils.data import DataLoader, Dataset

from core.runtime import resolve_device, resolve_dtype
from core.types import FlatLoss
from llc.callbacks import batch_hook, check_every, step_callback
from llc.fused import fused_flat_loss
from llc.precision import check_amp, check_amp_device
from llc.restricted import ParamMask, flat_param_mask, restrict_loss
from llc.result import LLCResult, check_initial_loss, llc_from_trace, llc_result, result_from_trace
from llc.samplers import check_streams, resolve_sampler, run_sampler, sampler_configs
from llc.sgld import SGLDConfig, full_data_loss, run_sgld
from llc.streaming import HostData, StreamedData, check_loss_on_items, streamed_full_data_loss

__all__ = ["LLCResult", "estimate_llc", "estimate_llc_flat", "estimate_llc_streamed", "flat_loss_for_module",
           "flat_model_for_module", "llc_from_trace", "llc_result", "result_from_trace"]


def estimate_llc_flat(loss_fn: FlatLoss, w_star: Tensor, x: Tensor, y: Tensor, config: SGLDConfig, seed: int,
                      eval_batch_size: int = 4096, callbacks: list | None = None, callback_every: int = 1,
                      sampler: str = "sgld", sampler_options: dict | None = None, segments=None,
                      amp: str | None = None) -> LLCResult:
    """λ̂ at a flat parameter vector w* (P,), for a loss over flat parameters.

    The functional core behind :func:`estimate_llc`; see llc.sgld.run_sgld for the
    arguments, llc.callbacks for ``callbacks``, and llc.samplers for ``sampler``,
    ``sampler_options`` and ``segments`` (pSGLD's per-tensor sizes). ``amp`` ("bf16",
    "fp16" or None: keep ``config.amp``) runs the loss forward/backward under autocast
    (llc.precision). Raises ChainDivergenceError (llc.sgld.SGLDDivergenceError) if any
    chain diverges.
    """
    check_amp(amp)
    if amp is not None:
        config = dataclasses.replace(config, amp=amp)
    check_amp_device(config.amp, w_star.device)  # fp16 off CUDA fails before compute
    sampler = resolve_sampler(sampler, config)  # an SGNHTConfig runs SGNHT, not SGLD
    configs = sampler_configs(sampler, config, sampler_options)  # validated before any compute
    with torch.no_grad():
        init_loss = float(full_data_loss(loss_fn, w_star[None], x, y, eval_batch_size)[0])
    check_initial_loss(init_loss)
    hook = None
    if callbacks:
        hook = step_callback(list(callbacks), callback_every, loss_fn, w_star, x, y,
                             config.resolve_nbeta(x.shape[0]), config.burnin(), init_loss)
    if sampler == "sgld":
        trace = run_sgld(loss_fn, w_star, x, y, config, seed, eval_batch_size, callback=hook)
    else:
        trace = run_sampler(sampler, configs, loss_fn, w_star, x, y, seed, eval_batch_size, hook, segments)
    return result_from_trace(trace, init_loss, configs[0] if sampler == "psgld" else configs)


def estimate_llc_streamed(loss_fn: FlatLoss, w_star: Tensor, data: HostData, config: SGLDConfig, seed: int,
                          eval_batch_size: int = 4096, prefetch: bool | None = None, callbacks: list | None = None,
                          callback_every: int = 1, sampler: str = "sgld", sampler_options: dict | None = None,
                          segments=None) -> LLCResult:
    """:func:`estimate_llc_flat` with the data on the host (llc.streaming); same draws, same λ̂.

    Any minibatch sampler (llc.samplers.STREAMING_SAMPLERS) streams; MALA, full-batch, is a ValueError.
    """
    sampler = resolve_sampler(sampler, config)
    check_streams(sampler)
    configs = sampler_configs(sampler, config, sampler_options)  # validated before any compute
    check_loss_on_items(loss_fn, w_star, data)
    with torch.no_grad():
        init_loss = float(streamed_full_data_loss(loss_fn, w_star[None], data, eval_batch_size)[0])
    check_initial_loss(init_loss)
    hook = None
    if callbacks:
        check_every(callback_every)
        hook = batch_hook(list(callbacks), loss_fn, w_star, data.n, config.resolve_nbeta(data.n), config.burnin(),
                          init_loss)
    stream = StreamedData(data, prefetch, hook, callback_every)
    trace = run_sampler(sampler, configs, loss_fn, w_star, None, None, seed, eval_batch_size, segments=segments,
                        stream=stream)
    return result_from_trace(trace, init_loss, configs[0] if sampler == "psgld" else configs)


def flat_model_for_module(
    model: nn.Module, dtype: torch.dtype, device: torch.device
) -> tuple[Callable[[Tensor, Tensor], Tensor], Tensor]:
    """Turn ``model`` into f(w_flat, x) and its current flat parameters w (P,).

    Parameters are views into w_flat, so grad, jvp and vmap act on one (P,) tensor.
    Buffers (e.g. BatchNorm running statistics) are cast and held fixed.
    """
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    sizes = [math.prod(s) for s in shapes]
    w0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).to(device=device, dtype=dtype)
    buffers = {
        n: b.to(device=device, dtype=dtype if b.is_floating_point() else b.dtype) for n, b in model.named_buffers()
    }

    def f(w: Tensor, x: Tensor) -> Tensor:
        params = {n: c.view(s) for n, c, s in zip(names, torch.split(w, sizes), shapes)}
        return functional_call(model, (params, buffers), (x,))

    return f, w0


def flat_loss_for_module(
    model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor], dtype: torch.dtype, device: torch.device
) -> tuple[FlatLoss, Tensor]:
    """loss(w_flat, x, y) = loss_fn(f(w_flat, x), y) and the model's current flat w (P,).

    A stack of nn.Linear and elementwise activations gets the fused loss (llc.fused:
    F.linear on views of w, plus ``loss.batched`` for all chains at once via bmm);
    any other model the generic functional_call route. ``loss.path`` says which:
    "fused" or "generic". Both give the same values and gradients up to rounding.
    """
    fused = fused_flat_loss(model, loss_fn)
    if fused is not None:
        return fused, flat_model_for_module(model, dtype, device)[1]
    return generic_flat_loss(model, loss_fn, dtype, device)


def generic_flat_loss(
    model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor], dtype: torch.dtype, device: torch.device
) -> tuple[FlatLoss, Tensor]:
    """The functional_call route of flat_loss_for_module for any model (``loss.path`` = "generic")."""
    f, w0 = flat_model_for_module(model, dtype, device)

    def loss(w: Tensor, x: Tensor, y: Tensor) -> Tensor:
        return loss_fn(f(w, x), y)

    loss.path = "generic"
    return loss, w0


def estimate_llc(
    model: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    data: tuple[Tensor, Tensor] | Dataset | DataLoader,
    *,
    epsilon: float = 1e-5,
    gamma: float = 10.0,
    num_steps: int = 5000,
    batch_size: int = 100,
    num_chains: int = 4,
    nbeta: float | None = None,
    num_burnin_steps: int | None = None,
    loss_trace_minibatch: bool = True,
    seed: int = 0,
    device: str = "auto",
    dtype: str | None = None,
    eval_batch_size: int = 4096,
    param_mask: ParamMask | None = None,
    prefetch: bool | None = None,
    callbacks: list | None = None,
    callback_every: int = 1,
    compile: bool | str = "auto",
    sampler: str = "sgld",
    sampler_options: dict | None = None,
    amp: str | None = None,
) -> LLCResult:
    """Estimate the local learning coefficient λ̂ at the model's current weights.

    Runs ``num_chains`` chains of ``sampler`` (default SGLD; vectorised with vmap) on
    p(w) ∝ exp(-nβ L_n(w) - γ/2 ||w - w*||²), w* = the model's parameters, and
    returns λ̂ = nβ (E[L(w)] - L_n(w*)) per chain, with mean, std, R-hats, ESS
    and a ``healthy`` flag (llc.diagnostics).
    The model is evaluated in eval mode (BatchNorm statistics fixed, dropout off);
    it is not modified.

    Args:
        model: any module mapping a batch x to outputs; its parameters are w*.
        loss_fn: mean loss over a batch, loss_fn(outputs, y) -> scalar, e.g.
            ``torch.nn.functional.mse_loss`` or ``cross_entropy``.
        data: (x, y) tensors holding all n training points (first dimension n), or a
            torch Dataset / DataLoader of (x, y) items that stays on the host: each
            step's minibatches are gathered and streamed to the device
            (llc.streaming), with the same draws and the same λ̂ as the tensors
            (every minibatch sampler; not sampler="mala", which is full-batch).
        epsilon: SGLD step size ε.
        gamma: localisation strength γ.
        num_steps: steps per chain, burn-in included.
        batch_size: minibatch size per step and chain (<= n).
        num_chains: independent chains, each with its own generator.
        nbeta: n·β; None means n / log n.
        num_burnin_steps: draws discarded before averaging; None keeps the last 10%.
        loss_trace_minibatch: average minibatch losses (cheap) rather than full-data ones.
        seed: base seed; chain c is seeded from (seed, c).
        device: 'auto', 'cpu' or 'cuda'.
        dtype: 'float32' or 'float64'; None keeps the model's parameter dtype.
        eval_batch_size: chunk size for full-data losses.
        param_mask: None samples every parameter. Otherwise the restricted λ̂:
            only the named coordinates are sampled, the rest held at w*
            (names, or a dict of names to True or to boolean masks of the
            parameter's shape; see llc.restricted).
        prefetch: with a Dataset, gather the next step's rows in a background
            thread (pinned memory, asynchronous copies); None means on CUDA only.
        callbacks: callables of an llc.callbacks.ChainState (e.g. OnlineLLC,
            WeightDistance, GradientNorm), called with every chain's state after
            draws t with (t + 1) % callback_every == 0. None: no hook at all.
        compile: "auto" (compile the SGLD step when num_chains * num_steps reaches
            llc.sgld.COMPILE_AUTO_MIN_CHAIN_STEPS, the measured break-even), True or
            False; the result's ``compile_mode`` says which step ran (only SGLD compiles).
        sampler: "sgld", "psgld", "mala", "sgnht" or "sghmc" (llc.samplers has the table).
        sampler_options: that sampler's own keys, e.g. ``{"friction": 0.1}`` for SGHMC or
            ``{"diffusion_factor": 0.01}`` for SGNHT; None: its defaults. pSGLD takes the
            model's parameter tensors as its segments (one segment under ``param_mask``).
        amp: None (default: every op in ``dtype``), "bf16" or "fp16" (CUDA only): the
            sampler's loss forward and backward run under torch.autocast; w, the update,
            the noise and the trace stay in ``dtype`` (llc.precision). With amp the SGLD
            step is never compiled nor fused (compile_mode "eager-amp" when compile asked
            for it); not for sampler="mala". The result's ``amp`` records it.

    Returns:
        LLCResult.

    Raises:
        ValueError: invalid hyperparameters, batch_size > n, mismatched data, or a
            param_mask naming an unknown parameter or selecting nothing / everything.
        ValueError: also an unknown ``sampler`` or sampler option (naming the allowed ones).
        ChainDivergenceError (llc.sgld.SGLDDivergenceError): a chain diverged (names the chain and step).
    """
    config = SGLDConfig(
        epsilon=epsilon, gamma=gamma, num_steps=num_steps, batch_size=batch_size, num_chains=num_chains,
        nbeta=nbeta, num_burnin_steps=num_burnin_steps, loss_trace_minibatch=loss_trace_minibatch,
        compile=compile, amp=amp,
    )
    sampler_configs(sampler, config, sampler_options)  # an unknown sampler or option fails before compute
    streamed = isinstance(data, (Dataset, DataLoader))
    if streamed:
        check_streams(sampler)  # MALA is full-batch
    if not streamed:
        if not (isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(d, Tensor) for d in data)):
            raise ValueError(f"data must be (x, y) tensors, a Dataset or a DataLoader; got {type(data).__name__}")
        x, y = data
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"data x and y must have the same first dimension; got {x.shape[0]} and {y.shape[0]}")
    dev = resolve_device(device)
    check_amp_device(amp, dev)
    param_dtype = next(model.parameters()).dtype
    dt = param_dtype if dtype is None else resolve_dtype(dtype)
    if model.training and any(isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.Dropout)) for m in model.modules()):
        warnings.warn("estimate_llc evaluates the model in eval mode: BatchNorm uses its running statistics")
    was_training = model.training
    model.eval()
    try:
        # functional_call swaps in w's views and the cast buffers: the module itself stays put.
        loss, w_star = flat_loss_for_module(model, loss_fn, dt, dev)
        loss_path = getattr(loss, "path", "generic")  # read before restrict_loss wraps the loss
        if param_mask is not None:
            loss, w_star = restrict_loss(loss, w_star, flat_param_mask(model, param_mask, dev))

        def cast(t: Tensor) -> Tensor:
            return t.to(device=dev, dtype=dt if t.is_floating_point() else t.dtype)

        segments = None if param_mask is not None else [p.numel() for p in model.parameters()]
        if streamed:
            result = estimate_llc_streamed(loss, w_star, HostData(data, cast), config, seed, eval_batch_size, prefetch,
                                           callbacks, callback_every, sampler, sampler_options, segments)
        else:
            result = estimate_llc_flat(loss, w_star, cast(x), cast(y), config, seed, eval_batch_size,
                                       callbacks, callback_every, sampler, sampler_options, segments)
        result.loss_path = loss_path
        return result
    finally:
        model.train(was_training)
