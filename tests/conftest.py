"""Shared fixtures: CPU-only, deterministic, no network, quiet Sacred."""
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


@pytest.fixture(autouse=True)
def _torch_threads():
    import torch

    # Test tensors are tiny: one thread avoids OpenMP overhead (and oversubscription
    # stalls when several test processes share the cores).
    torch.set_num_threads(1)
    # Tests that draw from torch's global generator get the same numbers whatever ran before them.
    torch.manual_seed(0)
    yield


def load_experiment(name: str):
    """A fresh copy of ``experiments.<name>`` (its own Sacred Experiment, so tests that add observers or
    named configs do not share state); ``import experiments.<name>`` gives the shared one."""
    import importlib.util

    path = REPO / "experiments" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"experiments_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
