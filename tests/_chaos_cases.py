"""Shared expt_chaos cases: the tiny data files, a tiny config, a run of it, its metrics."""
import json

from sacred.observers import FileStorageObserver

from tests.datasets import write_mnist, write_usps


def write_chaos_data(root):
    """Tiny USPS and FashionMNIST files (48 training, 24 test images each) under ``root``."""
    write_usps(root, n_train=48, n_test=24)
    write_mnist(root, n_train=48, n_test=24, folder="FashionMNIST")


def tiny(data_root, **updates):
    """A 256-4-10 MLP (1,078 parameters), 5 steps, 8 tracked tangent directions."""
    base = dict(data_root=data_root, max_steps=5, device="cpu", model=dict(inter_dim=4), lyapunov=dict(k=8), seed=1)
    for key, value in updates.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return base


def run(expt, config, tmp_path=None):
    expt.ex.observers[:] = [FileStorageObserver(str(tmp_path))] if tmp_path is not None else []
    try:
        return expt.ex.run(config_updates=config)
    finally:
        expt.ex.observers[:] = []


def metrics_of(tmp_path, run_id=1):
    return json.loads((tmp_path / str(run_id) / "metrics.json").read_text())
