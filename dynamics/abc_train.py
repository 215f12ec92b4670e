"""Training abc-networks (models.abc): plain per-parameter SGD, IPLLR's warm-up base lrs, the coordinate check.

IPLLR calibration (wide-networks pytorch/schedulers.py, ``WarmupSwitchLR.calibrate_base_lr``): one
SGD step with base lr 1 and the warm-up exponents is taken on a copy, and measured layer by layer
on a second batch. ``calibration`` chooses the warm-up base lrs β_l:

    original    β_0 = base_lr (×(d+1) with the multiplier input scalings, as the server scripts'
                normalize_first calibration); β_l = min(1 / mean|μ_l ΔW_l z|, 500) for hidden layers and
                min(0.1 / mean|μ_L ΔW_L z|, 500) at the output, the next layer seeing the *uncapped* update;
    all_layers  every layer, the input included, calibrated to the targets above, the capped value propagated;
    default     β_l = 1 (the original's default_calibration);
    none        β_l = base_lr (calibrate_base_lr=False).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from core import checks
from dynamics.engine import BoundaryBefore, OnStep, StepOutput, check_finite, run_steps
from dynamics.engine import evaluate as engine_evaluate
from models.abc import ACTIVATIONS, ABCNet, ABCNetSpec, _layer, abc_forward

CALIBRATIONS = ("original", "all_layers", "default", "none")
CALIBRATION_CAP = 500.0  # upper bound on every calibrated IPLLR warm-up base lr (the original's MAX_BASE_LR)
# Target mean |Δh| of the first update: order one in hidden layers, small at the output.
CALIBRATION_TARGET_HIDDEN, CALIBRATION_TARGET_OUTPUT = 1.0, 0.1
DEFAULT_CALIBRATED_BASE_LR = 1.0  # the original's DEFAULT_CALIBRATED_INITIAL_BASE_LR


def calibrate_warmup_lrs(net: ABCNet, x_step: Tensor, y_step: Tensor, x_probe: Tensor, mode: str = "original",
                         base_lr: float = 0.01, cap: float = CALIBRATION_CAP) -> tuple[float, ...]:
    """IPLLR's per-layer warm-up base lrs β_l from the size of a first SGD step (module docstring).

    Args:
        net: the network (not modified: the mock step runs on a copy).
        x_step, y_step: batch of the mock step; x_probe: batch it is measured on.
        mode: "original" or "all_layers" (module docstring).
        base_lr: the run's base lr (β_0 in "original").
        cap: upper bound of every calibrated β_l.

    Returns:
        (β_0, ..., β_L), each finite and > 0.

    Raises:
        ValueError: the net's parameterization has no warm-up step, or mode is not a calibration.
    """
    spec = net.spec
    p = spec.parameterization
    if not p.in_warmup(0):
        raise ValueError(f"calibration needs a warm-up step (ipllr, n_warmup_steps >= 1); got {p.name!r} "
                         f"with n_warmup_steps={p.n_warmup_steps}")
    checks.one_of("calibration mode", mode, ("original", "all_layers"))
    params = {k: v.detach().clone().requires_grad_(True) for k, v in net.named_parameters()}
    f, _ = abc_forward(params, x_step, spec)
    grads = torch.autograd.grad(F.cross_entropy(f, y_step), list(params.values()))
    lrs = spec.param_learning_rates(1.0, 0, None)  # base lr 1, warm-up exponents
    delta = {name: -lrs[name] * g for name, g in zip(params, grads)}
    params = {k: v.detach() for k, v in params.items()}
    mu, phi, betas, z = spec.multipliers(), ACTIVATIONS[spec.activation], [], x_probe
    first_lr = base_lr * (spec.input_dim + 1 if spec.input_scaling in ("multiplier", "multiplier_lr") else 1)
    with torch.no_grad():
        for l in range(spec.L + 1):
            init = _layer(params, l, z, mu[l], spec.bias_in_multiplier)
            # The original's update: μ_0 (ΔW_0 x + Δb_0) at the input, μ_l ΔW_l z above (no Δb).
            step = delta if (l == 0 or mode == "all_layers") else {f"W{l}": delta[f"W{l}"]}
            update = _layer(step, l, z, mu[l], spec.bias_in_multiplier)
            if mode == "original" and l == 0:
                beta = scale = first_lr
            else:
                size = update.abs().mean().item()
                target = CALIBRATION_TARGET_OUTPUT if l == spec.L else CALIBRATION_TARGET_HIDDEN
                scale = target / size if size > 0 and math.isfinite(target / size) else cap
                beta = min(scale, cap)
                if mode == "all_layers":
                    scale = beta  # today's variant propagates the capped value
            betas.append(float(beta))
            z = phi(init + scale * update)
    return tuple(betas)


def warmup_base_lrs(net: ABCNet, calibration: str, base_lr: float, x_step: Tensor, y_step: Tensor,
                    x_probe: Tensor) -> tuple[float, ...] | None:
    """β_l of the warm-up under ``calibration`` (module docstring); None -> base_lr (no warm-up, or "none")."""
    checks.one_of("calibration", calibration, CALIBRATIONS)
    if not net.spec.parameterization.in_warmup(0) or calibration == "none":
        return None
    if calibration == "default":
        return (DEFAULT_CALIBRATED_BASE_LR,) * (net.spec.L + 1)
    return calibrate_warmup_lrs(net, x_step, y_step, x_probe, calibration, base_lr)


def make_optimizer(net: ABCNet) -> torch.optim.SGD:
    """Plain SGD with one parameter group per tensor (``spec.param_names``); the lrs are set before every step."""
    groups = [{"params": [getattr(net, n)], "lr": 0.0, "name": n} for n in net.spec.param_names()]
    return torch.optim.SGD(groups, lr=0.0)


def sgd_step(net: ABCNet, optimizer: torch.optim.SGD, lrs: dict[str, float], x: Tensor, y: Tensor):
    """One SGD step on the batch (x, y) with per-tensor lrs (by name); returns (loss, logits, hidden
    pre-activations) before it."""
    for group in optimizer.param_groups:
        group["lr"] = lrs[group["name"]]
    f, hs = abc_forward(dict(net.named_parameters()), x, net.spec)
    loss = F.cross_entropy(f, y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach(), f.detach(), [h.detach() for h in hs]


class EpochBatches:
    """Endless minibatch indices without replacement: a fresh permutation each epoch, drawn when the
    epoch's first batch is taken; the last partial batch is kept (as the original's
    DataLoader(shuffle=True)) unless ``drop_last``. ``state()`` / ``load()``: the position, for checkpoints."""

    def __init__(self, n: int, batch_size: int, generator: torch.Generator, drop_last: bool = False):
        checks.integer("batch_size", batch_size, lo=1, hi=n, why=f"the number of training examples is {n}")
        self.n, self.batch_size, self.generator = n, batch_size, generator
        self.end = n - batch_size + 1 if drop_last else n
        self.perm, self.pos = None, 0  # (n,) this epoch's permutation; start of the next batch in it

    def __iter__(self):
        return self

    def __next__(self) -> Tensor:
        if self.perm is None or self.pos >= self.end:
            self.perm, self.pos = torch.randperm(self.n, generator=self.generator, device=self.generator.device), 0
        idx = self.perm[self.pos:self.pos + self.batch_size]
        self.pos += self.batch_size
        return idx

    def state(self) -> dict:
        perm = None if self.perm is None else self.perm.clone()
        return {"perm": perm, "pos": self.pos, "generator": self.generator.get_state()}

    def load(self, state: dict) -> None:
        self.perm, self.pos = state["perm"], state["pos"]
        self.generator.set_state(state["generator"])


def batch_indices(n: int, batch_size: int, generator: torch.Generator, drop_last: bool = False) -> Iterator[Tensor]:
    """Endless minibatches without replacement (:class:`EpochBatches`)."""
    return EpochBatches(n, batch_size, generator, drop_last)


def fixed_batch_list(n: int, batch_size: int, generator: torch.Generator) -> list[Tensor]:
    """One epoch of minibatch indices from one permutation, the last partial batch kept: the server scripts'
    ``batches = list(DataLoader(shuffle=True))``, which ``collect_training_losses`` cycles (step i: batch i mod len)."""
    batches = batch_indices(n, batch_size, generator)
    return [next(batches) for _ in range(math.ceil(n / batch_size))]


@dataclass(frozen=True)
class StepRecord:
    """What training records at one step, measured on that step's batch before its update."""

    step: int
    loss: float
    accuracy: float
    output_abs_mean: float  # mean |f(x)| over batch and classes
    h_abs_mean: tuple[float, ...]  # mean |h_l|, l = 0..L-1: the coordinate scale
    lrs: tuple[float, ...]  # η_l of the weights used by the step
    bias_lrs: tuple[float, ...]  # η_l of the biases (equal to lrs unless ipllr_bias)
    likelihood: float  # mean softmax probability of the correct label (the original's training/likelihood)
    pred_proba: float  # mean softmax probability of the predicted label (training/predicted_label_proba)


