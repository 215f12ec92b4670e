"""Width parameterizations: NTK, muP, IP, standard IP, IPLLR (with and without bias) and SP on MNIST / grey CIFAR-10.

Trains a fully connected network with L hidden layers of width m under an abc-parameterization
(models/abc.py; docs/notes/width_parameterizations.md#abc) for ``n_trials`` independent inits,
evaluating each on a held-out validation split and on the test set. The original code validated on a copy of the
training set (``n_val=0``); by default ``n_val`` training examples are held out by a seeded split.
A signal checkpoints the current trial at its next step (with the finished trials) and the rerun
resumes it (docs/runs.md#preemption).

    python experiments/expt_abc_params.py with parameterization=ipllr activation=gelu seed=1
    python experiments/expt_abc_params.py with mnist_ipllr_gelu
    python experiments/expt_abc_params.py coord_check with parameterization=mup L=4 base_lr=0.1

The original jobs' flags map one to one: --activation, --n_steps, --base_lr, --batch_size and
--dataset are the config keys of the same names.
"""
from __future__ import annotations

import dataclasses
import math
import os
import tempfile
from enum import IntEnum, unique

import numpy as np
import torch
from sacred import Experiment

from core import checks
from core.config_docs import with_nested_docs
from core.runtime import derived_seed, resolve_device
from data.splits import Splits, calibration_batches, load_flat_splits
from data.vision import DATASETS
from dynamics.abc_train import (
    CALIBRATIONS,
    CoordCheckConfig,
    StepRecord,
    # unused here, but tests/test_expt_abc_params.py monkeypatches this module attribute
    calibrate_warmup_lrs,  # noqa: F401
    coordinate_check,
    evaluate,
    fixed_batch_list,
    train_abc,
    warmup_base_lrs,
)
from models.abc import ACTIVATIONS, INPUT_SCALINGS, PARAMETERIZATIONS, ABCNet, ABCNetSpec, make_parameterization
from tracking.preempt import add_checkpoint_config, checkpointing
from tracking.sacred_utils import build_config, configure_experiment, json_ready, run_cli, seed_everything

ex = add_checkpoint_config(configure_experiment(Experiment("abc_params")))

ABC_DATASETS = ("mnist", "cifar10")  # CIFAR-10 in grey, flattened to 32·32 = 1024 inputs
FIRST_STEP_BATCHES = ("fresh", "calibration")
# fresh: a new permutation every epoch, per trial (the jobs' Lightning loader); fixed_list: one epoch's batches
# drawn once per run, shared by all trials and cycled (the server scripts' collect_training_losses)
BATCH_ORDERS = ("fresh", "fixed_list")
CALIBRATED = ("ipllr", "standard_ip_calibrated")  # warm-ups whose base lrs can be calibrated


