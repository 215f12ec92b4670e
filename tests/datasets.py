"""Write tiny datasets in torchvision's real on-disk formats (no network in tests)."""
from __future__ import annotations

import bz2
import pickle
import struct
from pathlib import Path

import numpy as np


def _idx(path: Path, array: np.ndarray) -> None:
    """IDX file as in the MNIST distribution: magic (0, 0, 0x08 ubyte, ndim), big-endian dims, data."""
    with open(path, "wb") as fh:
        fh.write(struct.pack(">BBBB", 0, 0, 8, array.ndim))
        fh.write(struct.pack(">" + "I" * array.ndim, *array.shape))
        fh.write(array.astype(np.uint8).tobytes())


def write_mnist(root, n_train=64, n_test=32, seed=0, folder="MNIST", size=28, num_classes=10):
    """MNIST-format (also FashionMNIST with folder='FashionMNIST') raw idx files under root/folder/raw.

    Images are class-dependent blobs plus noise, so a model can learn them.
    """
    rng = np.random.default_rng(seed)
    raw = Path(root) / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    centres = _centres(rng, num_classes)  # shared by both splits: same distribution
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, num_classes, size=n)
        images = _class_images(rng, labels, size, centres)
        _idx(raw / f"{prefix}-images-idx3-ubyte", images)
        _idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return Path(root)


def _centres(rng, num_classes):
    return rng.uniform(0.2, 0.8, size=(num_classes, 2))


def _class_images(rng, labels, size, centres, channels=None):
    """A Gaussian blob at the class's centre plus uniform noise, uint8 (n, size, size[, channels]).

    ``centres`` is a (num_classes, 2) array, or a class count to draw fresh centres for.
    """
    if np.isscalar(centres):
        centres = _centres(rng, int(centres))
    n = len(labels)
    yy, xx = np.mgrid[0:size, 0:size] / size
    blobs = np.exp(-(((yy[None] - centres[labels, 0, None, None]) ** 2)
                     + (xx[None] - centres[labels, 1, None, None]) ** 2) / 0.02)
    img = 200 * blobs + rng.uniform(0, 55, size=(n, size, size))
    if channels:
        img = np.repeat(img[..., None], channels, axis=-1) * rng.uniform(0.6, 1.0, size=(1, 1, 1, channels))
    return np.clip(img, 0, 255).astype(np.uint8)


def write_cifar10(root, n_train=50, n_test=20, seed=0, num_classes=10):
    """cifar-10-batches-py: 5 pickled data batches, test_batch, batches.meta (str keys, as torchvision reads them)."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    centres = _centres(rng, num_classes)

    def batch(n):
        labels = rng.integers(0, num_classes, size=n)
        img = _class_images(rng, labels, 32, centres, channels=3)  # (n, 32, 32, 3)
        return {"data": img.transpose(0, 3, 1, 2).reshape(n, -1), "labels": [int(v) for v in labels]}

    per = [n_train // 5 + (1 if i < n_train % 5 else 0) for i in range(5)]
    for i, n in enumerate(per, start=1):
        with open(folder / f"data_batch_{i}", "wb") as fh:
            pickle.dump(batch(n), fh)
    with open(folder / "test_batch", "wb") as fh:
        pickle.dump(batch(n_test), fh)
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, fh)
    return Path(root)


def write_cifar100(root, n_train=50, n_test=20, seed=0):
    """cifar-100-python with train, test and meta pickles (fine labels)."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    centres = _centres(rng, 100)
    for split, n in (("train", n_train), ("test", n_test)):
        labels = rng.integers(0, 100, size=n)
        img = _class_images(rng, labels, 32, centres, channels=3)
        with open(folder / split, "wb") as fh:
            pickle.dump({"data": img.transpose(0, 3, 1, 2).reshape(n, -1), "fine_labels": [int(v) for v in labels]}, fh)
    with open(folder / "meta", "wb") as fh:
        pickle.dump({"fine_label_names": [f"c{i}" for i in range(100)]}, fh)
    return Path(root)


def write_usps(root, n_train=64, n_test=32, seed=0):
    """usps.bz2 / usps.t.bz2 in libsvm format: 'label idx:value ...', values in [-1, 1], labels 1..10."""
    rng = np.random.default_rng(seed)
    Path(root).mkdir(parents=True, exist_ok=True)
    centres = _centres(rng, 10)
    for name, n in (("usps.bz2", n_train), ("usps.t.bz2", n_test)):
        labels = rng.integers(0, 10, size=n)
        img = _class_images(rng, labels, 16, centres).reshape(n, -1) / 127.5 - 1.0
        lines = [f"{lab + 1} " + " ".join(f"{j + 1}:{v:.6f}" for j, v in enumerate(row))
                 for lab, row in zip(labels, img)]
        with bz2.open(Path(root) / name, "wt") as fh:
            fh.write("\n".join(lines) + "\n")
    return Path(root)


def allow_tiny_cifar(monkeypatch):
    """torchvision checks CIFAR files against the official archive's md5; tiny fakes need that check off."""
    import os

    import torchvision.datasets.cifar as cifar

    monkeypatch.setattr(cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))
