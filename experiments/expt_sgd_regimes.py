"""Regimes of SGD: test error, weight change and NTK change against temperature T and scale α.

A network f(w, x) is trained on the centred prediction f(w, x) − f(w₀, x) with the
α-scaled loss ℓ(α·pred, y)/α (large α: lazy; small α: feature learning) by SGD at
temperature T = dt/(bs·h), until the training set is fitted (docs/sgd_regimes.md; the
original's `python -m edm` parameters, under the same names and defaults, with the
exceptions listed there). Checkpoints follow the original's ladder of fractions of the
initial loss; the NTK, gradient statistics and drifts are taken on its coarser slow ladder.
A stop signal checkpoints the loop at the next step and a rerun resumes it (tracking.preempt);
``max_wall`` then counts the training time of all segments (docs/runs.md#preemption).

    python experiments/expt_sgd_regimes.py with dataset=mnist_parity ptr=1024 pte=2048 \\
        arch=mlp act=gelu h=64 L=8 dynamics=sgd alpha=1 dt=0.1 bs=64 max_wall=120
"""
from __future__ import annotations

import math
import os
import tempfile
from enum import IntEnum, unique

import numpy as np
import torch
from sacred import Experiment

from core import checks
from core.runtime import derived_seed, resolve_device, resolve_dtype
from data.regimes import DATASETS, IMAGE_DATASETS, build_dataset, teacher_vector
from dynamics.ntk import NTK_METHODS
from dynamics.regimes_drift import GF_FIRST_STAGES
from dynamics.regimes_steps import REGULARIZERS, SDE_NOISES
from dynamics.regimes_train import DYNAMICS, LOSSES, RegimesConfig, flat_metrics, train_regimes
from models.regimes import ACT_BETA, ACTIVATIONS, ARCHS, CONV_ARCHS, DEEP_ARCHS, build_model, check_act_beta
from tracking.preempt import add_checkpoint_config, checkpointing
from tracking.sacred_utils import configure_experiment, json_ready, run_cli, seed_everything

ex = add_checkpoint_config(configure_experiment(Experiment("sgd_regimes")))

DTYPE_NAMES = {"f32": "float32", "f64": "float64", "float32": "float32", "float64": "float64"}
IMAGE_SHAPES = {"mnist_parity": (1, 28, 28), "cifar_animal": (3, 32, 32)}


@unique
class Stream(IntEnum):
    """Spawn keys of the seeds derived from the run's seed for the seed_* keys left None; explicit
    values, so adding a stream reseeds no other."""
    SEED_INIT = 0
    SEED_BATCH = 1
    SEED_TRAINSET = 2
    SEED_TESTSET = 3


SEED_KEYS = tuple(stream.name.lower() for stream in Stream)  # seed_init, seed_batch, seed_trainset, seed_testset
FLAG_KEYS = ("ckpt_save_parameters", "ckpt_save_pred", "ckpt_save_gradoverlap", "ckpt_delta_pred", "ckpt_drift")


