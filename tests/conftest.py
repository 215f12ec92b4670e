"""Shared fixtures: CPU-only, deterministic, no network, quiet Sacred."""
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
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
    """Import experiments/<name>.py as a module (experiments/ is not a package)."""
    import importlib.util

    path = REPO / "experiments" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"experiments_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
