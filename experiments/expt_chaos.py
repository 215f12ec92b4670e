"""Chaotic dynamics of SGD: exact minibatch Hessians, Lyapunov spectra, CGD pruning, perturbed copies.

Trains a small classifier (MLP 256-20-10 or a small CNN) on USPS or FashionMNIST at
16x16 with batch 8 (reference.md §3). At every step it takes the exact minibatch
Hessian H_t (layer-structured for ReLU MLPs, ``dynamics.mlp_hessian``; vmapped HVPs
otherwise) and, per the logging flags, records its spectrum, the local chaos counts
(λ < 0 or λ > 2/lr), the cosine of the gradient with its extreme eigenvectors, and
propagates a tangent frame through Y ← (I − lr H_t) Y (momentum: the velocity is
part of the tangent state) with QR re-orthonormalisation for the Lyapunov
exponents. ``optim.name=cgd`` removes the gradient's components along a chosen set
of eigenvectors (``dynamics.cgd``). ``perturb_strat`` trains ``parallel`` perturbed
copies on the same batches and fits d(t)² = a t + b t² + d0² to their distances.

Options keep the original's names; Hydra's groups become config dicts:

    python experiments/expt_chaos.py with optim.name=cgd optim.k=100 optim.prune_set=neg \\
        logging.log_lyapunov=True lyapunov.k=50 seed=42
"""
from __future__ import annotations

import collections
import math
import os
import tempfile
import warnings
from typing import NamedTuple

import numpy as np
import torch
from sacred import Experiment
from torch.func import grad_and_value

from data.vision import check_dataset_name, load_vision_dataset
from dynamics.cgd import OptimConfig, project_gradient, select_pruned, sgd_step
from dynamics.hessian import SymEig, check_dense_hessian_size, dense_eigh, dense_hessian
from dynamics.lyapunov import (
    expanding_subspace, exponents, init_lyapunov, initial_vectors, local_chaos_counts, propagate, sgd_tangent_map,
)
from dynamics.mlp_hessian import MLP_ACTIVATIONS, mlp_hessian_eigh, mlp_hessian_eigh_nbytes, mlp_params_from_flat
from dynamics.perturb import (
    NEEDS_LYAPUNOV, STRATEGIES, fit_distance, load_eigenthings, perturbation_direction, random_subspace_baseline,
    save_eigenthings, subspace_similarity,
)
from llc.estimate import flat_model_for_module
from models.chaos_nets import build_model, num_parameters
from models.device import DTYPES, derived_seed, resolve_device, resolve_dtype
from tracking.sacred_utils import build_config, configure_experiment, json_ready, run_cli, seed_everything

ex = configure_experiment(Experiment("chaos"))

IMAGE_SIZE = 16  # USPS is 16x16; FashionMNIST is resized to it
NUM_CLASSES = 10
DISTANCE_FIT_D0 = ("fixed", "free")
POSITIVE_EXPONENT = 1e-10  # χ above this counts as positive (a step that is the identity gives |R_ii| = 1 ± eps)


