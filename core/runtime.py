"""Resolve the ``device`` and ``dtype`` strings used in every config, and derive independent seeds."""
from __future__ import annotations

import operator

import torch

DEVICES = ("auto", "cpu", "cuda")
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' -> CUDA when available, else CPU; 'cuda:1' etc. pass through."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.split(":")[0] not in DEVICES[1:]:
        raise ValueError(f"device must be one of {DEVICES} (or 'cuda:N'); got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} requested but CUDA is not available")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """'float32' / 'float64' (or a torch dtype) -> torch dtype."""
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise ValueError(f"dtype must be one of {tuple(DTYPES)}; got {dtype}")
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {tuple(DTYPES)}; got {dtype!r}")
    return DTYPES[dtype]


def derived_seed(seed: int, *spawn_key: int) -> int:
    """A 63-bit seed for an independent stream, from numpy's SeedSequence(seed, spawn_key).

    Streams for different keys are statistically independent, and a stream does
    not change when other streams are added. Keys are integers (an experiment's
    ``Stream`` IntEnum members, chain or checkpoint indices); a float key raises.
    """
    import numpy as np

    key = tuple(operator.index(k) for k in spawn_key)  # IntEnum -> its int value; 1.0 -> TypeError
    state = np.random.SeedSequence(entropy=int(seed), spawn_key=key).generate_state(1, dtype=np.uint64)
    return int(state[0]) & ((1 << 63) - 1)


def stream_generator(seed: int, *spawn_key: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with :func:`derived_seed` ``(seed, *spawn_key)``: one of a run's
    independent random streams (an experiment's ``Stream`` member, then optional indices)."""
    return torch.Generator(device=device).manual_seed(derived_seed(seed, *spawn_key))
