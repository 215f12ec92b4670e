"""λ̂ over SGD training: ResNet18 on CIFAR-10.

Trains a ResNet18 (torchvision's, or its CIFAR-stem variant, with k, 2k, 4k, 8k
channels for ``layer_width_factor`` = k) on CIFAR-10 and, every ``logging_period`` steps, before the first and after
the last, estimates the local learning coefficient λ̂(w_t) at the current weights
with multi-chain SGLD on the mean cross-entropy (docs/notes/llc.md#llc-curve). Sampling uses the
network in eval mode: BatchNorm normalises with its running statistics, which are
held fixed (they are buffers of the functional model, not parameters), so every
vmapped chain sees the same deterministic function of its own weights.

As in the original: inputs are pixels / 255 (``input_normalisation``), the training
loss carries the penalty l2·Σ p² (``training_config.l2_regularization``), and with
label noise SGD trains on the noisy labels while SGLD uses the clean ones.

At each checkpoint the run records t, the minibatch loss, the full training loss
and accuracy, the test loss and accuracy (losses with the penalty, and ``*_no_reg``
without), and λ̂ (mean, std, per chain, R-hat, trace
summary). The time series go to metrics; the per-checkpoint records to
``info['checkpoints']``; the SGLD traces to the artifact ``llc_traces.npz``. An
estimate that diverges is recorded as failed at its checkpoint, with the reason, and
training continues.

    python experiments/expt_llc_curve.py -F runs/llc_curve with sgld_config.epsilon=2e-07 \\
        training_config.learning_rate=0.005 training_config.batch_size=512 logging_period=1000 seed=0
"""
from __future__ import annotations

import os
import tempfile
from enum import IntEnum, unique

import numpy as np
import torch
import torch.nn.functional as F
from sacred import Experiment

from core import checks
from core.runtime import derived_seed, resolve_device
from data.vision import load_vision_dataset
from dynamics.engine import evaluate as engine_evaluate
from dynamics.train import TrainingConfig, train
from llc.estimate import estimate_llc_flat, flat_loss_for_module
from llc.restricted import estimate_llc_per_layer
from llc.samplers import sampler_kwargs, split_sampler
from llc.sgld import SGLDConfig, SGLDDivergenceError
from models.resnet import MODEL_NAMES, build_resnet
from tracking.calibration_command import main_seed, run_calibration, validate_calibration
from tracking.preempt import add_checkpoint_config, checkpointing
from tracking.sacred_utils import build_config, configure_experiment, json_ready, run_cli, seed_everything

ex = add_checkpoint_config(configure_experiment(Experiment("llc_curve")))

DATA_NAMES = ("cifar10", "cifar100")
PER_LAYER = (None, "module", "parameter")
INPUT_NORMALISATIONS = ("unit_interval", "standardise")


