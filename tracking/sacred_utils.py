"""Shared Sacred conventions: experiment factory, default observer, seeding, logging.

Every ``experiments/expt_*.py`` starts with
``ex = configure_experiment(Experiment("name"))`` (the Experiment must be built in
the script itself: Sacred reads its caller's globals for the source file and the
docstring) and ends with ``run_cli(ex)``, so that:

* with no observer flag (``-F``, ``-m``, ``-u``, ...), runs are recorded by a
  FileStorageObserver in ``./runs/<experiment name>/``;
* ``-F DIR`` behaves as in stock Sacred. ``-m host:port:db`` (or ``-m
  mongodb://[user:password@]host:port/db``) is taken here, not by Sacred: the server
  is pinged first, so an unreachable one fails within about 5 s, before any compute,
  with a message naming host:port; then a ``tracking.mongo_observer``
  FailSafeMongoObserver records the run (the documents Omniboard reads), with
  failure_dir ``./runs/_mongo_failed/<experiment name>/``. The argument never reaches
  Sacred's ``meta`` record, so credentials in it are not stored;
* every experiment has a ``run_key`` config entry, set by ``gen_commands`` to a
  stable hash of the experiment and its config, so finished runs can be found.
"""
from __future__ import annotations

import dataclasses
import math
import os
import random
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from sacred import SETTINGS, Experiment
from sacred.observers import FileStorageObserver

# Observer flags of stock Sacred: with any of them the default file store is not added.
OBSERVER_FLAGS = (
    "-F", "--file_storage", "-m", "--mongo_db", "-u", "--unobserved", "-s", "--sql",
    "-t", "--tiny_db", "-G", "--gcs", "-S", "--s3",
)
# Commands that record nothing, so no default observer is needed.
UNOBSERVED_COMMANDS = ("print_config", "print_dependencies", "print_named_configs", "save_config", "help")

DEFAULT_RUNS_DIR = "runs"

# 'sys' capturing works the same on laptops, under SLURM and inside pytest.
SETTINGS.CAPTURE_MODE = "sys"


def configure_experiment(ex: Experiment) -> Experiment:
    """Add the project's shared config entries (``run_key``) to ``ex`` and return it."""
    ex.add_config(run_key=None)  # set by gen_commands: hash of experiment + config; None for ad-hoc runs
    return ex


def _has_observer_flag(argv: Sequence[str]) -> bool:
    for arg in argv:
        if arg == "with":  # everything after 'with' is config
            return False
        if arg in OBSERVER_FLAGS or any(arg.startswith(f + "=") for f in OBSERVER_FLAGS if f.startswith("--")):
            return True
    return False


def default_observer_needed(argv: Sequence[str]) -> bool:
    """True when the command line records a run but names no observer."""
    args = list(argv[1:])
    command = next((a for a in args if not a.startswith("-")), None)
    return command not in UNOBSERVED_COMMANDS and not _has_observer_flag(args)


MONGO_FLAGS = ("-m", "--mongo_db")


def take_mongo_flags(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(``argv`` without its ``-m X`` / ``--mongo_db[=]X`` options before ``with``, the X values)."""
    rest, values, i = [], [], 0
    argv = list(argv)
    while i < len(argv):
        arg = argv[i]
        if arg == "with":
            return rest + argv[i:], values
        if arg in MONGO_FLAGS:
            if i + 1 >= len(argv) or argv[i + 1] == "with":
                raise SystemExit(f"error: {arg} needs a value: host:port:db or mongodb://host:port/db")
            values.append(argv[i + 1])
            i += 2
            continue
        if arg.startswith("--mongo_db="):
            values.append(arg.split("=", 1)[1])
        else:
            rest.append(arg)
        i += 1
    return rest, values


def mongo_observer(ex: Experiment, value: str, runs_dir: str | None = None):
    """The FailSafeMongoObserver for ``-m value``, after a ping; SystemExit with a clear message if unreachable."""
    from tracking.mongo import MongoUnreachable, connect, default_failure_root, parse_target, redact
    from tracking.mongo_observer import FailSafeMongoObserver

    try:
        target = parse_target(value)
        client = connect(target)
    except ValueError as err:
        raise SystemExit(f"error: -m {redact(value)!r}: {err}") from None
    except MongoUnreachable as err:
        raise SystemExit(f"error: {err}") from None
    root = Path(runs_dir) / "_mongo_failed" if runs_dir else default_failure_root()
    return FailSafeMongoObserver(target, root / ex.path, client=client)


def run_cli(ex: Experiment, argv: Sequence[str] | None = None, runs_dir: str | None = None):
    """Run ``ex`` from the command line, adding ./runs/<name> when no observer is named.

    ``-m`` is handled here (see the module docstring); every other flag goes to Sacred.
    """
    argv = list(sys.argv if argv is None else argv)
    observed = default_observer_needed(argv)
    if observed:
        root = runs_dir or os.environ.get("DLT_RUNS_DIR", DEFAULT_RUNS_DIR)
        ex.observers.append(FileStorageObserver(os.path.join(root, ex.path)))
    argv, mongo_values = take_mongo_flags(argv)
    command = next((a for a in argv[1:] if not a.startswith("-")), None)
    if mongo_values and command not in UNOBSERVED_COMMANDS:
        ex.observers.extend(mongo_observer(ex, value, runs_dir) for value in mongo_values)
    return ex.run_commandline(argv)


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch's global RNGs (for code that draws without a generator)."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_config(cls, values: dict, key: str):
    """Construct the frozen dataclass ``cls`` from a config dict, naming ``key`` in errors.

    Unknown entries and invalid values raise ValueError such as
    "sgld_config.epsilon must be a finite number > 0; got -1".
    """
    if not isinstance(values, dict):
        raise ValueError(f"{key} must be a dict; got {type(values).__name__}")
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ValueError(f"{key} has unknown entries {unknown}; allowed: {sorted(fields)}")
    try:
        return cls(**values)
    except ValueError as err:
        raise ValueError(f"{key}.{err}") from None


def thin_indices(length: int, max_points: int) -> np.ndarray:
    """At most ``max_points`` evenly spaced indices of range(length), always keeping the last."""
    if length <= max_points:
        return np.arange(length)
    idx = np.unique(np.linspace(0, length - 1, max_points).round().astype(int))
    return idx


def log_series(run, name: str, values: Iterable[float], max_points: int = 2000, offset: int = 0) -> None:
    """log_scalar a series, thinned to at most ``max_points`` points; steps are the indices."""
    values = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=float)
    for i in thin_indices(len(values), max_points):
        v = float(values[i])
        if math.isfinite(v):
            run.log_scalar(name, v, int(i) + offset)


def json_ready(obj: Any) -> Any:
    """Numpy/torch scalars and arrays -> Python floats and lists (for results and info)."""
    if isinstance(obj, dict):
        return {str(k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    if hasattr(obj, "detach"):
        obj = obj.detach().cpu().numpy()
    if isinstance(obj, np.ndarray):
        return json_ready(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else obj
    return obj
