"""abc-parameterizations of fully connected networks (Yang & Hu 2021, arXiv:2011.14522), as data.

A network with L hidden layers of width m maps x ∈ R^d to logits f(x) ∈ R^k:

    h_0 = μ_0 W_0 x / sqrt(d + 1),    h_l = μ_l W_l φ(h_{l-1})  (l = 1..L),    f(x) = h_L,

with layer multipliers μ_l = m^(-a_l), init W_l = m^(-b_l) U_l and SGD learning rates
η_l = base_lr · m^(-c_l). U_l sits at a width-independent scale: entries N(0, σ_φ²) for
l < L (σ_φ² = 2 relu, 4 gelu, 1 elu / tanh / sigmoid), N(0, 1) for the output layer.
A parameterization is nothing but its exponent table (reference.md §4):

    name         a (input / hidden / output)   b                c
    ntk          0 / ½ / ½                     0                0
    mup          −½ / 0 / ½                    ½                0
    ip           0 / 1 / 1                     0                user-set (ip_c)
    standard_ip  as ip                         0                −1 / −2 / −1
    ipllr        as ip                         0                −(L+1)/2 / −(L+2)/2 / −(L+1)/2 for the
                                                                first n_warmup_steps, then standard_ip
    sp           0 / 0 / 0                     0 / ½ / ½        0

``sp`` is the standard parameterization (PyTorch-style 1/fan_in init variance, one global
learning rate) with the Gaussian gains above instead of PyTorch's default uniform init.

Base width m_0 (as in Microsoft's ``mup``): every scale is taken relative to ``sp`` at m_0,
μ_l = m_0^(-a^sp_l) (m / m_0)^(-a_l) and likewise for b and c, so every parameterization is
``sp`` at m = m_0; m_0 = 1 gives the paper's m^(-a_l).

Biases are optional: scaled, h_l = μ_l (W_l z + b_l) with b_l = m^(-b_l) v_l, or unscaled,
h_l = μ_l W_l z + b_l with b_l = 0 at init; a bias shares its layer's learning rate.
The loss is the cross-entropy averaged over the batch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": F.relu, "gelu": F.gelu, "elu": F.elu, "tanh": torch.tanh, "sigmoid": torch.sigmoid,
}
# Var U_l for l < L: keeps E φ(h)² of order one at init (the original's relu 2, gelu 4, elu 1).
INIT_VARIANCE = {"relu": 2.0, "gelu": 4.0, "elu": 1.0, "tanh": 1.0, "sigmoid": 1.0}
PARAMETERIZATIONS = ("ntk", "mup", "ip", "standard_ip", "ipllr", "sp", "custom")
CALIBRATION_CAP = 500.0  # upper bound on every calibrated IPLLR warm-up base lr
# Target mean |Δh| of the first update: order one in hidden layers, small at the output.
CALIBRATION_TARGET_HIDDEN, CALIBRATION_TARGET_OUTPUT = 1.0, 0.1


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _table(L: int, first: float, hidden: float, last: float) -> tuple[float, ...]:
    return (float(first),) + (float(hidden),) * (L - 1) + (float(last),)


def _exponents(key: str, values, L: int) -> tuple[float, ...]:
    """A number (every layer) or a list of L+1 numbers -> tuple of L+1 floats; ValueError names ``key``."""
    if isinstance(values, (int, float)) and not isinstance(values, bool):
        values = [values] * (L + 1)
    if not isinstance(values, (list, tuple)) or len(values) != L + 1:
        raise ValueError(f"{key} must have L+1 = {L + 1} entries (one per layer, input to output); got {values!r}")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
        raise ValueError(f"{key} entries must be finite numbers; got {values!r}")
    return tuple(float(v) for v in values)


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
    """

    name: str
    a: tuple[float, ...]
    b: tuple[float, ...]
    c: tuple[float, ...]
    warmup_c: tuple[float, ...] | None = None
    n_warmup_steps: int = 0

    def __post_init__(self):
        n = len(self.a)
        if n < 2 or len(self.b) != n or len(self.c) != n or (self.warmup_c is not None and len(self.warmup_c) != n):
            raise ValueError(f"a, b, c (and warmup_c) must all have L+1 >= 2 entries; got lengths "
                             f"{len(self.a)}, {len(self.b)}, {len(self.c)}")
        if not _is_int(self.n_warmup_steps) or self.n_warmup_steps < 0:
            raise ValueError(f"n_warmup_steps must be an integer >= 0; got {self.n_warmup_steps!r}")

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


