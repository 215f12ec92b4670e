"""Binary classification datasets of the SGD-regimes experiment (docs/sgd_regimes.md), labels y = ±1.

* ``mnist_parity``: MNIST, y = +1 for even digits, -1 for odd ones.
* ``cifar_animal``: CIFAR-10, y = -1 for vehicles (airplane, automobile, ship, truck), +1 for animals.
* ``sign``: x ~ N(0, I_d), y = sign(x_1).
* ``random_sign``: x ~ N(0, I_d), y = sign(w*·x) with a random unit teacher w*.
* ``depleted_sign``: x_1 with density p(x_1) ∝ |x_1|^χ e^(-x_1²/2) (χ = ``data_chi``; χ > 0 depletes
  the points near the decision boundary), the other coordinates N(0, 1), y = sign(x_1).

Splits are disjoint and seeded. Images come from the official train and test splits
pooled together (through ``data.vision.load_vision_dataset``, normalised per channel):
``seed_testset`` picks the ``pte`` test images, then ``seed_trainset`` picks the ``ptr``
training images among the rest, so the test set does not move when only the training
seed changes. Synthetic inputs are drawn from independent streams derived from
``seed_trainset`` and ``seed_testset``; the ``random_sign`` teacher from ``seed_trainset``
(as in the original, where it followed the training seed).
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum, unique

import numpy as np
import torch
from torch import Tensor

from core import checks
from core.runtime import derived_seed

IMAGE_DATASETS = {"mnist_parity": "mnist", "cifar_animal": "cifar10"}
SYNTHETIC_DATASETS = ("sign", "random_sign", "depleted_sign")
DATASETS = tuple(IMAGE_DATASETS) + SYNTHETIC_DATASETS
CIFAR_VEHICLES = (0, 1, 8, 9)  # airplane, automobile, ship, truck

@unique
class _Stream(IntEnum):
    """The run's independent random streams (derived_seed spawn keys); explicit values, so adding
    a stream reseeds no other."""
    TRAIN_INPUTS = 0
    TEST_INPUTS = 1
    TEACHER = 2
    TEST_PICK = 3
    TRAIN_PICK = 4


@dataclass(frozen=True)
class BinaryDataset:
    """Training and test inputs and ±1 labels.

    Attributes:
        xtr: (ptr, d) vectors or (ptr, C, H, W) images.
        ytr: (ptr,) labels in {-1, +1}, in the inputs' dtype.
        xte: (pte, ...) test inputs.
        yte: (pte,) test labels.
    """

    xtr: Tensor
    ytr: Tensor
    xte: Tensor
    yte: Tensor

    def to(self, device=None, dtype=None) -> "BinaryDataset":
        return BinaryDataset(*(t.to(device=device, dtype=dtype) for t in (self.xtr, self.ytr, self.xte, self.yte)))


def image_labels(dataset: str, labels: Tensor) -> Tensor:
    """Class labels (N,) -> ±1: parity for mnist_parity, animal vs vehicle for cifar_animal."""
    checks.one_of("dataset", dataset, IMAGE_DATASETS)
    if dataset == "mnist_parity":
        return torch.where(labels % 2 == 0, 1.0, -1.0)
    return torch.where(torch.isin(labels, torch.tensor(CIFAR_VEHICLES)), -1.0, 1.0)


def depleted_gaussian(n: int, d: int, chi: float, rng: np.random.Generator) -> np.ndarray:
    """(n, d) points with p(x_1) ∝ |x_1|^χ e^(-x_1²/2) and x_2..x_d ~ N(0, 1).

    |x_1| = sqrt(2 G) with G ~ Gamma((χ + 1) / 2, 1) has density ∝ r^χ e^(-r²/2); the sign
    is a fair coin. χ = 0 gives a standard Gaussian coordinate.
    """
    x = rng.standard_normal((n, d))
    radius = np.sqrt(2.0 * rng.gamma((chi + 1.0) / 2.0, 1.0, size=n))
    x[:, 0] = np.where(rng.random(n) < 0.5, -radius, radius)
    return x


def _synthetic(name, n, d, chi, seed, purpose, teacher) -> tuple[Tensor, Tensor]:
    rng = np.random.default_rng(derived_seed(seed, purpose))
    x = depleted_gaussian(n, d, chi, rng) if name == "depleted_sign" else rng.standard_normal((n, d))
    score = x @ teacher if name == "random_sign" else x[:, 0]
    return torch.from_numpy(x), torch.from_numpy(np.where(score > 0, 1.0, -1.0))


def _images(name, ptr, pte, seed_trainset, seed_testset, data_root) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    from data.vision import load_vision_dataset

    parts = [load_vision_dataset(IMAGE_DATASETS[name], train=train, data_root=data_root) for train in (True, False)]
    x = torch.cat([p[0] for p in parts])  # (N_pool, C, H, W)
    y = image_labels(name, torch.cat([p[1] for p in parts]))
    pool = x.shape[0]
    checks.at_most("ptr + pte", ptr + pte, f"the {name} train and test splits together", pool)
    gen_te = torch.Generator().manual_seed(derived_seed(seed_testset, _Stream.TEST_PICK))
    perm_te = torch.randperm(pool, generator=gen_te)
    test, rest = perm_te[:pte], perm_te[pte:]
    gen_tr = torch.Generator().manual_seed(derived_seed(seed_trainset, _Stream.TRAIN_PICK))
    perm_tr = torch.randperm(rest.numel(), generator=gen_tr)
    train = rest[perm_tr[:ptr]]
    return x[train], y[train], x[test], y[test]


def teacher_vector(name: str, d: int, seed_trainset: int) -> np.ndarray:
    """The unit teacher t (d,) of a synthetic dataset: e₁ for sign / depleted_sign (y = sign(x₁)),
    the random unit vector drawn from ``seed_trainset`` for random_sign."""
    if name == "random_sign":
        w = np.random.default_rng(derived_seed(seed_trainset, _Stream.TEACHER)).standard_normal(d)
        return w / np.linalg.norm(w)
    checks.one_of("dataset", name, SYNTHETIC_DATASETS, why="teacher_vector is for the synthetic datasets")
    return np.eye(d)[0]


def build_dataset(
    name: str,
    ptr: int,
    pte: int,
    seed_trainset: int,
    seed_testset: int,
    d: int | None = None,
    chi: float = 0.0,
    data_root: str | None = None,
    dtype: torch.dtype = torch.float64,
) -> BinaryDataset:
    """The ``ptr`` training and ``pte`` test points of ``name`` (see the module docstring).

    Args:
        name: one of ``DATASETS``.
        ptr, pte: numbers of training and test points (>= 1).
        seed_trainset, seed_testset: seeds (>= 0) of the two splits.
        d: input dimension of the synthetic datasets; must be None for images.
        chi: depletion exponent χ > -1 of ``depleted_sign``.
        data_root: where MNIST / CIFAR-10 live (see ``data.vision.default_data_root``).
        dtype: floating dtype of inputs and labels.

    Raises:
        ValueError: unknown name, bad sizes or seeds, d missing (synthetic) or given (images),
            χ <= -1, or more points asked than the image pool holds.
    """
    checks.one_of("dataset", name, DATASETS)
    checks.integer("ptr", ptr, lo=1)
    checks.integer("pte", pte, lo=1)
    checks.integer("seed_trainset", seed_trainset, lo=0)
    checks.integer("seed_testset", seed_testset, lo=0)
    if name in IMAGE_DATASETS:
        if d is not None:
            raise ValueError(f"d applies to the synthetic datasets {SYNTHETIC_DATASETS} only; "
                             f"got d={d!r} with dataset={name!r}")
        return BinaryDataset(*_images(name, ptr, pte, seed_trainset, seed_testset, data_root)).to(dtype=dtype)
    checks.integer("d", d, lo=1, why=f"for dataset={name!r}")
    # finite=False: the check has always let χ = inf through (as the original did)
    checks.number("data_chi", chi, lo=-1, strict=True, finite=False, why="p(x_1) ∝ |x_1|^χ must be normalisable")
    teacher = teacher_vector(name, d, seed_trainset) if name == "random_sign" else None
    xtr, ytr = _synthetic(name, ptr, d, chi, seed_trainset, _Stream.TRAIN_INPUTS, teacher)
    xte, yte = _synthetic(name, pte, d, chi, seed_testset, _Stream.TEST_INPUTS, teacher)
    return BinaryDataset(xtr, ytr, xte, yte).to(dtype=dtype)