@ex.config
def cfg():
    expt_name = None  # free label to group runs in plots

    # --- model and data ---
    model_data_config = dict(
        model_name="resnet18",  # resnet18 (torchvision: 7x7/2 stem + max-pool) | resnet18_cifar (3x3/1 stem)
        data_name="cifar10",  # cifar10 | cifar100 (torchvision files, normalised, downloaded on demand)
        label_noise_level=0.0,  # fraction of training labels given a uniformly random class, in [0, 1]
        layer_width_factor=64,  # k: stage channels k, 2k, 4k, 8k (integer >= 1)
    )
    input_normalisation = "unit_interval"  # unit_interval: pixels / 255 (the original) | standardise: then (x-mean)/std
    data_root = None  # torchvision data folder; None -> $DLT_DATA_ROOT, else ~/.cache/dltheory/datasets

    # --- training (train mode, minibatches drawn with replacement) ---
    training_config = dict(
        optim="sgd",  # sgd | adam
        learning_rate=1e-3,
        momentum=None,  # SGD only; None -> 0
        batch_size=128,
        num_steps=20000,
        l2_regularization=None,  # adds l2·Σ p² to the training loss (weight decay 2·l2 for SGD); None -> 0
    )
    logging_period = 200  # SGD steps between λ̂ checkpoints (> 0)

    # --- SGLD / LLC at each checkpoint (eval mode, mean cross-entropy) ---
    sgld_config = dict(
        epsilon=5e-6,  # step size ε
        gamma=1.0,  # localisation strength γ
        num_steps=1000,  # steps per chain, burn-in included
        batch_size=1024,  # minibatch per step and chain (<= n)
        num_chains=4,  # vectorised with vmap
        nbeta=None,  # n·β; None -> n / log n
        num_burnin_steps=None,  # None -> discard the first 90%
        compile="auto",  # torch.compile the step: "auto" (runs of >= 50,000 chain-steps) | True | False
        sampler="sgld",  # "sgld", "sgnht" or "sghmc" (llc.samplers); the default runs SGLD as before
        diffusion_factor=0.01,  # sgnht only: noise 2Aε and (default) thermostat start A, as devinterp
        thermostat_init=None,  # sgnht only: the thermostat's start ζ_0; None -> diffusion_factor
        friction=0.1,  # sghmc only: momentum friction α in (0, 1]
    )
    loss_trace_minibatch = True  # average minibatch losses (free) vs full-data losses
    force_realisable = False  # True: targets are the current model's logits (soft labels), so w_t is a true parameter
    llc_per_layer = None  # λ̂ per layer at each checkpoint (llc.restricted; not in the original): None|module|parameter

    # --- `calibrate` command: short SGLD runs at the initial weights over a grid (llc.calibrate) ---
    # calibrate: ε grid (each > 0) x nbetas x gammas; None -> the run's sgld_config values, burn-in None -> half
    calibration = dict(
        epsilons=[2e-8, 2e-7, 2e-6, 2e-5],  # ε grid, every entry > 0
        nbetas=None,  # nβ grid (None entries -> n / log n); None -> [the run's nβ]
        gammas=None,  # γ grid (>= 0); None -> [sgld_config.gamma]
        num_steps=200,  # steps per setting; None -> sgld_config.num_steps
        num_chains=None,  # None -> sgld_config.num_chains
        batch_size=None,  # None -> sgld_config.batch_size
        num_burnin_steps=None,  # None -> half of num_steps
        min_noise_fraction=0.9,  # stable needs noise share of the step >= this (bounds the ε bias near 10%)
    )

    # --- runtime ---
    eval_batch_size = 1000  # chunk size of full-data evaluations
    device = "auto"  # auto | cpu | cuda
    do_plot = False  # save λ̂ and losses over training as the artifact llc_curve.png
    verbose = False  # print one line per checkpoint
    seed = 42  # the original's default


@ex.named_config
def readme():
    """The original README's run (seed 001): ResNet18, SGD at lr 0.005, batch 512, λ̂ every 1000 of 30001 steps.

    The generator's ``readme`` preset writes the same keys; ``paper_*`` vary one of them.
    """
    training_config = dict(optim="sgd", learning_rate=0.005, momentum=None, batch_size=512, num_steps=30001,
                           l2_regularization=None)
    logging_period = 1000
    sgld_config = dict(epsilon=2e-7, gamma=1.0, num_steps=5000, batch_size=2048)
    force_realisable = False


def validate(config: dict) -> dict:
    """Check every key that needs no data before any compute; returns the built dataclasses."""
    md = dict(config["model_data_config"])
    checks.known_entries("model_data_config", md, ("model_name", "data_name", "label_noise_level",
                                                   "layer_width_factor"))
    checks.one_of("model_data_config.model_name", md["model_name"], MODEL_NAMES)
    checks.one_of("model_data_config.data_name", md["data_name"], DATA_NAMES)
    if md["label_noise_level"] is None:  # the original's default: no noise
        md["label_noise_level"] = 0.0
    checks.number("model_data_config.label_noise_level", md["label_noise_level"], lo=0, hi=1)
    checks.integer("model_data_config.layer_width_factor (channels of the first stage)", md["layer_width_factor"])
    checks.one_of("input_normalisation", config["input_normalisation"], INPUT_NORMALISATIONS)
    checks.integer("logging_period", config["logging_period"])
    checks.integer("eval_batch_size", config["eval_batch_size"])
    tc = dict(config["training_config"])
    if "weight_decay" in tc:
        raise ValueError("training_config takes l2_regularization (the weight decay), not weight_decay")
    training = build_config(TrainingConfig, tc, "training_config")
    sgld_values = {**config["sgld_config"], "loss_trace_minibatch": config["loss_trace_minibatch"]}
    sgld = build_config(*split_sampler(sgld_values), "sgld_config")
    for key in ("force_realisable", "do_plot", "verbose"):
        checks.boolean(key, config[key])
    checks.one_of("llc_per_layer", config["llc_per_layer"], PER_LAYER)
    calibration = validate_calibration(config["calibration"], sgld)
    return {"model_data": md, "training": training, "sgld": sgld, "device": resolve_device(config["device"]),
            "calibration": calibration}