def make_parameterization(name: str, L: int, ip_c=0.0, n_warmup_steps: int = 1, custom_exponents=None) -> Parameterization:
    """The exponent table of a named parameterization (module docstring) for L hidden layers.

    Args:
        name: one of PARAMETERIZATIONS.
        L: hidden layers (>= 1).
        ip_c: ``ip`` only: its learning-rate exponents, one number or L+1.
        n_warmup_steps: ``ipllr`` only: steps with the warm-up exponents.
        custom_exponents: ``custom`` only: dict with lists a, b, c of L+1 numbers each.

    Raises:
        ValueError: unknown name, L < 1, or exponents of the wrong length, naming the argument.
    """
    if name not in PARAMETERIZATIONS:
        raise ValueError(f"parameterization must be one of {PARAMETERIZATIONS}; got {name!r}")
    if not _is_int(L) or L < 1:
        raise ValueError(f"L must be an integer >= 1; got {L!r}")
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
    if name == "ipllr":
        warmup = _table(L, -(L + 1) / 2, -(L + 2) / 2, -(L + 1) / 2)
        return Parameterization(name, ip_a, zeros, _table(L, -1, -2, -1), warmup, n_warmup_steps)
    if not isinstance(custom_exponents, dict) or set(custom_exponents) != {"a", "b", "c"}:
        raise ValueError(f"custom_exponents must be a dict with exactly the keys a, b, c; got {custom_exponents!r}")
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
        bias: biases in every layer.
        scale_bias: bias inside the layer multiplier (True) or added after it (False).
        base_width: m_0 (module docstring); 1 -> the paper's scales.
    """

    parameterization: Parameterization
    input_dim: int
    width: int
    num_classes: int = 10
    activation: str = "relu"
    bias: bool = False
    scale_bias: bool = True
    base_width: int = 1

    def __post_init__(self):
        for key in ("input_dim", "width", "num_classes", "base_width"):
            if not _is_int(getattr(self, key)) or getattr(self, key) < 1:
                raise ValueError(f"{key} must be an integer >= 1; got {getattr(self, key)!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {tuple(ACTIVATIONS)}; got {self.activation!r}")

    @property
    def L(self) -> int:
        return self.parameterization.L

    def _scales(self, exponents: Sequence[float], sp_exponents: Sequence[float]) -> tuple[float, ...]:
        m, m0 = self.width, self.base_width
        return tuple(m0 ** -s * (m / m0) ** -e for e, s in zip(exponents, sp_exponents))

    def multipliers(self) -> tuple[float, ...]:
        """μ_l, the factor on layer l's output; μ_0 includes the fan-in factor 1/sqrt(d+1)."""
        sp = make_parameterization("sp", self.L)
        mu = self._scales(self.parameterization.a, sp.a)
        return (mu[0] / math.sqrt(self.input_dim + 1),) + mu[1:]

    def init_scales(self) -> tuple[float, ...]:
        """The factor m^(-b_l) (relative to m_0) in W_l = m^(-b_l) U_l."""
        return self._scales(self.parameterization.b, make_parameterization("sp", self.L).b)

    def learning_rates(self, base_lr: float, step: int, warmup_base_lrs: Sequence[float] | None = None) -> tuple[float, ...]:
        """η_l(t) = β_l m^(-c_l(t)) (relative to m_0): β_l = base_lr, or during an IPLLR
        warm-up the (calibrated) ``warmup_base_lrs`` when given."""
        p = self.parameterization
        scales = self._scales(p.lr_exponents(step), make_parameterization("sp", self.L).c)
        if p.in_warmup(step) and warmup_base_lrs is not None:
            return tuple(float(beta) * s for beta, s in zip(warmup_base_lrs, scales))
        return tuple(base_lr * s for s in scales)