@ex.config
def cfg():
    expt_name = None  # free label to group runs in plots
    tags = []  # labels kept with the run (the original's neptune tags)

    # --- data and training (original: main config) ---
    dataset = "usps"  # usps | fmnist (resized to 16x16); normalised with the training split's statistics
    data_root = None  # None -> $DLT_DATA_ROOT, else ~/.cache/dltheory/datasets; downloaded on demand
    batch_size = 8  # minibatch; the Hessian is that of the minibatch loss
    max_epochs = 40  # passes over the shuffled training set
    max_steps = None  # stop after this many steps (None: max_epochs full epochs)
    debug = False  # small subset: at most 256 training and 128 test points
    num_train = None  # use the first num_train training points (None: all)
    num_test = None  # likewise for the test split

    # --- model (original: model group; `model=cnn` -> model.name=cnn) ---
    model = dict(
        name="mlp",  # mlp | cnn
        inter_dim=20,  # mlp: hidden width (256-20-10)
        base_channels=4,  # cnn: channels c of the full-resolution convs (the tail goes c, 2c, 2c)
        block_cnt=1,  # cnn: full-resolution conv -> activation blocks before the 4-pool tail (1,158 params at 4, 1)
        activation="relu",  # relu | tanh | sigmoid | elu | linear (structured Hessian: relu, linear)
    )

    # --- optimiser (original: optim group; `optim=cgd` -> optim.name=cgd) ---
    optim = dict(
        name="sgd",  # sgd | cgd (prune gradient components along Hessian eigenvectors)
        lr=1e-3,  # learning rate
        momentum=0.0,  # heavy-ball μ in [0, 1), PyTorch's form
        k=None,  # cgd: directions pruned per step (None: the whole prune set)
        prune_set="chaotic",  # cgd: chaotic (λ < 0 or λ > 2(1+μ)/lr) | pos | neg
        prune_k="top_abs",  # cgd: which k of the set: top_abs (largest |λ|) | rand
        prune_start=0,  # cgd: first step that prunes
        noise=False,  # cgd: replace pruned components by noise_fac · N(0, 1)
        noise_fac=None,  # cgd: noise scale (needed with noise)
        prune_global=False,  # cgd: prune fixed stored Lyapunov vectors (χ > 0: chaotic/pos, χ < 0: neg)
        prune_global_checkpoint=None,  # cgd: eigenthings .npz for prune_global (None: eigenthings_path/_run)
    )

    # --- curvature ---
    eps_eigh = 0.0  # eigh of H + eps·I (eigenvalues shifted back)
    lyapunov = dict(
        k=None,  # tangent directions tracked (None: all P, or 2P with momentum; cost ~ P·K per step)
        qr_every=1,  # steps between QR re-orthonormalisations (Benettin)
    )
    max_memory_gb = 8.0  # refuse exact Hessians / tangent frames that would need more

    # --- perturbation experiment ---
    parallel = 1  # perturbed copies (copy 0 is the unperturbed reference); cycles over (strategy, eps)
    perturb_strat = None  # None | max_chaos | randn_chaos | max_convergence | randn_convergence | randn | all
    perturb_eps = [1e-1]  # perturbation norms
    eigenthings_path = None  # .npz written by save_eigenthings (Lyapunov exponents and initial vectors)
    eigenthings_run = dict(  # or the eigenthings.npz artifact of an earlier run (used when source is set)
        source=None,  # run store: 'runs/chaos', a MongoDB URL or 'host:port:db'
        run_id=None,  # that run's id, or
        run_key=None,  # its run_key (what gen_commands writes)
    )

    distance_fit_d0 = "fixed"  # d(t)² = a t + b t² + d0²: fixed (d0 = the copy's perturb_eps, original) | free

    # --- logging (original: logging group) ---
    logging = dict(
        log_eigenthings=True,  # Hessian spectrum statistics, local chaos counts, gradient cosines
        log_lyapunov=True,  # Lyapunov exponents (max, min, number positive)
        log_subsim=False,  # similarity of the chaotic Hessian eigenspace between logged steps
        log_lyapunov_subsim=False,  # similarity of the expanding Lyapunov subspace fixed at t_lya_subsim
        log_freq=1,  # log every log_freq steps (10 suggested for long runs)
        t_lya_subsim=None,  # steps t_0 at which the Lyapunov subspace is fixed, e.g. [10, 10000]
        plot_eigs_every=0,  # store the full Hessian spectrum every n steps (artifact hessian_spectra.npz)
        save_hessian_dist_every=0,  # same store (the original's second name for it)
        plot_mats_every=0,  # store |H| pooled to 256x256 every n steps (artifact hessian_matrices.npz)
        plot_trajectories=False,  # store the copies' trajectories projected on 2 random directions
        signal_noise_window=0,  # gradient signal-to-noise ratio over the last n steps (0: off)
        save_eigenthings=False,  # after training: artifact eigenthings.npz, exponents and initial vectors (full frame)
        save_lyapunov_at=None,  # epoch (0-based) after which the same goes to eigenthings_epoch<E>.npz (full frame)
    )

    # --- runtime ---
    device = "auto"  # auto | cpu | cuda (the original's gpus=['cuda:0'] -> device=cuda:0)
    dtype = "float32"  # training dtype; curvature and tangent frames are always float64


@ex.named_config
def cgd_chaotic():
    optim = dict(name="cgd", prune_set="chaotic")  # Figure 1


@ex.named_config
def cgd_pos():
    optim = dict(name="cgd", prune_set="pos")  # Figure 1


@ex.named_config
def cgd_neg():
    optim = dict(name="cgd", prune_set="neg")  # Figure 1


@ex.named_config
def lyapunov_save():
    logging = dict(save_eigenthings=True)  # Figure 3, first run: Lyapunov directions for the perturbation run (same seed)


@ex.named_config
def distance():
    perturb_strat = "all"  # Figure 3a: five perturbed copies, one per strategy (needs eigenthings_path)
    parallel = 5
    logging = dict(log_eigenthings=False, log_lyapunov=False)


@ex.named_config
def subsim_cnn():
    model = dict(name="cnn")  # subspace similarity of the expanding Lyapunov directions, CNN on USPS
    logging = dict(log_lyapunov_subsim=True, t_lya_subsim=[10, 10000], log_freq=10)


# ----------------------------------------------------------------------------- validation

class Checked(NamedTuple):
    """What validate() built and decided (a NamedTuple: this script is not imported as a package module)."""

    optim: OptimConfig
    model: torch.nn.Module
    num_params: int
    structured: bool
    strategies: tuple
    needs_hessian: bool
    needs_lyapunov: bool
    needs_initial: bool  # the graded R product for initial vectors (subsim, saved eigenthings)
    tangent_dim: int
    tangent_k: int
    t_lya_subsim: tuple
    device: torch.device
    eigenthings: dict | None  # Lyapunov exponents / initial vectors for the perturbations
    prune_dirs: dict | None  # the same for prune_global


def _int(key, value, lo=0, none_ok=False):
    if value is None and none_ok:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ValueError(f"{key} must be {'None or ' if none_ok else ''}an integer >= {lo}; got {value!r}")


