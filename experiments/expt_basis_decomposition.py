"""Basis-function decomposition of training trajectories (reference.md §5).

Ma, Guo & Fattahi (2022): the network's outputs F_t on N evaluation points are
expanded in the conjugate-kernel basis of the *final* network, and the
coefficients β_i(θ_t) are learned almost monotonically, in order of the final
singular values s_i (dynamics.basis).

* Pass 1 trains ``model`` on ``data`` with train.py's recipe (dynamics.schedules)
  and records F_t on the first ``eval_points`` test images at t = 0, at
  ``early_points`` log-spaced iterations of the first epoch and at every epoch
  end; checkpoints are written at those times when ``gradient`` is on or
  ``checkpoint_dir`` is set.
* Pass 2 builds the basis from the final network's features Φ and head W and
  computes β_i(t) for every recording (and ‖∇_θ β_i(θ_t)‖ from the checkpoints
  with ``gradient``).
* The paper's Fig. 2 analyses are flags: ``small_init`` (|β_ij(θ_0)| on every
  u_i v_jᵀ), and ``grad_indep`` / ``beta_domin`` (the cosines and norms of ∇β_i
  along a re-initialised run of ``rerun_config.iterations`` steps).

    python experiments/expt_basis_decomposition.py with mnist fig2 seed=0
    python experiments/expt_basis_decomposition.py with model=alexnet data=cifar10 optimizer=lars \\
        batch_size=512 num_epoch=300 'lr_setting=[2, 0, 0.01]' decay_rate=0.33 decay_stepsize=50
"""
from __future__ import annotations

import math
import os
import tempfile
import warnings
from typing import NamedTuple

import numpy as np
import torch
from sacred import Experiment

from data.vision import DATASETS, load_vision_dataset
from dynamics.basis import beta_gradients, conjugate_kernel_basis, nonnegative_increment_fraction, saturation_times
from dynamics.schedules import LRSchedule, OPTIMIZERS, decay_groups, make_loss, make_optimizer, set_lr
from llc.estimate import flat_model_for_module
from models.basis_nets import InputShape, build_model, check_model_name, check_width, feature_dim
from models.device import derived_seed, resolve_device
from tracking.sacred_utils import configure_experiment, json_ready, log_series, run_cli, seed_everything

ex = configure_experiment(Experiment("basis_decomposition"))

DATA = ("mnist", "cifar10", "cifar100")
LOG_LEVELS = ("essential", "detail")
RISING_LEVEL = 0.95  # the learning phase of β_i ends when it first reaches 0.95 s_i


