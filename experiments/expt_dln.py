"""λ̂ versus the exact learning coefficient of deep linear networks.

Draws a true parameter w* of a bias-free DLN, generates noiseless teacher data
y = f(w*, x), estimates the local learning coefficient λ̂(w*) with multi-chain
SGLD and compares it with Aoyagi's exact λ for the rank of W_L...W_1
(reference.md §1). With ``do_training`` a fresh network is also trained on the
data and λ̂ is estimated at the trained parameter.

    python experiments/expt_dln.py with layer_widths='[10, 10]' input_dim=10 \\
        true_param_config.method=rand_rank sgld_config.epsilon=2e-07 seed=1
"""
from __future__ import annotations

import math
import os
import tempfile

import numpy as np
import torch
from sacred import Experiment
from torch.func import functional_call

from data.synthetic import INPUT_DISTRIBUTIONS, teacher_dataset
from dynamics.hessian import hutchinson_trace
from dynamics.jacobian import functional_rank
from dynamics.train import TrainingConfig, train
from llc.aoyagi import dln_learning_coefficient
from llc.estimate import estimate_llc_flat, flat_model_for_module
from llc.sgld import SGLDConfig
from models.device import DTYPES, derived_seed, resolve_device, resolve_dtype
from models.dln import TRUE_PARAM_METHODS, DeepLinearNetwork, end_to_end_matrix, make_true_params, numerical_rank
from tracking.sacred_utils import build_config, configure_experiment, json_ready, log_series, run_cli, seed_everything

ex = configure_experiment(Experiment("dln_lambdahat"))


@ex.config
def cfg():
    expt_name = None  # free label to group runs in plots (e.g. the sweep's name)

    # --- network and data ---
    input_dim = 10  # H_0, input size
    layer_widths = [10, 10]  # [H_1, ..., H_L]; the last entry is the output size
    num_training_data = 10000  # n
    input_distribution = "uniform"  # 'uniform': U(-10, 10)^d | 'unit_ball'
    true_param_config = dict(
        method="random",  # random | zero | rand_rank | rand_rank_sv
        prop_rank_reduce=0.2,  # per-matrix probability of a rank reduction (rand_rank*)
        mean=0.0,  # singular-value mean (rand_rank_sv)
        std=5.0,  # singular-value std (rand_rank_sv)
    )

    # --- SGLD / LLC ---
    sgld_config = dict(
        epsilon=1e-5,  # step size ε
        gamma=10.0,  # localisation strength γ
        num_steps=5000,  # steps per chain, burn-in included
        batch_size=100,  # minibatch per step and chain
        num_chains=4,  # vectorised with vmap; R-hat needs >= 2
        nbeta=None,  # n·β; None -> n / log n
        num_burnin_steps=None,  # None -> discard the first 90% (keep the last 10%)
    )
    loss_trace_minibatch = True  # average minibatch losses (free) vs full-data losses

    # --- training (λ̂ also at the trained parameter) ---
    do_training = False
    training_config = dict(
        optim="sgd",  # sgd | adam
        learning_rate=0.01,
        momentum=0.9,  # SGD only; None -> 0
        batch_size=200,
        num_steps=5000,
    )

    # --- extra diagnostics at w* (and the trained parameter) ---
    do_hessian_trace = False  # Hutchinson estimate of tr ∇²L_n
    hessian_trace_probes = 32  # Rademacher probes
    do_functional_rank = False  # numerical rank of d f(w, x) / d w
    functional_rank_num_data = 100  # inputs used for the Jacobian

    # --- runtime ---
    device = "auto"  # auto | cpu | cuda
    dtype = "float32"  # float32 | float64
    log_max_points = 2000  # thinning of every logged time series