# Above this many tracked tangent directions a CPU run is warned that the QR dominates its cost.
CPU_FRAME_WARN = 512


def _group(config, key, allowed=None) -> dict:
    """A copy of the option group ``config[key]``, its entries checked against ``allowed``.

    A non-dict (Hydra's ``model=cnn`` group pick) gets an error naming the Sacred spelling.
    """
    value = config[key]
    if not isinstance(value, dict):
        hint = f" (Hydra's `{key}={value}` is `{key}.name={value}` here)" if key in ("model", "optim") else ""
        raise ValueError(f"{key} must be a dict of options; got {value!r}{hint}: set its entries as {key}.<entry>=...")
    unknown = sorted(set(value) - set(allowed)) if allowed is not None else []
    if unknown:
        raise ValueError(f"{key} has unknown entries {unknown}; allowed: {sorted(allowed)}")
    return dict(value)


def validate(config: dict) -> Checked:
    """Check every user-facing key before any compute (data loading included)."""
    check_dataset_name(config["dataset"], "dataset")
    _int("batch_size", config["batch_size"], 1)
    _int("max_epochs", config["max_epochs"], 1)
    _int("max_steps", config["max_steps"], 1, none_ok=True)
    _int("num_train", config["num_train"], 1, none_ok=True)
    _int("num_test", config["num_test"], 1, none_ok=True)
    if config["dtype"] not in DTYPES:
        raise ValueError(f"dtype must be one of {tuple(DTYPES)}; got {config['dtype']!r}")
    mcfg = _group(config, "model", {"name", "inter_dim", "base_channels", "block_cnt", "activation"})
    model = build_model(mcfg["name"], (1, IMAGE_SIZE, IMAGE_SIZE), NUM_CLASSES, torch.Generator().manual_seed(0),
                        inter_dim=mcfg["inter_dim"], base_channels=mcfg["base_channels"],
                        block_cnt=mcfg["block_cnt"], activation=mcfg["activation"])
    p = num_parameters(model)
    optim = build_config(OptimConfig, _group(config, "optim"), "optim")
    if optim.k is not None and optim.k > p:
        raise ValueError(f"optim.k must be <= the number of parameters ({p}); got {optim.k}")
    log = _group(config, "logging", {"log_eigenthings", "log_lyapunov", "log_subsim", "log_lyapunov_subsim", "log_freq",
                                   "t_lya_subsim", "plot_eigs_every", "save_hessian_dist_every", "plot_mats_every",
                                   "plot_trajectories", "signal_noise_window", "save_eigenthings", "save_lyapunov_at"})
    _int("logging.log_freq", log["log_freq"], 1)
    for key in ("plot_eigs_every", "save_hessian_dist_every", "plot_mats_every", "signal_noise_window"):
        _int(f"logging.{key}", log[key], 0)
    t_sub = log["t_lya_subsim"]
    if t_sub is not None:
        if not isinstance(t_sub, (list, tuple)) or not all(isinstance(t, (int, float)) and t >= 1 and float(t).is_integer() for t in t_sub):
            raise ValueError(f"logging.t_lya_subsim must be None or a list of whole step numbers >= 1; got {t_sub!r}")
        t_sub = tuple(sorted({int(t) for t in t_sub}))
    if log["log_lyapunov_subsim"] and not t_sub:
        raise ValueError("logging.log_lyapunov_subsim needs logging.t_lya_subsim, e.g. [10, 10000]")
    lyap = _group(config, "lyapunov", {"k", "qr_every"})
    _int("lyapunov.qr_every", lyap["qr_every"], 1)
    if log["save_lyapunov_at"] is not None:
        _int("logging.save_lyapunov_at", log["save_lyapunov_at"], 0)
    if config["distance_fit_d0"] not in DISTANCE_FIT_D0:
        raise ValueError(f"distance_fit_d0 must be one of {DISTANCE_FIT_D0}; got {config['distance_fit_d0']!r}")
    if config["eps_eigh"] is None or not config["eps_eigh"] >= 0:
        raise ValueError(f"eps_eigh must be a number >= 0; got {config['eps_eigh']!r}")

    # perturbation
    strat = config["perturb_strat"]
    strategies = ()
    if strat is not None:
        if strat != "all" and strat not in STRATEGIES:
            raise ValueError(f"perturb_strat must be None, 'all' or one of {STRATEGIES}; got {strat!r}")
        strategies = STRATEGIES if strat == "all" else (strat,)
        eps = config["perturb_eps"]
        if not isinstance(eps, (list, tuple)) or not eps or not all(isinstance(e, (int, float)) and e > 0 for e in eps):
            raise ValueError(f"perturb_eps must be a non-empty list of numbers > 0; got {eps!r}")
        combos = len(strategies) * len(eps)
        _int("parallel", config["parallel"], 1)
        if config["parallel"] < combos:
            raise ValueError(f"parallel must be >= {combos} (one copy per strategy and eps) for perturb_strat={strat!r} "
                             f"and perturb_eps={list(eps)}; got {config['parallel']}")
        if optim.prunes and not optim.prune_global:
            raise ValueError("perturbed copies need optim.name='sgd' or prune_global (CGD would need each copy's Hessian)")
    else:
        _int("parallel", config["parallel"], 1)
    needs_eigenthings = any(s in NEEDS_LYAPUNOV for s in strategies) or (optim.prunes and optim.prune_global)
    eigenthings, prune_dirs = _load_checked_eigenthings(config, optim, needs_eigenthings, p)
    for strategy, sign in (("randn_chaos", 1), ("randn_convergence", -1)):
        if strategy in strategies and not bool((sign * eigenthings["exponents"] > 0).any()):
            raise ValueError(f"perturb_strat={strat!r} uses {strategy}, but no stored Lyapunov exponent is "
                             f"{'positive' if sign > 0 else 'negative'}")

    needs_initial = bool(log["log_lyapunov_subsim"] or log["save_eigenthings"] or log["save_lyapunov_at"] is not None)
    needs_lyapunov = bool(log["log_lyapunov"] or needs_initial)
    needs_hessian = needs_lyapunov or bool(log["log_eigenthings"] or log["log_subsim"] or log["plot_eigs_every"]
                                           or log["save_hessian_dist_every"] or log["plot_mats_every"]
                                           or (optim.prunes and not optim.prune_global))
    tangent_dim = p if optim.momentum == 0 else 2 * p
    _int("lyapunov.k", lyap["k"], 1, none_ok=True)
    tangent_k = tangent_dim if lyap["k"] is None else lyap["k"]
    if tangent_k > tangent_dim:
        raise ValueError(f"lyapunov.k must be <= the tangent dimension ({tangent_dim}); got {tangent_k}")
    for key in ("save_eigenthings", "save_lyapunov_at", "log_lyapunov_subsim"):
        if log[key] is not None and log[key] is not False and tangent_k != tangent_dim:  # save_lyapunov_at=0 is on
            raise ValueError(f"logging.{key} needs the initial vectors of every tangent direction: lyapunov.k must be "
                             f"None; got {tangent_k}")
    structured = mcfg["name"] == "mlp" and mcfg["activation"] in MLP_ACTIVATIONS
    max_bytes = float(config["max_memory_gb"]) * 2**30
    if needs_hessian:
        if structured:
            need = mlp_hessian_eigh_nbytes(model.sizes, config["batch_size"])
            if need > max_bytes:
                raise ValueError(f"model: the exact Hessian of {p:,} parameters needs about {need / 2**30:.1f} GiB at "
                                 f"batch {config['batch_size']}; max_memory_gb is {config['max_memory_gb']}")
        else:
            check_dense_hessian_size(p, torch.float64, max_bytes, key="model")
    if needs_lyapunov:
        need = 3 * 8 * tangent_dim * tangent_k + (3 * 8 * tangent_k**2 if needs_initial else 0)
        if need > max_bytes:
            raise ValueError(f"lyapunov.k: a tangent frame of {tangent_dim:,} x {tangent_k:,} needs about "
                             f"{need / 2**30:.1f} GiB; max_memory_gb is {config['max_memory_gb']}")
    return Checked(optim, model, p, structured, strategies, needs_hessian, needs_lyapunov, needs_initial, tangent_dim,
                   tangent_k, t_sub or (), resolve_device(config["device"]), eigenthings, prune_dirs)