@ex.config
def cfg():
    expt_name = None  # free label to group runs in plots (e.g. the sweep's name)

    # --- model ---
    model = "resnet18"  # alexnet | vgg11 | resnet18 | resnet34 | resnet50 | vit | cnn2 | cnn3 | cnn4 (mnist.py's CNNs)
    width = 64  # size multiplier; 64 is the paper's network for every model (models.basis_nets)
    init_scale = 1.0  # θ_0 = init_scale · default init, every parameter; >= 0

    # --- data ---
    data = "cifar10"  # mnist | cifar10 | cifar100, each normalised with its own statistics
    data_root = None  # torchvision's files; None -> $DLT_DATA_ROOT, else ~/.cache/dltheory/datasets
    train_points = None  # train on the first n training images; None -> all
    eval_points = None  # N: the first N test images carry accuracy, Φ and β; None -> all
    augment = data != "mnist"  # random crop (padding 4) + horizontal flip of training batches (train.py on CIFAR)

    # --- loss ---
    loss_fn = "mse_loss"  # ce_loss | mse_loss
    k_M = [5.0, 5.0] if data == "cifar100" and loss_fn == "mse_loss" else None  # [k, M]: mean (k·onehot + 1)(out − M·onehot)²; None -> MSE on one-hot

    # --- optimisation (train.py) ---
    optimizer = "sgd"  # sgd (momentum 0.9) | lars (timm) | lamb (timm) | adamw
    weight_decay = None  # None -> sgd/lars 1e-4, lamb 0, adamw 0.01 (vit: 0.1 on weight matrices only)
    batch_size = 256  # minibatch; the last partial batch of an epoch is dropped
    num_epoch = 310  # epochs (train.py default)
    lr_setting = [0.1, 5, 0.01]  # [lr_max, epoch_warm, lr_warm]: linear warm-up lr_warm -> lr_max over epoch_warm units, applied once
    decay_rate = 0.33  # step decay factor after the warm-up
    decay_stepsize = 50  # units between decays
    schedule_unit = "epoch"  # epoch (train.py) | iteration (mnist.py's StepLR, stepped every iteration)
    scheduler = "default"  # default: warm-up + step decay | onecycle: torch's OneCycleLR per iteration (train.py's vit option)
    grad_clip = None  # clip every gradient entry to ±grad_clip (mnist.py: 0.1); None -> off

    # --- recording ---
    n_basis = 5  # β_i logged as metrics for i < n_basis (all k = min(C, rank Φ) go to basis.npz)
    early_points = 30  # log-spaced recordings in the first epoch, besides t = 0 and every epoch end
    record_every = None  # also record every this many iterations; None -> off
    saturation_level = 0.8  # τ_i = first recording with β_i(t) >= saturation_level · s_i (result summary)
    gradient = False  # also ‖∇_θ β_i(θ_t)‖, i < n_basis, at every recording (one vmapped VJP per checkpoint)
    log = "essential"  # essential | detail: also every β_ij(t) (basis.npz) and the per-step training loss
    checkpoint_dir = None  # keep the checkpoints there; None -> a temporary folder, written only with gradient
    num_run = 0  # repetition index, a label (randomness comes from seed)

    # --- paper Fig. 2 analyses ---
    small_init = True  # |β_ij(θ_0)| on every u_i v_jᵀ (free: F_0 is recorded anyway)
    grad_indep = False  # max_{i≠j} |cos(∇β_i, ∇β_j)|, i, j < rerun_config.num_basis, along a re-initialised run
    beta_domin = False  # log|β_i| against log‖∇β_i‖ along a re-initialised run
    rerun_config = dict(
        iterations=400 if beta_domin else 100,  # length of the re-initialised run (paper: 400 / 100)
        every=1 if beta_domin else 10,  # iterations between ∇β evaluations (paper: 1 / 10)
        num_basis=10,  # ∇β_i for i < num_basis (paper: 10)
    )

    # --- runtime ---
    device = "auto"  # auto | cpu | cuda
    eval_batch_size = 1000  # chunk of evaluation points per forward pass and VJP
    log_max_points = 2000  # thinning of the per-step training loss (log='detail')


@ex.named_config
def mnist():
    """mnist.py: 3-block CNN on MNIST, MSE, LARS at lr 2 decayed ×0.33 every 50 iterations, batch 512, 10 epochs."""
    data = "mnist"
    model = "cnn3"
    loss_fn = "mse_loss"
    optimizer = "lars"
    batch_size = 512
    num_epoch = 10
    lr_setting = [2.0, 0, 2.0]
    decay_rate = 0.33
    decay_stepsize = 50
    schedule_unit = "iteration"
    grad_clip = 0.1


@ex.named_config
def fig2():
    """Paper Fig. 2 (combine with ``mnist``): small_init, grad_indep and beta_domin over 400 iterations."""
    small_init = True
    grad_indep = True
    beta_domin = True
    rerun_config = dict(iterations=400, every=1, num_basis=10)


@ex.named_config
def readme_example():
    """The original README's train.py command: AlexNet, CIFAR-10, MSE, LARS, batch 512, 300 epochs."""
    model = "alexnet"
    data = "cifar10"
    loss_fn = "mse_loss"
    optimizer = "lars"
    batch_size = 512
    num_epoch = 300
    lr_setting = [2.0, 0, 0.01]
    decay_rate = 0.33
    decay_stepsize = 50


