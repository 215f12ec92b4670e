"""The two checkpoint ladders of the SGD-regimes engine, built as the original's ``edm/train.py:train`` builds them.

Both are fractions of the initial training loss L₀.

* Fast ladder (every checkpoint): 2^k for k = −24, −23.5, …, −9.5; the multiples of 2⁻⁹
  in (0, 1); 1 − 2^k for the same k; and 1 + 2^k for k = −5, −4.5, …, 9.5. That is 601
  distinct rungs in float64 and 600 in float32; ``ckpt_modulo`` keeps every k-th of them
  (sorted ascending, from the lowest).
* Slow ladder (the NTK and gradient observables): 2^k for k = −20, −19.5, …, −2.5; 1/4 + j/16
  for j = 0 … 11; and 1 − 2⁻²⁰. That is 49 rungs; ``ckpt_modulo`` does not thin it.

The slow ladder is only consulted at a checkpoint, so slow checkpoints are a subset of the
fast ones, whatever ``ckpt_modulo`` is. The bracket rules are the original's:

* fast: a checkpoint is due when the loss leaves the open bracket (below, above) of its
  neighbouring rungs; a fall below ``below`` drops every rung >= ``below`` (a rung that is
  left standing is one the loss has not passed on its way down);
* slow: due when the loss leaves the closed bracket [below, above], which starts as
  [L₀, L₀]; the rungs in (below, above] are then dropped. Up to step ``ckpt_save_mult`` it is
  instead due at every checkpoint whose step is at least twice the last slow one.
"""
from __future__ import annotations

import math

import numpy as np


def fast_ladder(modulo: int = 1, dtype=np.float64) -> np.ndarray:
    """The fast rungs (fractions of L₀) in ``dtype``, ascending, every ``modulo``-th kept.

    601 distinct rungs in float64; 600 in float32 (the original's default precision), where
    1 − 2^−23.5 rounds onto 1 − 2^−24.
    """
    two = dtype(2.0)
    k = np.arange(-24.0, -9.0, 0.5).astype(dtype)  # (30,)
    low = two ** k
    rungs = np.concatenate([low, np.arange(2.0 ** -9, 1.0, 2.0 ** -9).astype(dtype), dtype(1.0) - low[::-1],
                            dtype(1.0) + two ** np.arange(-5.0, 10.0, 0.5).astype(dtype)])
    return np.unique(rungs.astype(dtype))[::modulo]  # np.unique sorts


def slow_ladder(dtype=np.float64) -> np.ndarray:
    """The slow rungs (fractions of L₀) in ``dtype``, ascending; 49 of them."""
    two = dtype(2.0)
    rungs = np.concatenate([two ** np.arange(-20.0, -2.0, 0.5).astype(dtype),
                            np.arange(2.0 ** -2, 1.0, 2.0 ** -4).astype(dtype), [dtype(1.0) - two ** dtype(-20.0)]])
    return np.unique(rungs.astype(dtype))


def neighbours(rungs: np.ndarray, loss: float) -> tuple[float, float]:
    """(nearest rung < loss, nearest rung > loss), 0 and inf where there is none."""
    lower, upper = rungs[rungs < loss], rungs[rungs > loss]
    return (float(lower[-1]) if lower.size else 0.0), (float(upper[0]) if upper.size else math.inf)


class FastLadder:
    """The fast ladder's state: ``outside(loss)`` says a checkpoint is due, ``update(loss)`` takes it."""

    def __init__(self, rungs: np.ndarray, loss: float):
        self.rungs = np.sort(np.asarray(rungs, dtype=float))
        self.below, self.above = neighbours(self.rungs, loss)

    def outside(self, loss: float) -> bool:
        return not (self.below < loss < self.above)

    def update(self, loss: float) -> bool:
        """True when ``loss`` left the bracket; then the rungs passed on a fall are dropped and the bracket moves."""
        if not self.outside(loss):
            return False
        if loss < self.below:
            kept = self.rungs[self.rungs < self.below]
            self.rungs = kept if kept.size else np.array([self.below])
        if math.isfinite(loss):
            self.below, self.above = neighbours(self.rungs, loss)
        return True


class SlowLadder:
    """The slow ladder's state; ``due(loss, step)`` is asked once at every checkpoint."""

    def __init__(self, rungs: np.ndarray, loss0: float, save_mult: int = 0):
        self.rungs = np.sort(np.asarray(rungs, dtype=float))
        self.below = self.above = float(loss0)
        self.save_mult = save_mult
        self.last_step = 0

    def due(self, loss: float, step: int) -> bool:
        if step > self.save_mult:
            if self.below <= loss <= self.above:
                return False
        elif step - self.last_step < self.last_step:
            return False
        self.last_step = step
        drop = (self.below < self.rungs) & (self.rungs <= self.above)
        kept = self.rungs[~drop]
        self.rungs = kept if kept.size else np.array([self.below])
        if math.isfinite(loss):
            self.below, self.above = neighbours(self.rungs, loss)
        return True


def next_early_step(step: int, save_mult: int) -> int | None:
    """The step of the next log-spaced checkpoint after one at ``step``: step + max(1, step) while
    step < ``ckpt_save_mult`` (so 1, 2, 4, … from step 0), else None. The original runs
    max(1, step) steps after a checkpoint at step < ckpt_save_mult."""
    return step + max(1, step) if step < save_mult else None
