"""The small classifiers of the chaotic-dynamics experiments (reference.md §3).

* :class:`MLP`: flatten -> Linear(d_in, inter_dim) -> φ -> Linear(inter_dim, classes);
  on 16x16 USPS with inter_dim 20 that is 256-20-10, 5,350 parameters.
* :class:`CNN`: ``block_cnt`` blocks of Conv3x3(channels) -> φ -> MaxPool2 (channels
  base_channels · 2^i), then flatten -> Linear to the classes.

Parameters are named as ``nn.Sequential`` names them, so the flat order used by
``llc.estimate.flat_model_for_module`` is W_0, b_0, W_1, b_1, ... (what
``dynamics.mlp_hessian`` expects). Initialisation is PyTorch's default,
U(−1/√fan_in, 1/√fan_in) for weights and biases, drawn from an explicit generator.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "elu": nn.ELU, "linear": nn.Identity}
MODELS = ("mlp", "cnn")


class MLP(nn.Module):
    """One hidden layer MLP on flattened images; ``activation`` names φ (see ACTIVATIONS)."""

    def __init__(self, input_dim: int, inter_dim: int, num_classes: int, activation: str = "relu"):
        super().__init__()
        self.sizes = [input_dim, inter_dim, num_classes]
        self.activation = activation
        self.layers = nn.Sequential(
            nn.Linear(input_dim, inter_dim), ACTIVATIONS[activation](), nn.Linear(inter_dim, num_classes)
        )

    def forward(self, x: Tensor) -> Tensor:  # (N, C, H, W) -> (N, classes)
        return self.layers(x.flatten(1))


class CNN(nn.Module):
    """``block_cnt`` conv blocks (3x3, padding 1, then φ and 2x2 max-pooling) and a linear head."""

    def __init__(self, in_channels: int, image_size: int, num_classes: int, base_channels: int = 4,
                 block_cnt: int = 1, activation: str = "relu"):
        super().__init__()
        if image_size % 2**block_cnt:
            raise ValueError(f"model.block_cnt={block_cnt} halves the {image_size}-pixel images to a non-integer size")
        self.activation = activation
        blocks: list[nn.Module] = []
        c_in = in_channels
        for i in range(block_cnt):
            c_out = base_channels * 2**i
            blocks += [nn.Conv2d(c_in, c_out, 3, padding=1), ACTIVATIONS[activation](), nn.MaxPool2d(2)]
            c_in = c_out
        side = image_size // 2**block_cnt
        self.features = nn.Sequential(*blocks)
        self.head = nn.Linear(c_in * side * side, num_classes)

    def forward(self, x: Tensor) -> Tensor:  # (N, C, H, W) -> (N, classes)
        return self.head(self.features(x).flatten(1))


def build_model(
    name: str, input_shape: tuple[int, int, int], num_classes: int, gen: torch.Generator, *,
    inter_dim: int = 20, base_channels: int = 4, block_cnt: int = 1, activation: str = "relu",
) -> nn.Module:
    """The network ``name`` ('mlp' | 'cnn') for inputs (C, H, W), initialised from ``gen``.

    Raises:
        ValueError: unknown name or activation, or sizes < 1 (naming the ``model.*`` key).
    """
    if name not in MODELS:
        raise ValueError(f"model.name must be one of {MODELS}; got {name!r}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"model.activation must be one of {tuple(ACTIVATIONS)}; got {activation!r}")
    for key, value in (("inter_dim", inter_dim), ("base_channels", base_channels), ("block_cnt", block_cnt)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"model.{key} must be an integer >= 1; got {value!r}")
    c, h, w = input_shape
    if name == "mlp":
        model = MLP(c * h * w, inter_dim, num_classes, activation)
    else:
        model = CNN(c, h, num_classes, base_channels, block_cnt, activation)
    reset_parameters(model, gen)
    return model


@torch.no_grad()
def reset_parameters(model: nn.Module, gen: torch.Generator) -> None:
    """PyTorch's default init for every Linear and Conv2d, U(−1/√fan_in, 1/√fan_in), from ``gen``."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            fan_in = module.weight[0].numel()
            bound = 1.0 / math.sqrt(fan_in)
            for p in (module.weight, module.bias):
                if p is not None:
                    p.copy_(torch.rand(p.shape, generator=gen, dtype=p.dtype, device=gen.device) * 2 * bound - bound)


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