@ex.named_config
def vit():
    """train.py's ViT option: AdamW (0.1 decay on weight matrices) with the one-cycle schedule."""
    model = "vit"
    optimizer = "adamw"
    scheduler = "onecycle"
    lr_setting = [1e-3, 0, 1e-3]
    weight_decay = 0.1


# --- validation -------------------------------------------------------------------------

class Checked(NamedTuple):
    """What validate() derives from the config."""

    shape: InputShape
    schedule: LRSchedule
    k_M: tuple[float, float] | None
    max_basis: int  # min(C, p[, N]): the most basis functions the run can have
    device: torch.device


def _int(key, value, lo=1, none_ok=False):
    if value is None and none_ok:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ValueError(f"{key} must be {'None or ' if none_ok else ''}an integer >= {lo}; got {value!r}")


def _number(key, value, lo=0.0, strict=False, none_ok=False):
    if value is None and none_ok:
        return
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if not ok or value < lo or (strict and value == lo):
        raise ValueError(f"{key} must be {'None or ' if none_ok else ''}a finite number {'>' if strict else '>='} "
                         f"{lo}; got {value!r}")


def _bool(key, value):
    if not isinstance(value, bool):
        raise ValueError(f"{key} must be True or False; got {value!r}")


def validate(config: dict) -> Checked:
    """Check every user-facing key before any compute (data, model weights, training)."""
    check_model_name(config["model"])
    check_width(config["width"])
    _number("init_scale", config["init_scale"])
    if config["data"] not in DATA:
        raise ValueError(f"data must be one of {DATA}; got {config['data']!r}")
    spec = DATASETS[config["data"]]
    shape = InputShape(spec.channels, spec.size, spec.num_classes)
    _int("train_points", config["train_points"], none_ok=True)
    _int("eval_points", config["eval_points"], none_ok=True)
    for key in ("augment", "gradient", "small_init", "grad_indep", "beta_domin"):
        _bool(key, config[key])
    make_loss(config["loss_fn"])  # names loss_fn
    k_M = config["k_M"]
    if k_M is not None:
        if config["loss_fn"] != "mse_loss":
            raise ValueError(f"k_M applies to loss_fn='mse_loss' only; got k_M={k_M!r} with loss_fn={config['loss_fn']!r}")
        if not isinstance(k_M, (list, tuple)) or len(k_M) != 2:
            raise ValueError(f"k_M must be None or a list [k, M]; got {k_M!r}")
        _number("k_M[0] (k)", k_M[0])
        _number("k_M[1] (M)", k_M[1], lo=-math.inf)
        k_M = (float(k_M[0]), float(k_M[1]))
    if config["optimizer"] not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}; got {config['optimizer']!r}")
    _number("weight_decay", config["weight_decay"], none_ok=True)
    _int("batch_size", config["batch_size"])
    _int("num_epoch", config["num_epoch"])
    lr = config["lr_setting"]
    if not isinstance(lr, (list, tuple)) or len(lr) != 3:
        raise ValueError(f"lr_setting must be a list [lr_max, epoch_warm, lr_warm] of length 3; got {lr!r}")
    warm = lr[1]
    if isinstance(warm, float) and warm.is_integer():
        warm = int(warm)  # train.py read every entry as a float
    schedule = LRSchedule(lr_max=lr[0], epoch_warm=warm, lr_warm=lr[2], decay_rate=config["decay_rate"],
                          decay_stepsize=config["decay_stepsize"], scheduler=config["scheduler"],
                          unit=config["schedule_unit"])
    _number("grad_clip", config["grad_clip"], strict=True, none_ok=True)
    _int("early_points", config["early_points"], lo=0)
    _int("record_every", config["record_every"], none_ok=True)
    level = config["saturation_level"]
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0 < level <= 1:
        raise ValueError(f"saturation_level must be a number in (0, 1]; got {level!r}")
    if config["log"] not in LOG_LEVELS:
        raise ValueError(f"log must be one of {LOG_LEVELS}; got {config['log']!r}")
    _int("num_run", config["num_run"], lo=0)
    _int("eval_batch_size", config["eval_batch_size"])
    _int("log_max_points", config["log_max_points"])
    p = feature_dim(config["model"], shape, config["width"])
    max_basis = min(shape.num_classes, p, config["eval_points"] or math.inf)
    n_basis = config["n_basis"]
    _int("n_basis", n_basis)
    if n_basis > max_basis:
        raise ValueError(f"n_basis must be <= min(number of classes {shape.num_classes}, feature dim p = {p}"
                         f"{', eval_points ' + str(config['eval_points']) if config['eval_points'] else ''})"
                         f" = {max_basis}; got {n_basis}")
    rerun = dict(config["rerun_config"])
    allowed = {"iterations", "every", "num_basis"}
    if set(rerun) != allowed:
        raise ValueError(f"rerun_config must have exactly the entries {sorted(allowed)}; got {sorted(rerun)}")
    _int("rerun_config.iterations", rerun["iterations"])
    _int("rerun_config.every", rerun["every"])
    _int("rerun_config.num_basis", rerun["num_basis"], lo=2)
    if (config["grad_indep"] or config["beta_domin"]) and rerun["num_basis"] > max_basis:
        raise ValueError(f"rerun_config.num_basis must be <= {max_basis} (min of classes, p, eval_points); "
                         f"got {rerun['num_basis']}")
    return Checked(shape, schedule, k_M, int(max_basis), resolve_device(config["device"]))