@ex.config
def cfg():
    expt_name = None  # free label to group runs in plots (e.g. the sweep's name)

    # --- data ---
    dataset = "mnist_parity"  # mnist_parity | cifar_animal | depleted_sign | sign | random_sign
    ptr = 1024  # P, training points
    pte = 2048  # test points
    d = None  # input dim of sign / random_sign / depleted_sign (required there); None for images
    data_chi = 0.0  # χ of depleted_sign: p(x_1) ∝ |x_1|^χ exp(-x_1²/2)
    data_root = None  # MNIST / CIFAR-10 files; None -> $DLT_DATA_ROOT, else ~/.cache/dltheory/datasets

    # --- network (every weight starts N(0, 1)) ---
    arch = "mlp"  # mlp | mlp_bias | linear | simple_diagonal_linear | simple_cnn | vgg11 | mnas (models/regimes.py)
    act = "relu"  # relu | gelu | silu | tanh, normalised to E[φ(z)²] = 1
    act_beta = ACT_BETA  # the original's --act_beta: declared with default 1.0 and never read; only 1.0 accepted
    h = 1 if arch in ("linear", "simple_diagonal_linear") else 64  # width (first conv block's channels); enters T
    # hidden layers (mlp, mlp_bias); the power w^L (simple_diagonal_linear)
    L = 8 if arch in ("mlp", "mlp_bias") else (2 if arch == "simple_diagonal_linear" else None)

    # --- loss ---
    alpha = 1.0  # α > 0: loss ℓ(α·pred, y)/α, hinge margin 1/α on the raw output
    loss = "hinge"  # hinge | quadhinge | softhinge | mse

    # --- dynamics ---
    dynamics = "sgd"  # sgd | sgd_only_unfit | gd_sde | gd_sde_only_unfit | gd
    bs = None  # batch size; None -> ptr (full batch)
    dt = None  # step size; give exactly one of dt and temp
    temp = None  # temperature T = dt / (bs·h), i.e. dt = T·bs·h
    sde_noise = "original"  # gd_sde noise: original (σ² = (1/bs − 1/P)Σℓ'², noise on all points) | minibatch (exact)
    regularizer = None  # None | l2 | l1 | norm_grad_loss | norm_grad_net (added to the batch objective)
    regu_scale = 0.0  # the regularizer's weight

    # --- stopping (zero training loss always stops) ---
    max_wall = 120.0  # seconds of training, checkpoints included; a resumed run counts on from the interrupted one
    max_step = None  # steps; None -> no limit
    mind_stop = 1.0  # stop once α·min(pred·y) >= mind_stop; None disables

    # --- checkpoints ---
    ckpt_modulo = 1  # keep every k-th rung of the loss ladder
    ckpt_save_mult = 0  # also checkpoint at steps 1, 2, 4, ... <= this
    ckpt_grad_stats = 0  # train (and test) points for the NTK observables; 0 off, -1 -> ptr
    ckpt_kernels = False  # save the NTK Gram matrices of every slow checkpoint (npz artifact)
    ntk_method = "auto"  # auto | structured | jacobian | ntvp (dynamics/ntk.py)
    ckpt_save_parameters = 0  # 1: save the parameters at the start and the stop (artifact parameters.pt)
    ckpt_save_pred = 0  # 1: save predictions and labels at every slow checkpoint (the stop's always are)
    ckpt_save_gradoverlap = 0  # 1: train/g_norm = Σ ∇L(w_ckpt)·Δw since the last checkpoint (needs ckpt_grad_stats)
    ckpt_delta_pred = 0  # 1: min/max/median |Δf| of one extra step at every checkpoint
    ckpt_drift = 0  # 1: drifts gd–gf, sgd–gf, gd–sgd over 2·dt at slow checkpoints
    ckpt_drift_n0 = 16  # batches averaged in the sgd drift
    gf_tol = 1e-5  # gradient-flow (drift) tolerance on outputs; on losses gf_tol·ℓ_α(0, 1)
    gf_mindt = 1e-10  # gradient-flow smallest step (forced through)
    gf_maxdt = 1.0  # gradient-flow largest step
    gf_first_stage = "fixed"  # fixed | original (the original's FSAL sign flip, see dynamics/regimes_drift.py)

    # --- seeds (None -> derived from `seed`) ---
    seed_init = None  # initial weights
    seed_batch = None  # batches and gd_sde noise
    seed_trainset = None  # training set (and the random_sign teacher)
    seed_testset = 0  # test set; fixed by default, as in the original, so runs share one test set

    # --- runtime ---
    device = "auto"  # auto | cpu | cuda
    dtype = "f32"  # f32 | f64 (float32 | float64)


@ex.named_config
def tutorial():
    """The original README's single run ("Tuto: execute a single training"): parity MNIST, 8-layer GELU MLP, SGD."""
    dataset = "mnist_parity"
    ptr = 1024
    pte = 2048
    arch = "mlp"
    act = "gelu"
    h = 64
    L = 8
    dynamics = "sgd"
    alpha = 1.0
    dt = 0.1
    bs = 64
    max_wall = 120.0


