"""Settings and result of one SGD-regimes run (``dynamics.regimes_train.train_regimes``)."""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from core import checks
from dynamics.ntk import NTK_METHODS
from dynamics.regimes_drift import GF_FIRST_STAGES
from dynamics.regimes_steps import LOSSES, REGULARIZERS, SDE_NOISES

DYNAMICS = ("sgd", "sgd_only_unfit", "gd_sde", "gd_sde_only_unfit", "gd")
STOP_REASONS = ("diverged", "zero_loss", "mse_converged", "mind_stop", "max_step", "max_wall")


@dataclass(frozen=True)
class RegimesConfig:
    """One training run; the names, defaults and meanings are the original's ``python -m edm`` arguments.

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
        ckpt_save_mult: also checkpoint at steps 1, 2, 4, ... up to this (0: none).
        ckpt_grad_stats: train (and test) points for the NTK and gradient statistics (0: none).
        ckpt_kernels: keep the NTK Gram matrices of every slow checkpoint.
        ckpt_save_parameters: keep the parameters at the start and at the stop.
        ckpt_save_pred: keep predictions and labels at every slow checkpoint (the stop's are always kept).
        ckpt_save_gradoverlap: accumulate g_norm = Σ ∇L_n(w_c)·Δw over the steps since the last
            checkpoint c (L_n on the first ckpt_grad_stats training points; needs ckpt_grad_stats > 0).
        ckpt_delta_pred: at every checkpoint, min/max/median |Δf| of one extra step (not taken).
        ckpt_drift: at slow checkpoints, the drifts of ``dynamics.regimes_drift`` on ckpt_drift_n0 batches.
        gf_tol, gf_mindt, gf_maxdt: the gradient-flow integration of the drifts.
        gf_first_stage: ``dynamics.regimes_drift.GF_FIRST_STAGES``.
        ntk_method: one of ``dynamics.ntk.NTK_METHODS``.
        sde_noise: gd_sde's noise form, one of ``SDE_NOISES``.
        regularizer: one of ``REGULARIZERS`` or None; regu_scale its weight (>= 0).
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
    ckpt_save_parameters: bool = False
    ckpt_save_pred: bool = False
    ckpt_save_gradoverlap: bool = False
    ckpt_delta_pred: bool = False
    ckpt_drift: bool = False
    ckpt_drift_n0: int = 16
    gf_tol: float = 1e-5
    gf_mindt: float = 1e-10
    gf_maxdt: float = 1.0
    gf_first_stage: str = "fixed"
    ntk_method: str = "auto"
    sde_noise: str = "original"
    regularizer: str | None = None
    regu_scale: float = 0.0
    eval_chunk: int = 4096

    def __post_init__(self):
        for key in ("alpha", "dt", "max_wall", "gf_tol", "gf_mindt", "gf_maxdt"):
            checks.number(key, getattr(self, key), lo=0, strict=True)
        checks.number("mind_stop", self.mind_stop, none_ok=True)
        checks.number("regu_scale", self.regu_scale, lo=0)
        checks.integer("bs", self.bs, lo=1)
        checks.integer("max_step", self.max_step, lo=1, none_ok=True)
        checks.integer("ckpt_modulo", self.ckpt_modulo, lo=1)
        for key in ("ckpt_save_mult", "ckpt_grad_stats", "ckpt_drift_n0"):
            checks.integer(key, getattr(self, key), lo=0)
        checks.integer("eval_chunk", self.eval_chunk, lo=1)
        for key in ("ckpt_kernels", "ckpt_save_parameters", "ckpt_save_pred", "ckpt_save_gradoverlap",
                    "ckpt_delta_pred", "ckpt_drift"):
            checks.boolean(key, getattr(self, key))
        for key, allowed in (("loss", LOSSES), ("dynamics", DYNAMICS), ("sde_noise", SDE_NOISES),
                             ("regularizer", (None,) + REGULARIZERS), ("ntk_method", NTK_METHODS),
                             ("gf_first_stage", GF_FIRST_STAGES)):
            checks.one_of(key, getattr(self, key), allowed)
        if self.gf_mindt > self.gf_maxdt:
            raise ValueError(f"gf_mindt must be <= gf_maxdt; got {self.gf_mindt!r} > {self.gf_maxdt!r}")
        if self.ckpt_save_gradoverlap and self.ckpt_grad_stats == 0:
            raise ValueError("ckpt_save_gradoverlap needs ckpt_grad_stats > 0 (its gradient is taken on "
                             "the first ckpt_grad_stats training points); got ckpt_grad_stats=0")


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
        parameters: with ``ckpt_save_parameters``, {step, params} (CPU) at the start and the stop.
    """

    checkpoints: list[dict]
    stop_reason: str
    params: dict[str, Tensor]
    kernels: list[dict] = field(default_factory=list)
    predictions: list[dict] = field(default_factory=list)
    parameters: list[dict] = field(default_factory=list)
