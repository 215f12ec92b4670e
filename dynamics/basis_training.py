"""The training loop of the basis-function decomposition experiments (docs/basis_decomposition.md).

One run of the original scripts' loop: every epoch visits a fresh permutation of the
training images in minibatches (the last partial batch kept, as torch's DataLoader
does, unless ``drop_last``); each step sets the scheduled learning rate, computes the
mean loss, clips every gradient entry to ±grad_clip when set, and takes one optimizer
step. Evaluation outputs are taken in eval mode, in chunks.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from dynamics.engine import BoundaryAfter, OnStep, StepOutput, chunked_outputs, run_steps
from dynamics.schedules import LRSchedule, set_lr


class Step(NamedTuple):
    """What one training step reports to ``Trainer.run``'s callback."""

    t: int  # steps done
    loss: float  # mean loss of the batch
    correct: int  # correctly classified images of the batch
    size: int  # images in the batch
    grad_norm: float  # ‖∇L‖ before clipping
    lr: float


def crop_flip(x: Tensor, pad_value: Tensor, gen: torch.Generator) -> Tensor:
    """Random crop with padding 4 (padded with ``pad_value`` per channel) and random h-flip: (b, c, h, w)."""
    b, c, h, w = x.shape
    padded = pad_value.view(1, c, 1, 1).expand(b, c, h + 8, w + 8).clone()
    padded[:, :, 4:4 + h, 4:4 + w] = x
    oy = torch.randint(0, 9, (b,), generator=gen, device=x.device)
    ox = torch.randint(0, 9, (b,), generator=gen, device=x.device)
    rows = (oy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # (b, 1, h, 1)
    cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # (b, 1, 1, w)
    out = padded[torch.arange(b, device=x.device)[:, None, None, None],
                 torch.arange(c, device=x.device)[None, :, None, None], rows, cols]
    flip = torch.rand(b, generator=gen, device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(-1), out)


class Trainer:
    """Minibatch training of ``net`` on (x (n, c, h, w), y (n,)) with a scheduled learning rate."""

    def __init__(self, net: nn.Module, optimizer: torch.optim.Optimizer, schedule: LRSchedule, loss_fn: Callable,
                 x: Tensor, y: Tensor, batch_size: int, num_epoch: int, grad_clip: float | None,
                 batch_gen: torch.Generator, augment_gen: torch.Generator | None = None,
                 pad_value: Tensor | None = None, drop_last: bool = False):
        self.net, self.optimizer, self.schedule, self.loss_fn = net, optimizer, schedule, loss_fn
        self.x, self.y, self.batch_size, self.drop_last = x, y, batch_size, drop_last
        self.grad_clip, self.batch_gen, self.augment_gen, self.pad_value = grad_clip, batch_gen, augment_gen, pad_value
        self.total_steps = self.steps_per_epoch * num_epoch
        self.steps_done, self._perm = 0, None  # resumable position: steps taken, the current epoch's order

    @property
    def steps_per_epoch(self) -> int:
        n = self.x.shape[0]
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def state(self) -> dict:
        """Everything the run depends on (tracking.preempt checkpoints): weights and buffers, the
        optimizer's state (momentum), both generators, the step counter and the epoch's order."""
        return {"net": self.net.state_dict(), "optimizer": self.optimizer.state_dict(),
                "batch_gen": self.batch_gen.get_state(),
                "augment_gen": None if self.augment_gen is None else self.augment_gen.get_state(),
                "steps_done": self.steps_done, "perm": self._perm}

    def load_state(self, state: dict) -> None:
        """Inverse of :meth:`state` (on a Trainer built with the same config)."""
        self.net.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.batch_gen.set_state(state["batch_gen"])
        if self.augment_gen is not None:
            self.augment_gen.set_state(state["augment_gen"])
        self.steps_done = state["steps_done"]
        self._perm = None if state["perm"] is None else state["perm"].to(self.batch_gen.device)

    def run(self, num_steps: int, on_step: Callable[[Step], None] | None = None,
            boundary: Callable[[int], None] | None = None) -> None:
        """Take steps until ``num_steps`` are done (counting those of a restored state), calling
        ``on_step`` and then ``boundary(steps_done)`` after each. A fresh permutation starts every epoch.

        Raises:
            TrainingDiverged: a non-finite minibatch loss (step = steps completed before it, dynamics.engine).
        """
        callbacks = [] if on_step is None else [OnStep(lambda step, out: on_step(out.info))]
        if boundary is not None:
            callbacks.append(BoundaryAfter(boundary))
        run_steps(self._step, self.steps_done, num_steps, callbacks)

    def _step(self, t: int) -> StepOutput:
        """Step t + 1 (``t`` steps done): the loss before it is checked by the engine, after the update."""
        spe = self.steps_per_epoch
        b = t % spe
        if b == 0 or self._perm is None:
            self._perm = torch.randperm(self.x.shape[0], generator=self.batch_gen, device=self.batch_gen.device)
        idx = self._perm[b * self.batch_size:(b + 1) * self.batch_size].to(self.x.device)
        xb, yb = self.x[idx], self.y[idx]
        if self.augment_gen is not None:
            xb = crop_flip(xb, self.pad_value, self.augment_gen)
        lr = self.schedule.lr(t, spe, self.total_steps)
        set_lr(self.optimizer, lr)
        self.net.train()
        out = self.net(xb)
        loss = self.loss_fn(out, yb)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grads = [p.grad for p in self.net.parameters() if p.grad is not None]
        grad_norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))
        if self.grad_clip is not None:
            nn.utils.clip_grad_value_(self.net.parameters(), self.grad_clip)
        self.optimizer.step()
        self.steps_done = t + 1
        value = loss.item()  # checked by the engine (TrainingDiverged at step t)
        return StepOutput(value, Step(t + 1, value, int((out.argmax(1) == yb).sum()), int(yb.shape[0]), grad_norm, lr))

@torch.no_grad()
def eval_outputs(net: nn.Module, x: Tensor, chunk: int, features: bool = False) -> Tensor:
    """Eval-mode outputs (N, C), or features Φ (N, p) with ``features``, in chunks of ``chunk`` points."""
    net.eval()
    return chunked_outputs(net.features if features else net, x, chunk)


def recording_times(steps_per_epoch: int, num_epoch: int, early_points: int = 0, every: int | None = None,
                    first: int | None = None, until: int | None = None, epoch_ends: bool = True) -> np.ndarray:
    """Iterations at which F_t is recorded, sorted and unique.

    t = 0; ``early_points`` log-spaced iterations in [1, steps_per_epoch]; every epoch end
    (``epoch_ends``); ``first``, ``first + every``, ... (``first`` None -> ``every``). All but
    t = 0 are capped at ``until`` (None -> the last step). mnist.py: every = 20, first = 1,
    until = 2001, no epoch ends; train.py: the epoch ends.
    """
    total = steps_per_epoch * num_epoch
    last = total if until is None else min(until, total)
    early = np.geomspace(1, steps_per_epoch, early_points).round().astype(int) if early_points else []
    ends = steps_per_epoch * np.arange(1, num_epoch + 1) if epoch_ends else []
    regular = np.arange(every if first is None else first, total + 1, every) if every else []
    times = np.unique(np.concatenate([[0], early, ends, regular])).astype(int)
    return times[times <= last]