# Independent random streams derived from the run's seed.
INIT, BATCHES, AUGMENT, REINIT, REBATCHES, REAUGMENT = range(6)


# --- training -------------------------------------------------------------------------------

def _crop_flip(x, pad_value, gen):
    """train.py's CIFAR augmentation on normalised images: random crop with padding 4, random h-flip."""
    b, c, h, w = x.shape
    padded = pad_value.view(1, c, 1, 1).expand(b, c, h + 8, w + 8).clone()
    padded[:, :, 4:4 + h, 4:4 + w] = x
    oy = torch.randint(0, 9, (b,), generator=gen, device=x.device)
    ox = torch.randint(0, 9, (b,), generator=gen, device=x.device)
    rows = (oy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # (b, 1, h, 1)
    cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # (b, 1, 1, w)
    out = padded[torch.arange(b, device=x.device)[:, None, None, None], torch.arange(c, device=x.device)[None, :, None, None], rows, cols]
    flip = torch.rand(b, generator=gen, device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(-1), out)


class Trainer:
    """One training run of train.py's loop: shuffled minibatches, scheduled LR, optional clipping.

    Every epoch visits a fresh permutation of the training images in batches of
    ``batch_size`` (the last partial batch is dropped); each step sets the
    scheduled learning rate once, then takes one optimizer step.
    """

    def __init__(self, net, optimizer, schedule, loss_fn, x, y, batch_size, total_steps, grad_clip, batch_gen,
                 augment_gen, pad_value):
        self.net, self.optimizer, self.schedule, self.loss_fn = net, optimizer, schedule, loss_fn
        self.x, self.y, self.batch_size, self.total_steps = x, y, batch_size, total_steps  # x (n, c, h, w), y (n,)
        self.grad_clip, self.batch_gen, self.augment_gen, self.pad_value = grad_clip, batch_gen, augment_gen, pad_value

    @property
    def steps_per_epoch(self) -> int:
        return self.x.shape[0] // self.batch_size

    def run(self, num_steps, on_step=None):
        """Take ``num_steps`` steps; ``on_step(t, loss, correct, grad_norm, lr)`` after each (t = steps done)."""
        spe, t = self.steps_per_epoch, 0
        while t < num_steps:
            perm = torch.randperm(self.x.shape[0], generator=self.batch_gen, device=self.batch_gen.device)
            for b in range(spe):
                if t >= num_steps:
                    return
                idx = perm[b * self.batch_size:(b + 1) * self.batch_size].to(self.x.device)
                xb, yb = self.x[idx], self.y[idx]
                if self.augment_gen is not None:
                    xb = _crop_flip(xb, self.pad_value, self.augment_gen)
                lr = self.schedule.lr(t, spe, self.total_steps)
                set_lr(self.optimizer, lr)
                self.net.train()
                out = self.net(xb)
                loss = self.loss_fn(out, yb)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grads = [p.grad for p in self.net.parameters() if p.grad is not None]
                grad_norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))
                if self.grad_clip is not None:
                    torch.nn.utils.clip_grad_value_(self.net.parameters(), self.grad_clip)
                self.optimizer.step()
                t += 1
                value = loss.item()
                if not math.isfinite(value):
                    raise FloatingPointError(f"training diverged: loss {value} at step {t}")
                if on_step is not None:
                    on_step(t, value, int((out.argmax(1) == yb).sum()), grad_norm, lr)


