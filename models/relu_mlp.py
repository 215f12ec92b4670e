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

from core import checks


class ReLUMLP(nn.Module):
    """Linear -> ReLU -> ... -> Linear; architecture only (PyTorch's default init)."""

    def __init__(self, layer_sizes: Sequence[int]):
        super().__init__()
        sizes = checks.int_list("layer_sizes", list(layer_sizes), lo=1, min_len=2, why="[input, hidden..., output]")
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


def default_init(layer_sizes: Sequence[int], gen: torch.Generator,
                 dtype: torch.dtype = torch.float64) -> dict[str, Tensor]:
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
    checks.number("alpha", alpha, lo=0, strict=True, why="relu(αz) = α relu(z) only then")
    w1, b1 = linear_names(layer)
    w2, _ = linear_names(layer + 1)
    missing = [k for k in (w1, b1, w2) if k not in params]
    if missing:
        raise ValueError(f"rescaling layer {layer} needs parameters {missing}, which the network lacks")
    out = dict(params)
    out[w1], out[b1], out[w2] = params[w1] * alpha, params[b1] * alpha, params[w2] / alpha
    return out


INITS = ("haiku", "torch")


def haiku_init(layer_sizes: Sequence[int], gen: torch.Generator,
               dtype: torch.dtype = torch.float64) -> dict[str, Tensor]:
    """Parameters as Haiku's ``hk.Linear`` default, which the original notebooks used.

    Weights are s · z with z a standard normal truncated to [-2, 2] and s = 1/sqrt(fan_in)
    (``hk.initializers.TruncatedNormal(stddev=1/sqrt(fan_in))``; the truncation is not
    corrected, so the weights' std is about 0.88 s). Biases are zero.
    """
    sizes = list(layer_sizes)
    params = {}
    for layer in range(len(sizes) - 1):
        w, b = linear_names(layer)
        z = torch.empty(sizes[layer + 1], sizes[layer], dtype=dtype)  # (out, in), nn.Linear's layout
        torch.nn.init.trunc_normal_(z, 0.0, 1.0, -2.0, 2.0, generator=gen)
        params[w] = z / math.sqrt(sizes[layer])
        params[b] = torch.zeros(sizes[layer + 1], dtype=dtype)
    return params


def notebook_teacher(
    layer_sizes: Sequence[int],
    gen: torch.Generator,
    init: str = "haiku",
    hidden_bias_std: float = 1.0,
    degenerate_units: Sequence[int] = (),
    dtype: torch.dtype = torch.float64,
) -> dict[str, Tensor]:
    """The true parameter w* of the original rescaling_invariance / MALA_vs_SGLD notebooks.

    1. every weight and bias from ``init`` ('haiku': :func:`haiku_init`; 'torch': :func:`default_init`);
    2. the bias of every hidden layer redrawn from N(0, hidden_bias_std²) (the output bias
       keeps its init; the notebooks: N(0, 1) and Haiku's zero output bias);
    3. every first-hidden-layer unit in ``degenerate_units`` made a copy of unit 0 (its
       incoming weights and bias), a degenerate w* (rescaling_invariance.ipynb: units
       1, 2, 3, 4, 5 and 8; MALA_vs_SGLD.ipynb: none).

    Raises:
        ValueError: an unknown init, a negative std, or a unit outside 1..d_1 - 1.
    """
    sizes = list(layer_sizes)
    checks.one_of("init", init, INITS)
    checks.number("hidden_bias_std", hidden_bias_std, lo=0)
    units = checks.int_list("degenerate_units", list(degenerate_units), lo=1, hi=sizes[1] - 1, min_len=0,
                            why="units of the first hidden layer other than unit 0")
    params = (haiku_init if init == "haiku" else default_init)(sizes, gen, dtype)
    for layer in range(len(sizes) - 2):  # hidden layers only
        _, b = linear_names(layer)
        params[b] = torch.randn(sizes[layer + 1], generator=gen, dtype=dtype) * hidden_bias_std
    w1, b1 = linear_names(0)
    for u in units:
        params[w1][u] = params[w1][0]
        params[b1][u] = params[b1][0]
    return params


def layer_preconditioner(layer_sizes: Sequence[int], layer: int, alpha: float) -> list[float]:
    """Per-tensor factors of the notebook's fixed preconditioner at rescaling α, in parameter order.

    Linear ``layer`` (weight and bias) gets α², Linear ``layer + 1``'s weight 1/α², every
    other tensor 1 (rescaling_invariance.ipynb's ``preconditioning``). With w = S u, S the
    rescaling map, SGLD in u with identity preconditioner is SGLD in w with D = S², so the
    chain at α is the chain at α = 1 rescaled.
    """
    factors = []
    for i in range(len(layer_sizes) - 1):
        w = alpha ** 2 if i == layer else alpha ** -2 if i == layer + 1 else 1.0
        b = alpha ** 2 if i == layer else 1.0
        factors += [w, b]
    return factors
