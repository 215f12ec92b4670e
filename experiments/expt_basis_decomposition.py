"""Basis-function decomposition of training trajectories (docs/basis_decomposition.md).

Ma, Guo & Fattahi (2022): the network's outputs F_t on N evaluation points are
expanded in the conjugate-kernel basis of the *final* network, and the
coefficients β_i(θ_t) are learned almost monotonically, in order of the final
singular values s_i (dynamics.basis).

* Pass 1 trains ``model`` on ``data`` (dynamics.basis_training, dynamics.schedules)
  and records F_t on the first ``eval_points`` test images at t = 0 and at the
  recording times (``early_points``, ``record_*``); checkpoints are written at those
  times when ``gradient`` is on or ``checkpoint_dir`` is set.
* Pass 2 builds the basis from the final network's features Φ and head W and
  computes β_i(t) for every recording (and ‖∇_θ β_i(θ_t)‖ from the checkpoints
  with ``gradient``).
* The paper's Fig. 2 analyses are flags: ``small_init`` (|β_ij(θ_0)| on every
  u_i v_jᵀ), and ``grad_indep`` / ``beta_domin`` (the cosines and norms of ∇β_i
  along a re-initialised run, evaluated before each of its first steps).

A stop signal checkpoints pass 1 at the next step and a rerun resumes it (tracking.preempt;
docs/runs.md#preemption); a signal in pass 2 stops at once, and the
resume redoes pass 2 from the checkpoint saved at the end of training.

One named config per original script: ``mnist`` (mnist.py, Fig. 3(a–c)), ``grad_indep``,
``beta_domin`` and ``small_init`` (Fig. 2); the defaults are train.py's.

    python experiments/expt_basis_decomposition.py with mnist model=cnn4
    python experiments/expt_basis_decomposition.py with beta_domin
    python experiments/expt_basis_decomposition.py with model=alexnet data=cifar10 optimizer=lars \\
        batch_size=512 num_epoch=300 'lr_setting=[2, 0, 0.01]' decay_rate=0.33 decay_stepsize=50
"""
from __future__ import annotations

import os
import shutil
import warnings
from enum import IntEnum, unique

import numpy as np
import torch
from sacred import Experiment

from core.config_docs import with_nested_docs
from core.runtime import derived_seed
from data.vision import DATASETS, load_vision_dataset
from dynamics.basis import conjugate_kernel_basis
from dynamics.basis_analysis import basis_summary, initial_coefficients, learning_order, trajectory_coefficients
from dynamics.basis_tracking import checkpoint_gradients, gradients_along_run, record_training
from dynamics.basis_training import Trainer, eval_outputs, recording_times
from dynamics.schedules import decay_groups, make_loss, make_optimizer
from models.basis_nets import build_model
from tracking.basis_checks import validate
from tracking.basis_record import add_npz, log_columns, record_rerun
from tracking.preempt import add_checkpoint_config, checkpointing
from tracking.sacred_utils import configure_experiment, json_ready, log_series, run_cli, seed_everything

# checkpoint_dir (tracking.preempt) also holds the gradient pass's per-recording weights when set
ex = add_checkpoint_config(configure_experiment(Experiment("basis_decomposition")))


