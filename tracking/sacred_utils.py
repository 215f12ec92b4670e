"""Shared Sacred conventions: experiment factory, default observer, seeding, logging.

Every ``experiments/expt_*.py`` starts with
``ex = configure_experiment(Experiment("name"))`` (the Experiment must be built in
the script itself: Sacred reads its caller's globals for the source file and the
docstring) and ends with ``run_cli(ex)``, so that:

* with no observer flag (``-F``, ``-m``, ``-u``, ...), runs are recorded by a
  FileStorageObserver in ``./runs/<experiment name>/``;
* ``-F DIR`` and ``-m host:port:db`` behave as in stock Sacred (MongoObserver
  runs are what Omniboard reads);
* every experiment has a ``run_key`` config entry, set by ``gen_commands`` to a
  stable hash of the experiment and its config, so finished runs can be found.
"""
from __future__ import annotations

import dataclasses
import math
import os
import random
import sys
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


def run_cli(ex: Experiment, argv: Sequence[str] | None = None, runs_dir: str | None = None):
    """Run ``ex`` from the command line, adding ./runs/<name> when no observer is named."""
    argv = list(sys.argv if argv is None else argv)
    if default_observer_needed(argv):
        root = runs_dir or os.environ.get("DLT_RUNS_DIR", DEFAULT_RUNS_DIR)
        ex.observers.append(FileStorageObserver(os.path.join(root, ex.path)))
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
