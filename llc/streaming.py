"""Minibatch samplers on data that stays off the device: a torch Dataset or DataLoader, streamed per step.

SGLD, pSGLD, SGNHT and SGHMC (every minibatch kernel; MALA is full-batch and does not
stream) run on llc.chain's driver and draw exactly the numbers they draw in memory
(same per-chain generators, same blocks of K steps, indices then noise), so on the
same data the trace equals the in-memory one. Per step, the C·B rows of every chain's minibatch
are gathered on the host, (on CUDA) pinned and copied asynchronously, and the
sampler's ordinary step runs on them with the identity index; a prefetch thread gathers
step t+1 while step t computes. L_n(w) is computed in chunks of ``eval_batch_size``
rows with the same chunk boundaries as ``llc.sgld.full_data_loss``.

A DataLoader contributes its ``dataset`` and ``collate_fn`` only: the sampler's
minibatches are drawn per chain from its seeded generators, not by the loader.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, TensorDataset, default_collate

from core.types import FlatLoss
from llc.chain import Draws, run_chains

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


Hook = Callable[[int, Tensor, Tensor, Tensor, Tensor], None]  # (t, w_t, w_{t+1}, xb (C, B, ...), yb)


class StreamedData:
    """The ``stream`` of llc.sgld.run_sgld, llc.psgld.run_psgld, llc.sghmc.run_sghmc / run_sgnht.

    prefetch: gather the next step's rows in a background thread; None means on CUDA only.
    hook: ``hook(t, w_t, w_{t+1}, xb (C, B, ...), yb)`` after draws t with (t + 1) % every == 0
        (llc.callbacks.batch_hook); w is copied only on those draws.
    """

    def __init__(self, data: HostData, prefetch: bool | None = None, hook: Hook | None = None, every: int = 1):
        self.data, self.prefetch, self.hook, self.every = data, prefetch, hook, every
        self.n = data.n

    def run(self, kernel, loss_fn: FlatLoss, w_star: Tensor, config, seed: int,
            eval_batch_size: int) -> tuple[Tensor, Tensor]:
        """llc.chain.run_chains with ``kernel``'s minibatches gathered from the host (:class:`StreamedKernel`)."""
        pin = w_star.device.type == "cuda"
        prefetch = pin if self.prefetch is None else self.prefetch
        pool = ThreadPoolExecutor(max_workers=1) if prefetch else None
        try:
            streamed = StreamedKernel(kernel, self.data, config.num_chains, w_star.device, pin, pool, self.hook,
                                      self.every)
            full = None
            if not config.loss_trace_minibatch:
                def full(w):
                    return streamed_full_data_loss(loss_fn, w, self.data, eval_batch_size)
            return run_chains(streamed, w_star, self.n, config, seed, full_loss=full)
        finally:
            if pool:
                pool.shutdown(wait=True)


class StreamedKernel:
    """Any minibatch kernel (SGLD, pSGLD, SGNHT, SGHMC) on rows gathered from the host per step.

    The driver draws the indices as in memory; this kernel gathers those C·B rows (a step
    ahead, with a pool), hands them to the wrapped kernel as its ``x`` and ``y`` and steps
    it with the identity index, so the wrapped step sees exactly the in-memory minibatch.
    """

    uniform = False

    def __init__(self, kernel, data: HostData, num_chains: int, device: torch.device, pin: bool,
                 pool: ThreadPoolExecutor | None, hook: Hook | None, every: int):
        self.kernel, self.name, self.batch_size = kernel, kernel.name, kernel.batch_size
        C, B = num_chains, kernel.batch_size
        self.data, self.pin, self.pool, self.hook, self.every, self.device = data, pin, pool, hook, every, device
        self.local = torch.arange(C * B, device=device).view(C, B)  # the gathered rows, in chain order
        self.rows = self.pending = None
        self.j = 0

    def init(self, w: Tensor, gens) -> None:
        self.kernel.init(w, gens)

    def fetch(self, rows: Tensor):
        return self.data.to_device(*self.data.rows(rows), self.device, self.pin)

    def begin_block(self, idx_by_step: Tensor) -> None:
        k, C, B = idx_by_step.shape
        self.rows, self.j = idx_by_step.reshape(k, C * B).cpu(), 0  # (k, C·B) host indices
        self.pending = self.pool.submit(self.fetch, self.rows[0]) if self.pool else None

    def step(self, t: int, w: Tensor, draws: Draws) -> Tensor:
        j, k = self.j, self.rows.shape[0]
        self.j += 1
        if self.pool:
            xb, yb = self.pending.result()
            if j + 1 < k:
                self.pending = self.pool.submit(self.fetch, self.rows[j + 1])
        else:
            xb, yb = self.fetch(self.rows[j])
        w_t = w.clone() if self.hook is not None and (t + 1) % self.every == 0 else None
        self.kernel.x, self.kernel.y = xb, yb  # (C·B, ...): this step's rows
        loss = self.kernel.step(t, w, Draws(self.local, draws.xi, draws.log_u))  # (C,); w -> w_{t+1}
        if w_t is not None:
            C, B = self.local.shape
            self.hook(t, w_t, w, xb.view(C, B, *xb.shape[1:]), yb.view(C, B, *yb.shape[1:]))
        return loss