@with_nested_docs  # print_config shows the comments of the keys inside the dict blocks too
@ex.config
def cfg():
    expt_name = None  # free label to group runs in plots (e.g. the sweep's name)

    # --- parameterization (models/abc.py) ---
    parameterization = "mup"  # ntk | mup | ip | standard_ip | standard_ip_calibrated | ipllr | ipllr_bias | sp | custom
    ip_c = 0.0  # ip only: lr exponents c_l, one number for every layer or a list of L+1
    custom_exponents = dict(a=None, b=None, c=None)  # custom only: lists of L+1 exponents, input layer first
    base_width = 1  # m_0: scales relative to sp at m_0 (every parameterization is sp there); 1 -> m^-a
    input_scaling = "init"  # 1/sqrt(d+1): init (in U_0's std, original) | multiplier | multiplier_lr | none
    init_mean = 0.0  # mean of U_1..U_L (1.0: the original's non-centred IP); U_0 and biases centred
    n_warmup_steps = 1  # ipllr(_bias), standard_ip_calibrated: SGD steps with the warm-up lrs, then standard IP
    # warm-up base lrs of ipllr / standard_ip_calibrated:
    # original | all_layers | default (1.0) | none (base_lr); None -> original (ipllr_bias: none)
    calibration = None
    # calibrated warm-ups: first step on a fresh minibatch (fc_ipllr job) | calibration (mock step's batch)
    first_step_batch = "fresh"

    # --- network ---
    L = 6  # hidden layers (L + 1 weight matrices)
    width = 1024  # m, width of every hidden layer
    activation = "relu"  # relu | gelu | elu | tanh | sigmoid
    input_bias = True  # the input layer's bias (the original always has one)
    bias = None  # biases in the hidden and output layers; None -> False (ipllr_bias: True)
    scale_bias = None  # init b = m^-b v (True) or v (False); None -> True (ipllr_bias: False)
    scale_bias_lr = True  # ipllr_bias only: width-scaled bias lrs (False -> base_lr)

    # --- training: plain SGD, cross-entropy (batch mean) ---
    base_lr = 0.01  # β in η_l = β m^-c_l
    batch_size = 512  # minibatch, epochs without replacement
    batch_order = "fresh"  # fresh (reshuffled each epoch, per trial: the jobs) | fixed_list (server scripts)
    n_steps = 600  # SGD steps per trial
    n_trials = 5  # independent inits and batch orders; seeds derived from the run seed

    # --- data ---
    dataset = "mnist"  # mnist | cifar10 (grey, flattened to 1024)
    # training examples held out for validation (seeded split); 0 -> validate on the training set (original)
    n_val = 10000
    data_root = None  # None -> $DLT_DATA_ROOT, else ~/.cache/dltheory/datasets

    # --- coordinate check (the coord_check command; ignores width and n_trials) ---
    coord_check_config = dict(
        widths=[64, 128, 256, 512, 1024, 2048, 4096],  # widths m trained side by side
        n_steps=5,  # SGD steps after init; mean |h_l| measured after each on a held-out probe batch
        n_seeds=3,  # inits averaged per width
    )

    # --- runtime ---
    device = "auto"  # auto | cpu | cuda
    log_max_points = 2000  # thinning of every per-step series (the last step is always logged)


@ex.named_config
def mnist_ipllr_gelu():
    """Published: IPLLR with gelu reaches test accuracy ≈ 0.95 on MNIST
    (docs/notes/width_parameterizations.md#published)."""
    parameterization = "ipllr"
    activation = "gelu"
    dataset = "mnist"


@ex.named_config
def cifar10_mup_relu():
    """Published: muP with relu reaches test accuracy ≈ 0.41 on grey CIFAR-10
    (docs/notes/width_parameterizations.md#published)."""
    parameterization = "mup"
    activation = "relu"
    dataset = "cifar10"


@ex.named_config
def ip_non_centered():
    """The original's fc_ip_non_centered job: standard IP with U_1..U_L of mean 1 (init_mean = 1.0)."""
    parameterization = "standard_ip"
    init_mean = 1.0


@ex.named_config
def ip_non_centered_calibrated():
    """non_centered/training.py's calibrated run: standard IP with U_1..U_L of mean 1, its first step with
    calibrated base lrs, the input layer renormalised and its later lr × (d+1), on the script's fixed batch list."""
    parameterization = "standard_ip_calibrated"
    init_mean = 1.0
    input_scaling = "multiplier_lr"
    batch_order = "fixed_list"


@ex.named_config
def ipllr_bias():
    """The original's fc_ip_bias job: IPLLR with unscaled biases and their own lr exponents, not calibrated."""
    parameterization = "ipllr_bias"


@ex.named_config
def vanishing_ip():
    """IP with its standard lrs at depth L = 6: starts at a stationary point and stays at chance."""
    parameterization = "standard_ip"
    L = 6