@with_nested_docs  # print_config shows the comments of the keys inside the dict blocks too
@ex.config
def cfg():
    expt_name = None  # free label to group runs in plots (e.g. the sweep's name)

    # --- model ---
    # (vit: train.py's; cnn2, cnn3, cnn4: mnist.py's; fig2_cnn: grad_indep.py's; fig2_cnn_bn1d: beta_domin.py's,
    # small-init.py's)
    # alexnet | vgg11 | resnet18 | resnet34 | resnet50 | vit | vit_timm | cnn2 | cnn3 | cnn4 | fig2_cnn | fig2_cnn_bn1d
    model = "resnet18"
    width = 64  # size multiplier; 64 is the paper's network for every model (models.basis_nets)
    init_scale = 1.0  # the whole initial state dict (BatchNorm statistics included) times init_scale; >= 0

    # --- data ---
    data = "cifar10"  # mnist | cifar10 | cifar100
    normalize = True  # subtract each channel's mean, divide by its std (beta_domin.py, small-init.py: False)
    data_root = None  # torchvision's files; None -> $DLT_DATA_ROOT, else ~/.cache/dltheory/datasets
    train_points = None  # train on the first n training images; None -> all
    eval_points = None  # N: the first N test images carry accuracy, Φ and β; None -> all
    augment = data != "mnist"  # random crop (padding 4) + horizontal flip of training batches
    drop_last = False  # drop each epoch's last partial batch (the originals' DataLoaders keep it)

    # --- loss ---
    loss_fn = "mse_loss"  # ce_loss | mse_loss
    # [k, M]: mean (k·onehot + 1)(out − M·onehot)²; None -> MSE on one-hot
    k_M = [5.0, 5.0] if data == "cifar100" and loss_fn == "mse_loss" else None

    # --- optimisation (train.py) ---
    optimizer = "sgd"  # sgd (momentum 0.9) | lars (dynamics.lars) | lamb (timm) | adamw
    weight_decay = None  # None -> sgd/lars 1e-4, lamb 0, adamw 0.01 (vit on cifar10: 0.1 on conv/linear weights only)
    batch_size = 256  # minibatch
    num_epoch = 310  # epochs (train.py default)
    # [lr_max, epoch_warm, lr_warm]: linear warm-up lr_warm -> lr_max over epoch_warm units, applied once
    lr_setting = [0.1, 5, 0.01]
    decay_rate = 0.33  # step decay factor after the warm-up
    decay_stepsize = 50  # units between decays
    # epoch (train.py, mnist.py, small-init.py) | iteration (grad_indep.py, beta_domin.py: StepLR per iteration)
    schedule_unit = "epoch"
    # default: warm-up + step decay | onecycle: torch's OneCycleLR per iteration (train.py's vit option)
    scheduler = "default"
    grad_clip = None  # clip every gradient entry to ±grad_clip (the MNIST scripts: 0.1); None -> off

    # --- recording ---
    n_basis = 5  # β_i logged as metrics for i < n_basis (all k = min(C, rank Φ) go to basis.npz)
    early_points = 0  # log-spaced recordings in the first epoch, besides t = 0
    record_epoch_ends = True  # record at every epoch end (train.py)
    record_every = None  # also record every this many iterations; None -> off (mnist.py: 20)
    record_first = None  # first iteration of the record_every grid; None -> record_every (mnist.py: 1)
    record_until = None  # no recording after this iteration; None -> the run's end (mnist.py: 2001)
    saturation_level = 0.8  # τ_i = first recording with β_i(t) >= saturation_level · s_i (result summary)
    gradient = False  # also ‖∇_θ β_i(θ_t)‖, i < n_basis, at every recording (one vmapped VJP per checkpoint)
    log = "essential"  # essential | detail: also Φ, every F_t and W (detail.npz), every β_ij(t) and the per-step loss
    num_run = 0  # repetition index, a label (randomness comes from seed)

    # --- paper Fig. 2 analyses ---
    small_init = True  # |β_ij(θ_0)| on every u_i v_jᵀ (free: F_0 is recorded anyway)
    grad_indep = False  # |cos(∇β_i, ∇β_j)|, i, j < rerun_config.num_basis, along a re-initialised run
    beta_domin = False  # log|β_i| against log‖∇β_i‖ along a re-initialised run
    rerun_config = dict(
        iterations=400 if beta_domin else 10,  # ∇β before steps t < iterations (beta_domin.py 400, grad_indep.py 10)
        every=1,  # iterations between ∇β evaluations (both scripts: 1)
        num_basis=5 if beta_domin else 10,  # ∇β_i for i < num_basis (beta_domin.py 5, grad_indep.py 10)
    )

    # --- runtime ---
    device = "auto"  # auto | cpu | cuda
    eval_batch_size = 1000  # chunk of evaluation points per forward pass and VJP
    log_max_points = 2000  # thinning of the per-step training loss (log='detail')


# The MNIST scripts share MSE on one-hot targets, LARS (momentum 0.9, weight decay 1e-4), StepLR(50, 0.33),
# entry-wise clipping at 0.1 and no augmentation: each named config sets these first, then its script's own,
# the order gen_commands/expt_basis_decomposition.py writes them in (it reads these configs from this source).

