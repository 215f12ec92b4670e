"""Validation of an ``expt_chaos`` config: every key checked before any data is loaded or computed.

``validate`` builds the optimiser and CGD-rule dataclasses, decides which curvature
objects the run needs (exact Hessian, tangent frame, initial vectors), checks their
memory against ``max_memory_gb``, and reads the stored Lyapunov directions that the
perturbation strategies or ``prune_global`` need (docs/chaos.md).
"""
from __future__ import annotations

import os
import warnings
from typing import NamedTuple

import torch

from core import checks
from core.runtime import DTYPES, resolve_device
from data.vision import check_dataset_name
from dynamics.cgd import OptimConfig
from dynamics.cgd_select import CgdRules
from dynamics.hessian import check_dense_hessian_size
from dynamics.mlp_hessian import MLP_ACTIVATIONS, mlp_hessian_eigh_nbytes
from dynamics.perturb import NEEDS_LYAPUNOV, STRATEGIES, load_eigenthings
from dynamics.symeig import EPS_EIGH_MODES
from models.chaos_nets import build_model, num_parameters
from tracking.sacred_utils import build_config

IMAGE_SIZE = 16  # USPS is 16x16; FashionMNIST is resized to it
NUM_CLASSES = 10
DISTANCE_FIT_D0 = ("fixed", "free")


class Checked(NamedTuple):
    """What validate() built and decided."""

    optim: OptimConfig
    rules: CgdRules  # the CGD choices where the original differs (config group cgd)
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
    if allowed is not None:
        checks.known_entries(key, value, allowed)
    return dict(value)


