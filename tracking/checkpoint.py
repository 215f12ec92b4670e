"""Checkpoint files: atomic writes, verified restricted loads, config comparison, RNG capture.

A checkpoint file is ``MAGIC`` (8 bytes), the SHA-256 of the payload (32 bytes), then
the payload: ``torch.save`` of a dict of tensors, numbers, strings, lists and dicts
(JSON strings for the config, metrics and info), read back with
``torch.load(weights_only=True)``, so no pickled code is ever executed. The digest
turns a truncated or corrupted file into a clear :class:`CorruptCheckpoint` error
instead of a wrong resume.

Files are ``ckpt-<step>.pt`` in one directory; writes go to a temporary file in the
same directory, are fsynced, then renamed over (atomic on POSIX), and only the
newest ``KEEP`` files are kept, so a corrupt newest file can fall back to the
previous one.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

MAGIC = b"DLTCKPT1"
FORMAT = 1
KEEP = 2  # checkpoint files kept per run: the newest and one to fall back to
_NAME = re.compile(r"^ckpt-(\d+)\.pt$")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used (wrong config, none readable, another process holds it)."""


class CorruptCheckpoint(CheckpointError):
    """A checkpoint file that is truncated, corrupted or not a checkpoint."""


def checkpoint_files(directory: str | os.PathLike) -> list[Path]:
    """The ``ckpt-<step>.pt`` files of ``directory``, newest (highest step) first; [] if none."""
    d = Path(directory)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # platforms without directory fds
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_checkpoint(directory: str | os.PathLike, step: int, payload: dict, keep: int = KEEP) -> Path:
    """Atomically write ``payload`` as ``directory/ckpt-<step>.pt``; prune to the ``keep`` newest. Returns the path."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save({"format": FORMAT, **payload}, buf)
    data = buf.getvalue()
    final = d / f"ckpt-{int(step):012d}.pt"
    tmp = d / f".{final.name}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as fh:
            fh.write(MAGIC + hashlib.sha256(data).digest() + data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)  # the previous checkpoints stay as they were
        raise
    _fsync_dir(d)
    for old in checkpoint_files(d)[keep:]:
        old.unlink(missing_ok=True)
    return final


def read_checkpoint(path: str | os.PathLike) -> dict:
    """Load one checkpoint file with ``weights_only=True``; CorruptCheckpoint if it fails its checks."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise CorruptCheckpoint(f"{path}: cannot be read ({err})") from None
    head = len(MAGIC) + 32
    if len(raw) < head or raw[: len(MAGIC)] != MAGIC:
        raise CorruptCheckpoint(f"{path}: not a checkpoint of this project (bad header, {len(raw)} bytes)")
    data = raw[head:]
    if hashlib.sha256(data).digest() != raw[len(MAGIC):head]:
        raise CorruptCheckpoint(f"{path}: checksum mismatch (truncated or corrupted file, {len(raw)} bytes)")
    try:
        out = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception as err:  # torch raises several types for a bad archive
        raise CorruptCheckpoint(f"{path}: unreadable ({type(err).__name__}: {err})") from None
    if not isinstance(out, dict) or out.get("format") != FORMAT:
        found = out.get("format") if isinstance(out, dict) else "?"
        raise CorruptCheckpoint(f"{path}: unknown checkpoint format {found}")
    return out


def newest_readable(directory: str | os.PathLike) -> tuple[dict | None, Path | None, list[str]]:
    """(payload, path, warnings) of the newest readable checkpoint in ``directory``.

    Corrupt files are skipped with a warning each (falling back to the previous file);
    (None, None, []) when there is no checkpoint file. CheckpointError when there are
    files but none is readable: the run must not silently start again from scratch.
    """
    files = checkpoint_files(directory)
    warnings = []
    for path in files:
        try:
            return read_checkpoint(path), path, warnings
        except CorruptCheckpoint as err:
            warnings.append(f"skipping corrupt checkpoint {err}")
    if files:
        raise CheckpointError(f"no readable checkpoint in {directory}: " + "; ".join(warnings)
                              + ". Delete the directory to start the run afresh.")
    return None, None, []


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> {'a.b': value}; other values are leaves."""
    if isinstance(config, dict):
        out = {}
        for k, v in config.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: config}


def config_differences(saved: dict, current: dict) -> list[str]:
    """'key (checkpoint X, now Y)' for every dotted key whose value differs, sorted by key."""
    a, b = flatten(saved), flatten(current)
    missing = object()
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, missing), b.get(key, missing)
        if va != vb:
            show = lambda v: "unset" if v is missing else repr(v)  # noqa: E731
            out.append(f"{key} (checkpoint {show(va)}, now {show(vb)})")
    return out


def config_json(config: dict) -> str:
    """The config as canonical JSON (tuples become lists, as they do in Sacred's stores)."""
    return json.dumps(config, sort_keys=True, default=str)


def capture_global_rngs() -> dict:
    """The states of Python's, numpy's and torch's global RNGs (and CUDA's, if initialised)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    out = {
        "python": [version, list(internal), gauss],
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def restore_global_rngs(state: dict) -> None:
    """Inverse of :func:`capture_global_rngs`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