@ex.named_config
def mnist():
    """mnist.py (Fig. 3(a–c)): cnn2 / cnn3 / cnn4, lr 0.05, batch 256, 20 epochs, F_t every 20 iterations to 2001."""
    model = "cnn3"  # cnn2 | cnn3 | cnn4
    data = "mnist"
    loss_fn = "mse_loss"
    optimizer = "lars"
    decay_rate = 0.33
    decay_stepsize = 50
    grad_clip = 0.1
    normalize = True
    batch_size = 256
    num_epoch = 20
    lr_setting = [0.05, 0, 0.05]
    schedule_unit = "epoch"  # scheduler.step() once per epoch: no decay within 20 epochs
    record_epoch_ends = False
    record_every = 20
    record_first = 1  # F recorded after steps 1, 21, ..., 2001
    record_until = 2001
    small_init = False
    seed = 64 if model == "cnn4" else 0  # the original README: seed 64 for the 4-block CNN's figure


@ex.named_config
def grad_indep():
    """grad_indep.py (Fig. 2(b)): |cos(∇β_i, ∇β_j)|, i, j < 10, before each of the first 10 steps of a fresh run."""
    model = "fig2_cnn"
    data = "mnist"
    loss_fn = "mse_loss"
    optimizer = "lars"
    decay_rate = 0.33
    decay_stepsize = 50
    grad_clip = 0.1
    normalize = True
    batch_size = 512
    num_epoch = 20
    lr_setting = [0.05, 0, 0.05]
    schedule_unit = "iteration"  # StepLR stepped per iteration
    small_init = False
    grad_indep = True
    rerun_config = dict(iterations=10, every=1, num_basis=10)
    seed = 83


@ex.named_config
def beta_domin():
    """beta_domin.py (Fig. 2(c)): log|β_i| against log‖∇β_i‖, i < 5, before each of the first 400 steps of a
    fresh run."""
    model = "fig2_cnn_bn1d"
    data = "mnist"
    loss_fn = "mse_loss"
    optimizer = "lars"
    decay_rate = 0.33
    decay_stepsize = 50
    grad_clip = 0.1
    normalize = False  # no per-channel standardisation (the script feeds unnormalised pixels)
    batch_size = 512
    num_epoch = 10
    lr_setting = [0.5, 0, 0.5]
    schedule_unit = "iteration"  # StepLR stepped per iteration
    small_init = False
    beta_domin = True
    rerun_config = dict(iterations=400, every=1, num_basis=5)
    seed = 0


@ex.named_config
def small_init():
    """small-init.py (Fig. 2(a)): |β_ij(θ_0)| on the final basis; lr 2, batch 512, 10 epochs, F at t = 0 and the end."""
    model = "fig2_cnn_bn1d"
    data = "mnist"
    loss_fn = "mse_loss"
    optimizer = "lars"
    decay_rate = 0.33
    decay_stepsize = 50
    grad_clip = 0.1
    normalize = False  # no per-channel standardisation (the script feeds unnormalised pixels)
    batch_size = 512
    num_epoch = 10
    lr_setting = [2.0, 0, 2.0]
    schedule_unit = "epoch"
    record_epoch_ends = False  # F only at t = 0 and after the last step
    small_init = True
    seed = 1


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
    """train.py's ViT option: AdamW (0.1 decay on conv/linear weights) with the one-cycle schedule."""
    model = "vit"
    optimizer = "adamw"
    scheduler = "onecycle"
    lr_setting = [1e-3, 0, 1e-3]
    weight_decay = 0.1


@unique
class Stream(IntEnum):
    """The run's independent random streams (derived_seed spawn keys); explicit values, so adding
    a stream reseeds no other."""
    INIT = 0
    BATCHES = 1
    AUGMENT = 2
    REINIT = 3
    REBATCHES = 4
    REAUGMENT = 5


# --- training -------------------------------------------------------------------------------