@ex.named_config
def perceptron():
    """The fixed keys of the generator preset ``perceptron``: the sweep ``depleted_perceptron`` of the README of
    the ICML 2023 paper's code (AntonioScl/SGD_learning_regimes; Sclocchi, Geiger & Wyart, "Dissecting the
    effects of SGD noise in distinct regimes of deep learning"), key for key: the lazy perceptron on
    depleted_sign; sweep seed_init, data_chi, d, ptr and dt. That README names no figure."""
    arch = "linear"
    alpha = 32768.0
    dataset = "depleted_sign"
    pte = 32768
    loss = "hinge"
    dynamics = "sgd"
    bs = 2
    ckpt_grad_stats = 512
    max_wall = 10000.0
    ckpt_save_mult = 1000000


@ex.named_config
def perceptron_bs():
    """The original README's "Phase diagrams learning rate - batch size" perceptron (d=128, ptr=8192, α=128);
    sweep data_chi, bs and dt."""
    arch = "linear"
    alpha = 128.0
    dataset = "depleted_sign"
    d = 128
    ptr = 8192
    pte = 32768
    loss = "hinge"
    dynamics = "sgd"
    max_wall = 3600.0


@ex.named_config
def mnist_fc5():
    """The fixed keys of the generator preset ``mnist_fc5``: the sweep ``mnist-FC-5L`` of the ICML 2023 code's
    README (see ``perceptron``), key for key: 5-hidden-layer ReLU MLP on parity MNIST at lazy α; sweep ptr,
    temp and seed_init. That README names no figure."""
    arch = "mlp"
    act = "relu"
    L = 5
    h = 128
    alpha = 32768.0
    pte = 32768
    loss = "hinge"
    dynamics = "sgd"
    bs = 16
    ckpt_grad_stats = 128
    max_wall = 10000.0
    dataset = "mnist_parity"


@ex.named_config
def mnist_alpha_dt():
    """The fixed keys of the generator preset ``mnist_alpha_dt``: the sweep ``mnist-alpha_dt-FC-5L`` of the ICML
    2023 code's README (see ``perceptron``), key for key: the (α, T) phase diagram, 5-hidden-layer GELU MLP on
    parity MNIST; sweep alpha, dt and seed_init. That README names no figure."""
    arch = "mlp"
    act = "gelu"
    L = 5
    h = 128
    dataset = "mnist_parity"
    ptr = 1024
    pte = 32768
    loss = "hinge"
    dynamics = "sgd"
    bs = 16
    ckpt_grad_stats = 1024
    max_wall = 14400.0


