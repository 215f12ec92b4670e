"""Shared fixtures: CPU-only, deterministic, no network, quiet Sacred."""
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The suite runs on the CPU: CUDA is hidden unless DLT_TEST_CUDA=1 (bench/gpu.sh sets it for
# `pytest -m cuda`, the tests that need a device) or the environment already names devices.
if os.environ.get("DLT_TEST_CUDA") != "1":
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


def run_experiment(expt, config_updates, tmp_path=None, **run_kwargs):
    """``expt.ex.run(config_updates=...)`` recording to a FileStorageObserver under ``tmp_path`` when given (none
    otherwise); the observers are cleared afterwards, even when the run raises, so one test's store never sees
    another's runs. ``run_kwargs`` go to ``Experiment.run`` (``command_name``, ``named_configs``...)."""
    from sacred.observers import FileStorageObserver

    expt.ex.observers[:] = [FileStorageObserver(str(tmp_path))] if tmp_path is not None else []
    try:
        return expt.ex.run(config_updates=config_updates, **run_kwargs)
    finally:
        expt.ex.observers[:] = []


def forbid_compute(monkeypatch, module, *names):
    """Replace each ``module.<name>`` by a function that fails the test when called: a config check that must come
    before any compute then fails loudly if the compute starts first."""

    def no_compute(*a, **k):
        raise AssertionError("compute started before validation")

    for name in names:
        monkeypatch.setattr(module, name, no_compute)
    return no_compute


@pytest.fixture
def cifar(tmp_path, monkeypatch):
    """A tiny CIFAR-10 (40 train, 20 test images) under ``tmp_path/data``, with the size check relaxed for it."""
    from tests.datasets import allow_tiny_cifar, write_cifar10

    root = tmp_path / "data"
    write_cifar10(root, n_train=40, n_test=20)
    allow_tiny_cifar(monkeypatch)
    return root


def assert_print_config_takes(expt, config, capsys):
    """``print_config`` accepts every key of ``config`` (an unknown one raises Sacred's ConfigAddedError) and
    prints each of them."""
    expt.ex.run(command_name="print_config", config_updates=config)
    out = capsys.readouterr().out
    for key in config:
        assert key in out, key


def experiment_fixture(name: str):
    """A module-scoped ``expt`` fixture: ``expt = experiment_fixture("expt_dln")`` in a test module gives its tests
    one fresh copy of experiments/<name>.py (:func:`load_experiment`), shared within the module."""

    @pytest.fixture(scope="module", name="expt")
    def _expt():
        return load_experiment(name)

    return _expt


def data_fixture(write, basename="data"):
    """A module-scoped data-folder fixture named after the module variable it is assigned to:
    ``mnist_root = data_fixture(lambda root: write_mnist(root))`` gives a module's tests one folder, written once by
    ``write(root)`` into a fresh temporary directory, as a string (what the experiments' ``data_root`` key takes)."""

    @pytest.fixture(scope="module")
    def _root(tmp_path_factory):
        root = tmp_path_factory.mktemp(basename)
        write(root)
        return str(root)

    return _root
