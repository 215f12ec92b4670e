"""The optimisation recipe of train.py (docs/basis_decomposition.md): LR schedules, losses, optimizers.

Learning rate (``scheduler='default'``), at time t counted in epochs (train.py) or
iterations (grad_indep.py, beta_domin.py: StepLR stepped every iteration), with
lr_setting = (lr_max, t_warm, lr_warm):

    lr(t) = lr_warm + (lr_max − lr_warm) · t / t_warm                    t <  t_warm
    lr(t) = lr_max · decay_rate ^ ⌊(t − t_warm) / decay_stepsize⌋         t >= t_warm

The warm-up is linear and applied once: train.py built it as a LambdaLR whose
lambda returned the learning rate itself, so torch multiplied it by lr_max a
second time (lr(0) = lr_warm · lr_max). With t_warm = 0 there is no warm-up.

``scheduler='onecycle'`` (train.py's option for the ViT) is torch's OneCycleLR
with its defaults (cosine annealing, pct_start 0.3, div_factor 25,
final_div_factor 1e4), stepped every iteration over the whole run; train.py
stepped it once per epoch, so it never left the warm-up phase. Only the learning
rate cycles (no momentum cycling).

Losses are means over the batch (and, for MSE, over the C outputs):

    ce_loss:   mean_n −log softmax(out_n)[y_n]
    mse_loss:  mean_{n,c} (out_{nc} − onehot_{nc})²
    mse_loss with k_M = (k, M):  mean_{n,c} (k·onehot_{nc} + 1) · (out_{nc} − M·onehot_{nc})²

(train.py's CIFAR-100 loss; k = 0, M = 1 is the plain MSE.)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from core import checks
from dynamics.lars import LARS

SCHEDULERS = ("default", "onecycle")
SCHEDULE_UNITS = ("epoch", "iteration")
LOSSES = ("ce_loss", "mse_loss")
OPTIMIZERS = ("sgd", "lars", "lamb", "adamw")
MOMENTUM = 0.9  # sgd and lars (train.py)
# train.py's weight decay per optimizer: SGD and LARS 1e-4, LAMB none, AdamW torch's default
# (0.1 on weight matrices only for the ViT, set by the caller through param groups).
DEFAULT_WEIGHT_DECAY = {"sgd": 1e-4, "lars": 1e-4, "lamb": 0.0, "adamw": 0.01}
ONE_CYCLE = dict(pct_start=0.3, div_factor=25.0, final_div_factor=1e4)  # torch's OneCycleLR defaults


# --- learning-rate schedules ----------------------------------------------------------

def warmup_step_lr(t: int, lr_max: float, t_warm: int, lr_warm: float, decay_rate: float,
                   decay_stepsize: int) -> float:
    """Linear warm-up from lr_warm to lr_max over t_warm units, then step decay (module docstring)."""
    if t < t_warm:
        return lr_warm + (lr_max - lr_warm) * t / t_warm
    return lr_max * decay_rate ** ((t - t_warm) // decay_stepsize)


def one_cycle_lr(step: int, total_steps: int, max_lr: float, pct_start: float = 0.3, div_factor: float = 25.0,
                 final_div_factor: float = 1e4) -> float:
    """torch.optim.lr_scheduler.OneCycleLR's learning rate after ``step`` steps (two phases, cosine)."""
    initial, final = max_lr / div_factor, max_lr / div_factor / final_div_factor
    up_end, down_end = pct_start * total_steps - 1, total_steps - 1

    def cos(start, end, pct):
        return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)

    if step <= up_end:
        return cos(initial, max_lr, step / up_end)
    return cos(max_lr, final, (step - up_end) / (down_end - up_end))


@dataclass(frozen=True)
class LRSchedule:
    """train.py's learning rate as a pure function of the iteration.

    Attributes:
        lr_max: peak learning rate (> 0).
        epoch_warm: warm-up length t_warm in ``unit`` s (>= 0; 0 = none).
        lr_warm: learning rate at t = 0 of the warm-up (> 0 when epoch_warm > 0).
        decay_rate: factor applied every ``decay_stepsize`` units after the warm-up (> 0).
        decay_stepsize: units between decays (>= 1).
        scheduler: 'default' (warm-up + step decay) or 'onecycle'.
        unit: 'epoch' (train.py: the rate changes at epoch boundaries) or 'iteration' (grad_indep.py, beta_domin.py).
    """

    lr_max: float
    epoch_warm: int
    lr_warm: float
    decay_rate: float
    decay_stepsize: int
    scheduler: str = "default"
    unit: str = "epoch"

    def __post_init__(self):
        checks.one_of("scheduler", self.scheduler, SCHEDULERS)
        checks.one_of("schedule_unit", self.unit, SCHEDULE_UNITS)
        checks.number("lr_setting[0] (lr_max)", self.lr_max, lo=0, strict=True)
        checks.integer("lr_setting[1] (epoch_warm)", self.epoch_warm, lo=0)
        if self.epoch_warm > 0:
            checks.number("lr_setting[2] (lr_warm)", self.lr_warm, lo=0, strict=True)
        checks.number("decay_rate", self.decay_rate, lo=0, strict=True)
        checks.integer("decay_stepsize", self.decay_stepsize, lo=1)

    def lr(self, iteration: int, steps_per_epoch: int, total_steps: int) -> float:
        """Learning rate of the update that follows ``iteration`` completed steps."""
        if self.scheduler == "onecycle":
            return one_cycle_lr(iteration, total_steps, self.lr_max, **ONE_CYCLE)
        t = iteration // steps_per_epoch if self.unit == "epoch" else iteration
        return warmup_step_lr(t, self.lr_max, self.epoch_warm, self.lr_warm, self.decay_rate, self.decay_stepsize)


