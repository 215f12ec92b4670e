"""Checkpoint state of the chaos training loop (docs/runs.md#preemption).

``expt_chaos`` saves its loop state at every step boundary (before the step runs) through
these helpers, in the types ``torch.load(weights_only=True)`` accepts (tensors, numbers,
strings, None, lists, dicts): the epoch, the position in its batch permutation and the
permutation itself, the weights and momentum buffers of every copy, the batch and CGD
generators, the Lyapunov frame with its accumulated logs, the previous chaotic subspace,
the fixed Lyapunov subspaces, the gradient window and the records kept for artifacts.
"""
from __future__ import annotations

import collections
import dataclasses

import numpy as np
import torch

from dynamics.lyapunov import LyapunovState


def _record_state(record: dict) -> dict:
    """Each record list as {'kind': 'plain' | 'tensor' | 'numpy', 'items': [...]} (numpy arrays as tensors)."""
    out = {}
    for key, items in record.items():
        if items and isinstance(items[0], np.ndarray):
            out[key] = {"kind": "numpy", "items": [torch.from_numpy(a.copy()) for a in items]}
        elif items and isinstance(items[0], torch.Tensor):
            out[key] = {"kind": "tensor", "items": [t.clone() for t in items]}
        else:
            out[key] = {"kind": "plain", "items": [v.item() if isinstance(v, np.generic) else v for v in items]}
    return out


# Record keys renamed since checkpoints were first written (old -> new), so that a run
# checkpointed before the rename resumes with its earlier epochs' accuracies.
_RENAMED_RECORD_KEYS = {"train_acc": "train_accuracy", "test_acc": "test_accuracy"}


def _restore_record(state: dict) -> collections.defaultdict:
    record = collections.defaultdict(list)
    for key, entry in state.items():
        items = entry["items"]
        record[_RENAMED_RECORD_KEYS.get(key, key)] = ([t.numpy() for t in items] if entry["kind"] == "numpy"
                                                      else list(items))
    return record


def loop_state(*, step, epoch, start, perm, ws, bufs, gens, lyap, prev_chaotic, fixed_lyap, grads_window,
               record) -> dict:
    """The loop's state before step ``step`` (batch ``perm[start:start + batch_size]`` of ``epoch``)."""
    return {
        "step": step, "epoch": epoch, "start": start, "perm": perm.cpu().clone(),
        "ws": [w.clone() for w in ws], "bufs": [None if b is None else b.clone() for b in bufs],
        "gens": {name: g.get_state() for name, g in gens.items()},
        "lyap": None if lyap is None else dataclasses.asdict(lyap),
        "prev_chaotic": prev_chaotic, "fixed_lyap": {int(t): s for t, s in fixed_lyap.items()},
        "grads_window": list(grads_window), "record": _record_state(record),
    }


def restore_loop(state: dict, gens: dict, device, window_len: int) -> tuple:
    """(step, epoch, start, perm, ws, bufs, lyap, prev_chaotic, fixed_lyap, grads_window, record) of ``state``.

    Sets the generators in ``gens`` to their saved states.
    """
    for name, g in gens.items():
        g.set_state(state["gens"][name])
    lyap = state["lyap"]
    return (state["step"], state["epoch"], state["start"], state["perm"].to(device), list(state["ws"]),
            list(state["bufs"]),
            None if lyap is None else LyapunovState(**lyap), state["prev_chaotic"], dict(state["fixed_lyap"]),
            collections.deque(state["grads_window"], maxlen=window_len), _restore_record(state["record"]))