def _new_trainer(config, checked, x, y, seed, init, batches, augment):
    device = checked.device
    net = build_model(config["model"], checked.shape, config["width"], config["init_scale"],
                      seed=derived_seed(seed, init)).to(device)
    wd = config["weight_decay"]
    if config["model"] == "vit" and config["optimizer"] == "adamw":
        params = decay_groups(net.named_parameters(), 0.1 if wd is None else wd)
    else:
        params = net.parameters()
    opt = make_optimizer(config["optimizer"], params, checked.schedule.lr_max, wd)
    spec = DATASETS[config["data"]]
    pad = -torch.tensor(spec.mean, device=device) / torch.tensor(spec.std, device=device)  # black, normalised
    gen = lambda purpose: torch.Generator(device=device).manual_seed(derived_seed(seed, purpose))  # noqa: E731
    steps = x.shape[0] // config["batch_size"] * config["num_epoch"]
    return Trainer(net, opt, checked.schedule, make_loss(config["loss_fn"], checked.k_M), x, y, config["batch_size"],
                   steps, config["grad_clip"], gen(batches), gen(augment) if config["augment"] else None, pad)


@torch.no_grad()
def _outputs(net, x, chunk, features=False):
    """Eval-mode outputs (N, C), or features Φ (N, p), in chunks."""
    net.eval()
    fn = net.features if features else net
    return torch.cat([fn(x[i:i + chunk]) for i in range(0, x.shape[0], chunk)])


def recording_times(steps_per_epoch: int, num_epoch: int, early_points: int, every: int | None = None) -> np.ndarray:
    """t = 0, ``early_points`` log-spaced iterations in [1, steps_per_epoch], every epoch end, every ``every`` steps."""
    early = np.geomspace(1, steps_per_epoch, early_points).round().astype(int) if early_points else []
    total = steps_per_epoch * num_epoch
    ends = steps_per_epoch * np.arange(1, num_epoch + 1)
    regular = np.arange(every, total + 1, every) if every else []
    return np.unique(np.concatenate([[0], early, ends, regular])).astype(int)


# --- main -------------------------------------------------------------------------------------

