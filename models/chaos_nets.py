"""The small classifiers of the chaotic-dynamics experiments (docs/notes/chaos.md#setup).

* :class:`MLP`: flatten -> Linear(d_in, inter_dim) -> φ -> Linear(inter_dim, classes);
  on 16x16 USPS with inter_dim 20 that is 256-20-10, 5,350 parameters.
* :class:`CNN`: the original's ``get_cnn`` (chaotic_neurips22, experiments/models/torch.py):
  a head Conv3x3(1 -> c) -> φ, ``block_cnt`` − 1 more Conv3x3(c -> c) -> φ at full
  resolution, then a tail that pools four times, MaxPool2 -> Conv3x3(c -> c) -> φ ->
  MaxPool2 -> Conv3x3(c -> 2c) -> φ -> MaxPool2 -> Conv3x3(2c -> 2c) -> φ -> MaxPool2,
  and Linear(2c -> classes) on the 1x1 map (c = base_channels; padding 1 everywhere).
  At c = 4, block_cnt = 1 on 16x16 inputs that is 1,158 parameters.

Parameters are named as ``nn.Sequential`` names them, so the flat order used by
``llc.estimate.flat_model_for_module`` is W_0, b_0, W_1, b_1, ... (what
``dynamics.mlp_hessian`` expects). Initialisation is PyTorch's default,
U(−1/√fan_in, 1/√fan_in) for weights and biases, drawn from an explicit generator.
"""
from __future__ import annotations

import collections
import math

import torch
from torch import Tensor, nn

from core import checks

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
    """The original's CNN: head conv, ``block_cnt`` − 1 body convs, four pooled tail convs, linear head.

    The original (``get_cnn``) ends with a reshape to (−1, 2c), which is one row per image only when
    four 2x2 poolings bring the map to 1x1, i.e. for 16x16 inputs; other sizes are refused here.
    Its ``batch_norm`` option (off in its configs) is not offered.
    """

    def __init__(self, in_channels: int, image_size: int, num_classes: int, base_channels: int = 4,
                 block_cnt: int = 1, activation: str = "relu"):
        super().__init__()
        if image_size != 16:
            raise ValueError(f"model.name=cnn pools four times down to 1x1 and needs 16x16 images; got {image_size}")
        self.activation = activation
        c, act = base_channels, ACTIVATIONS[activation]

        def conv(c_in, c_out):
            return nn.Conv2d(c_in, c_out, kernel_size=3, padding=1)

        layers: list[tuple[str, nn.Module]] = [("conv1", conv(in_channels, c)), ("relu1", act())]
        for i in range(1, block_cnt):  # constant-resolution body
            layers += [(f"conv{i + 1}", conv(c, c)), (f"relu{i + 1}", act())]
        layers += [  # downsampling tail: 16 -> 8 -> 4 -> 2 -> 1
            ("tail_pool1", nn.MaxPool2d(2, 2)), ("tail_conv2", conv(c, c)), ("tail_fn2", act()),
            ("tail_pool2", nn.MaxPool2d(2, 2)), ("tail_conv3", conv(c, 2 * c)), ("tail_fn3", act()),
            ("tail_pool3", nn.MaxPool2d(2, 2)), ("tail_conv4", conv(2 * c, 2 * c)), ("tail_fn4", act()),
            ("tail_pool4", nn.MaxPool2d(2, 2)), ("tail_reshape", nn.Flatten()),
            ("tail_fc1", nn.Linear(2 * c, num_classes)),
        ]
        self.layers = nn.Sequential(collections.OrderedDict(layers))

    def forward(self, x: Tensor) -> Tensor:  # (N, C, 16, 16) -> (N, classes)
        return self.layers(x)


def build_model(
    name: str, input_shape: tuple[int, int, int], num_classes: int, gen: torch.Generator, *,
    inter_dim: int = 20, base_channels: int = 4, block_cnt: int = 1, activation: str = "relu",
) -> nn.Module:
    """The network ``name`` ('mlp' | 'cnn') for inputs (C, H, W), initialised from ``gen``.

    Raises:
        ValueError: unknown name or activation, or sizes < 1 (naming the ``model.*`` key).
    """
    checks.one_of("model.name", name, MODELS)
    checks.one_of("model.activation", activation, ACTIVATIONS)
    for key, value in (("inter_dim", inter_dim), ("base_channels", base_channels), ("block_cnt", block_cnt)):
        checks.integer(f"model.{key}", value, lo=1)
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