def validate(config: dict, seed: int) -> dict:
    """Check every user-facing key before any compute; returns the resolved values.

    Returns:
        dict with ``train`` (RegimesConfig), ``bs``, ``dt``, ``temp``, ``seeds`` (the four
        resolved seeds), ``dtype``, ``device`` and ``ckpt_grad_stats``.
    """
    def whole(key, lo, none_ok=False):  # integral floats such as 1e5 from the command line are accepted
        return checks.integer(key, config[key], lo, none_ok=none_ok, from_float=True)

    def positive(key):
        return checks.number(key, config[key], lo=0, strict=True)

    for key, allowed in (("dataset", DATASETS), ("arch", ARCHS), ("act", ACTIVATIONS), ("loss", LOSSES),
                         ("dynamics", DYNAMICS), ("ntk_method", NTK_METHODS), ("dtype", DTYPE_NAMES)):
        checks.one_of(key, config[key], allowed)
    check_act_beta(config["act_beta"])
    dataset, arch = config["dataset"], config["arch"]
    ptr, pte, h = whole("ptr", 1), whole("pte", 1), whole("h", 1)
    if arch in DEEP_ARCHS:
        if config["L"] is None:
            raise ValueError(f"L (number of hidden layers) must be set for arch={arch!r}; got None")
        whole("L", 1)
    elif config["L"] is not None:
        raise ValueError(f"L applies to arch in {DEEP_ARCHS} only; got L={config['L']!r} with arch={arch!r}")
    if dataset in IMAGE_DATASETS:
        if config["d"] is not None:
            raise ValueError(f"d applies to the synthetic datasets only; "
                             f"got d={config['d']!r} with dataset={dataset!r}")
    else:
        if config["d"] is None:
            raise ValueError(f"d (input dimension) must be set for dataset={dataset!r}; got None")
        whole("d", 1)
        if arch in CONV_ARCHS:
            raise ValueError(f"arch={arch!r} needs an image dataset {tuple(IMAGE_DATASETS)}; got dataset={dataset!r}")
    checks.number("data_chi", config["data_chi"], lo=-1, strict=True, finite=False)

    bs = ptr if config["bs"] is None else whole("bs", 1)
    checks.at_most("bs", bs, "ptr", ptr)
    if config["dynamics"] == "gd" and bs != ptr:
        raise ValueError(f"dynamics='gd' is full batch: bs must be None or ptr ({ptr}); got {bs}")
    if (config["dt"] is None) == (config["temp"] is None):
        raise ValueError(f"give exactly one of dt and temp (T = dt/(bs·h)); "
                         f"got dt={config['dt']!r}, temp={config['temp']!r}")
    if config["dt"] is not None:
        dt = positive("dt")
        temp = dt / (bs * h)
    else:
        temp = positive("temp")
        dt = temp * bs * h

    gs = whole("ckpt_grad_stats", -1)
    gs = ptr if gs == -1 else gs
    seeds = {}
    for stream in Stream:
        key = stream.name.lower()
        value = whole(key, 0, none_ok=True)
        seeds[key] = derived_seed(seed, stream) if value is None else value
    flags = {}
    for key in ("ckpt_kernels",) + FLAG_KEYS:  # the original's 0/1 integers, or booleans
        if config[key] not in (0, 1) or isinstance(config[key], float):
            raise ValueError(f"{key} must be 0 or 1 (or False / True); got {config[key]!r}")
        flags[key] = bool(config[key])
    for key, allowed in (("sde_noise", SDE_NOISES), ("regularizer", (None,) + REGULARIZERS),
                         ("gf_first_stage", GF_FIRST_STAGES)):
        checks.one_of(key, config[key], allowed)
    # RegimesConfig checks the remaining keys, naming them.
    train = RegimesConfig(
        alpha=positive("alpha"), dt=dt, bs=bs, loss=config["loss"], dynamics=config["dynamics"],
        max_wall=positive("max_wall"), max_step=whole("max_step", 1, none_ok=True),
        mind_stop=config["mind_stop"], ckpt_modulo=config["ckpt_modulo"], ckpt_save_mult=config["ckpt_save_mult"],
        ckpt_grad_stats=gs, ntk_method=config["ntk_method"], ckpt_drift_n0=whole("ckpt_drift_n0", 0),
        sde_noise=config["sde_noise"], regularizer=config["regularizer"], regu_scale=config["regu_scale"],
        gf_tol=config["gf_tol"], gf_mindt=config["gf_mindt"], gf_maxdt=config["gf_maxdt"],
        gf_first_stage=config["gf_first_stage"], **flags,
    )
    return {"train": train, "bs": bs, "dt": dt, "temp": temp, "seeds": seeds, "ckpt_grad_stats": gs,
            "dtype": resolve_dtype(DTYPE_NAMES[config["dtype"]]), "device": resolve_device(config["device"])}


def _progress(record: dict, alpha: float) -> str:
    tr, te = record["train"], record["test"]
    return (f"[{record['step']} t={record['t']:.2e} wall={record['wall']:.0f}s] "
            f"[train aL={alpha * tr['loss']:.2e} err={tr['err']:.3f} mind={tr['margin_min']:.2f} unfit={tr['unfit']}] "
            f"[test err={te['err']:.3f}]")


@ex.main
def main(_config, _run, _seed):
    checked = validate(_config, _seed)
    with checkpointing(_run, _config) as ck:  # SIGTERM/SIGUSR1/SIGINT -> checkpoint at a step boundary; resume
        return _main(_config, _run, _seed, checked, ck)