def validate(config: dict) -> dict:
    """Check every user-facing key before any compute; returns the built dataclasses."""
    def positive_int(key, value, lo=1):
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            raise ValueError(f"{key} must be an integer >= {lo}; got {value!r}")

    positive_int("input_dim", config["input_dim"])
    widths = config["layer_widths"]
    if not isinstance(widths, (list, tuple)) or len(widths) == 0:
        raise ValueError(f"layer_widths must be a non-empty list of positive integers; got {widths!r}")
    for w in widths:
        positive_int("layer_widths entries", w)
    n = config["num_training_data"]
    positive_int("num_training_data", n, lo=2)
    if config["input_distribution"] not in INPUT_DISTRIBUTIONS:
        raise ValueError(f"input_distribution must be one of {INPUT_DISTRIBUTIONS}; got {config['input_distribution']!r}")
    tp = dict(config["true_param_config"])
    allowed_tp = {"method", "prop_rank_reduce", "mean", "std"}
    if set(tp) - allowed_tp:
        raise ValueError(f"true_param_config has unknown entries {sorted(set(tp) - allowed_tp)}; allowed: {sorted(allowed_tp)}")
    if tp["method"] not in TRUE_PARAM_METHODS:
        raise ValueError(f"true_param_config.method must be one of {TRUE_PARAM_METHODS}; got {tp['method']!r}")
    if not 0 <= tp["prop_rank_reduce"] <= 1:
        raise ValueError(f"true_param_config.prop_rank_reduce must be in [0, 1]; got {tp['prop_rank_reduce']!r}")
    if not tp["std"] >= 0:
        raise ValueError(f"true_param_config.std must be >= 0; got {tp['std']!r}")
    sgld = build_config(SGLDConfig, {**config["sgld_config"], "loss_trace_minibatch": config["loss_trace_minibatch"]}, "sgld_config")
    if sgld.batch_size > n:
        raise ValueError(f"sgld_config.batch_size must be <= num_training_data ({n}); got {sgld.batch_size}")
    training = None
    if config["do_training"]:
        training = build_config(TrainingConfig, dict(config["training_config"]), "training_config")
        if training.batch_size > n:
            raise ValueError(f"training_config.batch_size must be <= num_training_data ({n}); got {training.batch_size}")
    positive_int("hessian_trace_probes", config["hessian_trace_probes"])
    positive_int("functional_rank_num_data", config["functional_rank_num_data"])
    positive_int("log_max_points", config["log_max_points"])
    if config["dtype"] not in DTYPES:
        raise ValueError(f"dtype must be one of {tuple(DTYPES)}; got {config['dtype']!r}")
    return {"sgld": sgld, "training": training, "true_param": tp, "device": resolve_device(config["device"])}


# Independent random streams, all derived from the run's seed (SeedSequence spawn keys).
TRUE_PARAM, DATA, SGLD_W_STAR, DIAG_W_STAR, INIT, BATCHES, SGLD_TRAINED, DIAG_TRAINED = range(8)