def validate(config: dict) -> Checked:
    """Check every user-facing key before any compute (data loading included)."""
    check_dataset_name(config["dataset"], "dataset")
    checks.integer("batch_size", config["batch_size"], lo=1)
    checks.integer("max_epochs", config["max_epochs"], lo=1)
    checks.integer("max_steps", config["max_steps"], lo=1, none_ok=True)
    checks.integer("num_train", config["num_train"], lo=1, none_ok=True)
    checks.integer("num_test", config["num_test"], lo=1, none_ok=True)
    checks.one_of("dtype", config["dtype"], DTYPES)
    mcfg = _group(config, "model", {"name", "inter_dim", "base_channels", "block_cnt", "activation"})
    model = build_model(mcfg["name"], (1, IMAGE_SIZE, IMAGE_SIZE), NUM_CLASSES, torch.Generator().manual_seed(0),
                        inter_dim=mcfg["inter_dim"], base_channels=mcfg["base_channels"],
                        block_cnt=mcfg["block_cnt"], activation=mcfg["activation"])
    p = num_parameters(model)
    optim = build_config(OptimConfig, _group(config, "optim"), "optim")
    rules = build_config(CgdRules, _group(config, "cgd"), "cgd")
    if optim.k is not None:
        checks.at_most("optim.k", optim.k, "the number of parameters", p)
    log = _group(config, "logging", {"log_eigenthings", "log_lyapunov", "log_subsim", "log_lyapunov_subsim", "log_freq",
                                   "t_lya_subsim", "plot_eigs_every", "save_hessian_dist_every", "plot_mats_every",
                                   "plot_trajectories", "signal_noise_window", "save_eigenthings", "save_lyapunov_at"})
    checks.integer("logging.log_freq", log["log_freq"], lo=1)
    for key in ("plot_eigs_every", "save_hessian_dist_every", "plot_mats_every", "signal_noise_window"):
        checks.integer(f"logging.{key}", log[key], lo=0)
    t_sub = log["t_lya_subsim"]
    if t_sub is not None:  # whole floats (1e4 from a command line) count as step numbers
        t_sub = tuple(sorted(set(checks.int_list("logging.t_lya_subsim", t_sub, lo=1, min_len=0, from_float=True,
                                                 why="step numbers, or None"))))
    if log["log_lyapunov_subsim"] and not t_sub:
        raise ValueError("logging.log_lyapunov_subsim needs logging.t_lya_subsim, e.g. [10, 10000]")
    lyap = _group(config, "lyapunov", {"k", "qr_every"})
    checks.integer("lyapunov.qr_every", lyap["qr_every"], lo=1)
    if log["save_lyapunov_at"] is not None:
        checks.integer("logging.save_lyapunov_at", log["save_lyapunov_at"], lo=0)
    checks.one_of("distance_fit_d0", config["distance_fit_d0"], DISTANCE_FIT_D0)
    checks.number("eps_eigh", config["eps_eigh"], lo=0, finite=False)  # +inf passes, as before
    checks.one_of("eps_eigh_mode", config["eps_eigh_mode"], EPS_EIGH_MODES)

    # perturbation
    strat = config["perturb_strat"]
    strategies = ()
    checks.one_of("perturb_strat", strat, (None, "all") + STRATEGIES)
    if strat is not None:
        strategies = STRATEGIES if strat == "all" else (strat,)
        eps = config["perturb_eps"]
        checks.number_list("perturb_eps", eps, lo=0, strict=True)
        combos = len(strategies) * len(eps)
        checks.integer("parallel", config["parallel"], lo=combos,
                       why=f"one copy per strategy and eps for perturb_strat={strat!r} and perturb_eps={list(eps)}")
        if optim.prunes and not optim.prune_global:
            raise ValueError("perturbed copies need optim.name='sgd' or prune_global "
                             "(CGD would need each copy's Hessian)")
    else:
        checks.integer("parallel", config["parallel"], lo=1)
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
    checks.integer("lyapunov.k", lyap["k"], lo=1, none_ok=True)
    tangent_k = tangent_dim if lyap["k"] is None else lyap["k"]
    checks.at_most("lyapunov.k", tangent_k, "the tangent dimension", tangent_dim)
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
    if optim.prunes and optim.prune_global and rules.global_rule == "hessian" and "steps" not in prune_dirs:
        raise ValueError("cgd.global_rule='hessian' needs the number of steps of the stored spectrum; the "
                         "prune_global eigenthings file has no 'steps' array (write it again with this code)")
    return Checked(optim, rules, model, p, structured, strategies, needs_hessian, needs_lyapunov, needs_initial,
                   tangent_dim, tangent_k, t_sub or (), resolve_device(config["device"]), eigenthings, prune_dirs)


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
                         "(or eigenthings_run.source and .run_id) to the eigenthings.npz of a run with "
                         "save_eigenthings=True")
    if not needed:
        return None, None
    shared = None
    if path is not None:
        shared = load_eigenthings(path, p)
    elif run["source"] is not None:
        from tracking.load import load_artifact, load_runs

        run_id = run["run_id"]
        if run_id is None:
            found = load_runs(run["source"], experiment="chaos", status="COMPLETED",
                              filters={"run_key": run["run_key"]})
            if len(found) != 1:
                raise ValueError(f"eigenthings_run.run_key {run['run_key']!r}: {len(found)} completed chaos runs in "
                                 f"{run['source']!r}; expected exactly 1")
            run_id = found["run_id"].iloc[0]
        shared = load_eigenthings(load_artifact(run["source"], run_id, "eigenthings.npz", experiment="chaos"), p)
    pruning = load_eigenthings(optim.prune_global_checkpoint, p) if optim.prune_global_checkpoint else shared
    return shared, pruning if optim.prunes and optim.prune_global else None



def warn_slow_cpu_frame(checked: Checked) -> None:
    """RuntimeWarning when a Lyapunov frame of more than CPU_FRAME_WARN directions would run on the CPU."""
    if checked.needs_lyapunov and checked.device.type == "cpu" and checked.tangent_k > CPU_FRAME_WARN:
        warnings.warn(f"tracking {checked.tangent_k:,} Lyapunov directions on the CPU: a {checked.tangent_dim:,} x "
                      f"{checked.tangent_k:,} frame propagated and QR-factored every lyapunov.qr_every steps, which "
                      "takes seconds per step; set lyapunov.k (e.g. 32) for the top exponents only, or "
                      "logging.log_lyapunov=False", RuntimeWarning, stacklevel=3)
