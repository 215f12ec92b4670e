"""Networks of the SGD-regimes experiment (docs/notes/sgd_regimes.md#models): normalised activations and
seven architectures.

Every weight and bias starts N(0, 1) (simple_diagonal_linear: all ones, as the original);
the scale lives in the forward pass, so the parameterization is a per-layer table of multipliers:

======================  ================================================  ==================
arch                    hidden layers                                     output
======================  ================================================  ==================
linear                  --                                                w·x / sqrt(d)
simple_diagonal_linear  --                                                x·(w^L) / sqrt(d)
mlp                     x <- φ(W x / sqrt(fan_in)), L times               W x / h (mean field)
mlp_bias                x <- φ((W x + b) / sqrt(fan_in + 1)), L times     W x / h
simple_cnn              φ(conv5x5(h)), pool, φ(conv5x5(2h)), pool,        W x / (32h)
                        dense(32h) with no activation
vgg11                   VGG-11 convs at widths h,2h,4h,4h,8h,8h,8h,8h,    W x / (64h)
                        then φ(dense(64h)), φ(dense(64h))
mnas                    MNASNet-like stem and four inverted residuals,    (W x + b) / (20h)
                        φ(conv1x1(20h)), global mean pool
======================  ================================================  ==================

Convolutions and dense layers of simple_cnn and vgg11 have biases and divide by
sqrt(k²·C_in + 1) (the bias counts as one more input). Pools are 2x2 max pools that round
up (28 -> 14 -> 7 -> 4 -> 2 -> 1), so vgg11 runs on MNIST as well as CIFAR.

mnas (the original's ``architecture.mnas``): bias-free convolutions with "SAME" padding as
TensorFlow/Haiku define it (asymmetric for stride 2: the extra row/column goes at the end);
full convolutions divide by k·sqrt(C_in), depthwise ones by k. Layers, with h the width:
φ(conv5x5/2(4h)), φ(dw5x5), φ(conv1x1(2h)); then inverted residuals (out, stride) =
(h, 2), (h, 1), (3h, 2), (3h, 1), each φ(conv1x1(3·C_in)), φ(dw5x5/stride), conv1x1(out),
plus (x + input)/sqrt(2) where the shapes agree; then φ(conv1x1(20h)), the spatial mean and
a dense readout with bias, both divided by 20h.

Activations are normalised so that E[φ(z)²] = 1 for z ~ N(0, 1); the constant is
computed once by adaptive quadrature in float64 (``activation_norm``). ``act_beta`` is
accepted with the original's default 1.0 and nothing else: the original declares
``--act_beta`` but never reads it.

Every layer is an ``nn.Linear`` / ``nn.Conv2d`` applied once per forward, and the
scalar multipliers sit outside them: ``dynamics.ntk`` can then use the per-layer
structure of the MLPs. Every model maps (N, ...) inputs to (N,) outputs.
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core import checks

ARCHS = ("mlp", "mlp_bias", "linear", "simple_diagonal_linear", "simple_cnn", "vgg11", "mnas")
ACTIVATIONS = ("relu", "gelu", "silu", "tanh")
DEEP_ARCHS = ("mlp", "mlp_bias", "simple_diagonal_linear")  # the archs that need L (depth, or the power w^L)
CONV_ARCHS = ("simple_cnn", "vgg11", "mnas")  # need (N, C, H, W) images
ACT_BETA = 1.0  # the original's default for --act_beta, which it never reads

_RAW = {"relu": F.relu, "gelu": F.gelu, "silu": F.silu, "tanh": torch.tanh}
_NUMPY = {
    "relu": lambda z: max(z, 0.0),
    "gelu": lambda z: 0.5 * z * (1.0 + math.erf(z / math.sqrt(2.0))),
    "silu": lambda z: z / (1.0 + math.exp(-z)),
    "tanh": math.tanh,
}
_TAIL = 40.0  # the Gaussian weight beyond |z| = 40 is e^-800: nothing in float64
VGG11_BLOCKS = ((1, 1), (1, 2), (2, 4), (2, 8), (2, 8))  # (convs, channels / h) per block


@functools.lru_cache(maxsize=None)
def activation_norm(act: str) -> float:
    """c = sqrt(E[φ(z)²]), z ~ N(0, 1), by scipy's adaptive quadrature on [-40, 0] and [0, 40] (split at relu's kink).

    Raises:
        ValueError: unknown ``act``.
    """
    checks.one_of("act", act, ACTIVATIONS)
    from scipy import integrate

    phi = _NUMPY[act]

    def integrand(z):
        return phi(z) ** 2 * math.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)

    second_moment = sum(integrate.quad(integrand, lo, hi, epsabs=1e-14, epsrel=1e-13, limit=200)[0]
                        for lo, hi in ((-_TAIL, 0.0), (0.0, _TAIL)))
    return math.sqrt(second_moment)


class NormalisedActivation(nn.Module):
    """φ(z) / c with c = ``activation_norm(act)``, so that E[φ(z)²] = 1 under z ~ N(0, 1)."""

    def __init__(self, act: str):
        super().__init__()
        self.act = act
        self.fn = _RAW[act]
        self.inv_norm = 1.0 / activation_norm(act)

    def forward(self, z: Tensor) -> Tensor:
        return self.fn(z) * self.inv_norm

    def extra_repr(self) -> str:
        return f"{self.act}, c={1.0 / self.inv_norm:.6f}"


class LinearModel(nn.Module):
    """The perceptron f(w, x) = w·x / sqrt(d)."""

    def __init__(self, d: int):
        super().__init__()
        self.readout = nn.Linear(d, 1, bias=False)
        self.scale = d ** -0.5

    def forward(self, x: Tensor) -> Tensor:  # (N, ...) -> (N,)
        return self.readout(x.flatten(1))[:, 0] * self.scale


class DiagonalLinear(nn.Module):
    """simple_diagonal_linear: f(w, x) = Σ_i x_i w_i^L / sqrt(d), with w (d,) starting at ones."""

    def __init__(self, d: int, L: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.L = L
        self.scale = d ** -0.5

    def forward(self, x: Tensor) -> Tensor:  # (N, ...) -> (N,)
        return x.flatten(1) @ self.weight ** self.L * self.scale


class MLP(nn.Module):
    """L hidden layers of width h, 1/sqrt(fan_in) multipliers, mean-field readout W x / h."""

    def __init__(self, d: int, h: int, L: int, act: str, bias: bool = False):
        super().__init__()
        sizes = [d] + [h] * L
        self.hidden = nn.ModuleList(nn.Linear(sizes[i], sizes[i + 1], bias=bias) for i in range(L))
        self.scales = [(fan_in + bias) ** -0.5 for fan_in in sizes[:-1]]
        self.phi = NormalisedActivation(act)
        self.readout = nn.Linear(h, 1, bias=False)
        self.h = h

    def forward(self, x: Tensor) -> Tensor:  # (N, ...) -> (N,)
        x = x.flatten(1)
        for layer, scale in zip(self.hidden, self.scales):
            x = self.phi(layer(x) * scale)  # (N, h)
        return self.readout(x)[:, 0] / self.h


class ConvNet(nn.Module):
    """simple_cnn and vgg11: conv blocks (each ends in a max pool), dense layers, mean-field readout.

    ``dense_act``: φ after each dense layer (vgg11) or not (simple_cnn), as the original.
    """

    def __init__(self, in_shape: Sequence[int], blocks: Sequence[Sequence[int]], kernel: int,
                 dense: Sequence[int], act: str, dense_act: bool):
        super().__init__()
        self.phi = NormalisedActivation(act)
        self.dense_act = dense_act
        self.kernel = kernel
        self.blocks = nn.ModuleList()
        c = in_shape[0]
        for block in blocks:
            convs = nn.ModuleList()
            for out in block:
                convs.append(nn.Conv2d(c, out, kernel, padding=kernel // 2, bias=True))
                c = out
            self.blocks.append(convs)
        with torch.no_grad():
            flat = self.features(torch.zeros(1, *in_shape)).shape[1]
        sizes = [flat, *dense]
        self.dense = nn.ModuleList(nn.Linear(sizes[i], sizes[i + 1], bias=True) for i in range(len(dense)))
        self.readout = nn.Linear(sizes[-1], 1, bias=False)

    def features(self, x: Tensor) -> Tensor:  # (N, C, H, W) -> (N, flat)
        for convs in self.blocks:
            for conv in convs:
                x = self.phi(conv(x) * (self.kernel**2 * conv.in_channels + 1) ** -0.5)
            x = F.max_pool2d(x, 2, ceil_mode=True)
        return x.flatten(1)

    def forward(self, x: Tensor) -> Tensor:  # (N, C, H, W) -> (N,)
        x = self.features(x)
        for layer in self.dense:
            x = layer(x) * (layer.in_features + 1) ** -0.5  # (N, width)
            x = self.phi(x) if self.dense_act else x
        return self.readout(x)[:, 0] / self.readout.in_features


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow/Haiku "SAME" padding (before, after) of one spatial dim: out = ceil(size/stride)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SameConv(nn.Module):
    """Bias-free conv with "SAME" padding; full (divided by k·sqrt(C_in)) or depthwise (divided by k)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, depthwise: bool = False):
        super().__init__()
        groups = c_in if depthwise else 1
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, groups=groups, bias=False)
        self.kernel, self.stride = kernel, stride
        self.scale = 1.0 / kernel if depthwise else 1.0 / (kernel * math.sqrt(c_in))

    def forward(self, x: Tensor) -> Tensor:  # (N, C_in, H, W) -> (N, C_out, ceil(H/s), ceil(W/s))
        top, bottom = same_padding(x.shape[-2], self.kernel, self.stride)
        left, right = same_padding(x.shape[-1], self.kernel, self.stride)
        return self.conv(F.pad(x, (left, right, top, bottom))) * self.scale