# --- losses ---------------------------------------------------------------------------
# (l2_penalty and soft_cross_entropy are expt_llc_curve's: its penalty term and force_realisable's loss)

def km_mse_loss(out: Tensor, labels: Tensor, k: float = 0.0, M: float = 1.0) -> Tensor:
    """mean_{n,c} (k·onehot + 1)·(out − M·onehot)²; out (N, C), labels (N,) int64."""
    onehot = F.one_hot(labels, out.shape[1]).to(out.dtype)  # (N, C)
    return ((k * onehot + 1) * (out - M * onehot) ** 2).mean()


def make_loss(loss_fn: str, k_M: tuple[float, float] | None = None) -> Callable[[Tensor, Tensor], Tensor]:
    """loss(out (N, C), labels (N,)) -> mean loss, for loss_fn in LOSSES (module docstring).

    Raises:
        ValueError: unknown loss_fn, or k_M with ce_loss.
    """
    checks.one_of("loss_fn", loss_fn, LOSSES)
    if loss_fn == "ce_loss":
        if k_M is not None:
            raise ValueError(f"k_M applies to mse_loss only; got k_M={k_M!r} with loss_fn='ce_loss'")
        return F.cross_entropy
    k, M = (0.0, 1.0) if k_M is None else k_M
    return lambda out, labels: km_mse_loss(out, labels, k, M)


def l2_penalty(model: torch.nn.Module, c: float | None) -> float:
    """c Σ_p ||p||² over all parameters (0 for None): the training loss's penalty."""
    if not c:
        return 0.0
    with torch.no_grad():
        return float(c * sum(float((p.double() ** 2).sum()) for p in model.parameters()))


def soft_cross_entropy(logits: torch.Tensor, target_logits: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of -Σ_k softmax(target)_k log softmax(logits)_k (force_realisable's loss)."""
    return -(F.softmax(target_logits, dim=-1) * F.log_softmax(logits, dim=-1)).sum(-1).mean()


# --- optimizers -----------------------------------------------------------------------

def decay_groups(module: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Two param groups: the weights of Linear and Conv2d layers decayed, everything else not.

    train.py's ``separate_parameters`` for its ViT's AdamW: biases, LayerNorms, the
    residual gates and both position tables are not decayed.
    """
    decay_ids = {id(m.weight) for m in module.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))}
    decay, no_decay = [], []
    for p in module.parameters():
        (decay if id(p) in decay_ids else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(name: str, params, lr: float, weight_decay: float | None = None) -> torch.optim.Optimizer:
    """train.py's optimizers; LAMB is timm's.

    * sgd: momentum 0.9, weight decay 1e-4;
    * lars: dynamics.lars.LARS (the original's flash LARS with the trust ratio at every
      weight decay; timm's ``Lars`` drops it at weight decay 0), momentum 0.9, weight
      decay 1e-4, trust coefficient 1e-3;
    * lamb: timm ``Lamb`` as the original's LAMB: no weight decay, layer adaptation on
      every tensor (``always_adapt``), no global gradient clipping;
    * adamw: torch's AdamW (weight decay 0.01 unless given, or per group).

    Args:
        name: one of OPTIMIZERS.
        params: parameters or param groups (groups may carry their own weight_decay).
        lr: initial learning rate (the schedule overwrites it every step).
        weight_decay: None -> ``DEFAULT_WEIGHT_DECAY[name]``.
    """
    checks.one_of("optimizer", name, OPTIMIZERS)
    wd = DEFAULT_WEIGHT_DECAY[name] if weight_decay is None else weight_decay
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=MOMENTUM, weight_decay=wd)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    if name == "lars":
        return LARS(params, lr=lr, momentum=MOMENTUM, weight_decay=wd, trust_coefficient=1e-3)
    from timm.optim import Lamb

    return Lamb(params, lr=lr, weight_decay=wd, always_adapt=True, max_grad_norm=None)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every param group's learning rate (the schedule is applied exactly once per step)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
