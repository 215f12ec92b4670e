"""SGLD on data that stays off the device: a torch Dataset or DataLoader, streamed per step.

The chains draw exactly the numbers :func:`llc.sgld.run_sgld` draws (same per-chain
generators, same blocks of K steps, indices then noise), so on the same data the
trace equals the in-memory one. Per step, the C·B rows of every chain's minibatch
are gathered on the host, (on CUDA) pinned and copied asynchronously, and the
ordinary SGLD step runs on them with the identity index; a prefetch thread gathers
step t+1 while step t computes. L_n(w) is computed in chunks of ``eval_batch_size``
rows with the same chunk boundaries as ``llc.sgld.full_data_loss``.

A DataLoader contributes its ``dataset`` and ``collate_fn`` only: the sampler's
minibatches are drawn per chain from its seeded generators, not by the loader.
"""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, TensorDataset, default_collate

from core.types import FlatLoss
from llc import sgld as _sgld
from llc.sgld import SGLDConfig, SGLDTrace, chain_generators

Cast = Callable[[Tensor], Tensor]


class HostData:
    """n (x, y) pairs on the host, gathered by index; ``cast`` moves a batch to the device dtype."""

    def __init__(self, data: Dataset | DataLoader, cast: Cast):
        loader = data if isinstance(data, DataLoader) else None
        self.dataset = loader.dataset if loader is not None else data
        self.collate = loader.collate_fn if loader is not None else default_collate
        try:
            self.n = len(self.dataset)
        except TypeError:
            raise ValueError("data: a Dataset must have a length (an IterableDataset cannot be sampled by index)")
        if self.n == 0:
            raise ValueError("data: the Dataset is empty")
        self.cast = cast
        self.tensors = self.dataset.tensors if isinstance(self.dataset, TensorDataset) else None
        if self.tensors is not None and len(self.tensors) != 2:
            raise ValueError(f"data: a TensorDataset must hold (x, y); it holds {len(self.tensors)} tensors")

    def rows(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        """Rows idx (m,) as host tensors (m, ...), (m, ...)."""
        if self.tensors is not None:
            x, y = self.tensors
            return x.index_select(0, idx.to(x.device)), y.index_select(0, idx.to(y.device))
        batch = self.collate([self.dataset[i] for i in idx.tolist()])
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2 and all(isinstance(b, Tensor) for b in batch)):
            raise ValueError(
                "data: Dataset items must be (x, y) pairs that collate to two tensors; "
                f"a batch collated to {type(batch).__name__}"
                + (f" of {len(batch)} items" if isinstance(batch, (tuple, list)) else "")
            )
        return batch[0], batch[1]

    def to_device(self, xb: Tensor, yb: Tensor, device: torch.device, pin: bool) -> tuple[Tensor, Tensor]:
        pin = pin and xb.device.type == "cpu" and yb.device.type == "cpu"  # a Dataset may already hold CUDA tensors
        if pin:
            xb, yb = xb.pin_memory(), yb.pin_memory()
        return self.cast(xb.to(device, non_blocking=pin)), self.cast(yb.to(device, non_blocking=pin))


def check_loss_on_items(loss_fn: FlatLoss, w_star: Tensor, data: HostData) -> None:
    """Evaluate the loss at w* on the first two items; a clear ValueError if they do not fit it."""
    xb, yb = data.rows(torch.arange(min(2, data.n)))
    xb, yb = data.to_device(xb, yb, w_star.device, pin=False)
    try:
        with torch.no_grad():
            value = loss_fn(w_star, xb, yb)
    except Exception as err:  # any failure here is a data/loss mismatch: say so before compute
        raise ValueError(
            f"data: the loss fails on a batch of the Dataset's items (x {tuple(xb.shape)} {xb.dtype}, "
            f"y {tuple(yb.shape)} {yb.dtype}): {type(err).__name__}: {err}"
        ) from err
    if not (isinstance(value, Tensor) and value.numel() == 1):
        raise ValueError(f"data: loss_fn must return a scalar on a batch of the Dataset's items; got {value!r}")


def streamed_full_data_loss(
    loss_fn: FlatLoss, w: Tensor, data: HostData, eval_batch_size: int = 4096
) -> Tensor:
    """Mean loss over all n points for each row of w (C, P) -> (C,), chunk by chunk from the host."""
    per_chain = torch.func.vmap(loss_fn, in_dims=(0, None, None))
    total = torch.zeros(w.shape[0], dtype=torch.float64, device=w.device)
    for start in range(0, data.n, eval_batch_size):
        rows = torch.arange(start, min(start + eval_batch_size, data.n))
        xb, yb = data.to_device(*data.rows(rows), w.device, pin=w.device.type == "cuda")
        total += per_chain(w, xb, yb).double() * xb.shape[0]  # mean -> sum over chunk
    return total / data.n