def validate(config: dict) -> dict:
    """Check every user-facing key before any compute; returns the built objects."""
    name = checks.one_of("parameterization", config["parameterization"], PARAMETERIZATIONS)
    checks.one_of("activation", config["activation"], ACTIVATIONS)
    checks.one_of("dataset", config["dataset"], ABC_DATASETS)
    for key, lo in [("L", 1), ("width", 1), ("base_width", 1), ("n_warmup_steps", 0), ("batch_size", 1),
                    ("n_steps", 1), ("n_trials", 1), ("n_val", 0), ("log_max_points", 1)]:
        checks.integer(key, config[key], lo=lo)
    checks.one_of("input_scaling", config["input_scaling"], INPUT_SCALINGS)
    for key in ("input_bias", "scale_bias_lr"):
        checks.boolean(key, config[key])
    for key in ("bias", "scale_bias"):
        if config[key] is not None and not isinstance(config[key], bool):
            raise ValueError(f"{key} must be None, True or False; got {config[key]!r}")
    if not config["scale_bias_lr"] and name != "ipllr_bias":
        raise ValueError(f"scale_bias_lr is only read with parameterization='ipllr_bias'; got False with {name!r}")
    calibration = _calibration(config)
    if calibration not in CALIBRATIONS:
        raise ValueError(f"calibration must be None or one of {CALIBRATIONS}; got {calibration!r}")
    if name == "ipllr_bias" and calibration != "none":
        raise ValueError(f"calibration must be 'none' with ipllr_bias (the original never calibrates it); "
                         f"got {calibration!r}")
    checks.one_of("first_step_batch", config["first_step_batch"], FIRST_STEP_BATCHES)
    checks.one_of("batch_order", config["batch_order"], BATCH_ORDERS)
    if config["batch_order"] == "fixed_list" and config["first_step_batch"] != "fresh":
        raise ValueError(f"first_step_batch must be 'fresh' with batch_order='fixed_list' (the list's first batch "
                         f"is already the calibration's); got {config['first_step_batch']!r}")
    if config["first_step_batch"] == "calibration" and (
            name not in CALIBRATED or config["n_warmup_steps"] < 1 or calibration not in ("original", "all_layers")):
        raise ValueError(f"first_step_batch='calibration' needs a calibrated warm-up ({' or '.join(CALIBRATED)}, "
                         f"n_warmup_steps >= 1, "
                         f"calibration original or all_layers); got {name!r}, n_warmup_steps="
                         f"{config['n_warmup_steps']!r}, calibration={calibration!r}")
    init_mean = checks.number("init_mean", config["init_mean"])
    checks.number("base_lr", config["base_lr"], lo=0, strict=True)
    custom = dict(config["custom_exponents"])
    if name != "custom" and any(v is not None for v in custom.values()):
        raise ValueError(f"custom_exponents is only read with parameterization='custom'; got {custom!r} with {name!r}")
    p = make_parameterization(name, config["L"], ip_c=config["ip_c"], n_warmup_steps=config["n_warmup_steps"],
                              custom_exponents=custom, scale_bias_lr=config["scale_bias_lr"])
    is_bias = name == "ipllr_bias"  # the original's ipllr_bias: unscaled biases everywhere
    bias = is_bias if config["bias"] is None else config["bias"]
    scale_bias = (not is_bias) if config["scale_bias"] is None else config["scale_bias"]
    data = DATASETS[config["dataset"]]
    spec = ABCNetSpec(p, data.size ** 2, config["width"], data.num_classes, config["activation"], bias, scale_bias,
                      config["base_width"], config["input_scaling"], init_mean, config["input_bias"])
    coord = build_config(CoordCheckConfig, dict(config["coord_check_config"]), "coord_check_config")
    return {"spec": spec, "coord": coord, "calibration": calibration, "device": resolve_device(config["device"])}


def _calibration(config: dict):
    if config["calibration"] is None:
        return "none" if config["parameterization"] == "ipllr_bias" else "original"
    return config["calibration"]


@unique
class Stream(IntEnum):
    """The run's independent random streams (derived_seed spawn keys); explicit values, so adding
    a stream reseeds no other."""
    SPLIT = 0
    INIT = 1
    BATCHES = 2
    CALIBRATION = 3
    COORD = 4


