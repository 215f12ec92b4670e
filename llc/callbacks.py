"""Callbacks on the chain states every k draws, vectorised over chains.

A callback is any ``callback(state: ChainState) -> None``; ``estimate_llc(callbacks=[...],
callback_every=k)`` calls each one after draws t = k−1, 2k−1, … with every chain's state
at once. With ``callbacks=None`` the sampler runs with no hook at all (no copies, no calls).
Built in:

* :class:`OnlineLLC`: each chain's running λ̂ = nβ (mean_{burnin <= s <= t} L_B(w_s) − L_n(w*))
  and WBIC = n · mean L_B(w_s) (the tempered posterior at nβ = n / log n is WBIC's,
  here localised); optionally logged to a Sacred run as ``llc/online/...`` scalars;
* :class:`WeightDistance`: ‖w_t − w*‖ per chain;
* :class:`GradientNorm`: ‖∇L_B(w_t)‖ per chain on the step's own minibatch.

L_B(w_s) is re-evaluated at the callback (one vmapped forward per call), so with
k = 1 OnlineLLC reproduces the minibatch trace's λ̂; with k > 1 it averages the
draws it sees.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np
import torch
from torch import Tensor
from torch.func import grad, vmap

from core.types import FlatLoss
from llc.sgld import StepCallback


@dataclass
class ChainState:
    """Every chain at draw t.

    Attributes:
        t: draw index (0-based).
        w: (C, P) states w_t whose minibatch loss is the trace's entry t.
        w_next: (C, P) states after the step (w_{t+1}).
        xb, yb: (C, B, ...) each chain's minibatch of step t.
        loss_fn: the flat loss (P,), (B, ...), (B, ...) -> ().
        w_star: (P,) the centre.
        n, nbeta, burnin, init_loss: the run's constants.
    """

    t: int
    w: Tensor
    w_next: Tensor
    xb: Tensor
    yb: Tensor
    loss_fn: FlatLoss
    w_star: Tensor
    n: int
    nbeta: float
    burnin: int
    init_loss: float

    def minibatch_loss(self) -> Tensor:
        """(C,) L_B(w_t) on each chain's own batch."""
        return vmap(self.loss_fn)(self.w, self.xb, self.yb)


class Callback(Protocol):
    def __call__(self, state: ChainState) -> None: ...


@dataclass
class OnlineLLC:
    """Running λ̂ and WBIC per chain, from the draws it is called on after burn-in.

    steps: draw indices of the records; lambdahat, wbic: lists of (C,) arrays.
    run: a Sacred run (anything with ``log_scalar(name, value, step)``) to log
    ``llc/online/lambdahat_chain{c}`` and ``llc/online/wbic_chain{c}`` to.
    """

    run: object | None = None
    steps: list[int] = field(default_factory=list)
    lambdahat: list[np.ndarray] = field(default_factory=list)
    wbic: list[np.ndarray] = field(default_factory=list)
    _sum: Tensor | None = field(default=None, repr=False)
    _count: int = field(default=0, repr=False)

    def __call__(self, s: ChainState) -> None:
        if s.t < s.burnin:
            return
        loss = s.minibatch_loss().double()  # (C,)
        self._sum = loss if self._sum is None else self._sum + loss
        self._count += 1
        mean = (self._sum / self._count).cpu().numpy()
        lam, wbic = s.nbeta * (mean - s.init_loss), s.n * mean
        self.steps.append(s.t)
        self.lambdahat.append(lam)
        self.wbic.append(wbic)
        if self.run is not None:
            for c in range(lam.size):
                self.run.log_scalar(f"llc/online/lambdahat_chain{c}", float(lam[c]), s.t)
                self.run.log_scalar(f"llc/online/wbic_chain{c}", float(wbic[c]), s.t)


@dataclass
class WeightDistance:
    """‖w_t − w*‖ per chain: steps and a list of (C,) arrays."""

    steps: list[int] = field(default_factory=list)
    values: list[np.ndarray] = field(default_factory=list)

    def __call__(self, s: ChainState) -> None:
        self.steps.append(s.t)
        self.values.append(torch.linalg.vector_norm(s.w - s.w_star, dim=1).double().cpu().numpy())


@dataclass
class GradientNorm:
    """‖∇L_B(w_t)‖ per chain on its own minibatch: steps and a list of (C,) arrays."""

    steps: list[int] = field(default_factory=list)
    values: list[np.ndarray] = field(default_factory=list)

    def __call__(self, s: ChainState) -> None:
        with torch.enable_grad():
            g = vmap(grad(s.loss_fn))(s.w, s.xb, s.yb)  # (C, P)
        self.steps.append(s.t)
        self.values.append(torch.linalg.vector_norm(g, dim=1).double().cpu().numpy())


BatchHook = Callable[[int, Tensor, Tensor, Tensor, Tensor], None]  # (t, w_t, w_{t+1}, xb (C, B, ...), yb)


def batch_hook(
    callbacks: list[Callable[[ChainState], None]],
    loss_fn: FlatLoss,
    w_star: Tensor,
    n: int,
    nbeta: float,
    burnin: int,
    init_loss: float,
) -> BatchHook:
    """hook(t, w_t, w_next, xb, yb) that builds the ChainState and calls every callback."""
    if not all(callable(cb) for cb in callbacks):
        raise ValueError("callbacks must be callables taking an llc.callbacks.ChainState")

    def hook(t, w_t, w_next, xb, yb):
        state = ChainState(t, w_t, w_next, xb, yb, loss_fn, w_star, n, nbeta, burnin, init_loss)
        for cb in callbacks:
            cb(state)

    return hook


def check_every(every) -> int:
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"callback_every must be an integer >= 1; got {every!r}")
    return every


def step_callback(
    callbacks: list[Callable[[ChainState], None]],
    every: int,
    loss_fn: FlatLoss,
    w_star: Tensor,
    x: Tensor,
    y: Tensor,
    nbeta: float,
    burnin: int,
    init_loss: float,
) -> StepCallback:
    """The ``run_sgld`` hook that calls ``callbacks`` after draws t with (t + 1) % every == 0."""
    every = check_every(every)
    call = batch_hook(callbacks, loss_fn, w_star, x.shape[0], nbeta, burnin, init_loss)

    def hook(t: int, w_t: Tensor, w_next: Tensor, idx: Tensor) -> None:
        if (t + 1) % every:
            return
        flat = idx.reshape(-1)
        xb = x.index_select(0, flat).view(*idx.shape, *x.shape[1:])  # (C, B, ...)
        yb = y.index_select(0, flat).view(*idx.shape, *y.shape[1:])
        call(t, w_t, w_next, xb, yb)

    return hook
