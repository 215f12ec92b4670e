"""The SGD-regimes training engine (the original's ``edm/train.py:train``; Sclocchi, Geiger & Wyart).

The network f(w, x) is trained on pred = f(w, x) − f(w₀, x) with the α-scaled loss
ℓ(α·pred, y)/α (``dynamics.regimes_steps``): w ← w − dt ∇(L + R), T = dt / (bs·h).
Large α is the lazy regime (pred must only move by 1/α), small α feature learning.

Dynamics (``gen`` drives every random draw):

* ``sgd``: a fresh batch of ``bs`` distinct points every step.
* ``sgd_only_unfit``: the batch is drawn among the points with α·pred·y < 1, topped up
  with random fitted points when fewer than ``bs`` are unfitted.
* ``gd_sde``: the full-batch gradient plus Gaussian noise (``sde_noise``, see
  ``regimes_steps.gd_sde_gradient``): ``original`` σ² = (1/bs − 1/P)·Σℓ'² with noise over every
  point (default), or ``minibatch`` with exactly the covariance of a bs-batch mean gradient.
* ``gd_sde_only_unfit``: gd_sde on the n unfitted points only, P replaced by n (noise 0 when n <= bs).
* ``gd``: the full batch (the original reaches it as sgd with bs = P).

Checkpoints (``dynamics.regimes_ladders``, as in the original): when the training loss leaves
its bracket on the fast ladder of fractions of L₀, at the first and last step, and at the
log-spaced steps below ``ckpt_save_mult``. A checkpoint is *slow* when the slow ladder says so
(consulted at checkpoints only), at the start and at the stop; slow checkpoints add the NTK,
gradient statistics, train–test gradient overlaps, drifts and (``ckpt_save_pred``) predictions.
Between full evaluations the training loss is tracked by L̃ ← ((P − bs) L̃ + bs·L_batch)/P
(sgd, as the original) or by the exact loss of the previous step (the other dynamics); the
true loss is computed when L̃ leaves the bracket and at least once an epoch (sgd) or every
100 steps, and every stopping rule is checked then.

Training stops at zero training loss, for mse at α·L < 1e-9 (as the original),
at α·min_i(pred_i·y_i) >= ``mind_stop``, a non-finite loss (recorded as a divergence),
``max_wall`` seconds or ``max_step`` steps.
"""
from __future__ import annotations

import math
import time
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call

from data.regimes import BinaryDataset
from dynamics.engine import BoundaryAfter, StepOutput, chunked_outputs, run_steps
from dynamics.ntk import empirical_ntk, kernel_observables
from dynamics.regimes_config import DYNAMICS, STOP_REASONS, RegimesConfig, RegimesRun
from dynamics.regimes_drift import drifts
from dynamics.regimes_ladders import FastLadder, SlowLadder, fast_ladder, next_early_step, slow_ladder
from dynamics.regimes_observables import diagonal_observables, gradient_stats, linear_observables, prediction_stats
from dynamics.regimes_resume import (
    fast_state,
    records_from_state,
    records_to_state,
    restore_fast,
    restore_slow,
    slow_state,
)
from dynamics.regimes_steps import (
    LOSSES,
    REGULARIZERS,
    SDE_NOISES,
    alpha_loss,
    flatten,
    gd_sde_gradient,
    loss_and_grad,
    regularizer_term,
    unfit_first_batch,
)

__all__ = ["DYNAMICS", "LOSSES", "REGULARIZERS", "SDE_NOISES", "STOP_REASONS", "RegimesConfig", "RegimesRun",
           "alpha_loss", "flat_metrics", "gd_sde_gradient", "loss_and_grad", "train_regimes", "unfit_first_batch",
           "fast_ladder", "slow_ladder"]

MSE_STOP = 1e-9  # the original stops an mse run once α·L < this
FULL_BATCH_EVAL_EVERY = 100  # steps between full evaluations when the tracked loss is exact


def _chunked(f, params, x, chunk):
    return chunked_outputs(lambda xb: f(params, xb), x, chunk)  # (N,), without gradients