def _load(config, checked):
    kw = dict(data_root=config["data_root"])
    x, y = load_vision_dataset(config["data"], train=True, **kw)
    xe, ye = load_vision_dataset(config["data"], train=False, **kw)
    x, y = x[: config["train_points"]], y[: config["train_points"]]
    xe, ye = xe[: config["eval_points"]], ye[: config["eval_points"]]
    if config["batch_size"] > x.shape[0]:
        raise ValueError(f"batch_size must be <= the number of training images ({x.shape[0]}); got {config['batch_size']}")
    for key, n in (("n_basis", config["n_basis"]),) + ((("rerun_config.num_basis", config["rerun_config"]["num_basis"]),)
                                                       if config["grad_indep"] or config["beta_domin"] else ()):
        if n > xe.shape[0]:
            raise ValueError(f"{key} must be <= the number of evaluation points ({xe.shape[0]}); got {n}")
    d = checked.device
    return x.to(d), y.to(d), xe.to(d), ye.to(d)


@ex.main
def main(_config, _run, _seed):
    config = _config
    checked = validate(config)
    seed_everything(_seed)
    x, y, xe, ye = _load(config, checked)
    trainer = _new_trainer(config, checked, x, y, _seed, INIT, BATCHES, AUGMENT)
    spe, n_basis, chunk = trainer.steps_per_epoch, config["n_basis"], config["eval_batch_size"]
    times = recording_times(spe, config["num_epoch"], config["early_points"], config["record_every"])
    loss_fn = trainer.loss_fn

    # --- pass 1: train, recording F_t (and checkpoints) ---------------------------------------
    ckpt_tmp = None
    ckpt_dir = config["checkpoint_dir"]
    if ckpt_dir is None and config["gradient"]:
        ckpt_tmp = tempfile.TemporaryDirectory(prefix="basis_ckpt_")
        ckpt_dir = ckpt_tmp.name
    if ckpt_dir is not None:
        os.makedirs(ckpt_dir, exist_ok=True)
    recorded = set(times.tolist())
    F_t, eval_loss, eval_acc = [], [], []
    epoch = dict(loss=0.0, correct=0, grad=0.0, n=0)
    train_curves = {k: [] for k in ("loss", "accuracy", "grad_norm", "lr")}

    def record(t):
        out = _outputs(trainer.net, xe, chunk)
        F_t.append(out.float().cpu())
        eval_loss.append(float(loss_fn(out, ye)))
        eval_acc.append(float((out.argmax(1) == ye).float().mean()))
        _run.log_scalar("eval/loss", eval_loss[-1], t)
        _run.log_scalar("eval/accuracy", eval_acc[-1], t)
        if ckpt_dir is not None:
            torch.save(trainer.net.state_dict(), os.path.join(ckpt_dir, f"ckpt_{t:09d}.pt"))

    step_losses = []

    def on_step(t, loss, correct, grad_norm, lr):
        epoch["loss"] += loss
        epoch["correct"] += correct
        epoch["grad"] += grad_norm
        epoch["n"] += 1
        step_losses.append(loss)
        if t % spe == 0:  # epoch end: train.py's per-epoch train loss and accuracy
            for name, value in (("loss", epoch["loss"] / epoch["n"]), ("accuracy", epoch["correct"] / (epoch["n"] * config["batch_size"])),
                                ("grad_norm", epoch["grad"] / epoch["n"]), ("lr", lr)):
                train_curves[name].append(value)
                _run.log_scalar(f"train/{name}", value, t)
            epoch.update(loss=0.0, correct=0, grad=0.0, n=0)
        if t in recorded:
            record(t)

    record(0)
    trainer.run(trainer.total_steps, on_step)
    if config["log"] == "detail":
        log_series(_run, "train/step_loss", step_losses, config["log_max_points"], offset=1)

    # --- pass 2: basis from the final network, β_i(t) for every recording ----------------------
    net = trainer.net
    phi = _outputs(net, xe, chunk, features=True)  # (N, p)
    basis = conjugate_kernel_basis(phi, net.head.weight.detach())
    k = basis.size
    if basis.feature_rank < n_basis:
        warnings.warn(f"Φ has numerical rank {basis.feature_rank} < n_basis = {n_basis}: "
                      "the basis functions beyond the rank are arbitrary")
    F_all = torch.stack(F_t)  # (T, N, C)
    beta = torch.cat([basis.coefficients(F_all[i:i + 16]) for i in range(0, len(F_all), 16)]).cpu().numpy()  # (T, k)
    residual = torch.cat([basis.relative_residual(F_all[i:i + 16], n_basis)
                          for i in range(0, len(F_all), 16)]).cpu().numpy()  # (T,)
    final_residual = float(basis.relative_residual(_outputs(net, xe, chunk), k))
    s = basis.s.cpu().numpy()
    for j, t in enumerate(times):
        for i in range(n_basis):
            _run.log_scalar(f"basis/beta_{i + 1}", float(beta[j, i]), int(t))
        _run.log_scalar("basis/residual", float(residual[j]), int(t))
    arrays = dict(times=times, epochs=times / spe, beta=beta, s=s, phi_singular_values=basis.S.cpu().numpy(),
                  eval_loss=np.array(eval_loss), eval_accuracy=np.array(eval_acc), residual=residual,
                  train_loss=np.array(train_curves["loss"]), train_accuracy=np.array(train_curves["accuracy"]),
                  train_grad_norm=np.array(train_curves["grad_norm"]), train_lr=np.array(train_curves["lr"]))
    if config["small_init"]:
        arrays["small_init"] = basis.coefficient_matrix(F_all[0]).abs().cpu().numpy()  # (k, k)
        _run.info["small_init_diagonal"] = arrays["small_init"].diagonal()[:n_basis].tolist()
    if config["log"] == "detail":
        arrays["coefficient_matrix"] = torch.cat([basis.coefficient_matrix(F_all[i:i + 16])
                                                  for i in range(0, len(F_all), 16)]).cpu().numpy()  # (T, k, k)
    if config["gradient"]:
        norms, max_cos = _checkpoint_gradients(_run, net, ckpt_dir, times, xe, basis, n_basis, chunk, checked.device)
        arrays.update(grad_norms=norms, grad_max_abs_cos=max_cos)
    if ckpt_tmp is not None:
        ckpt_tmp.cleanup()
    _run.info["singular_values"] = s.tolist()
    _run.info["phi_singular_values_top"] = basis.S[:100].cpu().tolist()
    _add_npz(_run, "basis.npz", arrays)

    tau = saturation_times(times, beta[:, :n_basis], s[:n_basis], config["saturation_level"])
    rising_end = saturation_times(times, beta[:, :n_basis], s[:n_basis], RISING_LEVEL)
    result = {
        "final_test_accuracy": eval_acc[-1],
        "final_test_loss": eval_loss[-1],
        "final_train_accuracy": train_curves["accuracy"][-1],
        "final_train_loss": train_curves["loss"][-1],
        "steps": trainer.total_steps,
        "steps_per_epoch": spe,
        "num_recordings": len(times),
        "num_basis_functions": k,
        "feature_dim": basis.V.shape[0],
        "feature_rank": basis.feature_rank,
        "singular_values": s[:n_basis],
        "beta_initial": beta[0, :n_basis],
        "final_relative_residual": final_residual,
        # increments β_i(t_{j+1}) − β_i(t_j) >= 0 from the first step on; and only while β_i is
        # still rising (until it first reaches 0.95 s_i), before the plateau where eval outputs
        # jitter with the minibatch noise (and BatchNorm running statistics)
        "nonneg_increment_fraction": [nonnegative_increment_fraction(beta[:, i], start=1) for i in range(n_basis)],
        "rising_nonneg_increment_fraction": [
            nonnegative_increment_fraction(beta[: _index_at(times, rising_end[i]) + 1, i], start=1)
            for i in range(n_basis)],
        "saturation_times": [None if math.isnan(v) else int(v) for v in tau],
        "saturation_in_order": bool(not np.isnan(tau).any() and np.all(np.diff(tau) >= 0)),
    }
    if config["small_init"]:
        result["small_init_max_abs"] = float(arrays["small_init"].max())
    if config["grad_indep"] or config["beta_domin"]:
        result.update(_rerun(_run, config, checked, x, y, xe, basis, _seed))
    return json_ready(result)