def _new_trainer(config, checked, x, y, seed, init, batches, augment):
    device = checked.device
    net = build_model(config["model"], checked.shape, config["width"], config["init_scale"],
                      seed=derived_seed(seed, init)).to(device)
    wd = config["weight_decay"]
    if config["model"] in ("vit", "vit_timm") and config["optimizer"] == "adamw" and config["data"] == "cifar10":
        params = decay_groups(net, 0.1 if wd is None else wd)  # train.py's get_optimizer (ViT on CIFAR-10 only)
    else:
        params = net.parameters()
    opt = make_optimizer(config["optimizer"], params, checked.schedule.lr_max, wd)
    spec = DATASETS[config["data"]]
    pad = torch.zeros(spec.channels, device=device)  # black
    if config["normalize"]:
        pad = -torch.tensor(spec.mean, device=device) / torch.tensor(spec.std, device=device)
    gen = lambda purpose: torch.Generator(device=device).manual_seed(derived_seed(seed, purpose))  # noqa: E731
    return Trainer(net, opt, checked.schedule, make_loss(config["loss_fn"], checked.k_M), x, y, config["batch_size"],
                   config["num_epoch"], config["grad_clip"], gen(batches), gen(augment) if config["augment"] else None,
                   pad, drop_last=config["drop_last"])


# --- main -------------------------------------------------------------------------------------

def _load(config, checked):
    kw = dict(data_root=config["data_root"], normalize=config["normalize"])
    x, y = load_vision_dataset(config["data"], train=True, **kw)
    xe, ye = load_vision_dataset(config["data"], train=False, **kw)
    x, y = x[: config["train_points"]], y[: config["train_points"]]
    xe, ye = xe[: config["eval_points"]], ye[: config["eval_points"]]
    if config["batch_size"] > x.shape[0]:
        raise ValueError(f"batch_size must be <= the number of training images ({x.shape[0]}); "
                         f"got {config['batch_size']}")
    rerun = config["grad_indep"] or config["beta_domin"]
    for key, n in (("n_basis", config["n_basis"]),) + (
            (("rerun_config.num_basis", config["rerun_config"]["num_basis"]),) if rerun else ()):
        if n > xe.shape[0]:
            raise ValueError(f"{key} must be <= the number of evaluation points ({xe.shape[0]}); got {n}")
    d = checked.device
    return x.to(d), y.to(d), xe.to(d), ye.to(d)


@ex.main
def main(_config, _run, _seed):
    checked = validate(_config)
    with checkpointing(_run, _config) as ck:  # SIGTERM/SIGUSR1/SIGINT -> checkpoint at a step boundary; resume
        return _main(_config, _run, _seed, checked, ck)


