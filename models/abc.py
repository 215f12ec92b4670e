"""abc-parameterizations of fully connected networks (Yang & Hu 2021, arXiv:2011.14522), as data.

A network with L hidden layers of width m maps x ∈ R^d to logits f(x) ∈ R^k:

    h_0 = μ_0 (W_0 x + b_0),    h_l = μ_l (W_l φ(h_{l-1}) + b_l)  (l = 1..L),    f(x) = h_L,

with layer multipliers μ_l = m^(-a_l), init W_l = m^(-b_l) U_l and SGD learning rates
η_l = base_lr · m^(-c_l). U_l sits at a width-independent scale: entries N(0, σ_φ²) for
0 < l < L (σ_φ² = 2 relu, 4 gelu, 1 elu / tanh, 2 sigmoid), N(0, 1) for the output layer, and
for the input layer N(0, σ_φ²/(d+1)): the 1/sqrt(d+1) sits in U_0's init, with no input
multiplier (wide-networks, base_abc_param.py ``_generate_standard_gaussians``; the README's
"Width parameterizations" section lists the other ``input_scaling`` conventions).
A parameterization is nothing but its exponent table (docs/width_parameterizations.md#exponents):

    name         a (input / hidden / output)   b                c
    ntk          0 / ½ / ½                     0                0
    mup          −½ / 0 / ½                    ½                0
    ip           0 / 1 / 1                     0                user-set (ip_c)
    standard_ip  as ip                         0                −1 / −2 / −1
    standard_ip_calibrated  as ip              0                −1 / −2 / −1, the first n_warmup_steps with
                                                                calibrated base lrs (non_centered/training.py)
    ipllr        as ip                         0                −(L+1)/2 / −(L+2)/2 / −(L+1)/2 for the
                                                                first n_warmup_steps, then standard_ip
    ipllr_bias   as ip                         0                weights −(L+1)/2 / −(L−l+3)/2 / −1, then
                                                                standard_ip; biases (per-layer table) below
    sp           0 / 0 / 0                     0 / ½ / ½        0

``sp`` is the standard parameterization (1/fan-in init variance at every layer, the input
layer's fan-in d+1 included, one global learning rate) with the Gaussian gains above.

Base width m_0 (as in Microsoft's ``mup``): every scale is taken relative to ``sp`` at m_0,
μ_l = m_0^(-a^sp_l) (m / m_0)^(-a_l) and likewise for b and c, so every parameterization is
``sp`` at m = m_0; m_0 = 1 gives the paper's m^(-a_l).

Biases, as in the original: the input layer always has one (``input_bias``), the hidden and
output layers only with ``bias``. b_l = m^(-b_l) v_l (``scale_bias``) or v_l, with v_l ~ N(0, σ_φ²)
(N(0, 1) at the output), always centred; a bias sits inside its layer's multiplier and shares its
lr, except in ``ipllr_bias`` (h_l = μ_l W_l z + b_l, unscaled v_l, own lr exponents: warm-up
−(L−l+1)/2 for l < L and 0 at the output, then −1 / 0; all 0 with scale_bias_lr=False).
``init_mean`` is the mean of U_1..U_L (the non-centred IP); U_0 stays centred.
The loss is the cross-entropy averaged over the batch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core import checks

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": F.relu, "gelu": F.gelu, "elu": F.elu, "tanh": torch.tanh, "sigmoid": torch.sigmoid,
}
# Var U_l for l < L, as in the original's _set_init_std: relu 2, gelu 4, elu and tanh 1, and its default 2
# for any other activation (sigmoid).
INIT_VARIANCE = {"relu": 2.0, "gelu": 4.0, "elu": 1.0, "tanh": 1.0, "sigmoid": 2.0}
PARAMETERIZATIONS = ("ntk", "mup", "ip", "standard_ip", "standard_ip_calibrated", "ipllr", "ipllr_bias", "sp",
                     "custom")
# Where the input layer's 1/sqrt(d+1) goes:
#   init           U_0 ~ N(0, σ²/(d+1)), μ_0 = m^-a_0 (the original, wide-networks HEAD);
#   multiplier     U_0 ~ N(0, σ²), μ_0 = m^-a_0 / sqrt(d+1) (the server scripts' "renorm", normalize_first);
#   multiplier_lr  as multiplier, input-layer lr × (d+1) after any warm-up (the scripts' "renorm_scale_lr");
#   none           U_0 ~ N(0, σ²), μ_0 = m^-a_0 (the scripts' un-renormalised runs, normalize_first=False).
INPUT_SCALINGS = ("init", "multiplier", "multiplier_lr", "none")


def _table(L: int, first: float, hidden: float, last: float) -> tuple[float, ...]:
    return (float(first),) + (float(hidden),) * (L - 1) + (float(last),)


def _exponents(key: str, values, L: int) -> tuple[float, ...]:
    """A number (every layer) or a list of L+1 numbers -> tuple of L+1 floats; ValueError names ``key``."""
    if isinstance(values, (int, float)) and not isinstance(values, bool):
        values = [values] * (L + 1)
    if not isinstance(values, (list, tuple)) or len(values) != L + 1:
        raise checks.CheckError(key, f"a number or a list of L+1 = {L + 1} numbers", values,
                                "one per layer, input to output")
    return tuple(checks.number_list(key, values))


@dataclass(frozen=True)
class Parameterization:
    """Exponents (a_l, b_l, c_l), l = 0..L, input layer first, output layer last.

    Attributes:
        name: one of PARAMETERIZATIONS.
        a: layer multipliers m^(-a_l).
        b: init scales m^(-b_l).
        c: learning-rate scales m^(-c_l) (after any warm-up).
        warmup_c: learning-rate exponents of steps t < n_warmup_steps (IPLLR); None -> no warm-up.
        n_warmup_steps: number of warm-up steps (>= 0).
        bias_c, warmup_bias_c: lr exponents of the biases (ipllr_bias); None -> a bias shares its layer's lr.
    """

    name: str
    a: tuple[float, ...]
    b: tuple[float, ...]
    c: tuple[float, ...]
    warmup_c: tuple[float, ...] | None = None
    n_warmup_steps: int = 0
    bias_c: tuple[float, ...] | None = None
    warmup_bias_c: tuple[float, ...] | None = None

    def __post_init__(self):
        n = len(self.a)
        if n < 2 or len(self.b) != n or len(self.c) != n or (self.warmup_c is not None and len(self.warmup_c) != n):
            raise ValueError(f"a, b, c (and warmup_c) must all have L+1 >= 2 entries; got lengths "
                             f"{len(self.a)}, {len(self.b)}, {len(self.c)}")
        checks.integer("n_warmup_steps", self.n_warmup_steps, lo=0)

    @property
    def L(self) -> int:
        """Number of hidden layers."""
        return len(self.a) - 1

    def in_warmup(self, step: int) -> bool:
        """True at (0-based) SGD steps that use ``warmup_c``: 0 <= step < n_warmup_steps."""
        return self.warmup_c is not None and step < self.n_warmup_steps

    def lr_exponents(self, step: int) -> tuple[float, ...]:
        """c_l used at SGD step ``step``."""
        return self.warmup_c if self.in_warmup(step) else self.c

    def bias_lr_exponents(self, step: int) -> tuple[float, ...] | None:
        """The biases' own c_l at ``step`` (ipllr_bias), or None: biases share their layer's lr."""
        if self.bias_c is None:
            return None
        return self.warmup_bias_c if self.in_warmup(step) else self.bias_c


def make_parameterization(name: str, L: int, ip_c=0.0, n_warmup_steps: int = 1, custom_exponents=None,
                          scale_bias_lr: bool = True) -> Parameterization:
    """The exponent table of a named parameterization (module docstring) for L hidden layers.

    Args:
        name: one of PARAMETERIZATIONS.
        L: hidden layers (>= 1).
        ip_c: ``ip`` only: its learning-rate exponents, one number or L+1.
        n_warmup_steps: ``ipllr``, ``ipllr_bias``, ``standard_ip_calibrated`` only: warm-up steps.
        custom_exponents: ``custom`` only: dict with lists a, b, c of L+1 numbers each.
        scale_bias_lr: ``ipllr_bias`` only: width-scaled bias lrs (True, the original's default) or base_lr.

    Raises:
        ValueError: unknown name, L < 1, or exponents of the wrong length, naming the argument.
    """
    checks.one_of("parameterization", name, PARAMETERIZATIONS)
    checks.integer("L", L, lo=1)
    ip_a, zeros = _table(L, 0, 1, 1), _table(L, 0, 0, 0)
    if name == "ntk":
        return Parameterization(name, _table(L, 0, 0.5, 0.5), zeros, zeros)
    if name == "mup":
        return Parameterization(name, _table(L, -0.5, 0, 0.5), _table(L, 0.5, 0.5, 0.5), zeros)
    if name == "sp":
        return Parameterization(name, zeros, _table(L, 0, 0.5, 0.5), zeros)
    if name == "ip":
        return Parameterization(name, ip_a, zeros, _exponents("ip_c", ip_c, L))
    if name == "standard_ip":
        return Parameterization(name, ip_a, zeros, _table(L, -1, -2, -1))
    if name == "standard_ip_calibrated":  # a warm-up with standard IP's own exponents: only its base lrs differ
        standard = _table(L, -1, -2, -1)
        return Parameterization(name, ip_a, zeros, standard, standard, n_warmup_steps)
    if name == "ipllr":
        warmup = _table(L, -(L + 1) / 2, -(L + 2) / 2, -(L + 1) / 2)
        return Parameterization(name, ip_a, zeros, _table(L, -1, -2, -1), warmup, n_warmup_steps)
    if name == "ipllr_bias":  # wide-networks base_ipllr_bias.py: layer l = 1..L-1 gets -(L-l+3)/2
        warmup = (-(L + 1) / 2,) + tuple(-(L - l + 3) / 2 for l in range(1, L)) + (-1.0,)
        if scale_bias_lr:
            bias_warm, bias_c = tuple(-(L - l + 1) / 2 for l in range(L)) + (0.0,), (-1.0,) * L + (0.0,)
        else:
            bias_warm = bias_c = zeros
        return Parameterization(name, ip_a, zeros, _table(L, -1, -2, -1), warmup, n_warmup_steps, bias_c, bias_warm)
    if not isinstance(custom_exponents, dict) or set(custom_exponents) != {"a", "b", "c"}:
        raise checks.CheckError("custom_exponents", "a dict with exactly the keys a, b, c", custom_exponents)
    a, b, c = (_exponents(f"custom_exponents.{k}", custom_exponents[k], L) for k in "abc")
    return Parameterization(name, a, b, c)


@dataclass(frozen=True)
class ABCNetSpec:
    """Architecture, parameterization and width of one network; all width scales derive from it.

    Attributes:
        parameterization: the exponent table.
        input_dim: d.
        width: m, the width of every hidden layer.
        num_classes: k, the output size.
        activation: one of ACTIVATIONS.
        bias: biases in the hidden and output layers (ipllr_bias: must be True).
        scale_bias: init b_l = m^(-b_l) v_l (True) or v_l (False; ipllr_bias: must be False).
        base_width: m_0 (module docstring); 1 -> the paper's scales.
        input_scaling: one of INPUT_SCALINGS (where 1/sqrt(d+1) goes); sp: must be "init".
        init_mean: mean of the entries of U_1..U_L (non-centred IP); U_0 and the biases are centred.
        input_bias: the input layer's bias (the original always has one).
    """

    parameterization: Parameterization
    input_dim: int
    width: int
    num_classes: int = 10
    activation: str = "relu"
    bias: bool = False
    scale_bias: bool = True
    base_width: int = 1
    input_scaling: str = "init"
    init_mean: float = 0.0
    input_bias: bool = True

    def __post_init__(self):
        for key in ("input_dim", "width", "num_classes", "base_width"):
            checks.integer(key, getattr(self, key), lo=1)
        checks.one_of("activation", self.activation, ACTIVATIONS)
        checks.one_of("input_scaling", self.input_scaling, INPUT_SCALINGS)
        name = self.parameterization.name
        if name == "sp" and self.input_scaling != "init":
            raise ValueError(f"input_scaling must be 'init' with sp (the standard parameterization at every layer, "
                             f"input included); got {self.input_scaling!r}")
        if name == "ipllr_bias" and not (self.bias and self.input_bias and not self.scale_bias):
            raise ValueError(f"ipllr_bias has unscaled biases in every layer: bias=True, input_bias=True, "
                             f"scale_bias=False; got bias={self.bias!r}, input_bias={self.input_bias!r}, "
                             f"scale_bias={self.scale_bias!r}")
        checks.number("init_mean", self.init_mean)

    @property
    def bias_in_multiplier(self) -> bool:
        """h = μ (W z + b) (every parameterization but ipllr_bias) or μ W z + b (ipllr_bias)."""
        return self.parameterization.name != "ipllr_bias"

    def param_names(self) -> tuple[str, ...]:
        """Parameter names, weights first: W0..WL, then b0 (input_bias) and b1..bL (bias)."""
        names = [f"W{l}" for l in range(self.L + 1)]
        names += [f"b{l}" for l in range(self.L + 1) if (l == 0 and self.input_bias) or (l > 0 and self.bias)]
        return tuple(names)

    @property
    def L(self) -> int:
        return self.parameterization.L

    def _scales(self, exponents: Sequence[float], sp_exponents: Sequence[float]) -> tuple[float, ...]:
        m, m0 = self.width, self.base_width
        return tuple(m0 ** -s * (m / m0) ** -e for e, s in zip(exponents, sp_exponents))

    def multipliers(self) -> tuple[float, ...]:
        """μ_l, the factor on layer l's output; μ_0 includes 1/sqrt(d+1) with the multiplier input scalings."""
        sp = make_parameterization("sp", self.L)
        mu = self._scales(self.parameterization.a, sp.a)
        if self.input_scaling in ("multiplier", "multiplier_lr"):
            return (mu[0] / math.sqrt(self.input_dim + 1),) + mu[1:]
        return mu

    def input_std_factor(self) -> float:
        """Factor on U_0's std: 1/sqrt(d+1) with input_scaling="init", else 1."""
        return 1 / math.sqrt(self.input_dim + 1) if self.input_scaling == "init" else 1.0

    def init_scales(self) -> tuple[float, ...]:
        """The factor m^(-b_l) (relative to m_0) in W_l = m^(-b_l) U_l."""
        return self._scales(self.parameterization.b, make_parameterization("sp", self.L).b)

    def learning_rates(self, base_lr: float, step: int, warmup_base_lrs: Sequence[float] | None = None
                       ) -> tuple[float, ...]:
        """Weights' η_l(t) = β_l m^(-c_l(t)) (relative to m_0): β_l = base_lr, or during an IPLLR
        warm-up the (calibrated) ``warmup_base_lrs`` when given; input_scaling="multiplier_lr"
        multiplies the input layer's by d+1 after the warm-up (the scripts' ``warm_lrs[0] * (d+1)``)."""
        p = self.parameterization
        scales = self._scales(p.lr_exponents(step), make_parameterization("sp", self.L).c)
        if p.in_warmup(step) and warmup_base_lrs is not None:
            lrs = [float(beta) * s for beta, s in zip(warmup_base_lrs, scales)]
        else:
            lrs = [base_lr * s for s in scales]
        if self.input_scaling == "multiplier_lr" and not p.in_warmup(step):
            lrs[0] *= self.input_dim + 1
        return tuple(lrs)

    def bias_learning_rates(self, base_lr: float, step: int, warmup_base_lrs: Sequence[float] | None = None
                            ) -> tuple[float, ...]:
        """The biases' η_l(t): their layer's weight lr, or in ipllr_bias base_lr · m^(-c^bias_l(t))
        (never calibrated, as the original's WarmupSwitchLRBias)."""
        exponents = self.parameterization.bias_lr_exponents(step)
        if exponents is None:
            return self.learning_rates(base_lr, step, warmup_base_lrs)
        return tuple(base_lr * s for s in self._scales(exponents, (0.0,) * (self.L + 1)))

    def param_learning_rates(self, base_lr: float, step: int, warmup_base_lrs: Sequence[float] | None = None
                             ) -> dict[str, float]:
        """η of every parameter at ``step``, by name (``param_names``)."""
        w = self.learning_rates(base_lr, step, warmup_base_lrs)
        b = self.bias_learning_rates(base_lr, step, warmup_base_lrs)
        return {n: (w if n[0] == "W" else b)[int(n[1:])] for n in self.param_names()}


class ABCNet(nn.Module):
    """Parameters W0..WL (and b0..bL) drawn as W_l = m^(-b_l) U_l; the forward pass is :func:`abc_forward`."""

    def __init__(self, spec: ABCNetSpec, generator: torch.Generator | None = None):
        super().__init__()
        self.spec = spec
        L, sigma = spec.L, math.sqrt(INIT_VARIANCE[spec.activation])
        dims = [spec.input_dim] + [spec.width] * L + [spec.num_classes]
        stds = [sigma * spec.input_std_factor()] + [sigma] * (L - 1) + [1.0]
        means = [0.0] + [float(spec.init_mean)] * L
        scales = spec.init_scales()
        for l in range(L + 1):  # weights first: turning biases on does not change them
            U = means[l] + torch.randn(dims[l + 1], dims[l], generator=generator) * stds[l]  # (out, in)
            self.register_parameter(f"W{l}", nn.Parameter(scales[l] * U))
        bias_stds = [sigma] * L + [1.0]  # v_0 is not divided by sqrt(d+1) (the original's v[0])
        for name in spec.param_names():
            if name[0] == "b":
                l = int(name[1:])
                v = torch.randn(dims[l + 1], generator=generator) * bias_stds[l]
                self.register_parameter(name, nn.Parameter(scales[l] * v if spec.scale_bias else v))

    def forward(self, x: Tensor) -> Tensor:
        return abc_forward(dict(self.named_parameters()), x, self.spec)[0]


def _layer(params: dict[str, Tensor], l: int, z: Tensor, mu: float, bias_in_multiplier: bool) -> Tensor:
    W, b = params[f"W{l}"], params.get(f"b{l}")
    if b is None:
        return mu * F.linear(z, W)
    return mu * F.linear(z, W, b) if bias_in_multiplier else mu * F.linear(z, W) + b


def abc_forward(params: dict[str, Tensor], x: Tensor, spec: ABCNetSpec) -> tuple[Tensor, list[Tensor]]:
    """Logits and hidden pre-activations of the network in the module docstring.

    Args:
        params: W0..WL (and b0..bL) as in :class:`ABCNet`.
        x: (N, d) inputs.
        spec: architecture and width scales.

    Returns:
        f (N, k) and [h_0, ..., h_{L-1}], each (N, m).
    """
    if x.ndim != 2 or x.shape[1] != spec.input_dim:
        raise ValueError(f"x must have shape (N, {spec.input_dim}); got {tuple(x.shape)}")
    phi, mu = ACTIVATIONS[spec.activation], spec.multipliers()
    hs, z = [], x
    for l in range(spec.L):
        hs.append(_layer(params, l, z, mu[l], spec.bias_in_multiplier))
        z = phi(hs[-1])
    return _layer(params, spec.L, z, mu[spec.L], spec.bias_in_multiplier), hs