def _index_at(times, t) -> int:
    """Index of recording time t; the last index when t is NaN (never reached)."""
    return len(times) - 1 if math.isnan(t) else int(np.searchsorted(times, t))


def _checkpoint_gradients(_run, net, ckpt_dir, times, xe, basis, n_basis, chunk, device):
    """‖∇β_i(θ_t)‖ (T, n_basis) and max |cos| (T,) from the saved checkpoints."""
    norms, max_cos = [], []
    for t in times:
        net.load_state_dict(torch.load(os.path.join(ckpt_dir, f"ckpt_{int(t):09d}.pt"), map_location=device))
        net.eval()
        f, w = flat_model_for_module(net, torch.float32, device)
        g = beta_gradients(f, w, xe, basis, n_basis, chunk)
        norms.append(g.norms.cpu().numpy())
        max_cos.append(g.max_offdiag_abs_cosine())
        for i in range(n_basis):
            _run.log_scalar(f"basis/grad_norm_{i + 1}", float(norms[-1][i]), int(t))
        _run.log_scalar("basis/grad_max_abs_cos", max_cos[-1], int(t))
    return np.array(norms), np.array(max_cos)


def _rerun(_run, config, checked, x, y, xe, basis, seed):
    """grad_indep / beta_domin: ∇β_i of the final basis along a freshly initialised run."""
    rc = config["rerun_config"]
    trainer = _new_trainer(config, checked, x, y, seed, REINIT, REBATCHES, REAUGMENT)
    num, chunk = rc["num_basis"], config["eval_batch_size"]
    times, betas, norms, cosines = [], [], [], []

    def evaluate(t):
        trainer.net.eval()
        f, w = flat_model_for_module(trainer.net, torch.float32, checked.device)
        g = beta_gradients(f, w, xe, basis, num, chunk)
        times.append(t)
        betas.append(g.beta.cpu().numpy())
        norms.append(g.norms.cpu().numpy())
        cosines.append(g.cosines.cpu().numpy())
        if config["grad_indep"]:
            _run.log_scalar("grad_indep/max_abs_cos", g.max_offdiag_abs_cosine(), t)
        if config["beta_domin"]:
            for i in range(num):
                _run.log_scalar(f"beta_domin/log_abs_beta_{i + 1}", math.log(abs(float(g.beta[i])) + 1e-300), t)
                _run.log_scalar(f"beta_domin/log_grad_norm_{i + 1}", math.log(float(norms[-1][i]) + 1e-300), t)

    evaluate(0)
    trainer.run(rc["iterations"], lambda t, *_: evaluate(t) if t % rc["every"] == 0 else None)
    cos = np.array(cosines)  # (T, n, n)
    offdiag = np.abs(cos[:, ~np.eye(num, dtype=bool)]).max(axis=1)  # (T,)
    _add_npz(_run, "rerun.npz", dict(times=np.array(times), beta=np.array(betas), grad_norms=np.array(norms),
                                     cosines=cos, max_abs_cos=offdiag))
    out = {}
    if config["grad_indep"]:
        out["grad_indep_max_abs_cos"] = float(offdiag.max())
    if config["beta_domin"]:
        b, g = np.log(np.abs(np.array(betas)) + 1e-300), np.log(np.array(norms) + 1e-300)
        out["beta_domin_corr"] = [float(np.corrcoef(g[:, i], b[:, i])[0, 1]) for i in range(num)]
    return out


def _add_npz(_run, name, arrays):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, name)
        np.savez_compressed(path, **arrays)
        _run.add_artifact(path)


if __name__ == "__main__":
    run_cli(ex)