def _load_checked_eigenthings(config, optim, needed, p):
    """Read the eigenthings named by the config (validated: file exists, run found, P matches)."""
    path, run = config["eigenthings_path"], _group(config, "eigenthings_run", {"source", "run_id", "run_key"})
    if path is not None and run["source"] is not None:
        raise ValueError("give eigenthings_path or eigenthings_run.source, not both")
    for key, value in (("eigenthings_path", path), ("optim.prune_global_checkpoint", optim.prune_global_checkpoint)):
        if value is not None and not os.path.isfile(value):
            raise ValueError(f"{key} {value!r} does not exist (cwd: {os.getcwd()})")
    if run["source"] is not None and (run["run_id"] is None) == (run["run_key"] is None):
        raise ValueError(f"eigenthings_run needs exactly one of run_id and run_key; got {run}")
    if needed and path is None and run["source"] is None and optim.prune_global_checkpoint is None:
        raise ValueError("these perturbation strategies / prune_global need Lyapunov directions: set eigenthings_path "
                         "(or eigenthings_run.source and .run_id) to the eigenthings.npz of a run with save_eigenthings=True")
    if not needed:
        return None, None
    shared = None
    if path is not None:
        shared = load_eigenthings(path, p)
    elif run["source"] is not None:
        from tracking.load import load_artifact, load_runs

        run_id = run["run_id"]
        if run_id is None:
            found = load_runs(run["source"], experiment="chaos", status="COMPLETED", filters={"run_key": run["run_key"]})
            if len(found) != 1:
                raise ValueError(f"eigenthings_run.run_key {run['run_key']!r}: {len(found)} completed chaos runs in "
                                 f"{run['source']!r}; expected exactly 1")
            run_id = found["run_id"].iloc[0]
        shared = load_eigenthings(load_artifact(run["source"], run_id, "eigenthings.npz", experiment="chaos"), p)
    pruning = load_eigenthings(optim.prune_global_checkpoint, p) if optim.prune_global_checkpoint else shared
    return shared, pruning if optim.prunes and optim.prune_global else None