def _abs_summary(delta: Tensor) -> dict[str, float]:
    a = delta.abs().double()
    return {"min": float(a.min()), "max": float(a.max()), "median": float(a.quantile(0.5))}


def train_regimes(
    model: nn.Module,
    params0: dict[str, Tensor],
    data: BinaryDataset,
    config: RegimesConfig,
    gen: torch.Generator,
    callback: Callable[[dict], None] | None = None,
    teacher: Tensor | None = None,
    diag_power: int | None = None,
    boundary: Callable[[int, Callable[[], dict]], None] | None = None,
    resume: dict | None = None,
) -> RegimesRun:
    """Train f(w, x) = functional_call(model, w, (x,)) from ``params0`` under ``config``.

    Args:
        model: the architecture (its own parameters are not used); outputs (N,).
        params0: initial parameters w₀ (not modified).
        data: training and test sets, on the device and dtype of ``params0``.
        config: alpha, loss, dynamics, dt, bs, stopping and checkpoint settings.
        gen: generator for batches and noise, on the data's device.
        callback: called with every checkpoint record as soon as it is taken.
        teacher: the unit teacher (d,) of a perceptron (one weight tensor): adds its
            ``linear_observables`` to every checkpoint, as the original does for arch linear.
        diag_power: with ``teacher``, the model is simple_diagonal_linear with effective weights
            w^diag_power: records ``diagonal_observables`` as ``diag_lin`` instead (the original's record).
        boundary: called as ``boundary(steps_done, capture)`` after every step (tracking.preempt's
            step boundary); ``capture()`` returns the loop's whole state.
        resume: such a state: training goes on from it (the records before it are not re-sent to
            ``callback``). Wall time counts on from the state's elapsed training time, so
            ``max_wall`` and the ``wall`` fields sum the segments and exclude the time in between.

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
    regu = regularizer_term(cfg.regularizer, cfg.regu_scale)

    def f(params, x):
        return functional_call(model, params, (x,))

    wall0 = time.perf_counter()
    w0 = {k: v.detach().clone() for k, v in params0.items()}
    with torch.no_grad():
        out0tr, out0te = _chunked(f, w0, xtr, cfg.eval_chunk), _chunked(f, w0, xte, cfg.eval_chunk)

    def evaluate(params, x, y, out0) -> tuple[dict, Tensor]:
        with torch.no_grad():
            pred = _chunked(f, params, x, cfg.eval_chunk) - out0  # (N,)
        margin = pred * y
        loss = float(lossf(pred, y).mean())
        return {
            "loss": loss,
            "aloss": cfg.alpha * loss,
            "err": float((margin <= 0).double().mean()),
            "margin_min": float(cfg.alpha * margin.min()),
            "unfit": int((cfg.alpha * margin < 1).sum()),
            **prediction_stats(pred, y, cfg.alpha),
        }, pred

    def full_grad(params) -> dict[str, Tensor]:
        total = None
        for i in range(0, P, cfg.eval_chunk):
            sl = slice(i, i + cfg.eval_chunk)
            _, g = loss_and_grad(f, lossf, params, xtr[sl], ytr[sl], out0tr[sl])
            part = {k: v * (xtr[sl].shape[0] / P) for k, v in g.items()}
            total = part if total is None else {k: total[k] + part[k] for k in total}
        return total

    def gradient(params, generator) -> tuple[dict[str, Tensor], float]:
        """The update direction (dt·it is subtracted) and the loss before it: the batch's, or the full loss."""
        if cfg.dynamics == "gd" or (cfg.dynamics == "sgd" and B == P):
            loss, g = loss_and_grad(f, lossf, params, xtr, ytr, out0tr, regu=regu)
        elif cfg.dynamics == "sgd":
            idx = torch.randperm(P, generator=generator, device=generator.device)[:B]
            loss, g = loss_and_grad(f, lossf, params, xtr[idx], ytr[idx], out0tr[idx], regu=regu)
        elif cfg.dynamics == "sgd_only_unfit":
            with torch.no_grad():
                pred = f(params, xtr) - out0tr
            loss = float(lossf(pred, ytr).mean())
            perm = torch.randperm(P, generator=generator, device=generator.device)
            idx = unfit_first_batch(pred, ytr, cfg.alpha, perm, B)
            _, g = loss_and_grad(f, lossf, params, xtr[idx], ytr[idx], out0tr[idx], regu=regu)
        elif cfg.dynamics == "gd_sde":
            zeta = torch.randn(P, generator=generator, device=generator.device, dtype=xtr.dtype)
            loss, g = gd_sde_gradient(f, lossf, params, xtr, ytr, out0tr, B, zeta, cfg.sde_noise, regu)
        else:  # gd_sde_only_unfit
            with torch.no_grad():
                pred = f(params, xtr) - out0tr
            loss = float(lossf(pred, ytr).mean())
            idx = torch.nonzero(cfg.alpha * pred * ytr < 1).flatten()
            zeta = torch.randn(idx.shape[0], generator=generator, device=generator.device, dtype=xtr.dtype)
            _, g = gd_sde_gradient(f, lossf, params, xtr[idx], ytr[idx], out0tr[idx], B, zeta, cfg.sde_noise, regu)
        return g, loss

    n_tr, n_te = min(cfg.ckpt_grad_stats, P), min(cfg.ckpt_grad_stats, xte.shape[0])
    kernels0: dict[str, Tensor] = {}
    kept: list[dict] = []

    def slow_observables(params, step_i) -> dict:
        """NTK observables, gradient statistics and their train–test overlaps (ckpt_grad_stats > 0)."""
        ntk, grads, means, grams = {}, {}, {}, {}
        for split, x, y, out0, n in (("train", xtr, ytr, out0tr, n_tr), ("test", xte, yte, out0te, n_te)):
            K = empirical_ntk(model, params, x[:n], method=cfg.ntk_method).detach()  # (n, n)
            kernels0.setdefault(split, K)
            ntk[split] = kernel_observables(K, y[:n], kernels0[split])
            grams[split] = K.cpu()
            grads[split], g_f, g_l = gradient_stats(model, params, x[:n], y[:n], out0[:n], lossf)
            means[split] = (g_f.double(), g_l.double())
        if cfg.ckpt_kernels:
            kept.append({"step": step_i, **grams})
        overlap = {"grad_f_overlap": float(means["train"][0] @ means["test"][0]),
                   "grad_l_overlap": float(means["train"][1] @ means["test"][1])}
        return {"ntk": ntk, "grads": grads, "train_test": overlap}

    def delta_pred(params) -> dict:
        """One step of the dynamics from ``params`` on a copy of the generator (training is unaffected)."""
        probe = torch.Generator(device=gen.device)
        probe.set_state(gen.get_state())
        g, _ = gradient(params, probe)
        moved = {k: v - cfg.dt * g[k] for k, v in params.items()}
        with torch.no_grad():
            return {split: _abs_summary(_chunked(f, moved, x, cfg.eval_chunk) - _chunked(f, params, x, cfg.eval_chunk))
                    for split, x in (("train", xtr), ("test", xte))}

    def weights(params) -> dict:
        layers = {k: {"norm": float(v.double().norm()), "delta": float((v - w0[k]).double().norm())}
                  for k, v in params.items()}
        return {
            "norm": math.sqrt(sum(r["norm"] ** 2 for r in layers.values())),
            "delta": math.sqrt(sum(r["delta"] ** 2 for r in layers.values())),
            "layers": layers,
        }

    checkpoints: list[dict] = []
    predictions: list[dict] = []
    parameters: list[dict] = []
    state = {"tot_grad": None, "g_norm": 0.0}

    def checkpoint(params, step_i, trigger, train_eval, pred_tr, slow, stop) -> None:
        finite = math.isfinite(train_eval["loss"])
        test_eval, pred_te = evaluate(params, xte, yte, out0te)
        record = {
            "step": step_i,
            "t": step_i * cfg.dt,
            "trigger": trigger,
            "slow": slow,
            "train": {**train_eval, "g_norm": state["g_norm"],
                      "grad_norm": float(flatten(full_grad(params)).double().norm()) if finite else math.nan},
            "test": test_eval,
            "weights": weights(params),
            "ntk": None, "grads": None, "train_test": None, "drift": None, "delta_pred": None, "linear": None,
            "diag_lin": None,
        }
        if slow and finite and cfg.ckpt_grad_stats:
            record.update(slow_observables(params, step_i))
        if slow and finite and cfg.ckpt_drift:
            probe = torch.Generator(device=gen.device)  # a copy: the drift batches leave training's draws alone
            probe.set_state(gen.get_state())
            perm = torch.randperm(P, generator=probe, device=gen.device)
            record["drift"] = drifts(f, lossf, params, xtr, ytr, out0tr, cfg.dt, B, cfg.ckpt_drift_n0, perm,
                                     cfg.gf_tol, cfg.gf_mindt, cfg.gf_maxdt, cfg.gf_first_stage)
        if cfg.ckpt_delta_pred and finite:
            record["delta_pred"] = delta_pred(params)
        if teacher is not None and diag_power is not None:
            record["diag_lin"] = diagonal_observables(flatten(params), flatten(w0), teacher, diag_power)
        elif teacher is not None:
            record["linear"] = linear_observables(flatten(params), flatten(w0), teacher, xtr, ytr, pred_tr, cfg.alpha)
        if stop or (cfg.ckpt_save_pred and slow):
            predictions.append({"step": step_i, "train_pred": pred_tr.cpu(), "train_label": ytr.cpu(),
                                "test_pred": pred_te.cpu(), "test_label": yte.cpu()})
        if cfg.ckpt_save_parameters and (step_i == 0 or stop):
            parameters.append({"step": step_i, "params": {k: v.detach().cpu().clone() for k, v in params.items()}})
        if cfg.ckpt_save_gradoverlap and finite:
            n = max(1, n_tr)
            state["tot_grad"] = flatten(loss_and_grad(f, lossf, params, xtr[:n], ytr[:n], out0tr[:n])[1]).double()
        state["g_norm"] = 0.0
        record["wall"] = time.perf_counter() - wall0
        checkpoints.append(record)
        if callback is not None:
            callback(record)

    if resume is None:
        params = {k: v.detach().clone() for k, v in params0.items()}
        first, pred_tr = evaluate(params, xtr, ytr, out0tr)
        l0 = first["loss"]
        ladder_dtype = np.float32 if xtr.dtype in (torch.float32, torch.float16, torch.bfloat16) else np.float64
        fast = FastLadder(fast_ladder(cfg.ckpt_modulo, ladder_dtype) * l0, l0)
        slow_rungs = SlowLadder(slow_ladder(ladder_dtype) * l0, l0, cfg.ckpt_save_mult)
        slow_rungs.due(l0, 0)
        checkpoint(params, 0, "start", first, pred_tr, slow=True, stop=False)
        early_at = next_early_step(0, cfg.ckpt_save_mult)
        tracked, since_eval, step_i = l0, 0, 0
    else:
        dev = xtr.device
        params = {k: v.to(device=dev) for k, v in resume["params"].items()}
        gen.set_state(resume["gen"])
        fast, slow_rungs = restore_fast(resume["fast"]), restore_slow(resume["slow"])
        early_at, tracked = resume["early_at"], resume["tracked"]
        since_eval, step_i = resume["since_eval"], resume["step"]
        state["g_norm"] = resume["g_norm"]
        state["tot_grad"] = None if resume["tot_grad"] is None else resume["tot_grad"].to(dev)
        checkpoints[:] = records_from_state(resume["records"])
        predictions[:], parameters[:], kept[:] = resume["predictions"], resume["parameters"], resume["kept"]
        kernels0.update({k: v.to(dev) for k, v in resume["kernels0"].items()})
        # training time so far; the gap before the resume is not counted
        wall0 = time.perf_counter() - resume["elapsed"]

    def capture() -> dict:
        """The loop's state after ``step_i`` steps (CPU copies are made by torch.save)."""
        return {"step": step_i, "since_eval": since_eval, "tracked": tracked, "early_at": early_at,
                "params": params, "gen": gen.get_state(), "fast": fast_state(fast), "slow": slow_state(slow_rungs),
                "g_norm": state["g_norm"], "tot_grad": state["tot_grad"], "records": records_to_state(checkpoints),
                "predictions": predictions, "parameters": parameters, "kept": kept, "kernels0": kernels0,
                "elapsed": time.perf_counter() - wall0}

    def step_fn(_: int) -> StepOutput:
        """One step of the dynamics; non-finite losses are a stop reason here, not an error (loss None)."""
        nonlocal params, step_i, since_eval, tracked, early_at
        g, batch_loss = gradient(params, gen)
        with torch.no_grad():
            if state["tot_grad"] is not None:
                state["g_norm"] += float(state["tot_grad"] @ (-cfg.dt * flatten(g)).double())
            params = {k: v - cfg.dt * g[k] for k, v in params.items()}
        step_i += 1
        since_eval += 1
        tracked = batch_loss if exact_tracking else ((P - B) * tracked + B * batch_loss) / P
        early = early_at is not None and step_i >= early_at
        out_of_time = time.perf_counter() - wall0 > cfg.max_wall
        at_max = cfg.max_step is not None and step_i >= cfg.max_step
        if (early or out_of_time or at_max or since_eval >= eval_every or fast.outside(tracked)
                or not math.isfinite(tracked)):
            since_eval = 0
            ev, pred_tr = evaluate(params, xtr, ytr, out0tr)
            reason = _stop_reason(ev, cfg, out_of_time, at_max)
            crossed = fast.update(ev["loss"])
            if crossed or early or reason:
                slow = slow_rungs.due(ev["loss"], step_i) or reason is not None
                trigger = "stop" if reason else ("early" if early and not crossed else "ladder")
                checkpoint(params, step_i, trigger, ev, pred_tr, slow, stop=reason is not None)
                early_at = next_early_step(step_i, cfg.ckpt_save_mult)
            tracked = ev["loss"]
            if reason:
                finished.append(RegimesRun(checkpoints, reason, params, kept, predictions, parameters))
                return StepOutput(None, stop=True)
        return StepOutput(None)

    exact_tracking = cfg.dynamics != "sgd" or B == P
    eval_every = FULL_BATCH_EVAL_EVERY if exact_tracking else math.ceil(P / B)
    finished: list[RegimesRun] = []  # the run, once a stopping rule fires
    callbacks = [] if boundary is None else [BoundaryAfter(boundary, (capture,))]
    run_steps(step_fn, step_i, None, callbacks)
    return finished[0]