class ABCNet(nn.Module):
    """Parameters W0..WL (and b0..bL) drawn as W_l = m^(-b_l) U_l; the forward pass is :func:`abc_forward`."""

    def __init__(self, spec: ABCNetSpec, generator: torch.Generator | None = None):
        super().__init__()
        self.spec = spec
        L, sigma = spec.L, math.sqrt(INIT_VARIANCE[spec.activation])
        dims = [spec.input_dim] + [spec.width] * L + [spec.num_classes]
        stds = [sigma] * L + [1.0]
        scales = spec.init_scales()
        for l in range(L + 1):  # weights first: turning biases on does not change them
            U = torch.randn(dims[l + 1], dims[l], generator=generator) * stds[l]  # (out, in)
            self.register_parameter(f"W{l}", nn.Parameter(scales[l] * U))
        if spec.bias:
            for l in range(L + 1):
                v = torch.randn(dims[l + 1], generator=generator) * stds[l]
                self.register_parameter(f"b{l}", nn.Parameter(scales[l] * v if spec.scale_bias else torch.zeros_like(v)))

    def layer_parameters(self, l: int) -> list[nn.Parameter]:
        """The weight (and bias) of layer l: one optimizer parameter group."""
        return [getattr(self, n) for n in (f"W{l}", f"b{l}") if hasattr(self, n)]

    def forward(self, x: Tensor) -> Tensor:
        return abc_forward(dict(self.named_parameters()), x, self.spec)[0]


def _layer(params: dict[str, Tensor], l: int, z: Tensor, mu: float, scale_bias: bool) -> Tensor:
    W, b = params[f"W{l}"], params.get(f"b{l}")
    if b is None:
        return mu * F.linear(z, W)
    return mu * F.linear(z, W, b) if scale_bias else mu * F.linear(z, W) + b


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
        hs.append(_layer(params, l, z, mu[l], spec.scale_bias))
        z = phi(hs[-1])
    return _layer(params, spec.L, z, mu[spec.L], spec.scale_bias), hs


def calibrate_warmup_lrs(net: ABCNet, x_step: Tensor, y_step: Tensor, x_probe: Tensor,
                         cap: float = CALIBRATION_CAP) -> tuple[float, ...]:
    """IPLLR's per-layer warm-up base lrs β_l from the size of a first SGD step.

    One SGD step is taken, on a copy, on (x_step, y_step) with base lr 1 and the warm-up
    exponents, ΔW_l = −m^(-c_l) ∇_{W_l} loss. Layer by layer on the held-out ``x_probe``,
    β_l = target_l / mean|μ_l ΔW_l z_{l-1}| (target 1 for l < L, 0.1 at the output, capped at
    ``cap``), and the next layer sees z_l = φ(μ_l W_l z_{l-1} + β_l μ_l ΔW_l z_{l-1}): the
    activations after a calibrated first step.

    Returns:
        (β_0, ..., β_L), each finite and in (0, cap].

    Raises:
        ValueError: the net's parameterization has no warm-up step.
    """
    spec = net.spec
    p = spec.parameterization
    if not p.in_warmup(0):
        raise ValueError(f"calibration needs a warm-up step (ipllr, n_warmup_steps >= 1); got {p.name!r} "
                         f"with n_warmup_steps={p.n_warmup_steps}")
    params = {k: v.detach().clone().requires_grad_(True) for k, v in net.named_parameters()}
    f, _ = abc_forward(params, x_step, spec)
    grads = torch.autograd.grad(F.cross_entropy(f, y_step), list(params.values()))
    lr_scales = spec.learning_rates(1.0, 0, None)  # base lr 1, warm-up exponents
    delta = {name: -lr_scales[int(name[1:])] * g for name, g in zip(params, grads)}  # "W3" -> layer 3
    params = {k: v.detach() for k, v in params.items()}
    mu, phi, betas, z = spec.multipliers(), ACTIVATIONS[spec.activation], [], x_probe
    with torch.no_grad():
        for l in range(spec.L + 1):
            init = _layer(params, l, z, mu[l], spec.scale_bias)
            update = _layer(delta, l, z, mu[l], spec.scale_bias)
            size = update.abs().mean().item()
            target = CALIBRATION_TARGET_OUTPUT if l == spec.L else CALIBRATION_TARGET_HIDDEN
            beta = min(target / size, cap) if size > 0 and math.isfinite(target / size) else cap
            betas.append(float(beta))
            z = phi(init + beta * update)
    return tuple(betas)