def run_sgld_streamed(
    loss_fn: FlatLoss,
    w_star: Tensor,
    data: HostData,
    config: SGLDConfig,
    seed: int,
    eval_batch_size: int = 4096,
    prefetch: bool | None = None,
    hook: Callable[[int, Tensor, Tensor, Tensor, Tensor], None] | None = None,
    every: int = 1,
) -> SGLDTrace:
    """:func:`llc.sgld.run_sgld` with minibatches streamed from ``data``; same draws, same trace.

    prefetch: gather the next step's rows in a background thread; None means on CUDA only.
    hook: ``hook(t, w_t, w_{t+1}, xb (C, B, ...), yb)`` after draws t with (t + 1) % every == 0
        (llc.callbacks.batch_hook); w is copied only on those draws.
    """
    n = data.n
    if config.batch_size > n:
        raise ValueError(f"batch_size must be <= the number of data points ({n}); got {config.batch_size}")
    device, C, T, P, B = w_star.device, config.num_chains, config.num_steps, w_star.numel(), config.batch_size
    nbeta, burnin, eps = config.resolve_nbeta(n), config.burnin(), config.epsilon
    pin = device.type == "cuda"
    prefetch = pin if prefetch is None else prefetch
    gens = chain_generators(seed, C, device)
    block = max(1, min(_sgld._MAX_BLOCK_STEPS, _sgld._NOISE_BLOCK_NUMEL // P, T))  # as run_sgld
    pull, drift, noise = eps * config.gamma / 2, -eps * nbeta / 2, math.sqrt(eps)
    w_star = w_star.detach()
    eager = _sgld._eager_step(loss_fn, pull, drift, noise)
    step = eager
    if config.wants_compile():
        step = _sgld._compiled_step(loss_fn, torch.tensor([pull, drift, noise], dtype=w_star.dtype, device=device))

    w = w_star.expand(C, P).clone()  # (C, P)
    trace = torch.full((C, T), float("nan"), dtype=torch.float64, device=device)
    idx = torch.empty(C, block, B, dtype=torch.long, device=device)  # (C, K, B)
    xi = torch.empty(C, block, P, dtype=w.dtype, device=device)  # (C, K, P)
    local = torch.arange(C * B, device=device).view(C, B)  # the gathered rows, in chain order

    def fetch(rows: Tensor):
        return data.to_device(*data.rows(rows), device, pin)

    pool = ThreadPoolExecutor(max_workers=1) if prefetch else None
    try:
        with torch.no_grad():
            for t0 in range(0, T, block):
                k = min(block, T - t0)
                for c, g in enumerate(gens):  # the same calls, in the same order, as run_sgld
                    torch.randint(0, n, (k, B), generator=g, device=device, out=idx[c, :k])
                    torch.randn(k, P, generator=g, device=device, dtype=w.dtype, out=xi[c, :k])
                rows_by_step = idx[:, :k].transpose(0, 1).reshape(k, C * B).cpu()  # (k, C·B) host indices
                xi_by_step = torch.empty(k, C, P, dtype=xi.dtype, device=device).copy_(xi[:, :k].transpose(0, 1))
                pending = pool.submit(fetch, rows_by_step[0]) if pool else None
                losses = []
                for j in range(k):
                    t = t0 + j
                    if pool:
                        xb, yb = pending.result()
                        if j + 1 < k:
                            pending = pool.submit(fetch, rows_by_step[j + 1])
                    else:
                        xb, yb = fetch(rows_by_step[j])
                    if not config.loss_trace_minibatch and t >= burnin:
                        trace[:, t] = streamed_full_data_loss(loss_fn, w, data, eval_batch_size)
                    args = (w, local, xi_by_step[j], xb, yb, w_star)
                    w_t = w.clone() if hook is not None and (t + 1) % every == 0 else None
                    if t == 0 and step is not eager:
                        step, loss = _sgld._first_compiled_call(step, eager, args)
                    else:
                        loss = step(*args)  # (C,) L_B(w_t); w becomes w_{t+1} in place
                    losses.append(loss)
                    if w_t is not None:
                        hook(t, w_t, w, xb.view(C, B, *xb.shape[1:]), yb.view(C, B, *yb.shape[1:]))
                if config.loss_trace_minibatch:
                    trace[:, t0:t0 + k] = torch.stack(losses, 1)
                _sgld._check_finite(trace[:, t0:t0 + k], t0,
                                    skip_nan_before=None if config.loss_trace_minibatch else burnin)
    finally:
        if pool:
            pool.shutdown(wait=True)
    if not torch.isfinite(w).all():
        bad = int(torch.nonzero(~torch.isfinite(w).all(dim=1))[0])
        raise _sgld.SGLDDivergenceError(bad, T, float("nan"))
    return SGLDTrace(loss=trace.cpu(), final_w=w, nbeta=nbeta, burnin=burnin,
                     compile_mode=_sgld.compile_mode(config, step, eager))
