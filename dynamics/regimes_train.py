"""The SGD-regimes training engine (reference.md §2; Sclocchi, Geiger & Wyart's setup).

The network is trained on the centred prediction and an α-scaled loss:

    pred(w, x) = f(w, x) − f(w₀, x),        ℓ_α(pred, y) = ℓ(α·pred, y) / α,
    L(w) = mean over the batch of ℓ_α,      w ← w − dt ∇L(w),       T = dt / (bs·h),

with ℓ(o, y) one of (margin m = o·y)

    hinge      max(0, 1 − m)
    quadhinge  max(0, 1 − m)²
    softhinge  s(1 − m), s(u) = u·exp(−1/(2u)) for u > 0, else 0 (smooth, and exactly 0 once m ≥ 1)
    mse        (o − y)² / 2.

Large α is the lazy regime (pred must only move by 1/α), small α feature learning.

Dynamics (``gen`` drives every random draw):

* ``sgd``: a fresh batch of ``bs`` distinct points every step.
* ``sgd_only_unfit``: the batch is drawn among the points with α·pred·y < 1, topped up
  with random fitted points when fewer than ``bs`` are unfitted.
* ``gd_sde``: the full-batch gradient plus Gaussian noise, ζ ~ N(0, I_P), in one of two forms
  (``sde_noise``):
  - ``original`` (default; the original's ``edm/dynamics.py:gd_sde``): ξ = σ ∇_w (1/P) Σ_i ζ_i f(w, x_i)
    with σ² = (1/bs − 1/P) Σ_i ℓ'_i², noise over every point whatever its ℓ'_i;
  - ``minibatch``: exactly the covariance of sgd's mean gradient over ``bs`` of the P points drawn
    without replacement: ξ = c Σ_i (ζ_i − ζ̄) g_i, g_i = ∇ℓ_α(pred_i, y_i), c² = (P − bs)/(bs (P − 1) P),
    so Cov ξ = (P − bs)/(bs (P − 1)) · (1/P) Σ_i (g_i − ḡ)(g_i − ḡ)ᵀ.
  Both are one backward pass with ℓ'_i held fixed.
* ``gd_sde_only_unfit``: gd_sde on the n unfitted points only (α·pred·y < 1), P replaced by n;
  when n <= bs the noise is 0 (the original's σ² = (1/bs − 1/n)·Σℓ'² is negative there, a NaN).
* ``gd``: the full batch.

``regularizer`` adds to the objective (the original's ``edm/regularizer.py``, on the batch):
``l2`` regu_scale·|w|²/2, ``l1`` regu_scale·|w|₁, ``norm_grad_loss`` regu_scale·|∇_w L_batch|²,
``norm_grad_net`` regu_scale·|∇_w mean_batch pred|².

Checkpoints are taken when the training loss leaves its bracket on the fast ladder of
fractions of the initial loss L₀, at the first and last step, and at steps 1, 2, 4, ... below
``ckpt_save_mult``; the NTK and gradient observables on the slow ladder, consulted at checkpoints
only (``dynamics.regimes_ladders``, both as in the original).
Between full evaluations the training loss is tracked by L̃ ← ((P − bs) L̃ + bs·L_batch)/P
(sgd) or by the exact loss of the previous step (the full-batch dynamics and sgd_only_unfit,
which see every prediction); the true loss is computed when L̃ leaves the bracket and at
least once an epoch, and every stopping rule is checked then.

Training stops at zero training loss, for mse at α·L < 1e-9 (as the original), at
α·min_i(pred_i·y_i) ≥ ``mind_stop``, a non-finite loss (recorded as a divergence), ``max_wall``
seconds or ``max_step`` steps.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call

from data.regimes import BinaryDataset
from dynamics.ntk import NTK_METHODS, empirical_ntk, kernel_observables
from dynamics.regimes_ladders import FastLadder, SlowLadder, early_step, fast_ladder, slow_ladder
from dynamics.regimes_observables import gradient_stats, linear_observables, prediction_stats

LOSSES = ("hinge", "quadhinge", "softhinge", "mse")
DYNAMICS = ("sgd", "sgd_only_unfit", "gd_sde", "gd_sde_only_unfit", "gd")
SDE_NOISES = ("original", "minibatch")
REGULARIZERS = ("norm_grad_loss", "norm_grad_net", "l2", "l1")  # or None
STOP_REASONS = ("diverged", "zero_loss", "mse_converged", "mind_stop", "max_step", "max_wall")
MSE_STOP = 1e-9  # the original stops an mse run at α·L below this
FULL_BATCH_EVAL_EVERY = 100  # steps between full evaluations when the tracked loss is exact


def _srelu(u: Tensor) -> Tensor:
    positive = u > 0
    safe = torch.where(positive, u, torch.ones_like(u))  # keeps the unused branch finite (and its gradient)
    return torch.where(positive, u * torch.exp(-0.5 / safe), torch.zeros_like(u))


def alpha_loss(name: str, alpha: float) -> Callable[[Tensor, Tensor], Tensor]:
    """Per-sample ℓ_α(pred, y) = ℓ(α·pred, y) / α (see the module docstring); shapes (N,), (N,) -> (N,)."""
    if name not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}; got {name!r}")
    base = {
        "hinge": lambda o, y: torch.relu(1.0 - o * y),
        "quadhinge": lambda o, y: torch.relu(1.0 - o * y) ** 2,
        "softhinge": lambda o, y: _srelu(1.0 - o * y),
        "mse": lambda o, y: 0.5 * (o - y) ** 2,
    }[name]
    return lambda pred, y: base(alpha * pred, y) / alpha


@dataclass(frozen=True)
class RegimesConfig:
    """One training run.

    Attributes:
        alpha: output scale α > 0 (the hinge margin on the raw output is 1/α).
        dt: step size > 0.
        bs: batch size, 1 <= bs <= P (full-batch dynamics use it for the noise scale only).
        loss: one of ``LOSSES``.
        dynamics: one of ``DYNAMICS``.
        max_wall: stop after this many seconds (> 0), checkpoints included.
        max_step: stop after this many steps; None for no limit.
        mind_stop: stop once α·min(pred·y) >= mind_stop; None disables the rule.
        ckpt_modulo: keep every k-th rung of the fast ladder (>= 1).
        ckpt_save_mult: also checkpoint at steps 1, 2, 4, ... <= ckpt_save_mult (0: none).
        ckpt_grad_stats: number of train (and test) points for the NTK observables (0: none).
        ckpt_kernels: keep the NTK Gram matrices of every slow checkpoint.
        ntk_method: one of ``dynamics.ntk.NTK_METHODS``.
        sde_noise: gd_sde's noise form, one of ``SDE_NOISES``.
        regularizer: one of ``REGULARIZERS`` or None; regu_scale its weight (>= 0).
        ckpt_save_pred: keep predictions and labels at every slow checkpoint (the last is always kept).
        eval_chunk: points per forward pass in full evaluations.
    """

    alpha: float
    dt: float
    bs: int
    loss: str = "hinge"
    dynamics: str = "sgd"
    max_wall: float = 3600.0
    max_step: int | None = None
    mind_stop: float | None = 1.0
    ckpt_modulo: int = 1
    ckpt_save_mult: int = 0
    ckpt_grad_stats: int = 0
    ckpt_kernels: bool = False
    ntk_method: str = "auto"
    sde_noise: str = "original"
    regularizer: str | None = None
    regu_scale: float = 0.0
    ckpt_save_pred: bool = False
    eval_chunk: int = 4096

    def __post_init__(self):
        def number(key, lo=None, strict=True, none_ok=False):
            v = getattr(self, key)
            if v is None and none_ok:
                return
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            if ok and lo is not None:
                ok = v > lo if strict else v >= lo
            if not ok:
                bound = "" if lo is None else f" {'>' if strict else '>='} {lo}"
                raise ValueError(f"{key} must be a finite number{bound}{' or None' if none_ok else ''}; got {v!r}")

        def integer(key, lo, none_ok=False):
            v = getattr(self, key)
            if v is None and none_ok:
                return
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"{key} must be an integer >= {lo}{' or None' if none_ok else ''}; got {v!r}")

        number("alpha", 0)
        number("dt", 0)
        number("max_wall", 0)
        number("mind_stop", none_ok=True)
        number("regu_scale", 0, strict=False)
        integer("bs", 1)
        integer("max_step", 1, none_ok=True)
        integer("ckpt_modulo", 1)
        integer("ckpt_save_mult", 0)
        integer("ckpt_grad_stats", 0)
        integer("eval_chunk", 1)
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}; got {self.loss!r}")
        if self.dynamics not in DYNAMICS:
            raise ValueError(f"dynamics must be one of {DYNAMICS}; got {self.dynamics!r}")
        if self.sde_noise not in SDE_NOISES:
            raise ValueError(f"sde_noise must be one of {SDE_NOISES}; got {self.sde_noise!r}")
        if self.regularizer is not None and self.regularizer not in REGULARIZERS:
            raise ValueError(f"regularizer must be None or one of {REGULARIZERS}; got {self.regularizer!r}")
        if not isinstance(self.ckpt_save_pred, bool):
            raise ValueError(f"ckpt_save_pred must be True or False; got {self.ckpt_save_pred!r}")
        if self.ntk_method not in NTK_METHODS:
            raise ValueError(f"ntk_method must be one of {NTK_METHODS}; got {self.ntk_method!r}")


@dataclass
class RegimesRun:
    """What ``train_regimes`` returns.

    Attributes:
        checkpoints: one record per checkpoint (see ``flat_metrics`` for the fields).
        stop_reason: one of ``STOP_REASONS``.
        params: the final parameters.
        kernels: with ``ckpt_kernels``, one {step, train, test} dict of Gram matrices per slow checkpoint.
        predictions: {step, train_pred, train_label, test_pred, test_label} (CPU tensors) at the
            stop, and at every slow checkpoint with ``ckpt_save_pred``.
    """

    checkpoints: list[dict]
    stop_reason: str
    params: dict[str, Tensor]
    kernels: list[dict] = field(default_factory=list)
    predictions: list[dict] = field(default_factory=list)


def regularizer_term(name: str | None, scale: float) -> Callable | None:
    """The penalty R(leaves, pred) added to the objective for ``regularizer`` (module docstring); None for none."""
    if name is None:
        return None
    if name == "l2":
        return lambda leaves, pred, loss: 0.5 * scale * sum((v ** 2).sum() for v in leaves.values())
    if name == "l1":
        return lambda leaves, pred, loss: scale * sum(v.abs().sum() for v in leaves.values())

    def grad_norm2(leaves, pred, loss):
        target = loss if name == "norm_grad_loss" else pred.mean()
        grads = torch.autograd.grad(target, list(leaves.values()), create_graph=True)
        return scale * sum((g ** 2).sum() for g in grads)

    return grad_norm2


def loss_and_grad(f, lossf, params, x, y, out0, extra=None, regu=None) -> tuple[float, dict[str, Tensor]]:
    """Mean α-loss of the centred prediction on (x, y) and its gradient in ``params``.

    ``extra(pred, per_sample_loss)`` and ``regu(leaves, pred, loss)`` are added to the objective
    (not to the returned loss).
    """
    leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    with torch.enable_grad():
        pred = f(leaves, x) - out0  # (B,)
        per_sample = lossf(pred, y)
        loss = per_sample.mean()
        objective = loss if extra is None else loss + extra(pred, per_sample)
        if regu is not None:
            objective = objective + regu(leaves, pred, loss)
        grads = torch.autograd.grad(objective, list(leaves.values()))
    return float(loss.detach()), dict(zip(leaves, grads))


def unfit_first_batch(pred: Tensor, y: Tensor, alpha: float, perm: Tensor, bs: int) -> Tensor:
    """sgd_only_unfit's batch: the first ``bs`` of the permutation ``perm`` with the unfitted
    points (α·pred·y < 1) moved to the front, so fitted points only top up a short batch."""
    unfit = (alpha * pred * y < 1)[perm]
    return torch.cat([perm[unfit], perm[~unfit]])[:bs]


def gd_sde_gradient(f, lossf, params, x, y, out0, bs: int, zeta: Tensor, noise: str = "original",
                    regu=None) -> tuple[float, dict[str, Tensor]]:
    """Full-batch gradient on the n points (x, y) plus the noise of ``noise`` for given ζ (n,).

    ``original``: σ ∇_w (1/n) Σ_i ζ_i f(w, x_i), σ² = max(0, 1/bs − 1/n) Σ_i ℓ'_i².
    ``minibatch``: c Σ_i (ζ_i − ζ̄) g_i with c² = max(0, n − bs) / (bs (n − 1) n), so for ζ ~ N(0, I)
    Cov ξ is exactly the covariance of the mean gradient over ``bs`` of the n points drawn
    without replacement.
    """
    n = x.shape[0]
    if noise not in SDE_NOISES:
        raise ValueError(f"sde_noise must be one of {SDE_NOISES}; got {noise!r}")

    def extra(pred, per_sample):
        (dl,) = torch.autograd.grad(per_sample.sum(), pred, retain_graph=True)  # ℓ'_i
        dl = dl.detach()
        if noise == "original":
            sigma = math.sqrt(max(0.0, 1.0 / bs - 1.0 / n) * float((dl ** 2).sum()))
            return sigma * (zeta * pred).mean()  # ∇ pred = ∇ f: f(w₀, x) is a constant
        c = math.sqrt(max(0, n - bs) / (bs * (n - 1) * n)) if n > 1 else 0.0
        return (c * (zeta - zeta.mean()) * dl * pred).sum()

    return loss_and_grad(f, lossf, params, x, y, out0, extra=extra, regu=regu)


def _chunked(f, params, x, chunk):
    return torch.cat([f(params, x[i:i + chunk]) for i in range(0, x.shape[0], chunk)])


def train_regimes(
    model: nn.Module,
    params0: dict[str, Tensor],
    data: BinaryDataset,
    config: RegimesConfig,
    gen: torch.Generator,
    callback: Callable[[dict], None] | None = None,
) -> RegimesRun:
    """Train f(w, x) = functional_call(model, w, (x,)) from ``params0`` under ``config``.

    Args:
        model: the architecture (its own parameters are not used); outputs (N,).
        params0: initial parameters w₀ (not modified).
        data: training and test sets, on the device and dtype of ``params0``.
        config: alpha, loss, dynamics, dt, bs, stopping and checkpoint settings.
        gen: generator for batches and noise, on the data's device.
        callback: called with every checkpoint record as soon as it is taken.

    Returns:
        A ``RegimesRun``; a non-finite loss ends training with stop_reason 'diverged'.

    Raises:
        ValueError: bs > P.
    """
    cfg = config
    xtr, ytr, xte, yte = data.xtr, data.ytr, data.xte, data.yte
    P, B = xtr.shape[0], cfg.bs
    if B > P:
        raise ValueError(f"bs must be <= ptr ({P}); got {B}")
    lossf = alpha_loss(cfg.loss, cfg.alpha)

    def f(params, x):
        return functional_call(model, params, (x,))

    wall0 = time.perf_counter()
    w0 = {k: v.detach().clone() for k, v in params0.items()}
    with torch.no_grad():
        out0tr, out0te = _chunked(f, w0, xtr, cfg.eval_chunk), _chunked(f, w0, xte, cfg.eval_chunk)

    def evaluate(params, x, y, out0) -> dict:
        with torch.no_grad():
            pred = _chunked(f, params, x, cfg.eval_chunk) - out0  # (N,)
        margin = pred * y
        return {
            "loss": float(lossf(pred, y).mean()),
            "err": float(((margin <= 0) | ~torch.isfinite(pred)).double().mean()),
            "margin_min": float(cfg.alpha * margin.min()),
            "unfit": int((cfg.alpha * margin < 1).sum()),
        }

    def full_grad_norm(params) -> float:
        total = None
        for i in range(0, P, cfg.eval_chunk):
            sl = slice(i, i + cfg.eval_chunk)
            _, g = loss_and_grad(f, lossf, params, xtr[sl], ytr[sl], out0tr[sl])
            part = {k: v * (xtr[sl].shape[0] / P) for k, v in g.items()}
            total = part if total is None else {k: total[k] + part[k] for k in total}
        return float(torch.sqrt(sum((v.double() ** 2).sum() for v in total.values())))

    def step(params):
        """One update; returns (new params, loss before it: the batch's, or the full loss when known)."""
        if cfg.dynamics == "gd" or (cfg.dynamics == "sgd" and B == P):
            loss, g = loss_and_grad(f, lossf, params, xtr, ytr, out0tr)
        elif cfg.dynamics == "sgd":
            idx = torch.randperm(P, generator=gen, device=gen.device)[:B]
            loss, g = loss_and_grad(f, lossf, params, xtr[idx], ytr[idx], out0tr[idx])
        elif cfg.dynamics == "sgd_only_unfit":
            with torch.no_grad():
                pred = f(params, xtr) - out0tr
            loss = float(lossf(pred, ytr).mean())
            idx = unfit_first_batch(pred, ytr, cfg.alpha, torch.randperm(P, generator=gen, device=gen.device), B)
            _, g = loss_and_grad(f, lossf, params, xtr[idx], ytr[idx], out0tr[idx])
        else:  # gd_sde
            zeta = torch.randn(P, generator=gen, device=gen.device, dtype=xtr.dtype)
            loss, g = gd_sde_gradient(f, lossf, params, xtr, ytr, out0tr, B, zeta)
        with torch.no_grad():
            return {k: v - cfg.dt * g[k] for k, v in params.items()}, loss

    ntk_n_tr = min(cfg.ckpt_grad_stats, P)
    ntk_n_te = min(cfg.ckpt_grad_stats, xte.shape[0])
    kernels0 = {}
    kept: list[dict] = []

    def ntk_observables(params, step_i) -> dict | None:
        if cfg.ckpt_grad_stats == 0:
            return None
        out = {}
        grams = {}
        for split, x, y, n in (("train", xtr, ytr, ntk_n_tr), ("test", xte, yte, ntk_n_te)):
            K = empirical_ntk(model, params, x[:n], method=cfg.ntk_method).detach()  # (n, n)
            kernels0.setdefault(split, K)
            out[split] = kernel_observables(K, y[:n], kernels0[split])
            grams[split] = K.cpu()
        if cfg.ckpt_kernels:
            kept.append({"step": step_i, **grams})
        return out

    def weights(params) -> dict:
        layers = {k: {"norm": float(v.double().norm()), "delta": float((v - w0[k]).double().norm())}
                  for k, v in params.items()}
        return {
            "norm": math.sqrt(sum(r["norm"] ** 2 for r in layers.values())),
            "delta": math.sqrt(sum(r["delta"] ** 2 for r in layers.values())),
            "layers": layers,
        }

    checkpoints: list[dict] = []

    def checkpoint(params, step_i, trigger, train_eval, slow) -> None:
        record = {
            "step": step_i,
            "t": step_i * cfg.dt,
            "trigger": trigger,
            "train": {**train_eval, "grad_norm": full_grad_norm(params) if math.isfinite(train_eval["loss"]) else math.nan},
            "test": evaluate(params, xte, yte, out0te),
            "weights": weights(params),
            "ntk": ntk_observables(params, step_i) if slow and math.isfinite(train_eval["loss"]) else None,
        }
        record["wall"] = time.perf_counter() - wall0
        checkpoints.append(record)
        if callback is not None:
            callback(record)

    params = {k: v.detach().clone() for k, v in params0.items()}
    first = evaluate(params, xtr, ytr, out0tr)
    l0 = first["loss"]
    fast = LossLadder(fast_ladder(cfg.ckpt_modulo) * l0, l0)
    slow_rungs = LossLadder(slow_ladder() * l0, l0)
    checkpoint(params, 0, "start", first, slow=True)

    exact_tracking = cfg.dynamics != "sgd" or B == P
    eval_every = FULL_BATCH_EVAL_EVERY if exact_tracking else math.ceil(P / B)
    tracked, since_eval, step_i = l0, 0, 0
    while True:
        params, batch_loss = step(params)
        step_i += 1
        since_eval += 1
        tracked = batch_loss if exact_tracking else ((P - B) * tracked + B * batch_loss) / P
        early = step_i <= cfg.ckpt_save_mult and step_i & (step_i - 1) == 0
        out_of_time = time.perf_counter() - wall0 > cfg.max_wall
        at_max = cfg.max_step is not None and step_i >= cfg.max_step
        if not (early or out_of_time or at_max or since_eval >= eval_every
                or fast.outside(tracked) or not math.isfinite(tracked)):
            continue
        since_eval = 0
        ev = evaluate(params, xtr, ytr, out0tr)
        reason = _stop_reason(ev, cfg, out_of_time, at_max)
        crossed = fast.update(ev["loss"])
        if crossed or early or reason:
            slow = slow_rungs.update(ev["loss"]) or early or reason is not None
            trigger = "stop" if reason else ("early" if early and not crossed else "ladder")
            checkpoint(params, step_i, trigger, ev, slow)
        tracked = ev["loss"]
        if reason:
            return RegimesRun(checkpoints, reason, params, kept)


def _stop_reason(ev: dict, cfg: RegimesConfig, out_of_time: bool, at_max: bool) -> str | None:
    if not math.isfinite(ev["loss"]):
        return "diverged"
    if ev["loss"] == 0.0:
        return "zero_loss"
    if cfg.mind_stop is not None and ev["margin_min"] >= cfg.mind_stop:
        return "mind_stop"
    if at_max:
        return "max_step"
    if out_of_time:
        return "max_wall"
    return None


def flat_metrics(record: dict) -> dict[str, float]:
    """A checkpoint record as namespaced scalars: ``train/loss``, ``test/err``, ``time/t``,
    ``weights/delta``, ``weights/norm/<param>``, ``ntk/train/rel_change``, ``ntk/test/eig_0``, ..."""
    out = {"time/t": record["t"], "time/wall": record["wall"]}
    for split in ("train", "test"):
        out.update({f"{split}/{k}": v for k, v in record[split].items()})
    w = record["weights"]
    out["weights/norm"], out["weights/delta"] = w["norm"], w["delta"]
    for name, r in w["layers"].items():
        out[f"weights/norm/{name}"], out[f"weights/delta/{name}"] = r["norm"], r["delta"]
    for split, obs in (record["ntk"] or {}).items():
        for k, v in obs.items():
            if k == "eigenvalues":
                out.update({f"ntk/{split}/eig_{i}": e for i, e in enumerate(v)})
            else:
                out[f"ntk/{split}/{k}"] = v
    return {k: float(v) for k, v in out.items()}