def make_optimizer(net: ABCNet) -> torch.optim.SGD:
    """Plain SGD with one parameter group per layer; the lrs are set before every step."""
    groups = [{"params": net.layer_parameters(l), "lr": 0.0, "name": f"layer{l}"} for l in range(net.spec.L + 1)]
    return torch.optim.SGD(groups, lr=0.0)


def sgd_step(net: ABCNet, optimizer: torch.optim.SGD, lrs: Sequence[float], x: Tensor, y: Tensor):
    """One SGD step on the batch (x, y) with per-layer lrs; returns (loss, logits, hidden pre-activations) before it."""
    for group, lr in zip(optimizer.param_groups, lrs):
        group["lr"] = lr
    f, hs = abc_forward(dict(net.named_parameters()), x, net.spec)
    loss = F.cross_entropy(f, y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach(), f.detach(), [h.detach() for h in hs]


def batch_indices(n: int, batch_size: int, generator: torch.Generator) -> Iterator[Tensor]:
    """Endless minibatches without replacement: a fresh permutation each epoch, the last partial batch dropped."""
    if not 1 <= batch_size <= n:
        raise ValueError(f"batch_size must be in [1, number of training examples = {n}]; got {batch_size}")
    while True:
        perm = torch.randperm(n, generator=generator, device=generator.device)
        for i in range(0, n - batch_size + 1, batch_size):
            yield perm[i:i + batch_size]


@dataclass(frozen=True)
class StepRecord:
    """What training records at one step, measured on that step's batch before its update."""

    step: int
    loss: float
    accuracy: float
    output_abs_mean: float  # mean |f(x)| over batch and classes
    h_abs_mean: tuple[float, ...]  # mean |h_l|, l = 0..L-1: the coordinate scale
    lrs: tuple[float, ...]  # η_l used by the step


def train_abc(net: ABCNet, x: Tensor, y: Tensor, n_steps: int, batch_size: int, base_lr: float,
              generator: torch.Generator, warmup_base_lrs: Sequence[float] | None = None,
              callback: Callable[[StepRecord], None] | None = None, record_every: int = 1) -> list[float]:
    """Train ``net`` in place with per-layer SGD: one loop for every parameterization.

    Args:
        net: the network (its spec sets the per-layer, per-step lrs).
        x, y: (n, d) training inputs and (n,) labels.
        n_steps: SGD steps.
        batch_size: minibatch size (epochs without replacement).
        base_lr: β in η_l = β m^(-c_l).
        generator: batch order.
        warmup_base_lrs: IPLLR: calibrated β_l of the warm-up steps; None -> base_lr.
        callback: called with a :class:`StepRecord` every ``record_every`` steps and at the last.
        record_every: recording period.

    Returns:
        The minibatch loss of every step.

    Raises:
        FloatingPointError: the loss became NaN or inf (names the step).
    """
    optimizer, batches, losses = make_optimizer(net), batch_indices(x.shape[0], batch_size, generator), []
    for step in range(n_steps):
        idx = next(batches)
        lrs = net.spec.learning_rates(base_lr, step, warmup_base_lrs)
        loss, f, hs = sgd_step(net, optimizer, lrs, x[idx], y[idx])
        value = loss.item()
        if not math.isfinite(value):
            raise FloatingPointError(f"training diverged: loss {value} at step {step}")
        losses.append(value)
        if callback is not None and (step % record_every == 0 or step == n_steps - 1):
            callback(StepRecord(step, value, (f.argmax(1) == y[idx]).float().mean().item(), f.abs().mean().item(),
                                tuple(h.abs().mean().item() for h in hs), tuple(lrs)))
    return losses


@torch.no_grad()
def evaluate(net: ABCNet, x: Tensor, y: Tensor, batch_size: int = 4096) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``net`` on (x, y)."""
    loss, correct = 0.0, 0
    for i in range(0, x.shape[0], batch_size):
        f = net(x[i:i + batch_size])
        loss += F.cross_entropy(f, y[i:i + batch_size], reduction="sum").item()
        correct += int((f.argmax(1) == y[i:i + batch_size]).sum())
    return loss / x.shape[0], correct / x.shape[0]


@dataclass(frozen=True)
class CoordCheckConfig:
    """Coordinate check: widths trained side by side for a few steps.

    Attributes:
        widths: at least two distinct widths m.
        n_steps: SGD steps T after init (>= 1).
        n_seeds: inits (and batch orders) averaged per width.
    """

    widths: tuple[int, ...] = (64, 128, 256, 512, 1024, 2048, 4096)
    n_steps: int = 5
    n_seeds: int = 3

    def __post_init__(self):
        if (not isinstance(self.widths, (list, tuple)) or len(set(self.widths)) < 2
                or not all(_is_int(m) and m >= 1 for m in self.widths)):
            raise ValueError(f"widths must list at least two distinct integers >= 1; got {self.widths!r}")
        object.__setattr__(self, "widths", tuple(sorted(set(self.widths))))
        for key in ("n_steps", "n_seeds"):
            if not _is_int(getattr(self, key)) or getattr(self, key) < 1:
                raise ValueError(f"{key} must be an integer >= 1; got {getattr(self, key)!r}")


@torch.no_grad()
def _probe(net: ABCNet, x: Tensor) -> tuple[Tensor, list[Tensor]]:
    return abc_forward(dict(net.named_parameters()), x, net.spec)


def coordinate_check(specs: Sequence[ABCNetSpec], x: Tensor, y: Tensor, x_probe: Tensor, n_steps: int,
                     batch_size: int, base_lr: float, seeds: Sequence[int], calibrate: bool = True,
                     device: torch.device | str = "cpu") -> dict[str, Tensor]:
    """Train each spec (one per width) for ``n_steps`` and measure coordinate sizes on a fixed probe batch.

    Every spec and seed sees the same batch order (seeded by the seed), so widths differ only in m.
    A net whose loss turns NaN or inf stops there (a blow-up is a result here, not an error): its
    later entries are NaN and ``diverged`` is set.

    Returns:
        ``h_abs`` (W, S, T+1, L): mean |h_l| on ``x_probe`` after t = 0..T steps;
        ``dh_abs`` (W, S, T+1, L): mean |h_l(t) − h_l(0)|; ``f_abs`` and ``df_abs`` (W, S, T+1): the same for
        the logits; ``warmup_base_lrs`` (W, S, L+1) (NaN where nothing was calibrated); ``diverged`` (W, S).
    """
    W, S, L, nan = len(specs), len(seeds), specs[0].L, float("nan")
    out = {k: torch.full((W, S, n_steps + 1, L), nan) for k in ("h_abs", "dh_abs")}
    out.update({k: torch.full((W, S, n_steps + 1), nan) for k in ("f_abs", "df_abs")})
    out["warmup_base_lrs"] = torch.full((W, S, L + 1), nan)
    out["diverged"] = torch.zeros(W, S, dtype=torch.bool)
    for i, spec in enumerate(specs):
        for j, seed in enumerate(seeds):
            net = ABCNet(spec, torch.Generator().manual_seed(seed)).to(device)
            gen = torch.Generator(device=device).manual_seed(seed + 1)
            batches, optimizer = batch_indices(x.shape[0], batch_size, gen), make_optimizer(net)
            betas = None
            if calibrate and spec.parameterization.in_warmup(0):
                i0, i1 = next(batches), next(batches)
                betas = calibrate_warmup_lrs(net, x[i0], y[i0], x[i1])
                out["warmup_base_lrs"][i, j] = torch.tensor(betas)
            f0, h0 = _probe(net, x_probe)
            for t in range(n_steps + 1):
                f, hs = (f0, h0) if t == 0 else _probe(net, x_probe)
                out["h_abs"][i, j, t] = torch.stack([h.abs().mean() for h in hs]).cpu()
                out["dh_abs"][i, j, t] = torch.stack([(h - g).abs().mean() for h, g in zip(hs, h0)]).cpu()
                out["f_abs"][i, j, t], out["df_abs"][i, j, t] = f.abs().mean().cpu(), (f - f0).abs().mean().cpu()
                if t < n_steps:
                    idx = next(batches)
                    loss, _, _ = sgd_step(net, optimizer, spec.learning_rates(base_lr, t, betas), x[idx], y[idx])
                    if not math.isfinite(loss.item()):
                        out["diverged"][i, j] = True
                        break
    return out
