"""Image datasets through torchvision, held in memory as normalised tensors.

Every experiment that uses real data goes through :func:`load_vision_dataset`:
the files are torchvision's own on-disk formats under a data root taken from the
``data_root`` config key, else the ``DLT_DATA_ROOT`` environment variable, else
``~/.cache/dltheory/datasets``; missing files are downloaded on demand.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from core import checks

ENV_DATA_ROOT = "DLT_DATA_ROOT"


@dataclass(frozen=True)
class DatasetSpec:
    torchvision_name: str
    num_classes: int
    channels: int
    size: int
    mean: tuple[float, ...]  # per-channel statistics of the training split, in [0, 1] pixel units
    std: tuple[float, ...]


# Standard per-dataset normalisation constants (training-split statistics).
DATASETS = {
    "mnist": DatasetSpec("MNIST", 10, 1, 28, (0.1307,), (0.3081,)),
    "fmnist": DatasetSpec("FashionMNIST", 10, 1, 28, (0.2860,), (0.3530,)),
    "usps": DatasetSpec("USPS", 10, 1, 16, (0.2469,), (0.2989,)),
    "cifar10": DatasetSpec("CIFAR10", 10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": DatasetSpec("CIFAR100", 100, 3, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


def default_data_root(data_root: str | None = None) -> Path:
    """``data_root`` if given, else $DLT_DATA_ROOT, else ~/.cache/dltheory/datasets."""
    if data_root:
        return Path(data_root).expanduser()
    env = os.environ.get(ENV_DATA_ROOT)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "dltheory" / "datasets"


def check_dataset_name(name: str, key: str = "dataset") -> DatasetSpec:
    """The spec of ``name``, or a ValueError naming ``key`` and the allowed names."""
    return DATASETS[checks.one_of(key, name, DATASETS)]


def _raw_tensors(name: str, root: Path, train: bool, download: bool) -> tuple[Tensor, Tensor]:
    """uint8 images (N, C, H, W) and int64 labels (N,) straight from torchvision's dataset class."""
    import numpy as np
    import torchvision

    spec = DATASETS[name]
    cls = getattr(torchvision.datasets, spec.torchvision_name)
    try:
        ds = cls(str(root), train=train, download=download)
    except RuntimeError as err:  # torchvision: "Dataset not found or corrupted"
        raise FileNotFoundError(
            f"{name} ({'train' if train else 'test'}) not found under {root} and download={download}: {err}"
        ) from None
    images = torch.as_tensor(np.asarray(ds.data))
    if images.ndim == 3:  # (N, H, W) grey
        images = images[:, None]
    elif images.shape[-1] in (1, 3):  # CIFAR: (N, H, W, C)
        images = images.permute(0, 3, 1, 2)
    labels = torch.as_tensor(np.asarray(ds.targets), dtype=torch.long)
    return images.contiguous(), labels


def load_vision_dataset(
    name: str,
    train: bool = True,
    data_root: str | None = None,
    download: bool = True,
    size: int | None = None,
    grayscale: bool = False,
    normalize: bool = True,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor]:
    """Load a whole split into memory.

    Args:
        name: one of mnist, fmnist, usps, cifar10, cifar100.
        train: training split if True, else test split.
        data_root: directory holding torchvision's files (see module docstring).
        download: fetch missing files (never needed when the files are present).
        size: resize images to size x size (bilinear, antialiased), e.g. FashionMNIST to 16.
        grayscale: average colour channels to one (luma weights), e.g. grey CIFAR-10.
        normalize: subtract the dataset's channel mean and divide by its std.
        dtype: floating dtype of the images.

    Returns:
        x (N, C, H, W) images in ``dtype``, y (N,) int64 labels.
    """
    spec = check_dataset_name(name)
    checks.integer("size", size, lo=1, none_ok=True)
    images, labels = _raw_tensors(name, default_data_root(data_root), train, download)
    x = images.to(dtype) / 255.0  # (N, C, H, W) in [0, 1]
    mean = torch.tensor(spec.mean, dtype=dtype).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, dtype=dtype).view(1, -1, 1, 1)
    if grayscale and x.shape[1] == 3:
        # ITU-R 601 luma. Grey statistics are the luma-weighted channel statistics
        # (exact for the mean; for the std exact when channels are fully correlated,
        # close for natural images) so train and test get the same fixed transform.
        luma = torch.tensor([0.299, 0.587, 0.114], dtype=dtype).view(1, 3, 1, 1)
        x = (x * luma).sum(dim=1, keepdim=True)
        mean, std = (mean * luma).sum(dim=1, keepdim=True), (std * luma).sum(dim=1, keepdim=True)
    if normalize:
        x = (x - mean) / std
    if size is not None and size != x.shape[-1]:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x, labels


def noisy_labels(y: torch.Tensor, level: float, num_classes: int, gen: torch.Generator) -> torch.Tensor:
    """A copy of y with floor(level·n) labels, at distinct random positions, set to a uniform random class.

    As the original's introduce_label_noise: a new label may equal the old one.
    """
    n = y.shape[0]
    pos = torch.randperm(n, generator=gen)[: int(n * level)]
    out = y.clone()
    out[pos] = torch.randint(0, num_classes, (pos.numel(),), generator=gen, dtype=y.dtype)
    return out
