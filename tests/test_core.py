"""core/: device and dtype resolution, and the layering rule (core imports no other project package)."""
import ast
import subprocess
from pathlib import Path

import pytest
import torch

from core.runtime import DTYPES, resolve_device, resolve_dtype

ROOT = Path(__file__).resolve().parent.parent
PROJECT_PACKAGES = {"llc", "dynamics", "models", "data", "tracking", "gen_commands", "experiments", "bench", "tests"}


def _imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    roots = set()
    for node in ast.walk(tree):  # walk: imports inside functions count too
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_core_imports_no_other_project_package():
    files = sorted((ROOT / "core").glob("*.py"))
    assert len(files) >= 3  # __init__, runtime, types: an empty glob would pass vacuously
    for path in files:
        assert not _imported_roots(path) & PROJECT_PACKAGES, path.name


def _python_files():
    # The repository's own files: CI keeps other venvs (.ci/mongoeco-venv, .lint-venv) and
    # npm trees inside the checkout, whose files are not the project's.
    out = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True, check=True)
    files = [ROOT / line for line in out.stdout.splitlines() if line]
    assert len(files) > 100, f"git ls-files found only {len(files)} Python files"
    return [p for p in files if p.exists()]


def test_flat_types_defined_once_and_models_device_gone():
    """FlatLoss / FlatModel are assigned only in core/types.py, and nothing imports models.device."""
    definers, device_importers = [], []
    for path in _python_files():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if any(isinstance(t, ast.Name) and t.id in ("FlatLoss", "FlatModel") for t in targets):
                    definers.append(str(path.relative_to(ROOT)))
            if isinstance(node, ast.ImportFrom) and node.module == "models.device":
                device_importers.append(str(path.relative_to(ROOT)))
    assert sorted(definers) == ["core/types.py", "core/types.py"]
    assert device_importers == []
    assert not (ROOT / "models" / "device.py").exists()


def test_resolve_dtype():
    assert resolve_dtype("float32") is torch.float32
    assert resolve_dtype("float64") is torch.float64
    assert resolve_dtype(torch.float64) is torch.float64
    assert set(DTYPES) == {"float32", "float64"}
    with pytest.raises(ValueError, match=r"dtype must be one of \('float32', 'float64'\); got 'float16'"):
        resolve_dtype("float16")
    with pytest.raises(ValueError, match="dtype must be one of"):
        resolve_dtype(torch.bfloat16)


def test_resolve_device_on_cpu_only_host(monkeypatch):
    # A host without CUDA (also on a GPU machine): 'auto' must give the CPU and 'cuda' must refuse.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    dev = torch.device("cpu")
    assert resolve_device(dev) is dev
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda:0")
    with pytest.raises(ValueError, match=r"device must be one of \('auto', 'cpu', 'cuda'\)"):
        resolve_device("tpu")