class InvertedResidual(nn.Module):
    """φ(conv1x1(3·C_in)), φ(dw k×k / s), conv1x1(out); (x + input)/sqrt(2) when the shapes agree."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, phi: nn.Module):
        super().__init__()
        mid = round(3.0 * c_in)
        self.expand = SameConv(c_in, mid, 1, 1)
        self.depthwise = SameConv(mid, mid, kernel, stride, depthwise=True)
        self.project = SameConv(mid, c_out, 1, 1)
        self.phi = phi

    def forward(self, x: Tensor) -> Tensor:  # (N, C_in, H, W) -> (N, C_out, H', W')
        out = self.project(self.phi(self.depthwise(self.phi(self.expand(x)))))
        return (out + x) * 2 ** -0.5 if out.shape == x.shape else out


MNAS_BLOCKS = ((1, 2), (1, 1), (3, 2), (3, 1))  # (out channels / h, stride) of the inverted residuals, kernel 5


class MNAS(nn.Module):
    """The original's mnas: stem, four inverted residuals, conv1x1(20h), global mean, dense readout with bias."""

    def __init__(self, c_in: int, h: int, act: str):
        super().__init__()
        self.phi = NormalisedActivation(act)
        self.stem = nn.ModuleList([SameConv(c_in, round(4 * h), 5, 2), SameConv(round(4 * h), round(4 * h), 5, 1, True),
                                   SameConv(round(4 * h), round(2 * h), 1, 1)])
        blocks, c = [], round(2 * h)
        for mult, stride in MNAS_BLOCKS:
            blocks.append(InvertedResidual(c, round(mult * h), 5, stride, self.phi))
            c = round(mult * h)
        self.blocks = nn.ModuleList(blocks)
        self.head = SameConv(c, round(20 * h), 1, 1)
        self.readout = nn.Linear(round(20 * h), 1, bias=True)

    def forward(self, x: Tensor) -> Tensor:  # (N, C, H, W) -> (N,)
        for conv in self.stem:
            x = self.phi(conv(x))
        for block in self.blocks:
            x = block(x)
        x = self.phi(self.head(x)).mean(dim=(2, 3))  # (N, 20h)
        return self.readout(x)[:, 0] / self.readout.in_features