def _stream(seed: int, purpose: int, device="cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(derived_seed(seed, purpose))


def _mse(out, y):
    # Mean over batch and outputs, no 1/2 (reference.md §1). Written out rather than
    # F.mse_loss, whose backward breaks forward-over-reverse HVPs ("ZeroTensors are immutable").
    return ((out - y) ** 2).mean()


def _diagnostics(_run, prefix, loss, f_flat, w, x, y, config, seed, purpose):
    """Optional Hessian trace and functional rank at w; singular values go to info."""
    out = {}
    if config["do_hessian_trace"]:
        est, sem = hutchinson_trace(loss, w, x, y, config["hessian_trace_probes"], _stream(seed, purpose, w.device))
        out["hessian_trace"], out["hessian_trace_sem"] = est, sem
    if config["do_functional_rank"]:
        m = min(config["functional_rank_num_data"], x.shape[0])
        rank, sv = functional_rank(f_flat, w, x[:m])
        out["functional_rank"] = rank
        _run.info[f"{prefix}functional_rank_singular_values"] = sv.tolist()
    return out


@ex.main
def main(_config, _run, _seed):
    checked = validate(_config)
    seed_everything(_seed)
    sgld, device = checked["sgld"], checked["device"]
    dtype = resolve_dtype(_config["dtype"])
    input_dim, widths, n = _config["input_dim"], list(_config["layer_widths"]), _config["num_training_data"]
    tp = checked["true_param"]

    # --- true parameter and its exact learning coefficient ---
    w_star = make_true_params(
        input_dim, widths, tp["method"], _stream(_seed, TRUE_PARAM),
        prop_rank_reduce=tp["prop_rank_reduce"], mean=tp["mean"], std=tp["std"],
    )
    true_rank, prod_sv = numerical_rank(end_to_end_matrix(w_star))
    true_lambda, true_mult = dln_learning_coefficient(input_dim, widths, true_rank)
    _run.info["true_param_singular_values"] = {k: torch.linalg.svdvals(v).tolist() for k, v in w_star.items()}
    _run.info["true_end_to_end_singular_values"] = prod_sv.tolist()

    # --- data: y = f(w*, x), noiseless ---
    net = DeepLinearNetwork(input_dim, widths)
    f64 = lambda p, x: functional_call(net, p, (x,))  # noqa: E731
    x, y = teacher_dataset(f64, w_star, n, input_dim, _config["input_distribution"], _stream(_seed, DATA))
    x, y = x.to(device=device, dtype=dtype), y.to(device=device, dtype=dtype)

    net.load_state_dict({k: v.to(dtype) for k, v in w_star.items()})
    net.to(device=device, dtype=dtype)
    f_flat, w_flat = flat_model_for_module(net, dtype, device)

    def loss(w, xb, yb):
        return _mse(f_flat(w, xb), yb)

    model_dim = w_flat.numel()
    res = estimate_llc_flat(loss, w_flat, x, y, sgld, seed=derived_seed(_seed, SGLD_W_STAR))
    _log_traces(_run, "llc", res, _config["log_max_points"])
    result = {
        **res.summary(),
        "true_lambda": true_lambda,
        "true_multiplicity": true_mult,
        "true_rank": true_rank,
        "model_dim": model_dim,
        "relative_error": (res.lambdahat - true_lambda) / true_lambda if true_lambda > 0 else None,
        **_diagnostics(_run, "", loss, f_flat, w_flat, x, y, _config, _seed, DIAG_W_STAR),
    }
    _run.log_scalar("llc/lambdahat", res.lambdahat, 0)

    # --- optional: train from a fresh init, then λ̂ at the trained parameter ---
    if checked["training"] is not None:
        cfg = checked["training"]
        gen_init = _stream(_seed, INIT)
        init = make_true_params(input_dim, widths, "random", gen_init)
        trained = DeepLinearNetwork(input_dim, widths)
        trained.load_state_dict({k: v.to(dtype) for k, v in init.items()})
        trained.to(device=device, dtype=dtype)
        gen_batches = _stream(_seed, BATCHES, device)
        every = max(1, math.ceil(cfg.num_steps / _config["log_max_points"]))

        def log_train(step, value):  # logged as training goes, so an interrupted run keeps it
            if step % every == 0 or step == cfg.num_steps - 1:
                _run.log_scalar("train/loss", value, step)

        losses = train(trained, _mse, x, y, cfg, gen_batches, callback=log_train)
        w_trained = torch.cat([p.detach().reshape(-1) for p in trained.parameters()])
        res_t = estimate_llc_flat(loss, w_trained, x, y, sgld, seed=derived_seed(_seed, SGLD_TRAINED))
        _log_traces(_run, "trained/llc", res_t, _config["log_max_points"])
        rank_t, sv_t = numerical_rank(end_to_end_matrix(dict(trained.named_parameters())))
        _run.info["trained_end_to_end_singular_values"] = sv_t.tolist()
        result["trained"] = {
            **res_t.summary(),
            "true_lambda": true_lambda,  # the trained w sits near the true set, of rank true_rank
            "numerical_rank": rank_t,
            "final_train_loss": float(losses[-1]),
            "relative_error": (res_t.lambdahat - true_lambda) / true_lambda if true_lambda > 0 else None,
            **_diagnostics(_run, "trained_", loss, f_flat, w_trained, x, y, _config, _seed, DIAG_TRAINED),
        }
        _run.log_scalar("trained/llc/lambdahat", res_t.lambdahat, 0)
    return json_ready(result)


def _log_traces(_run, prefix, res, max_points):
    """Thinned per-chain SGLD traces as metrics; the full (C, T) trace as an .npz artifact."""
    for c in range(res.loss_trace.shape[0]):
        log_series(_run, f"{prefix}/loss_trace/chain{c}", res.loss_trace[c], max_points)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, f"{prefix.replace('/', '_')}_trace.npz")
        np.savez_compressed(path, loss_trace=res.loss_trace, burnin=res.burnin, lambdahat_per_chain=res.lambdahat_per_chain)
        _run.add_artifact(path)


if __name__ == "__main__":
    run_cli(ex)
