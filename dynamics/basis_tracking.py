"""What the basis experiments record along a training run (docs/basis_decomposition.md).

* :func:`record_training`: train, keeping the eval outputs F_t (N, C) at given times
  (and a checkpoint per time), plus per-epoch training curves;
* :func:`checkpoint_gradients`: ∇_θ β_i(θ_t) from those checkpoints;
* :func:`gradients_along_run`: β_i and ∇_θ β_i of a fixed basis evaluated before the
  steps t = 0, every, 2·every, ... < iterations of a run (grad_indep.py and
  beta_domin.py, which evaluate before each of the first 10 / 400 steps).

All gradients are taken with the network in eval mode, as the original scripts do.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from dynamics.basis import ConjugateKernelBasis, beta_gradients
from dynamics.basis_training import Step, Trainer, eval_outputs
from llc.estimate import flat_model_for_module

LogScalar = Callable[[str, float, int], None]  # (name, value, step), e.g. Sacred's _run.log_scalar


@dataclass
class Recording:
    """Pass 1 of a run: outputs at the recording times and per-epoch curves."""

    F: list[Tensor] = field(default_factory=list)  # (N, C) float32 CPU, one per recording time
    eval_loss: list[float] = field(default_factory=list)
    eval_accuracy: list[float] = field(default_factory=list)
    train: dict[str, list[float]] = field(
        default_factory=lambda: {k: [] for k in ("loss", "accuracy", "grad_norm", "lr")})
    step_loss: list[float] = field(default_factory=list)


def checkpoint_path(ckpt_dir: str, t: int) -> str:
    return os.path.join(ckpt_dir, f"ckpt_{int(t):09d}.pt")


def recording_state(rec: Recording) -> dict:
    """A Recording in checkpointable types (tensors, lists of floats)."""
    return {"F": list(rec.F), "eval_loss": rec.eval_loss, "eval_accuracy": rec.eval_accuracy, "train": rec.train,
            "step_loss": rec.step_loss}


def record_training(trainer: Trainer, times: np.ndarray, xe: Tensor, ye: Tensor, chunk: int, log: LogScalar,
                    ckpt_dir: str | None = None, boundary: Callable[[int, Callable[[], dict]], None] | None = None,
                    resume: dict | None = None) -> Recording:
    """Train ``trainer`` for its whole run, recording F_t on xe at ``times`` (t = 0 included).

    Logs eval/loss and eval/accuracy at every recording, and train/{loss, accuracy,
    grad_norm, lr} at every epoch end (loss and grad_norm: means over the epoch's batches).
    ``boundary(t, capture)`` is called after every step (tracking.preempt); ``capture()``
    is the whole state (trainer, recordings, the epoch's running sums), which ``resume``
    takes back: training goes on from there without logging anything twice.
    """
    rec, spe, recorded = Recording(), trainer.steps_per_epoch, set(int(t) for t in times)
    epoch = dict(loss=0.0, correct=0, grad=0.0, n=0, images=0)
    if resume is not None:
        trainer.load_state(resume["trainer"])
        r = resume["recording"]
        rec = Recording(list(r["F"]), list(r["eval_loss"]), list(r["eval_accuracy"]),
                        {k: list(v) for k, v in r["train"].items()}, list(r["step_loss"]))
        epoch.update(resume["epoch"])

    def capture() -> dict:
        return {"trainer": trainer.state(), "recording": recording_state(rec), "epoch": dict(epoch)}

    def record(t):
        out = eval_outputs(trainer.net, xe, chunk)  # (N, C)
        rec.F.append(out.float().cpu())
        rec.eval_loss.append(float(trainer.loss_fn(out, ye)))
        rec.eval_accuracy.append(float((out.argmax(1) == ye).float().mean()))
        log("eval/loss", rec.eval_loss[-1], t)
        log("eval/accuracy", rec.eval_accuracy[-1], t)
        if ckpt_dir is not None:
            torch.save(trainer.net.state_dict(), checkpoint_path(ckpt_dir, t))

    def on_step(step: Step):
        for key, value in (("loss", step.loss), ("correct", step.correct), ("grad", step.grad_norm), ("n", 1),
                           ("images", step.size)):
            epoch[key] += value
        rec.step_loss.append(step.loss)
        if step.t % spe == 0:
            for name, value in (("loss", epoch["loss"] / epoch["n"]), ("accuracy", epoch["correct"] / epoch["images"]),
                                ("grad_norm", epoch["grad"] / epoch["n"]), ("lr", step.lr)):
                rec.train[name].append(value)
                log(f"train/{name}", value, step.t)
            epoch.update(loss=0.0, correct=0, grad=0.0, n=0, images=0)
        if step.t in recorded:
            record(step.t)

    if resume is None:
        record(0)
    trainer.run(trainer.total_steps, on_step, None if boundary is None else lambda t: boundary(t, capture))
    return rec


def checkpoint_gradients(net: torch.nn.Module, ckpt_dir: str, times, xe: Tensor, basis: ConjugateKernelBasis,
                         num: int, chunk: int, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """‖∇β_i(θ_t)‖ (T, num) and max_{i≠j} |cos(∇β_i, ∇β_j)| (T,) at the checkpoints of ``times``."""
    norms, max_cos = [], []
    for t in times:
        net.load_state_dict(torch.load(checkpoint_path(ckpt_dir, t), map_location=device, weights_only=True))
        net.eval()
        f, w = flat_model_for_module(net, torch.float32, device)
        g = beta_gradients(f, w, xe, basis, num, chunk)
        norms.append(g.norms.cpu().numpy())
        max_cos.append(g.max_offdiag_abs_cosine())
    return np.array(norms), np.array(max_cos)


def gradients_along_run(trainer: Trainer, xe: Tensor, basis: ConjugateKernelBasis, num: int, iterations: int,
                        every: int, chunk: int, device: torch.device) -> dict[str, np.ndarray]:
    """β_i and ∇β_i, i < num, before the steps t = 0, every, ... < iterations of ``trainer``'s run.

    Returns:
        times (R,), beta (R, num), grad_norms (R, num), cosines (R, num, num),
        max_abs_cos (R,) = max_{i≠j} |cos|, max_abs_cos_matrix (num, num) = max_t |cos|
        (grad_indep.py's figure) and num_points N.
    """
    times, betas, norms, cosines = [], [], [], []

    def evaluate(t):
        trainer.net.eval()
        f, w = flat_model_for_module(trainer.net, torch.float32, device)
        g = beta_gradients(f, w, xe, basis, num, chunk)
        times.append(t)
        betas.append(g.beta.cpu().numpy())
        norms.append(g.norms.cpu().numpy())
        cosines.append(g.cosines.cpu().numpy())

    evaluate(0)
    last = (iterations - 1) // every * every
    if last > 0:
        trainer.run(last, lambda step: evaluate(step.t) if step.t % every == 0 else None)
    cos = np.array(cosines)  # (R, num, num)
    return dict(times=np.array(times), beta=np.array(betas), grad_norms=np.array(norms), cosines=cos,
                max_abs_cos=np.abs(cos[:, ~np.eye(num, dtype=bool)]).max(axis=1),
                max_abs_cos_matrix=np.abs(cos).max(axis=0), num_points=np.array(xe.shape[0]))