# ----------------------------------------------------------------------------- helpers

# Independent random streams, all derived from the run's seed.
INIT, BATCHES, PERTURB, CGD, LYAP, PROJ = range(6)


def _stream(seed, purpose, device="cpu"):
    return torch.Generator(device=device).manual_seed(derived_seed(seed, purpose))


def cross_entropy(z, y):
    # Written out so that it can be differentiated twice by forward-over-reverse.
    return (torch.logsumexp(z, dim=1) - z.gather(1, y[:, None])[:, 0]).mean()


def _evaluate(f, w, x, y, chunk=4096):
    loss, correct = 0.0, 0
    with torch.no_grad():
        for s in range(0, x.shape[0], chunk):
            z = f(w, x[s:s + chunk])
            loss += float(cross_entropy(z, y[s:s + chunk])) * z.shape[0]
            correct += int((z.argmax(1) == y[s:s + chunk]).sum())
    return loss / x.shape[0], correct / x.shape[0]


def _load_data(config, dtype, device):
    kw = dict(data_root=config["data_root"], size=IMAGE_SIZE, dtype=dtype)
    x, y = load_vision_dataset(config["dataset"], train=True, **kw)
    xt, yt = load_vision_dataset(config["dataset"], train=False, **kw)
    n_train = config["num_train"] or (256 if config["debug"] else None)
    n_test = config["num_test"] or (128 if config["debug"] else None)
    x, y = x[:n_train], y[:n_train]
    xt, yt = xt[:n_test], yt[:n_test]
    if config["batch_size"] > x.shape[0]:
        raise ValueError(f"batch_size must be <= the number of training points ({x.shape[0]}); got {config['batch_size']}")
    return x.to(device), y.to(device), xt.to(device), yt.to(device)


def _pooled_abs(eig: SymEig, size=256) -> np.ndarray:
    h = eig.matmul(torch.eye(eig.dim, dtype=eig.eigenvectors.dtype, device=eig.eigenvectors.device)).abs().float()
    return torch.nn.functional.adaptive_avg_pool2d(h[None, None], min(size, eig.dim))[0, 0].cpu().numpy()


def _save_eigenthings(_run, name, lyap, p, step):
    """Artifact ``name``: the initial vectors and rates (eigenthings format) and the Benettin spectrum; returns it."""
    spectrum = torch.sort(exponents(lyap), descending=True).values.cpu().numpy()
    rates, vecs = initial_vectors(lyap)
    with tempfile.TemporaryDirectory() as tmp:
        path = save_eigenthings(os.path.join(tmp, name), rates, vecs, p, benettin_exponents=spectrum,
                                steps=np.int64(step))
        _run.add_artifact(str(path))
    return spectrum


def _artifact(_run, name, **arrays):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, name)
        np.savez_compressed(path, **arrays)
        _run.add_artifact(path)


# ----------------------------------------------------------------------------- main

