"""Flattened train / validation / test splits of a vision dataset, and disjoint calibration batches.

The width-parameterization study (``experiments/expt_abc_params.py``) trains fully connected
networks on grey images flattened to vectors; it validates on ``n_val`` training examples held
out by a seeded permutation, or, with ``n_val=0`` as the original did, on a copy of the training set.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from core import checks
from data.vision import load_vision_dataset


class Splits(NamedTuple):
    """Flattened inputs (N, d) and labels (N,): train and validation from the training split, test apart."""

    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor
    x_test: Tensor
    y_test: Tensor


def load_flat_splits(dataset: str, data_root: str | None, n_val: int, batch_size: int, generator: torch.Generator,
                     device) -> Splits:
    """Load ``dataset`` in grey, flatten it and hold out ``n_val`` training examples.

    The held-out rows are the first ``n_val`` of a permutation drawn from ``generator`` (CPU);
    ``n_val=0`` validates on the training set itself and draws nothing.

    Raises:
        ValueError: n_val or batch_size too large for the training split.
    """
    kwargs = dict(data_root=data_root, grayscale=True)
    x, y = load_vision_dataset(dataset, train=True, **kwargs)
    x_test, y_test = load_vision_dataset(dataset, train=False, **kwargs)
    n = x.shape[0]
    checks.integer("n_val", n_val, lo=0, hi=n - 2, why=f"leaving at least 2 of the {n} training examples")
    flat = lambda t: t.flatten(1).to(device)  # noqa: E731  (N, 1, H, W) -> (N, H·W)
    if n_val == 0:  # the original: "validation" on a copy of the training set
        checks.at_most("batch_size", batch_size, "the training examples", n)
        xf, yd = flat(x), y.to(device)
        return Splits(xf, yd, xf, yd, flat(x_test), y_test.to(device))
    checks.at_most("batch_size", batch_size, "the training examples left after n_val", n - n_val)
    perm = torch.randperm(n, generator=generator)
    val, train = perm[:n_val], perm[n_val:]
    return Splits(flat(x[train]), y[train].to(device), flat(x[val]), y[val].to(device), flat(x_test), y_test.to(device))


def calibration_batches(data: Splits, batch_size: int, gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """Two disjoint training batches: (x, y) for a mock step, and the inputs of another to measure it.

    Each holds min(batch_size, N_train // 2) rows; shapes (B, d), (B,), (B, d).
    """
    size = min(batch_size, data.x_train.shape[0] // 2)
    idx = torch.randperm(data.x_train.shape[0], generator=gen, device=gen.device)
    step, probe = idx[:size], idx[size:2 * size]
    return data.x_train[step], data.y_train[step], data.x_train[probe]