def likelihoods(f: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Per example (N,): the softmax probability of the label y and of the predicted (argmax) class; f (N, k)."""
    probas = f.softmax(dim=1)
    return probas.gather(1, y[:, None])[:, 0], probas.max(dim=1).values


def train_abc(net: ABCNet, x: Tensor, y: Tensor, n_steps: int, batch_size: int, base_lr: float,
              generator: torch.Generator, warmup_base_lrs: Sequence[float] | None = None,
              callback: Callable[[StepRecord], None] | None = None, record_every: int = 1,
              first_batch: tuple[Tensor, Tensor] | None = None,
              batch_list: Sequence[Tensor] | None = None,
              boundary: Callable[[int, Callable[[], dict]], None] | None = None,
              resume: dict | None = None) -> list[float]:
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
        first_batch: (x, y) of step 0 instead of the first minibatch (the calibration's mock-step batch, as
            wide-networks' training/ipllr.py); the minibatch order after it is unchanged.
        batch_list: index tensors cycled in order (step i uses batch_list[i % len], ``fixed_batch_list``)
            instead of fresh epochs drawn with ``generator``.
        boundary: called as ``boundary(step, capture)`` before every step (tracking.preempt's
            ``Session.boundary``); ``capture()`` returns the loop state (weights, optimizer, batch
            position and generator, losses so far).
        resume: such a captured state: training goes on from its step (``net`` is overwritten).

    Returns:
        The minibatch loss of every step.

    Raises:
        TrainingDiverged: the loss became NaN or inf (a FloatingPointError; step = steps completed before it).
    """
    if batch_list is not None and first_batch is not None:
        raise ValueError("give first_batch or batch_list, not both (a fixed list's first batch is its step 0)")
    batches = None if batch_list is not None else EpochBatches(x.shape[0], batch_size, generator)
    optimizer, losses, start = make_optimizer(net), [], 0
    if resume is not None:
        net.load_state_dict(resume["net"])
        optimizer.load_state_dict(resume["optimizer"])
        if batches is not None:
            batches.load(resume["batches"])
        losses, start = list(resume["losses"]), resume["step"]

    def capture():
        return {"step": len(losses), "net": {k: v.clone() for k, v in net.state_dict().items()},
                "optimizer": optimizer.state_dict(), "batches": None if batches is None else batches.state(),
                "losses": list(losses)}

    def step_fn(step: int) -> StepOutput:
        if step == 0 and first_batch is not None:
            xb, yb = first_batch
        else:  # a fixed list is cycled: step i uses batch i mod len (first_batch excludes it)
            idx = batch_list[step % len(batch_list)] if batch_list is not None else next(batches)
            xb, yb = x[idx], y[idx]
        lrs = net.spec.param_learning_rates(base_lr, step, warmup_base_lrs)
        loss, f, hs = sgd_step(net, optimizer, lrs, xb, yb)
        value = check_finite(loss.item(), step)
        losses.append(value)
        return StepOutput(value, (f, hs, yb))

    def record(step: int, out: StepOutput) -> None:
        if step % record_every == 0 or step == n_steps - 1:
            f, hs, yb = out.info
            correct, predicted = likelihoods(f, yb)
            callback(StepRecord(step, out.loss, (f.argmax(1) == yb).float().mean().item(), f.abs().mean().item(),
                                tuple(h.abs().mean().item() for h in hs),
                                net.spec.learning_rates(base_lr, step, warmup_base_lrs),
                                net.spec.bias_learning_rates(base_lr, step, warmup_base_lrs),
                                correct.mean().item(), predicted.mean().item()))

    callbacks = [] if boundary is None else [BoundaryBefore(boundary, (capture,))]
    if callback is not None:
        callbacks.append(OnStep(record))
    run_steps(step_fn, start, n_steps, callbacks)
    return losses


@torch.no_grad()
def evaluate(net: ABCNet, x: Tensor, y: Tensor, batch_size: int = 4096, with_likelihood: bool = False):
    """Mean cross-entropy and accuracy of ``net`` on (x, y), and with ``with_likelihood`` the mean softmax
    probability of the correct label (the original's val/likelihood)."""
    extra = {"likelihood": lambda f, yb: likelihoods(f, yb)[0].sum().item()} if with_likelihood else None
    ev = engine_evaluate(net, x, y, lambda f, yb: F.cross_entropy(f, yb, reduction="sum").item(), batch_size, extra)
    return (ev["loss"], ev["accuracy"], ev["likelihood"]) if with_likelihood else (ev["loss"], ev["accuracy"])

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
        widths = checks.int_list("widths", self.widths, lo=1, min_len=2)
        if len(set(widths)) < 2:
            raise checks.CheckError("widths", "a list of at least two distinct integers >= 1", self.widths)
        object.__setattr__(self, "widths", tuple(sorted(set(widths))))
        checks.integer("n_steps", self.n_steps, lo=1)
        checks.integer("n_seeds", self.n_seeds, lo=1)


@torch.no_grad()
def _probe(net: ABCNet, x: Tensor) -> tuple[Tensor, list[Tensor]]:
    return abc_forward(dict(net.named_parameters()), x, net.spec)


def coordinate_check(specs: Sequence[ABCNetSpec], x: Tensor, y: Tensor, x_probe: Tensor, n_steps: int,
                     batch_size: int, base_lr: float, seeds: Sequence[int], calibration: str = "original",
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
            if calibration in ("original", "all_layers") and spec.parameterization.in_warmup(0):
                i0, i1 = next(batches), next(batches)
                betas = calibrate_warmup_lrs(net, x[i0], y[i0], x[i1], calibration, base_lr)
            else:
                betas = warmup_base_lrs(net, calibration, base_lr, x[:1], y[:1], x[:1])
            if betas is not None:
                out["warmup_base_lrs"][i, j] = torch.tensor(betas)
            f0, h0 = _probe(net, x_probe)
            for t in range(n_steps + 1):
                f, hs = (f0, h0) if t == 0 else _probe(net, x_probe)
                out["h_abs"][i, j, t] = torch.stack([h.abs().mean() for h in hs]).cpu()
                out["dh_abs"][i, j, t] = torch.stack([(h - g).abs().mean() for h, g in zip(hs, h0)]).cpu()
                out["f_abs"][i, j, t], out["df_abs"][i, j, t] = f.abs().mean().cpu(), (f - f0).abs().mean().cpu()
                if t < n_steps:
                    idx = next(batches)
                    loss, _, _ = sgd_step(net, optimizer, spec.param_learning_rates(base_lr, t, betas), x[idx], y[idx])
                    if not math.isfinite(loss.item()):
                        out["diverged"][i, j] = True
                        break
    return out