@ex.main
def main(_config, _run, _seed):
    checked = validate(_config)
    if checked.needs_lyapunov and checked.device.type == "cpu" and checked.tangent_k > CPU_FRAME_WARN:
        warnings.warn(f"tracking {checked.tangent_k:,} Lyapunov directions on the CPU: a {checked.tangent_dim:,} x "
                      f"{checked.tangent_k:,} frame propagated and QR-factored every lyapunov.qr_every steps, which "
                      "takes seconds per step; set lyapunov.k (e.g. 32) for the top exponents only, or "
                      "logging.log_lyapunov=False", RuntimeWarning, stacklevel=2)
    seed_everything(_seed)
    c, log, optim, device = _config, _config["logging"], checked.optim, checked.device
    dtype = resolve_dtype(c["dtype"])
    p = checked.num_params

    model = build_model(c["model"]["name"], (1, IMAGE_SIZE, IMAGE_SIZE), NUM_CLASSES, _stream(_seed, INIT),
                        inter_dim=c["model"]["inter_dim"], base_channels=c["model"]["base_channels"],
                        block_cnt=c["model"]["block_cnt"], activation=c["model"]["activation"]).to(device)
    f, w_init = flat_model_for_module(model, dtype, device)
    f64, _ = flat_model_for_module(model, torch.float64, device)
    x, y, xt, yt = _load_data(c, dtype, device)
    n = x.shape[0]
    steps_per_epoch = math.ceil(n / c["batch_size"])
    total_steps = steps_per_epoch * c["max_epochs"] if c["max_steps"] is None else min(c["max_steps"], steps_per_epoch * c["max_epochs"])
    _run.info.update(model_dim=p, steps_per_epoch=steps_per_epoch, num_train=n, num_test=xt.shape[0])

    def loss64(w, xb, yb):
        return cross_entropy(f64(w, xb), yb)

    def curvature(w, xb, yb) -> SymEig:
        w64, x64 = w.double(), xb.double()
        if checked.structured:
            ws, bs = mlp_params_from_flat(w64, model.sizes)
            return mlp_hessian_eigh(ws, bs, x64.flatten(1), yb, model.activation, "cross_entropy", c["eps_eigh"])
        return dense_eigh(dense_hessian(loss64, w64, x64, yb), c["eps_eigh"])

    def loss_acc(w, xb, yb):
        z = f(w, xb)
        return cross_entropy(z, yb), (z.argmax(1) == yb).float().mean()

    grad_fn = grad_and_value(loss_acc, has_aux=True)

    # --- copies: 0 is the reference; 1.. are perturbed (same batches) ---
    ws, copies = [w_init.clone()], []
    eigenthings = checked.eigenthings
    if checked.strategies:
        combos = [(s, e) for s in checked.strategies for e in c["perturb_eps"]]
        gen = _stream(_seed, PERTURB)
        for i in range(c["parallel"]):
            s, e = combos[i % len(combos)]
            v = perturbation_direction(s, p, gen, *(() if eigenthings is None else (eigenthings["exponents"], eigenthings["vectors"])))
            ws.append(w_init + e * v.to(device=device, dtype=dtype))
            copies.append({"copy": i + 1, "strategy": s, "eps": float(e)})
        _run.info["copies"] = copies
    bufs = [None] * len(ws)

    global_dirs = None
    if checked.prune_dirs is not None:
        stored = checked.prune_dirs
        global_dirs = (stored["exponents"].double().to(device), stored["vectors"][:p].double().to(device))

    lyap = None
    if checked.needs_lyapunov:
        lyap = init_lyapunov(checked.tangent_dim, checked.tangent_k, _stream(_seed, LYAP), torch.float64, device,
                             track_initial=checked.needs_initial)

    gen_batches, gen_cgd = _stream(_seed, BATCHES), _stream(_seed, CGD)
    proj = None
    if log["plot_trajectories"]:
        proj = torch.linalg.qr(torch.randn(p, 2, generator=_stream(_seed, PROJ), dtype=torch.float64)).Q.to(device)
    grads_window = collections.deque(maxlen=log["signal_noise_window"] or 1)
    record = collections.defaultdict(list)  # steps and values kept for artifacts and the result
    prev_chaotic, fixed_lyap = None, {}
    spectra_every = [k for k in (log["plot_eigs_every"], log["save_hessian_dist_every"]) if k]

    step = 0
    for epoch in range(c["max_epochs"]):
        perm = torch.randperm(n, generator=gen_batches).to(device)
        for start in range(0, n, c["batch_size"]):
            if step >= total_steps:
                break
            idx = perm[start:start + c["batch_size"]]
            xb, yb = x[idx], y[idx]
            out = [grad_fn(w, xb, yb) for w in ws]  # [(grad, (loss, acc))]
            g0, (loss0, acc0) = out[0]
            if not all(math.isfinite(float(o[1][0])) for o in out):
                raise FloatingPointError(f"training diverged: non-finite loss at step {step}")
            logging_now = step % log["log_freq"] == 0
            eig = curvature(ws[0], xb, yb) if checked.needs_hessian else None
            thr = eig.zero_threshold() if eig is not None else 0.0

            # --- CGD: which directions this step removes ---
            pruned_vecs = None
            if optim.prunes and step >= optim.prune_start:
                if global_dirs is None:
                    idx_p = select_pruned(eig.eigenvalues, optim, gen_cgd, thr)
                    pruned_vecs = eig.eigenvectors[:, idx_p]
                else:
                    idx_p = select_pruned(global_dirs[0], optim, gen_cgd, lyapunov=True)
                    pruned_vecs = torch.linalg.qr(global_dirs[1][:, idx_p]).Q if idx_p.numel() else global_dirs[1][:, :0]

            # --- Lyapunov: tangent map of this step at w_t ---
            if lyap is not None:
                hmat = eig.matmul
                if pruned_vecs is not None:  # CGD's map: w' = w − lr (I − V_p V_pᵀ) g (V_p held fixed)
                    hmat = lambda yv, e=eig, v=pruned_vecs: (lambda hy: hy - v @ (v.T @ hy))(e.matmul(yv))  # noqa: E731
                lyap = propagate(lyap, sgd_tangent_map(hmat, optim.lr, optim.momentum, p), c["lyapunov"]["qr_every"])
                if log["log_lyapunov_subsim"] and lyap.steps in checked.t_lya_subsim:
                    fixed_lyap[lyap.steps] = expanding_subspace(lyap, POSITIVE_EXPONENT)  # t0 counts tangent maps

            if logging_now:
                _run.log_scalar("train/loss", float(loss0), step)
                _run.log_scalar("train/acc", float(acc0), step)
                _log_curvature(_run, step, eig, g0, optim, log, lyap, checked, record, thr)
                if log["log_subsim"] and eig is not None:
                    mask = (eig.eigenvalues < -thr) | (eig.eigenvalues > 2 * (1 + optim.momentum) / optim.lr)
                    cur = eig.eigenvectors[:, mask]
                    if prev_chaotic is not None and cur.shape[1] and prev_chaotic.shape[1]:
                        _run.log_scalar("subsim/hessian_chaotic", subspace_similarity(prev_chaotic, cur), step)
                        _run.log_scalar("subsim/hessian_chaotic_baseline",
                                        random_subspace_baseline(prev_chaotic.shape[1], cur.shape[1], p), step)
                    prev_chaotic = cur
                if log["log_lyapunov_subsim"] and lyap is not None:
                    _lyapunov_subsim(_run, step, lyap, fixed_lyap)
                if copies:
                    for i, w in enumerate(ws[1:], start=1):
                        d = float((w.double() - ws[0].double()).norm())
                        _run.log_scalar(f"perturb/distance/copy{i}", d, step)
                        record[f"dist{i}"].append(d)
                    record["dist_steps"].append(step)
                if proj is not None:
                    record["traj"].append(torch.stack([w.double() - w_init.double() for w in ws]) @ proj)
                    record["traj_steps"].append(step)
                if log["signal_noise_window"] and len(grads_window) == log["signal_noise_window"]:
                    gs = torch.stack(list(grads_window))
                    mean = gs.mean(0)
                    noise = float((gs - mean).pow(2).sum(1).mean())
                    if noise > 0:  # ‖mean g‖² / mean ‖g − mean g‖² over the window
                        _run.log_scalar("grad/snr", float(mean @ mean) / noise, step)
                if pruned_vecs is not None:
                    _run.log_scalar("cgd/num_pruned", pruned_vecs.shape[1], step)
            if log["signal_noise_window"]:
                grads_window.append(g0.double())
            if eig is not None and any(step % k == 0 for k in spectra_every):
                record["spectra"].append(eig.all_eigenvalues().float().cpu().numpy())
                record["spectra_steps"].append(step)
            if eig is not None and log["plot_mats_every"] and step % log["plot_mats_every"] == 0:
                record["mats"].append(_pooled_abs(eig))
                record["mats_steps"].append(step)

            # --- the update, identical batches for every copy ---
            for i, (g, _) in enumerate(out):
                if pruned_vecs is not None and (i == 0 or global_dirs is not None):
                    noise_fac = optim.noise_fac if optim.noise else None
                    g, frac = project_gradient(g.double(), pruned_vecs, torch.arange(pruned_vecs.shape[1], device=device),
                                               noise_fac, gen_cgd)
                    g = g.to(dtype)
                    if i == 0 and logging_now:
                        _run.log_scalar("cgd/pruned_grad_frac", frac, step)
                ws[i], bufs[i] = sgd_step(ws[i], bufs[i], g, optim.lr, optim.momentum)
            step += 1

        tr_loss, tr_acc = _evaluate(f, ws[0], x, y)
        te_loss, te_acc = _evaluate(f, ws[0], xt, yt)
        for name, value in (("train_loss", tr_loss), ("train_acc", tr_acc), ("test_loss", te_loss), ("test_acc", te_acc)):
            _run.log_scalar(f"epoch/{name}", value, step)
            record[name].append(value)
        record["epoch_steps"].append(step)
        if not math.isfinite(tr_loss):
            raise FloatingPointError(f"training diverged: train loss {tr_loss} after epoch {epoch} (step {step})")
        if lyap is not None and log["save_lyapunov_at"] == epoch:
            spectrum = _save_eigenthings(_run, f"eigenthings_epoch{epoch}.npz", lyap, p, step)
            _run.info[f"lyapunov_spectrum_epoch{epoch}"] = spectrum.tolist()
        if step >= total_steps:
            break

    return json_ready(_finish(_run, c, checked, record, lyap, copies, step, epoch, p))