def _main(_config, _run, _seed, checked, ck):
    seed_everything(_seed)
    seeds, cfg, device, dtype = checked["seeds"], checked["train"], checked["device"], checked["dtype"]
    dataset = _config["dataset"]

    # --- data and network ---
    data = build_dataset(
        dataset, _config["ptr"], _config["pte"], seeds["seed_trainset"], seeds["seed_testset"],
        d=_config["d"], chi=float(_config["data_chi"]), data_root=_config["data_root"], dtype=dtype,
    ).to(device=device)
    in_shape = IMAGE_SHAPES.get(dataset, (_config["d"],))
    model = build_model(_config["arch"], in_shape, _config["h"], _config["act"], _config["L"],
                        torch.Generator().manual_seed(seeds["seed_init"]), act_beta=float(_config["act_beta"]))
    model.to(device=device, dtype=dtype)
    params0 = {k: v.detach() for k, v in model.named_parameters()}

    # --- training, logged as it goes ---
    def log(record):
        for name, value in flat_metrics(record).items():
            if math.isfinite(value):
                _run.log_scalar(name, value, record["step"])
        print(_progress(record, cfg.alpha), flush=True)

    gen_batch = torch.Generator(device=device).manual_seed(seeds["seed_batch"])
    # the perceptron's linear observables (arch linear) and the diagonal network's diag_lin record, as the original
    teacher, diag_power = None, None
    if _config["arch"] in ("linear", "simple_diagonal_linear") and dataset not in IMAGE_DATASETS:
        teacher = torch.as_tensor(teacher_vector(dataset, _config["d"], seeds["seed_trainset"]),
                                  dtype=dtype, device=device)
        diag_power = _config["L"] if _config["arch"] == "simple_diagonal_linear" else None
    with ck.deferring():  # a resumed run goes on from the saved loop state; wall time sums the segments
        run = train_regimes(model, params0, data, cfg, gen_batch, callback=log, teacher=teacher, diag_power=diag_power,
                            boundary=ck.boundary, resume=ck.state)

    _run.info["checkpoints"] = json_ready(run.checkpoints)
    with tempfile.TemporaryDirectory() as tmp:  # predictions and labels at the stop (and slow checkpoints)
        path = os.path.join(tmp, "predictions.npz")
        np.savez_compressed(path, steps=np.array([p["step"] for p in run.predictions]),
                            **{k: np.stack([p[k].numpy() for p in run.predictions])
                               for k in ("train_pred", "train_label", "test_pred", "test_label")})
        _run.add_artifact(path)
        if run.parameters:
            path = os.path.join(tmp, "parameters.pt")
            torch.save(run.parameters, path)
            _run.add_artifact(path)
    if run.kernels:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "ntk_kernels.npz")
            np.savez_compressed(path, steps=np.array([k["step"] for k in run.kernels]),
                                train=np.stack([k["train"].numpy() for k in run.kernels]),
                                test=np.stack([k["test"].numpy() for k in run.kernels]))
            _run.add_artifact(path)
    first, last = run.checkpoints[0], run.checkpoints[-1]
    slow = [c["ntk"] for c in run.checkpoints if c["ntk"] is not None]
    ntk_final = None  # the last NTK observables (eigenvalues stay in info)
    if slow:
        ntk_final = {split: {k: v for k, v in obs.items() if k != "eigenvalues"} for split, obs in slow[-1].items()}
    return json_ready({
        "T": checked["temp"],
        "step_size": checked["dt"],
        "batch_size": checked["bs"],
        "stop_reason": run.stop_reason,
        "diverged": run.stop_reason == "diverged",
        "steps": last["step"],
        "t": last["t"],
        "wall": last["wall"],
        "num_checkpoints": len(run.checkpoints),
        "model_dim": sum(p.numel() for p in params0.values()),
        "seeds": {k.removeprefix("seed_"): v for k, v in seeds.items()},
        "init": {"train": first["train"], "test": first["test"]},
        "final": {"train": last["train"], "test": last["test"],
                  "weights": {"norm": last["weights"]["norm"], "delta": last["weights"]["delta"]}},
        "ntk": ntk_final,
        "linear": last["linear"],
        "diag_lin": last["diag_lin"],
    })


if __name__ == "__main__":
    run_cli(ex)
