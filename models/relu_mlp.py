"""Fully connected ReLU networks and their layer-rescaling symmetry.

``ReLUMLP([d_0, d_1, ..., d_L])`` maps R^{d_0} -> R^{d_L} through L linear layers
(with biases) and a ReLU after every layer but the last. Parameters are named
``layers.{2l}.weight`` / ``layers.{2l}.bias`` (an ``nn.Sequential`` alternating
Linear and ReLU).

Because relu(a z) = a relu(z) for a > 0, multiplying layer l's weight and bias by α
and layer l+1's weight by 1/α leaves the function unchanged (Dinh et al. 2017,
"Sharp minima can generalize for deep nets"). :func:`rescale_params` applies that
map; the local learning coefficient is invariant under it.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn


class ReLUMLP(nn.Module):
    """Linear -> ReLU -> ... -> Linear; architecture only (PyTorch's default init)."""

    def __init__(self, layer_sizes: Sequence[int]):
        super().__init__()
        sizes = list(layer_sizes)
        if len(sizes) < 2 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes):
            raise ValueError(f"layer_sizes must list >= 2 positive integers [input, hidden..., output]; got {layer_sizes!r}")
        modules: list[nn.Module] = []
        for i in range(len(sizes) - 1):
            modules.append(nn.Linear(sizes[i], sizes[i + 1]))
            if i < len(sizes) - 2:
                modules.append(nn.ReLU())
        self.layer_sizes = sizes
        self.layers = nn.Sequential(*modules)

    @property
    def num_linear(self) -> int:
        return len(self.layer_sizes) - 1

    def forward(self, x: Tensor) -> Tensor:  # (N, d_0) -> (N, d_L)
        return self.layers(x)


def default_init(layer_sizes: Sequence[int], gen: torch.Generator, dtype: torch.dtype = torch.float64) -> dict[str, Tensor]:
    """Parameters drawn as PyTorch's nn.Linear default, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), from ``gen``."""
    sizes = list(layer_sizes)
    params = {}
    for layer in range(len(sizes) - 1):
        bound = 1.0 / math.sqrt(sizes[layer])
        w, b = linear_names(layer)
        params[w] = (torch.rand(sizes[layer + 1], sizes[layer], generator=gen, dtype=dtype) * 2 - 1) * bound
        params[b] = (torch.rand(sizes[layer + 1], generator=gen, dtype=dtype) * 2 - 1) * bound
    return params


def linear_names(layer: int) -> tuple[str, str]:
    """Parameter names (weight, bias) of the ``layer``-th Linear (0-based)."""
    return f"layers.{2 * layer}.weight", f"layers.{2 * layer}.bias"


def rescale_params(params: dict[str, Tensor], layer: int, alpha: float) -> dict[str, Tensor]:
    """A new dict with Linear ``layer`` (weight and bias) times α and Linear ``layer + 1``'s weight times 1/α.

    The network's function is unchanged for α > 0. The input dict is not modified.

    Raises:
        ValueError: α <= 0, or no Linear ``layer + 1``.
    """
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0 (relu(αz) = α relu(z) only then); got {alpha!r}")
    w1, b1 = linear_names(layer)
    w2, _ = linear_names(layer + 1)
    missing = [k for k in (w1, b1, w2) if k not in params]
    if missing:
        raise ValueError(f"rescaling layer {layer} needs parameters {missing}, which the network lacks")
    out = dict(params)
    out[w1], out[b1], out[w2] = params[w1] * alpha, params[b1] * alpha, params[w2] / alpha
    return out