def check_act_beta(act_beta) -> float:
    """``act_beta`` as the original: only its default 1.0, since the original never reads it.

    Raises:
        ValueError: any other value.
    """
    why = "the original declares --act_beta with default 1.0 but never uses it"
    if isinstance(act_beta, bool) or not isinstance(act_beta, (int, float)) or act_beta != ACT_BETA:
        raise checks.CheckError("act_beta", str(ACT_BETA), act_beta, why)  # one allowed value; 1 == 1.0 passes
    return float(act_beta)


def build_model(arch: str, in_shape: Sequence[int], h: int, act: str, L: int | None,
                gen: torch.Generator, act_beta: float = ACT_BETA) -> nn.Module:
    """The network ``arch`` for inputs of shape ``in_shape`` (without the batch dim), every parameter N(0, 1)
    (simple_diagonal_linear: ones).

    Args:
        arch: one of ``ARCHS``.
        in_shape: (d,) for vectors or (C, H, W) for images; MLPs flatten images.
        h: width (channels of the first conv block for simple_cnn and vgg11); ignored by the linear archs.
        act: one of ``ACTIVATIONS`` (normalised); ignored by the linear archs.
        L: number of hidden layers for mlp and mlp_bias, the power for simple_diagonal_linear;
            must be None otherwise.
        gen: CPU generator for the N(0, 1) init.
        act_beta: must be 1.0 (``check_act_beta``).

    Raises:
        ValueError: unknown arch/act, L missing or superfluous, an image arch on vectors, act_beta != 1.
    """
    checks.one_of("arch", arch, ARCHS)
    checks.one_of("act", act, ACTIVATIONS)
    if arch in DEEP_ARCHS:
        checks.integer("L", L, lo=1, why=f"for arch={arch!r}")
    if arch not in DEEP_ARCHS and L is not None:
        raise ValueError(f"L applies to arch in {DEEP_ARCHS} only; got L={L!r} with arch={arch!r}")
    checks.integer("h", h, lo=1)
    check_act_beta(act_beta)
    d = math.prod(in_shape)
    if arch == "linear":
        model = LinearModel(d)
    elif arch == "simple_diagonal_linear":
        return DiagonalLinear(d, L)  # the original's Constant(1.0) init: no draw
    elif arch in DEEP_ARCHS:
        model = MLP(d, h, L, act, bias=arch == "mlp_bias")
    else:
        if len(in_shape) != 3:
            raise ValueError(f"arch={arch!r} needs image inputs (C, H, W); got input shape {tuple(in_shape)}")
        if arch == "simple_cnn":
            model = ConvNet(in_shape, [[h], [2 * h]], 5, [32 * h], act, dense_act=False)
        elif arch == "vgg11":
            blocks = [[m * h] * convs for convs, m in VGG11_BLOCKS]
            model = ConvNet(in_shape, blocks, 3, [64 * h, 64 * h], act, dense_act=True)
        else:
            model = MNAS(in_shape[0], h, act)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model