def _generator(seed: int, *key: int, device="cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(derived_seed(seed, *key))


def load_splits(config: dict, seed: int, device) -> Splits:
    """The run's train / validation / test splits; the held-out rows are drawn from the SPLIT stream."""
    return load_flat_splits(config["dataset"], config["data_root"], config["n_val"], config["batch_size"],
                            _generator(seed, Stream.SPLIT), device)


def _mean_std(values) -> tuple[float, float]:
    v = np.asarray(values, dtype=float)
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


@ex.main
def main(_config, _run, _seed):
    checked = validate(_config)
    with checkpointing(_run, _config) as ck:  # SIGTERM/SIGUSR1/SIGINT -> checkpoint at a step boundary; resume
        return _train_trials(_config, _run, _seed, checked, ck)


def _train_trials(_config, _run, _seed, checked, ck):
    seed_everything(_seed)
    spec, device = checked["spec"], checked["device"]
    p = spec.parameterization
    data = load_splits(_config, _seed, device)
    _run.info["exponents"] = json_ready({"a": p.a, "b": p.b, "c": p.c, "warmup_c": p.warmup_c, "bias_c": p.bias_c,
                                         "warmup_bias_c": p.warmup_bias_c})
    _run.info["split_sizes"] = {"train": data.x_train.shape[0], "val": data.x_val.shape[0],
                                "test": data.x_test.shape[0]}
    n_steps = _config["n_steps"]
    every = max(1, math.ceil(n_steps / _config["log_max_points"]))

    trials = {k: [] for k in ("val_loss", "val_accuracy", "val_likelihood", "test_loss", "test_accuracy",
                              "test_likelihood", "final_train_loss")}
    warmup_lrs, batch_list = [], None
    if _config["batch_order"] == "fixed_list":  # one list for the run, as the scripts' batches = list(loader)
        batch_list = fixed_batch_list(data.x_train.shape[0], _config["batch_size"],
                                      _generator(_seed, Stream.BATCHES, device=device))
    saved = ck.state  # a resumed run: the trial counter, the finished trials' values, that trial's loop state
    if saved is not None:
        trials, warmup_lrs = {key: list(v) for key, v in saved["trials"].items()}, list(saved["warmup_lrs"])

    def boundary(t, capture, k):  # checkpoint steps count on across trials: trial k, step t -> k·n_steps + t
        ck.boundary(k * n_steps + t,
                    lambda: {"trial": k, "trials": trials, "warmup_lrs": warmup_lrs, "train": capture()})

    with ck.deferring():  # signals wait for the next step boundary (a trial's step; evaluations run on)
        for k in range(saved["trial"] if saved is not None else 0, _config["n_trials"]):
            resume = saved["train"] if saved is not None and k == saved["trial"] else None
            net = ABCNet(spec, _generator(_seed, Stream.INIT, k)).to(device)
            if batch_list is None:
                x_step, y_step, x_probe = calibration_batches(data, _config["batch_size"],
                                                               _generator(_seed, Stream.CALIBRATION, k, device=device))
            else:  # the scripts' calibrate_base_lr: mock step on batches[0], measured on batches[1]
                x_step, y_step = data.x_train[batch_list[0]], data.y_train[batch_list[0]]
                x_probe = data.x_train[batch_list[1 % len(batch_list)]]
            betas = warmup_base_lrs(net, checked["calibration"], _config["base_lr"], x_step, y_step, x_probe)
            first = (x_step, y_step) if _config["first_step_batch"] == "calibration" else None
            if betas is not None and resume is None:  # a resumed trial's betas are in the saved list
                warmup_lrs.append(list(betas))

            def log_step(r: StepRecord, k=k):  # logged as training goes, so an interrupted run keeps it
                _run.log_scalar(f"train/loss/trial{k}", r.loss, r.step)
                _run.log_scalar(f"train/accuracy/trial{k}", r.accuracy, r.step)
                _run.log_scalar(f"train/output_abs_mean/trial{k}", r.output_abs_mean, r.step)
                # the original's training/likelihood
                _run.log_scalar(f"train/likelihood/trial{k}", r.likelihood, r.step)
                _run.log_scalar(f"train/pred_proba/trial{k}", r.pred_proba, r.step)  # and predicted_label_proba
                for l, lr in enumerate(r.lrs):
                    _run.log_scalar(f"lr/layer{l}/trial{k}", lr, r.step)
                if spec.parameterization.bias_c is not None:
                    for l, lr in enumerate(r.bias_lrs):
                        _run.log_scalar(f"lr/bias{l}/trial{k}", lr, r.step)
                for l, h in enumerate(r.h_abs_mean):
                    _run.log_scalar(f"coord/h{l}/trial{k}", h, r.step)

            losses = train_abc(net, data.x_train, data.y_train, n_steps, _config["batch_size"], _config["base_lr"],
                               _generator(_seed, Stream.BATCHES, k, device=device), betas, log_step, every, first,
                               batch_list, boundary=lambda t, capture, k=k: boundary(t, capture, k), resume=resume)
            for split, x, y in (("val", data.x_val, data.y_val), ("test", data.x_test, data.y_test)):
                loss, acc, likelihood = evaluate(net, x, y, with_likelihood=True)
                for what, value in (("loss", loss), ("accuracy", acc), ("likelihood", likelihood)):
                    trials[f"{split}_{what}"].append(value)
                    _run.log_scalar(f"{split}/{what}", value, k)
            trials["final_train_loss"].append(losses[-1])

    result = {}
    for key, values in trials.items():
        result[key], result[f"{key}_std"] = _mean_std(values)
        result[f"{key}_per_trial"] = values
    result["warmup_base_lrs_per_trial"] = warmup_lrs or None
    result["num_params"] = sum(t.numel() for t in net.parameters())
    return json_ready(result)


@ex.command
def coord_check(_config, _run, _seed):
    """Coordinate check: mean |h_l| of every layer after each of a few SGD steps, at every width.

    The probe batch is held out (validation split); the table goes to info['coord_check'],
    the figure to the artifact coord_check.png, and the width ratios (widest / narrowest) to the result.
    """
    checked = validate(_config)
    seed_everything(_seed)
    spec, cc, device = checked["spec"], checked["coord"], checked["device"]
    data = load_splits(_config, _seed, device)
    probe = data.x_val[:_config["batch_size"]]
    specs = [dataclasses.replace(spec, width=m) for m in cc.widths]
    seeds = [derived_seed(_seed, Stream.COORD, s) for s in range(cc.n_seeds)]
    out = coordinate_check(specs, data.x_train, data.y_train, probe, cc.n_steps, _config["batch_size"],
                           _config["base_lr"], seeds, checked["calibration"], device)
    table = {"parameterization": spec.parameterization.name, "activation": spec.activation, "L": spec.L,
             "widths": list(cc.widths), "steps": list(range(cc.n_steps + 1)), "layers": list(range(spec.L))}
    for k in ("h_abs", "dh_abs", "f_abs", "df_abs"):  # seed means (W, T+1[, L]); NaN after a blow-up
        table[k] = torch.where(torch.isfinite(out[k]), out[k], torch.nan).mean(1)
    table["warmup_base_lrs"] = out["warmup_base_lrs"]  # (W, S, L+1)
    table["diverged"] = out["diverged"]  # (W, S)
    table = json_ready(table)
    _run.info["coord_check"] = table

    from tracking.figures_abc import plot_coord_check, save_figure  # matplotlib only for this command

    with tempfile.TemporaryDirectory() as tmp:
        _run.add_artifact(str(save_figure(plot_coord_check(table), os.path.join(tmp, "coord_check.png"))))
    ratio = {k: _width_ratio(table[k]) for k in ("h_abs", "dh_abs", "f_abs", "df_abs")}
    return json_ready({
        "widths": list(cc.widths),
        "h_ratio": ratio["h_abs"],  # (T+1, L): mean |h_l| at the widest / at the narrowest width
        "dh_ratio": ratio["dh_abs"][1:],  # (T, L): the same for the update |h_l(t) - h_l(0)|, t >= 1
        "f_ratio": ratio["f_abs"],  # (T+1,): the same for the logits
        "df_ratio": ratio["df_abs"][1:],
        "max_h_ratio": _nanmax(np.maximum(ratio["h_abs"], 1 / ratio["h_abs"])),  # worst factor over layers and steps
        "diverged_widths": [m for m, d in zip(cc.widths, out["diverged"].any(1).tolist()) if d],
    })


def _nanmax(values) -> float | None:
    v = np.asarray(values, dtype=float)
    return float(np.nanmax(v)) if np.isfinite(v).any() else None


def _width_ratio(values) -> np.ndarray:
    """Widest over narrowest width along the first axis; NaN where the narrowest is 0."""
    v = np.asarray(values, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(v[0] > 0, v[-1] / np.where(v[0] > 0, v[0], 1.0), np.nan)


if __name__ == "__main__":
    run_cli(ex)