def _stop_reason(ev: dict, cfg: RegimesConfig, out_of_time: bool, at_max: bool) -> str | None:
    if not math.isfinite(ev["loss"]):
        return "diverged"
    if ev["loss"] == 0.0:
        return "zero_loss"
    if cfg.loss == "mse" and cfg.alpha * ev["loss"] < MSE_STOP:
        return "mse_converged"
    if cfg.mind_stop is not None and ev["margin_min"] >= cfg.mind_stop:
        return "mind_stop"
    if at_max:
        return "max_step"
    if out_of_time:
        return "max_wall"
    return None


def flat_metrics(record: dict) -> dict[str, float]:
    """A checkpoint record as namespaced scalars: ``train/loss``, ``test/err``, ``time/t``,
    ``weights/delta``, ``weights/norm/<param>``, ``ntk/train/rel_change``, ``ntk/test/eig_0``,
    ``grads/train/grad_l_norm``, ``train_test/grad_l_overlap``, ``drift/gd_gf``,
    ``delta_pred/train/median``, ``linear/w_para``, ..."""
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
    for split, obs in (record["grads"] or {}).items():
        out.update({f"grads/{split}/{k}": v for k, v in obs.items()})
    out.update({f"train_test/{k}": v for k, v in (record["train_test"] or {}).items()})
    for k, per_param in (record["drift"] or {}).items():
        if per_param is not None:
            out[f"drift/{k}"] = sum(per_param.values())
    for split, obs in (record["delta_pred"] or {}).items():
        out.update({f"delta_pred/{split}/{k}": v for k, v in obs.items()})
    out.update({f"linear/{k}": v for k, v in (record["linear"] or {}).items()})
    out.update({f"diag_lin/{k}": v for k, v in (record["diag_lin"] or {}).items()})
    return {k: float(v) for k, v in out.items()}
