"""Minibatch training of an nn.Module with torch.optim, seeded and divergence-aware."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn

from core import checks
from dynamics.engine import BoundaryAfter, OnStep, StepOutput, check_finite, run_steps

OPTIMIZERS = ("sgd", "adam")


@dataclass(frozen=True)
class TrainingConfig:
    """Plain minibatch training.

    Attributes:
        optim: 'sgd' or 'adam'.
        learning_rate: step size (> 0).
        momentum: SGD momentum in [0, 1) (ignored by Adam); None means 0.
        batch_size: minibatch size, drawn with replacement each step.
        num_steps: optimisation steps.
        weight_decay: decoupled-from-the-loss L2 decay passed to the optimizer; None means 0.
        l2_regularization: c in the training loss L + c Σ_p ||p||² over all parameters
            (the original expt_llc_curve's compute_loss); None means 0. For SGD this is
            weight decay 2c, and the recorded losses include it.
    """

    optim: str = "sgd"
    learning_rate: float = 0.01
    momentum: float | None = 0.9
    batch_size: int = 200
    num_steps: int = 5000
    weight_decay: float | None = None
    l2_regularization: float | None = None

    def __post_init__(self):
        checks.one_of("optim", self.optim, OPTIMIZERS)
        checks.number("learning_rate", self.learning_rate, lo=0, strict=True)
        checks.number("momentum", self.momentum, lo=0, hi=1, hi_open=True, none_ok=True)
        checks.integer("batch_size", self.batch_size, lo=1)
        checks.integer("num_steps", self.num_steps, lo=1)
        checks.number("weight_decay", self.weight_decay, lo=0, none_ok=True)
        checks.number("l2_regularization", self.l2_regularization, lo=0, none_ok=True)

    def make_optimizer(self, params) -> torch.optim.Optimizer:
        wd = self.weight_decay or 0.0
        if self.optim == "sgd":
            return torch.optim.SGD(params, lr=self.learning_rate, momentum=self.momentum or 0.0, weight_decay=wd)
        return torch.optim.Adam(params, lr=self.learning_rate, weight_decay=wd)


def train(
    model: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    y: Tensor,
    config: TrainingConfig,
    gen: torch.Generator,
    callback: Callable[[int, float], None] | None = None,
    boundary: Callable[[int, Callable[[], dict]], None] | None = None,
    resume: dict | None = None,
) -> np.ndarray:
    """Train ``model`` in place on (x, y); returns the (num_steps,) minibatch losses.

    The loss of a step is ``loss_fn`` on the minibatch plus, with
    ``config.l2_regularization`` = c, the penalty c Σ_p ||p||² (included in the returned losses).

    ``callback(step, loss)`` is called after every step (e.g. to log a metric).
    ``boundary(steps_done, capture)`` is called after it (tracking.preempt's step boundary):
    ``capture()`` returns :func:`train_state`'s dict, and training given ``resume=`` that dict
    continues from it exactly (model, optimizer, batch generator, losses so far).

    Raises:
        ValueError: batch_size > n.
        TrainingDiverged: the loss became NaN or inf (a FloatingPointError; step = steps completed before it).
    """
    n = x.shape[0]
    checks.at_most("batch_size", config.batch_size, "the number of data points", n)
    opt = config.make_optimizer(model.parameters())
    losses = np.empty(config.num_steps)
    start = 0
    if resume is not None:
        start = load_train_state(resume, model, opt, gen, losses)
    model.train()

    done = start  # steps completed: what capture() saves

    def step_fn(step: int) -> StepOutput:
        nonlocal done
        idx = torch.randint(0, n, (config.batch_size,), generator=gen, device=gen.device)
        loss = loss_fn(model(x[idx]), y[idx])
        if config.l2_regularization:
            loss = loss + config.l2_regularization * sum((p * p).sum() for p in model.parameters())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        value = check_finite(loss.item(), step)
        losses[step], done = value, step + 1
        return StepOutput(value)

    def capture() -> dict:
        return train_state(model, opt, gen, losses, done)

    callbacks = [] if callback is None else [OnStep(lambda step, out: callback(step, out.loss))]
    if boundary is not None:
        callbacks.append(BoundaryAfter(boundary, (capture,)))
    run_steps(step_fn, start, config.num_steps, callbacks)
    return losses


def train_state(model: nn.Module, opt: torch.optim.Optimizer, gen: torch.Generator, losses: np.ndarray,
                steps_done: int) -> dict:
    """Everything :func:`train` needs to continue after ``steps_done`` steps (tensors, for a weights-only load)."""
    return {"steps_done": int(steps_done), "model": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "optimizer": opt.state_dict(), "generator": gen.get_state(),
            "losses": torch.from_numpy(losses[:steps_done].copy())}


def load_train_state(state: dict, model: nn.Module, opt: torch.optim.Optimizer, gen: torch.Generator,
                     losses: np.ndarray) -> int:
    """Inverse of :func:`train_state`, in place; returns the number of steps already done."""
    done = int(state["steps_done"])
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    gen.set_state(state["generator"])
    losses[:done] = state["losses"].numpy()
    return done