def _log_curvature(_run, step, eig, g0, optim, log, lyap, checked, record, thr):
    """Hessian statistics, local chaos counts, gradient cosines and Lyapunov summaries at one step."""
    if eig is not None and log["log_eigenthings"]:
        lam = eig.eigenvalues
        implicit_zero = eig.rank_bound < eig.dim
        lam_max = max(float(lam.max()), 0.0) if implicit_zero else float(lam.max())
        lam_min = min(float(lam.min()), 0.0) if implicit_zero else float(lam.min())
        counts = eig.counts()
        chaos = local_chaos_counts(lam, optim.lr, optim.momentum, thr)
        g = g0.double()
        gn = float(g.norm())
        cos_max = abs(float(eig.eigenvectors[:, -1] @ g)) / gn if gn > 0 else 0.0
        cos_min = abs(float(eig.eigenvectors[:, 0] @ g)) / gn if gn > 0 else 0.0
        values = {
            "hessian/max_eig": lam_max, "hessian/min_eig": lam_min, "hessian/mean_eig": float(lam.sum()) / eig.dim,
            "hessian/num_pos": counts["num_pos"], "hessian/num_neg": counts["num_neg"], "hessian/num_zero": counts["num_zero"],
            "chaos/num_neg": chaos["num_neg"], "chaos/num_large": chaos["num_large"], "chaos/num_chaotic": chaos["num_chaotic"],
            "grad/norm": gn, "grad/cos_max_eig": cos_max, "grad/cos_min_eig": cos_min,
        }
        for name, value in values.items():
            _run.log_scalar(name, value, step)
        record["num_neg"].append(counts["num_neg"])
        record["min_eig"].append(lam_min)
    if lyap is not None and log["log_lyapunov"]:
        ex_ = exponents(lyap)
        _run.log_scalar("lyapunov/max", float(ex_.max()), step)
        _run.log_scalar("lyapunov/min", float(ex_.min()), step)
        _run.log_scalar("lyapunov/num_pos", int((ex_ > POSITIVE_EXPONENT).sum()), step)