def check_batch_sizes(training: TrainingConfig, sgld: SGLDConfig, n: int) -> None:
    """Both batch sizes must fit in the n training points (checked once the data are loaded)."""
    checks.at_most("training_config.batch_size", training.batch_size, "the number of training data", n)
    checks.at_most("sgld_config.batch_size", sgld.batch_size, "the number of training data", n)


@unique
class Stream(IntEnum):
    """The run's independent random streams (derived_seed spawn keys); explicit values, so adding
    a stream reseeds no other."""
    INIT = 0
    BATCHES = 1
    LABEL_NOISE = 2
    SGLD = 3


def noisy_labels(y: torch.Tensor, level: float, num_classes: int, gen: torch.Generator) -> torch.Tensor:
    """A copy of y with floor(level·n) labels, at distinct random positions, set to a uniform random class.

    As the original's introduce_label_noise: a new label may equal the old one.
    """
    n = y.shape[0]
    pos = torch.randperm(n, generator=gen)[: int(n * level)]
    out = y.clone()
    out[pos] = torch.randint(0, num_classes, (pos.numel(),), generator=gen, dtype=y.dtype)
    return out


def l2_penalty(model: torch.nn.Module, c: float | None) -> float:
    """c Σ_p ||p||² over all parameters (0 for None): the training loss's penalty."""
    if not c:
        return 0.0
    with torch.no_grad():
        return float(c * sum(float((p.double() ** 2).sum()) for p in model.parameters()))


