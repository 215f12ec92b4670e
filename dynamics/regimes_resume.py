"""Checkpoint state of the SGD-regimes engine (docs/runs.md#preemption).

``train_regimes`` saves its loop state at every step boundary through these helpers, in the
types ``torch.load(weights_only=True)`` accepts (tensors, numbers, strings, lists, dicts):
the two ladders' brackets and remaining rungs, and the checkpoint records as JSON (floats
round-trip exactly, NaN and inf included).
"""
from __future__ import annotations

import json

import numpy as np
import torch

from dynamics.regimes_ladders import FastLadder, SlowLadder


def _plain(obj):
    if hasattr(obj, "detach"):
        obj = obj.detach().cpu().numpy()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot checkpoint a record value of type {type(obj).__name__}")


def records_to_state(records: list[dict]) -> str:
    """The checkpoint records as JSON (numpy / torch scalars become Python numbers)."""
    return json.dumps(records, default=_plain)


def records_from_state(text: str) -> list[dict]:
    return json.loads(text)


def fast_state(ladder: FastLadder) -> dict:
    return {"rungs": torch.from_numpy(ladder.rungs.copy()), "below": ladder.below, "above": ladder.above}


def restore_fast(state: dict) -> FastLadder:
    ladder = FastLadder(state["rungs"].numpy(), 0.0)
    ladder.below, ladder.above = state["below"], state["above"]
    return ladder


def slow_state(ladder: SlowLadder) -> dict:
    return {"rungs": torch.from_numpy(ladder.rungs.copy()), "below": ladder.below, "above": ladder.above,
            "save_mult": ladder.save_mult, "last_step": ladder.last_step}


def restore_slow(state: dict) -> SlowLadder:
    ladder = SlowLadder(state["rungs"].numpy(), 0.0, state["save_mult"])
    ladder.below, ladder.above, ladder.last_step = state["below"], state["above"], state["last_step"]
    return ladder