def _main(_config, _run, _seed, checked, ck):
    config = _config
    seed_everything(_seed)
    x, y, xe, ye = _load(config, checked)
    trainer = _new_trainer(config, checked, x, y, _seed, Stream.INIT, Stream.BATCHES, Stream.AUGMENT)
    spe, n_basis, chunk = trainer.steps_per_epoch, config["n_basis"], config["eval_batch_size"]
    times = recording_times(spe, config["num_epoch"], config["early_points"], config["record_every"],
                            config["record_first"], config["record_until"], config["record_epoch_ends"])
    state = ck.state  # None on a fresh start
    own_states = config["checkpoint_dir"] is None and config["gradient"]
    ckpt_dir = config["checkpoint_dir"]  # the gradient pass's weights at every recording time (checkpoint_path)
    if own_states:  # beside the run's checkpoints, so that a resumed run still finds the earlier ones
        ckpt_dir = state["states_dir"] if state else os.path.abspath(ck.dir / "gradient_states")
    if ckpt_dir is not None:
        os.makedirs(ckpt_dir, exist_ok=True)

    def boundary(t, capture):  # saved at the end of training too: pass 2 then resumes without training again
        ck.boundary(t, lambda: {"train": capture(), "states_dir": ckpt_dir}, force=t == trainer.total_steps)

    with ck.deferring():
        rec = record_training(trainer, times, xe, ye, chunk, _run.log_scalar, ckpt_dir, boundary=boundary,
                              resume=state["train"] if state else None)
    if config["log"] == "detail":
        log_series(_run, "train/batch_loss", rec.step_loss, config["log_max_points"], offset=1)
    eval_loss, eval_acc, train_curves = rec.eval_loss, rec.eval_accuracy, rec.train

    # --- pass 2: basis from the final network, β_i(t) for every recording ----------------------
    net = trainer.net
    phi = eval_outputs(net, xe, chunk, features=True)  # (N, p)
    W = net.head.weight.detach()  # (C, p)
    F_final = eval_outputs(net, xe, chunk)  # (N, C)
    basis = conjugate_kernel_basis(phi, W)
    if basis.feature_rank < n_basis:
        warnings.warn(f"Φ has numerical rank {basis.feature_rank} < n_basis = {n_basis}: "
                      "the basis functions beyond the rank are arbitrary")
    F_all = torch.stack(rec.F)  # (T, N, C)
    coef = trajectory_coefficients(basis, F_all, n_basis, matrix=config["log"] == "detail")
    beta, residual = coef["beta"], coef["residual"]  # (T, k), (T,)
    s = basis.s.cpu().numpy()
    log_columns(_run, "basis/beta_{}", beta[:, :n_basis], times)
    log_columns(_run, "basis/residual", residual[:, None], times)
    arrays = dict(times=times, epochs=times / spe, beta=beta, s=s, phi_singular_values=basis.S.cpu().numpy(),
                  eval_loss=np.array(eval_loss), eval_accuracy=np.array(eval_acc), residual=residual,
                  train_loss=np.array(train_curves["loss"]), train_accuracy=np.array(train_curves["accuracy"]),
                  train_grad_norm=np.array(train_curves["grad_norm"]), train_lr=np.array(train_curves["lr"]))
    if config["small_init"]:
        arrays.update(initial_coefficients(basis, F_all[0], F_final))  # (k, k) each
        _run.info["small_init_diagonal"] = arrays["small_init"].diagonal()[:n_basis].tolist()
    if config["log"] == "detail":
        arrays["coefficient_matrix"] = coef["coefficient_matrix"]  # (T, k, k)
        # train.py's log='detail': Φ, F_out and the head W (torch.save'd there)
        add_npz(_run, "detail.npz", dict(times=times, phi=phi.float().cpu().numpy(), F=F_all.numpy(),
                                          W=W.float().cpu().numpy(), F_final=F_final.float().cpu().numpy()))
    if config["gradient"]:
        norms, max_cos = checkpoint_gradients(net, ckpt_dir, times, xe, basis, n_basis, chunk, checked.device)
        log_columns(_run, "basis/grad_norm_{}", norms[:, :n_basis], times)
        log_columns(_run, "basis/grad_max_abs_cos", max_cos[:, None], times)
        arrays.update(grad_norms=norms, grad_max_abs_cos=max_cos)
    if own_states and not config["keep_checkpoints"]:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    _run.info["singular_values"] = s.tolist()
    _run.info["phi_singular_values_top"] = basis.S[:100].cpu().tolist()
    add_npz(_run, "basis.npz", arrays)

    result = {
        "final_test_accuracy": float((F_final.argmax(1) == ye).float().mean()),
        "final_test_loss": float(trainer.loss_fn(F_final, ye)),
        "final_train_accuracy": train_curves["accuracy"][-1],
        "final_train_loss": train_curves["loss"][-1],
        "steps": trainer.total_steps,
        "steps_per_epoch": spe,
        "num_recordings": len(times),
        **basis_summary(basis, beta, F_final, n_basis),
        **learning_order(times, beta, s, n_basis, config["saturation_level"]),
    }
    if config["small_init"]:
        result["small_init_max_abs"] = float(arrays["small_init"].max())
    if config["grad_indep"] or config["beta_domin"]:
        result.update(_rerun(_run, config, checked, x, y, xe, basis, _seed))
    return json_ready(result)


def _rerun(_run, config, checked, x, y, xe, basis, seed):
    """grad_indep / beta_domin: ∇β_i of the final basis along a freshly initialised run."""
    rc = config["rerun_config"]
    trainer = _new_trainer(config, checked, x, y, seed, Stream.REINIT, Stream.REBATCHES, Stream.REAUGMENT)
    num = rc["num_basis"]
    r = gradients_along_run(trainer, xe, basis, num, rc["iterations"], rc["every"], config["eval_batch_size"],
                            checked.device)
    return record_rerun(_run, r, config["grad_indep"], config["beta_domin"])


if __name__ == "__main__":
    run_cli(ex)
