"""Validation of an ``expt_basis_decomposition`` config: every key checked before any data is loaded.

``validate`` returns what the run derives from the config (input shape, learning-rate
schedule, the ``k_M`` loss weights, the most basis functions the run can have, the device);
the checks are :mod:`core.checks`' and their messages name the key (docs/basis_decomposition.md).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from core import checks
from core.checks import CheckError
from core.runtime import resolve_device
from data.vision import DATASETS
from dynamics.schedules import OPTIMIZERS, LRSchedule, make_loss
from models.basis_nets import InputShape, check_model_name, check_width, feature_dim

DATA = ("mnist", "cifar10", "cifar100")
LOG_LEVELS = ("essential", "detail")
FLAGS = ("normalize", "augment", "drop_last", "record_epoch_ends", "gradient", "small_init", "grad_indep",
         "beta_domin")
RERUN_KEYS = ("every", "iterations", "num_basis")


class Checked(NamedTuple):
    """What validate() derives from the config."""

    shape: InputShape
    schedule: LRSchedule
    k_M: tuple[float, float] | None
    max_basis: int  # min(C, p[, N]): the most basis functions the run can have
    device: torch.device


def _k_M(k_M, loss_fn: str) -> tuple[float, float] | None:
    """The [k, M] weights of the scaled MSE as floats (k >= 0, M any finite number); None stays None."""
    if k_M is None:
        return None
    if loss_fn != "mse_loss":
        raise ValueError(f"k_M applies to loss_fn='mse_loss' only; got k_M={k_M!r} with loss_fn={loss_fn!r}")
    if not isinstance(k_M, (list, tuple)) or len(k_M) != 2:
        raise CheckError("k_M", "None or a list [k, M]", k_M)
    return checks.number("k_M[0] (k)", k_M[0], lo=0), checks.number("k_M[1] (M)", k_M[1])


def _schedule(config: dict) -> LRSchedule:
    lr = config["lr_setting"]
    if not isinstance(lr, (list, tuple)) or len(lr) != 3:
        raise CheckError("lr_setting", "a list [lr_max, epoch_warm, lr_warm] of length 3", lr)
    warm = lr[1]
    if isinstance(warm, float) and warm.is_integer():
        warm = int(warm)  # train.py read every entry as a float
    return LRSchedule(lr_max=lr[0], epoch_warm=warm, lr_warm=lr[2], decay_rate=config["decay_rate"],
                      decay_stepsize=config["decay_stepsize"], scheduler=config["scheduler"],
                      unit=config["schedule_unit"])


def _recording(config: dict) -> None:
    checks.integer("early_points", config["early_points"], lo=0)
    checks.integer("record_every", config["record_every"], none_ok=True)
    checks.integer("record_first", config["record_first"], lo=1, none_ok=True)
    checks.integer("record_until", config["record_until"], lo=0, none_ok=True)
    if config["record_first"] is not None and config["record_every"] is None:
        raise ValueError(f"record_first needs record_every; got record_first={config['record_first']} "
                         "with record_every=None")
    checks.number("saturation_level", config["saturation_level"], lo=0, hi=1, strict=True)
    checks.one_of("log", config["log"], LOG_LEVELS)


def _basis_counts(config: dict, shape: InputShape) -> int:
    """Check n_basis and rerun_config against min(C, p[, N]); return that bound."""
    p = feature_dim(config["model"], shape, config["width"])
    eval_points = config["eval_points"]
    max_basis = int(min(shape.num_classes, p, eval_points or math.inf))
    n_basis = checks.integer("n_basis", config["n_basis"])
    if n_basis > max_basis:
        limit = f"number of classes {shape.num_classes}, feature dim p = {p}"
        limit += f", eval_points {eval_points}" if eval_points else ""
        raise CheckError("n_basis", f"<= min({limit}) = {max_basis}", n_basis)
    rerun = dict(config["rerun_config"])
    if set(rerun) != set(RERUN_KEYS):
        raise ValueError(f"rerun_config must have exactly the entries {list(RERUN_KEYS)}; got {sorted(rerun)}")
    checks.integer("rerun_config.iterations", rerun["iterations"])
    checks.integer("rerun_config.every", rerun["every"])
    num = checks.integer("rerun_config.num_basis", rerun["num_basis"], lo=2)
    if (config["grad_indep"] or config["beta_domin"]) and num > max_basis:
        raise CheckError("rerun_config.num_basis", f"<= {max_basis} (min of classes, p, eval_points)", num)
    return max_basis


def validate(config: dict) -> Checked:
    """Check every user-facing key before any compute (data, model weights, training)."""
    check_model_name(config["model"])
    check_width(config["width"])
    checks.number("init_scale", config["init_scale"], lo=0)
    spec = DATASETS[checks.one_of("data", config["data"], DATA)]
    shape = InputShape(spec.channels, spec.size, spec.num_classes)
    checks.integer("train_points", config["train_points"], none_ok=True)
    checks.integer("eval_points", config["eval_points"], none_ok=True)
    for key in FLAGS:
        checks.boolean(key, config[key])
    make_loss(config["loss_fn"])  # names loss_fn
    k_M = _k_M(config["k_M"], config["loss_fn"])
    checks.one_of("optimizer", config["optimizer"], OPTIMIZERS)
    checks.number("weight_decay", config["weight_decay"], lo=0, none_ok=True)
    checks.integer("batch_size", config["batch_size"])
    checks.integer("num_epoch", config["num_epoch"])
    schedule = _schedule(config)
    checks.number("grad_clip", config["grad_clip"], lo=0, strict=True, none_ok=True)
    _recording(config)
    checks.integer("num_run", config["num_run"], lo=0)
    checks.integer("eval_batch_size", config["eval_batch_size"])
    checks.integer("log_max_points", config["log_max_points"])
    max_basis = _basis_counts(config, shape)
    return Checked(shape, schedule, k_M, max_basis, resolve_device(config["device"]))
