"""data.vision on tiny datasets written in torchvision's real formats."""
import pytest
import torch

from data.vision import DATASETS, default_data_root, load_vision_dataset
from tests.datasets import allow_tiny_cifar, write_cifar10, write_cifar100, write_mnist, write_usps


def test_mnist_and_fmnist(tmp_path):
    write_mnist(tmp_path, n_train=40, n_test=12)
    write_mnist(tmp_path, n_train=30, n_test=10, folder="FashionMNIST")
    x, y = load_vision_dataset("mnist", train=True, data_root=str(tmp_path), download=False)
    assert x.shape == (40, 1, 28, 28) and y.shape == (40,) and y.dtype == torch.long
    raw, _ = load_vision_dataset("mnist", train=False, data_root=str(tmp_path), download=False, normalize=False)
    assert raw.shape[0] == 12 and 0 <= raw.min() and raw.max() <= 1
    xf, _ = load_vision_dataset("fmnist", data_root=str(tmp_path), download=False, size=16)
    assert xf.shape == (30, 1, 16, 16)
    # normalisation is exactly (x - mean) / std of the dataset constants
    xr, _ = load_vision_dataset("mnist", data_root=str(tmp_path), download=False, normalize=False)
    torch.testing.assert_close(x, (xr - 0.1307) / 0.3081)


def test_cifar_formats(tmp_path, monkeypatch):
    allow_tiny_cifar(monkeypatch)
    write_cifar10(tmp_path, n_train=25, n_test=10)
    write_cifar100(tmp_path, n_train=15, n_test=5)
    x, y = load_vision_dataset("cifar10", data_root=str(tmp_path), download=False)
    assert x.shape == (25, 3, 32, 32) and int(y.max()) < 10
    g, _ = load_vision_dataset("cifar10", train=False, data_root=str(tmp_path), download=False, grayscale=True)
    assert g.shape == (10, 1, 32, 32)
    x100, y100 = load_vision_dataset("cifar100", data_root=str(tmp_path), download=False)
    assert x100.shape == (15, 3, 32, 32) and int(y100.max()) < 100


def test_usps(tmp_path):
    write_usps(tmp_path, n_train=20, n_test=8)
    x, y = load_vision_dataset("usps", data_root=str(tmp_path), download=False, normalize=False)
    assert x.shape == (20, 1, 16, 16) and 0 <= int(y.min()) and int(y.max()) <= 9


def test_errors_and_root(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="dataset must be one of"):
        load_vision_dataset("imagenet", data_root=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="mnist"):
        load_vision_dataset("mnist", data_root=str(tmp_path), download=False)
    monkeypatch.setenv("DLT_DATA_ROOT", str(tmp_path / "env"))
    assert default_data_root(None) == tmp_path / "env"
    assert default_data_root(str(tmp_path / "cfg")) == tmp_path / "cfg"
    assert set(DATASETS) == {"mnist", "fmnist", "usps", "cifar10", "cifar100"}