def soft_cross_entropy(logits: torch.Tensor, target_logits: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of -Σ_k softmax(target)_k log softmax(logits)_k (force_realisable's loss)."""
    return -(F.softmax(target_logits, dim=-1) * F.log_softmax(logits, dim=-1)).sum(-1).mean()


@torch.no_grad()
def evaluate(model, loss_fn, x, y, labels, chunk: int) -> tuple[float, float]:
    """Mean loss against ``y`` and accuracy against ``labels`` over all of x, in chunks (the engine's evaluation)."""
    ev = engine_evaluate(model, x, y, lambda z, yb: float(loss_fn(z, yb)) * z.shape[0], chunk, labels=labels)
    return ev["loss"], ev["accuracy"]


def build_problem(_config, _seed, checked) -> dict:
    """The data on the device (labels noisy for SGD, clean for SGLD) and the model at its initialisation.

    Shared by the main run and the ``calibrate`` command, so both see the same model and data.
    """
    md, training, sgld, device = checked["model_data"], checked["training"], checked["sgld"], checked["device"]
    # --- data (in memory, normalised) ---
    standardise = _config["input_normalisation"] == "standardise"
    x_train, y_clean = load_vision_dataset(md["data_name"], train=True, data_root=_config["data_root"],
                                           normalize=standardise)
    x_test, y_test = load_vision_dataset(md["data_name"], train=False, data_root=_config["data_root"],
                                         normalize=standardise)
    num_classes = 100 if md["data_name"] == "cifar100" else 10
    check_batch_sizes(training, sgld, x_train.shape[0])
    y_train = y_clean  # SGD's labels; SGLD's targets are always the clean labels, as in the original
    if md["label_noise_level"] > 0:
        y_train = noisy_labels(y_clean, md["label_noise_level"], num_classes,
                               torch.Generator().manual_seed(derived_seed(_seed, Stream.LABEL_NOISE)))
    x_train, y_train, y_clean, x_test, y_test = (t.to(device) for t in (x_train, y_train, y_clean, x_test, y_test))
    n = x_train.shape[0]

    # --- model ---
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derived_seed(_seed, Stream.INIT))  # module init draws from the global RNG
        model = build_resnet(md["model_name"], num_classes, base_channels=md["layer_width_factor"])
    model.to(device)
    return dict(model=model, n=n, x_train=x_train, y_train=y_train, y_clean=y_clean, x_test=x_test, y_test=y_test)


def sgld_targets(model, x_train, y_clean, force_realisable: bool, chunk: int):
    """(targets, loss) of SGLD: the clean labels and cross-entropy, or the model's own logits (n, classes)."""
    if not force_realisable:
        return y_clean, F.cross_entropy
    with torch.no_grad():
        targets = torch.cat([model(x_train[s:s + chunk]) for s in range(0, x_train.shape[0], chunk)])
    return targets, soft_cross_entropy


def sgld_kwargs(sgld: SGLDConfig) -> dict:
    """estimate_llc's keyword arguments for the run's SGLD settings."""
    keys = ("epsilon", "gamma", "num_steps", "batch_size", "num_chains", "nbeta", "num_burnin_steps",
            "loss_trace_minibatch")
    return {**{k: getattr(sgld, k) for k in keys}, **sampler_kwargs(sgld)}


def _per_layer(_run, model, loss_fn, x, targets, sgld, seed, config, t) -> dict:
    """λ̂ of each layer group at the current weights (same seed as the full λ̂); logs llc/layer/<name>.

    Returns the checkpoint record's entries: layer_status ('ok' | 'failed', with layer_reason)
    and layers, a list of {name, lambdahat, lambdahat_std} (a list: names hold dots, which
    MongoDB refuses in keys).
    """
    try:
        results = estimate_llc_per_layer(model, loss_fn, (x, targets), by=config["llc_per_layer"], seed=seed,
                                         device=str(x.device), eval_batch_size=config["eval_batch_size"],
                                         **sgld_kwargs(sgld))
    except (SGLDDivergenceError, FloatingPointError) as err:  # recorded; the full λ̂ and training go on
        return {"layer_status": "failed", "layer_reason": str(err), "layers": []}
    for name, res in results.items():
        _run.log_scalar(f"llc/layer/{name}", res.lambdahat, t)
    layers = [{"name": name, "lambdahat": res.lambdahat, "lambdahat_std": res.lambdahat_std}
              for name, res in results.items()]
    return {"layer_status": "ok", "layers": layers}


@ex.main
def main(_config, _run, _seed):
    checked = validate(_config)
    with checkpointing(_run, _config) as ck:  # SIGTERM/SIGUSR1/SIGINT -> checkpoint at a step boundary; resume
        return _main(_config, _run, _seed, checked, ck)


def _main(_config, _run, _seed, checked, ck):
    seed_everything(_seed)
    md, training, sgld, device = checked["model_data"], checked["training"], checked["sgld"], checked["device"]
    period, chunk = _config["logging_period"], _config["eval_batch_size"]

    pb = build_problem(_config, _seed, checked)
    model, n = pb["model"], pb["n"]
    x_train, y_train, y_clean, x_test, y_test = (pb[k] for k in ("x_train", "y_train", "y_clean", "x_test", "y_test"))
    _run.info["model_dim"] = sum(p.numel() for p in model.parameters())
    checkpoints = _run.info.setdefault("checkpoints", [])  # restored on resume
    traces = [t.numpy() for t in ck.state["traces"]] if ck.state else []  # (C, T) each

    def checkpoint(t: int, batch_loss: float | None) -> None:
        model.eval()  # BatchNorm: running statistics, not batch statistics, for evaluation and sampling
        try:
            train_ce, train_acc = evaluate(model, F.cross_entropy, x_train, y_train, y_train, chunk)
            test_ce, test_acc = evaluate(model, F.cross_entropy, x_test, y_test, y_test, chunk)
            penalty = l2_penalty(model, training.l2_regularization)
            targets, loss_fn = sgld_targets(model, x_train, y_clean, _config["force_realisable"], chunk)
            rec = {"t": t, "batch_loss": batch_loss, "train_loss": train_ce + penalty, "train_loss_no_reg": train_ce,
                   "train_accuracy": train_acc, "test_loss": test_ce + penalty, "test_loss_no_reg": test_ce,
                   "test_accuracy": test_acc, "l2_penalty": penalty}
            loss, w_t = flat_loss_for_module(model, loss_fn, next(model.parameters()).dtype, device)
            seed = derived_seed(_seed, Stream.SGLD, len(checkpoints))
            try:
                res = estimate_llc_flat(loss, w_t, x_train, targets, sgld, seed=seed, eval_batch_size=chunk)
                rec.update(status="ok", **res.summary())
                traces.append(res.loss_trace)
                _run.log_scalar("llc/lambdahat", res.lambdahat, t)
                _run.log_scalar("llc/lambdahat_std", res.lambdahat_std, t)
                _run.log_scalar("llc/init_loss", res.init_loss, t)
            except (SGLDDivergenceError, FloatingPointError) as err:  # one bad checkpoint: record it, keep training
                rec.update(status="failed", reason=str(err))
                traces.append(np.full((sgld.num_chains, sgld.num_steps), np.nan))
            if _config["llc_per_layer"] is not None:
                rec.update(_per_layer(_run, model, loss_fn, x_train, targets, sgld, seed, _config, t))
        finally:
            model.train()
        if batch_loss is not None:
            _run.log_scalar("train/batch_loss", batch_loss, t)
        for key, name in (("train_loss", "train/loss"), ("train_accuracy", "train/accuracy"),
                          ("test_loss", "test/loss"), ("test_accuracy", "test/accuracy")):
            _run.log_scalar(name, rec[key], t)
        checkpoints.append(json_ready(rec))
        if _config["verbose"]:
            print(f"t={t} train_loss={rec['train_loss']:.4g} test_acc={test_acc:.3f} "
                  f"lambdahat={rec.get('lambdahat', float('nan')):.4g} {rec['status']}")

    def callback(step: int, batch_loss: float) -> None:
        t = step + 1  # SGD steps done
        if t % period == 0 or t == training.num_steps:
            checkpoint(t, batch_loss)

    def boundary(steps_done, train_capture):
        ck.boundary(steps_done, lambda: {"train": train_capture(), "traces": [torch.from_numpy(t) for t in traces]})

    if ck.state is None:
        checkpoint(0, None)
    with ck.deferring():
        train(model, F.cross_entropy, x_train, y_train, training,
              torch.Generator(device=device).manual_seed(derived_seed(_seed, Stream.BATCHES)), callback=callback,
              boundary=boundary, resume=ck.state["train"] if ck.state else None)

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "llc_traces.npz")
        np.savez_compressed(path, loss_trace=np.stack(traces), t=np.array([c["t"] for c in checkpoints]))  # (K, C, T)
        _run.add_artifact(path)
        if _config["do_plot"]:
            from tracking.figures_llc import checkpoints_frame, plot_llc_curve, save_figure

            fig = plot_llc_curve(checkpoints_frame(checkpoints), title=f"{md['model_name']} on {md['data_name']}")
            _run.add_artifact(str(save_figure(fig, os.path.join(tmp, "llc_curve.png"))))

    final = checkpoints[-1]
    return json_ready({
        "final_t": final["t"],
        "final_lambdahat": final.get("lambdahat"),
        "final_lambdahat_std": final.get("lambdahat_std"),
        "final_train_loss": final["train_loss"],
        "final_test_loss": final["test_loss"],
        "final_test_accuracy": final["test_accuracy"],
        "num_checkpoints": len(checkpoints),
        "num_failed_checkpoints": sum(c["status"] != "ok" for c in checkpoints),
        "num_training_data": n,
        "model_dim": _run.info["model_dim"],
    })


@ex.command
def calibrate(_config, _run):
    """Sweep calibration.epsilons (× nbetas × gammas) at the initial weights w_0, the main run's first checkpoint.

    Same model, data, SGLD targets and seed as the λ̂ at t = 0; figure calibration.png,
    table in info['calibration'].
    """
    checked = validate(_config)
    _seed = main_seed(ex)  # the main run's seed, so the same model, data and SGLD draws
    seed_everything(_seed)
    pb = build_problem(_config, _seed, checked)
    if checked["calibration"]["batch_size"] > pb["n"]:
        raise ValueError(f"calibration.batch_size must be <= the number of training data ({pb['n']}); "
                         f"got {checked['calibration']['batch_size']}")
    model = pb["model"].eval()
    targets, loss_fn = sgld_targets(model, pb["x_train"], pb["y_clean"], _config["force_realisable"],
                                    _config["eval_batch_size"])
    md = checked["model_data"]
    return run_calibration(_run, model, loss_fn, (pb["x_train"], targets), checked["calibration"],
                           derived_seed(_seed, Stream.SGLD, 0), str(checked["device"]),
                           f"{md['model_name']} on {md['data_name']} at initialisation")


if __name__ == "__main__":
    run_cli(ex)
