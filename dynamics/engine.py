"""The training engine every training loop of the project runs on: steps, callbacks, evaluation, divergence.

* A *step function* ``step_fn(step) -> StepOutput`` takes one optimizer step, ``step`` being the
  number of steps already completed (0 on a fresh run, the resumed step otherwise), and reports
  the loss it computed before its update (and whatever the loop wants its callbacks to see).
* :func:`run_steps` calls it for ``step = start, start + 1, ...``, raises :class:`TrainingDiverged`
  on a non-finite loss, and calls the callbacks around each step.
* A *callback* is any object with some of the methods of :class:`Callback`; absent methods cost
  nothing (the bound methods present are collected once, before the loop).
* :func:`evaluate` is the one chunked, gradient-free evaluation of a classifier (mean loss and
  accuracy over a dataset), :func:`chunked_outputs` the chunked forward pass it and the
  non-classification loops share.

Step convention (every loop, every divergence message): **step = the number of optimizer steps
completed when the non-finite loss was computed**. The loss of step s is taken at w_s, before its
update, so a NaN on the very first minibatch is step 0, and a non-finite full-set loss measured
after an epoch that ended with t steps done is step t.
"""
from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Protocol, Sequence

import torch
from torch import Tensor


class TrainingDiverged(FloatingPointError):
    """A training loss became NaN or inf; ``step`` follows the module's step convention."""

    def __init__(self, step: int, value: float, what: str = "loss"):
        self.step, self.value, self.what = int(step), float(value), what
        super().__init__(f"training diverged: {what} {value} at step {step} (optimizer steps completed before it)")


def check_finite(value: float, step: int, what: str = "loss") -> float:
    """``value`` unchanged when finite; else raise :class:`TrainingDiverged` naming ``step`` and ``value``."""
    if not math.isfinite(value):
        raise TrainingDiverged(step, value, what)
    return value


class StepOutput(NamedTuple):
    """What a step function returns to :func:`run_steps`."""

    loss: float | None  # loss of the step (before its update); None: the loop checks finiteness itself
    info: Any = None  # anything the callbacks need (a record, the batch's outputs, ...)
    stop: bool = False  # end training after this step (no on_step callbacks for it)


class StepFn(Protocol):
    def __call__(self, step: int) -> StepOutput: ...


class Callback(Protocol):
    """Hooks of :func:`run_steps`; implement any subset (all receive steps-completed counts)."""

    def before_step(self, step: int) -> None:
        """Before the step that starts with ``step`` steps done."""

    def on_step(self, step: int, out: StepOutput) -> None:
        """After step ``step`` (now ``step + 1`` are done) with its output."""


def _hooks(callbacks: Sequence[object], name: str) -> list[Callable]:
    return [getattr(cb, name) for cb in callbacks if callable(getattr(cb, name, None))]


def run_steps(step_fn: StepFn, start: int, stop: int | None, callbacks: Sequence[object] = ()) -> int:
    """Call ``step_fn(step)`` for step = start, ..., stop − 1 (forever with ``stop`` None, until a
    step returns ``stop=True``); returns the number of steps completed.

    For each step: every ``before_step(step)``, the step, the finite check of its loss
    (:class:`TrainingDiverged` otherwise), then every ``on_step(step, out)`` in the callbacks' order.
    """
    before, after = _hooks(callbacks, "before_step"), _hooks(callbacks, "on_step")
    step = start
    while stop is None or step < stop:
        for hook in before:
            hook(step)
        out = step_fn(step)
        if out.loss is not None:
            check_finite(out.loss, step)
        if out.stop:
            return step + 1
        for hook in after:
            hook(step, out)
        step += 1
    return step


class OnStep(NamedTuple):
    """A function ``fn(step, out)`` as an on_step callback."""

    on_step: Callable[[int, StepOutput], None]


class BoundaryBefore(NamedTuple):
    """tracking.preempt's step boundary ``boundary(steps_done, *args)`` before each step."""

    boundary: Callable[..., None]
    args: tuple = ()

    def before_step(self, step: int) -> None:
        self.boundary(step, *self.args)


class BoundaryAfter(NamedTuple):
    """The same boundary after each step: ``boundary(step + 1, *args)``, the steps now done."""

    boundary: Callable[..., None]
    args: tuple = ()

    def on_step(self, step: int, out: StepOutput) -> None:
        self.boundary(step + 1, *self.args)


@torch.no_grad()
def chunked_outputs(fn: Callable[[Tensor], Tensor], x: Tensor, chunk: int) -> Tensor:
    """``fn`` over x (N, ...) in chunks of ``chunk`` points, concatenated: (N, ...), without gradients."""
    return torch.cat([fn(x[i:i + chunk]) for i in range(0, x.shape[0], chunk)])


@torch.no_grad()
def evaluate(fn: Callable[[Tensor], Tensor], x: Tensor, y: Tensor, loss_sum: Callable[[Tensor, Tensor], float],
             chunk: int = 4096, extra: dict[str, Callable[[Tensor, Tensor], float]] | None = None,
             labels: Tensor | None = None) -> dict[str, float]:
    """Mean loss and accuracy of the classifier ``fn`` (x -> logits (b, C)) on (x (N, ...), y (N, ...)), in chunks.

    ``loss_sum(logits, y_chunk)`` is the chunk's summed loss (a loop keeps its own reduction, so its
    numbers stay bit-identical); each ``extra[name](logits, y_chunk)`` is another per-chunk sum,
    averaged over the N points the same way. Accuracy is of argmax against ``labels`` (N,) when
    given (e.g. soft or noisy targets y), else against y. Returns {"loss", "accuracy", *extra}.
    """
    names, labels = list(extra or {}), y if labels is None else labels
    sums, correct = {"loss": 0.0, **{k: 0.0 for k in names}}, 0
    for i in range(0, x.shape[0], chunk):
        z, yb = fn(x[i:i + chunk]), y[i:i + chunk]
        sums["loss"] += loss_sum(z, yb)
        correct += int((z.argmax(1) == labels[i:i + chunk]).sum())
        for k in names:
            sums[k] += extra[k](z, yb)
    n = x.shape[0]
    return {"loss": sums["loss"] / n, "accuracy": correct / n, **{k: sums[k] / n for k in names}}