def _lyapunov_subsim(_run, step, lyap, fixed):
    """Compare the expanding initial subspace now (t = tangent maps applied) with the one fixed at each t0 < t.

    Both are spans of initial directions with positive finite-time exponents (eigenvectors of
    YᵀY with eigenvalue > 1, as the original's ``chaotic-chaotic`` similarity); with momentum
    they live in the (δw, δv) tangent space of dimension 2P.
    """
    later = {t0: sub for t0, sub in fixed.items() if t0 < lyap.steps and sub.shape[1]}
    if not later:
        return
    cur = expanding_subspace(lyap, POSITIVE_EXPONENT)  # (D, n_pos)
    _run.log_scalar("subsim/lyapunov/num_pos", cur.shape[1], step)
    if cur.shape[1] == 0:
        return
    for t0, sub in later.items():
        _run.log_scalar(f"subsim/lyapunov/t{t0}", subspace_similarity(sub, cur), step)
        _run.log_scalar(f"subsim/lyapunov/t{t0}_baseline", random_subspace_baseline(sub.shape[1], cur.shape[1], cur.shape[0]), step)


def _finish(_run, c, checked, record, lyap, copies, step, epoch, p):
    """Artifacts and the run's result."""
    result = {"num_params": p, "model_dim": p, "num_steps": step, "epochs": epoch + 1,
              "final_train_loss": record["train_loss"][-1], "final_train_acc": record["train_acc"][-1],
              "final_test_loss": record["test_loss"][-1], "final_test_acc": record["test_acc"][-1],
              "best_test_acc": max(record["test_acc"])}
    if record["num_neg"]:
        num_neg = np.asarray(record["num_neg"])
        result["hessian"] = {"frac_steps_with_neg": float((num_neg > 0).mean()), "mean_num_neg": float(num_neg.mean()),
                             "min_eig": float(np.min(record["min_eig"]))}
    if lyap is not None:
        spectrum = torch.sort(exponents(lyap), descending=True).values.cpu().numpy()
        result["lyapunov"] = {"max": float(spectrum[0]), "min": float(spectrum[-1]),
                              "num_pos": int((spectrum > POSITIVE_EXPONENT).sum()), "k": int(spectrum.size)}
        _artifact(_run, "lyapunov_final.npz", exponents=spectrum, step=np.int64(step))
        if c["logging"]["save_eigenthings"]:
            _save_eigenthings(_run, "eigenthings.npz", lyap, p, step)
    if copies:
        steps = np.asarray(record["dist_steps"], dtype=float)
        fits = {}
        dist = np.stack([record[f"dist{i}"] for i in range(1, len(copies) + 1)])
        for info, d in zip(copies, dist):
            entry = dict(info)
            try:
                fit = fit_distance(steps, d, d0=info["eps"] if c["distance_fit_d0"] == "fixed" else None)
                entry.update(a=fit.a, b=fit.b, d0=fit.d0, a_err=fit.a_err, b_err=fit.b_err, d0_err=fit.d0_err,
                             rmse=fit.rmse, d0_fixed=c["distance_fit_d0"] == "fixed")
            except (ValueError, RuntimeError) as err:  # too few points, or curve_fit did not converge
                entry["fit_error"] = str(err)
            entry["final_distance"] = float(d[-1])
            fits[f"copy{info['copy']}"] = entry
        result["perturb"] = fits
        _artifact(_run, "distances.npz", steps=steps, distances=dist,
                  strategies=np.array([cp["strategy"] for cp in copies]), eps=np.array([cp["eps"] for cp in copies]))
    if record["traj"]:
        _artifact(_run, "trajectories.npz", steps=np.asarray(record["traj_steps"]),
                  projections=torch.stack(record["traj"], dim=1).cpu().numpy())
    if record["spectra"]:
        _artifact(_run, "hessian_spectra.npz", steps=np.asarray(record["spectra_steps"]), eigenvalues=np.stack(record["spectra"]))
    if record["mats"]:
        _artifact(_run, "hessian_matrices.npz", steps=np.asarray(record["mats_steps"]), abs_hessian=np.stack(record["mats"]))
    return result


if __name__ == "__main__":
    run_cli(ex)
