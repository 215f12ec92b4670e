"""λ̂ versus the exact learning coefficient of deep linear networks.

Draws a true parameter w* of a bias-free DLN, generates noiseless teacher data
y = f(w*, x), estimates the local learning coefficient λ̂(w*) with multi-chain
SGLD and compares it with Aoyagi's exact λ for the rank of W_L...W_1
(docs/notes/llc.md#dln). With ``do_training`` a fresh network is also trained on the
data and λ̂ is estimated at the trained parameter.

Weights of `random` / `rand_rank` teachers and of the training init follow Haiku's
hk.Linear default (truncated normal, std 1/sqrt(fan_in)), as the original does;
``true_param_config.init='torch'`` gives nn.Linear's default instead (docs/llc.md#the-dln-experiment;
at depth it collapses the end-to-end map). Every 20 SGLD steps the run
records the MALA acceptance probability of the SGLD transition, as the original did.

    python experiments/expt_dln.py with layer_widths='[10, 10]' input_dim=10 \\
        true_param_config.method=rand_rank sgld_config.epsilon=2e-07 seed=1
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from enum import IntEnum, unique

import numpy as np
import torch
from sacred import Experiment
from torch.func import functional_call

from core import checks
from core.config_docs import with_nested_docs
from core.runtime import DTYPES, derived_seed, resolve_device, resolve_dtype
from data.synthetic import INPUT_DISTRIBUTIONS, teacher_dataset
from dynamics.train import TrainingConfig, train
from llc.aoyagi import dln_learning_coefficient
from llc.estimate import flat_model_for_module
from llc.psgld import initial_loss, llc_result
from llc.samplers import check_config_device, split_sampler
from llc.samplers import run_minibatch as run_sgld  # runs sgld_config.sampler's kernel; SGLD by default
from llc.sgld import mala_acceptance_probability
from models.dln import (
    INIT_SCHEMES,
    TRUE_PARAM_METHODS,
    DeepLinearNetwork,
    end_to_end_matrix,
    init_params,
    make_true_params,
    numerical_rank,
    rank_truncation_losses,
)
from tracking.calibration_command import main_seed, run_calibration, validate_calibration
from tracking.dln_record import diagnostics, record_true_param, true_param_summary, validate_hessian_trace
from tracking.key_aliases import resolve_alias
from tracking.preempt import add_checkpoint_config, checkpointing
from tracking.sacred_utils import build_config, configure_experiment, json_ready, log_series, run_cli, seed_everything

ex = add_checkpoint_config(configure_experiment(Experiment("dln_lambdahat")))


@with_nested_docs  # print_config shows the comments of the keys inside the dict blocks too
@ex.config
def cfg():
    expt_name = None  # free label to group runs in plots (e.g. the sweep's name)

    # --- network and data ---
    input_dim = 10  # H_0, input size
    layer_widths = [10, 10]  # [H_1, ..., H_L]; the last entry is the output size
    num_training_data = 10000  # n
    num_test_data = 100  # fresh teacher points for the Hessian trace and the functional rank
    input_distribution = "uniform"  # 'uniform': U(-10, 10)^d | 'unit_ball'
    input_dist = None  # deprecated: the original's name of input_distribution
    true_param_config = dict(
        method="random",  # random | zero | rand_rank | rand_rank_sv
        prop_rank_reduce=0.2,  # per-matrix probability of a rank reduction (rand_rank*)
        mean=0.0,  # singular-value mean (rand_rank_sv)
        std=5.0,  # singular-value std (rand_rank_sv)
        init="haiku",  # random / rand_rank weights: haiku (the original's) | torch (nn.Linear's)
        rank_key="independent",  # rand_rank reductions: independent per matrix | shared (the original's reused key)
    )
    param_init = None  # the original's key, unused there as here; only None
    save_true_param = False  # store w* layer by layer in info['true_param']

    # --- SGLD / LLC ---
    sgld_config = dict(
        epsilon=1e-5,  # step size ε
        gamma=10.0,  # localisation strength γ
        num_steps=5000,  # steps per chain, burn-in included
        batch_size=100,  # minibatch per step and chain
        num_chains=4,  # vectorised with vmap; R-hat needs >= 2
        nbeta=None,  # n·β; None -> n·itemp
        num_burnin_steps=None,  # None -> discard the first 90% (keep the last 10%)
        compile="auto",  # torch.compile the step: "auto" (runs of >= 50,000 chain-steps) | True | False
        amp=None,  # None | "bf16" | "fp16" (CUDA only): the loss forward/backward under torch.autocast (llc.precision)
        sampler="sgld",  # "sgld", "sgnht" or "sghmc" (llc.samplers); the default runs SGLD as before
        diffusion_factor=0.01,  # sgnht only: noise 2Aε and (default) thermostat start A, as devinterp
        thermostat_init=None,  # sgnht only: the thermostat's start ζ_0; None -> diffusion_factor
        friction=0.1,  # sghmc only: momentum friction α in (0, 1]
    )
    itemp = None  # inverse temperature β (the original's key); None -> 1 / log n; or set sgld_config.nbeta
    loss_trace_minibatch = True  # average minibatch losses (free) vs full-data losses
    do_compute_distance = False  # ||w_t - w*||₂ per step and chain (metrics, and the trace artifact)
    mala_acceptance_every = 20  # MALA acceptance probability of the SGLD step every k steps (original: 20); 0 -> off

    # --- training (λ̂ also at the trained parameter) ---
    do_training = False
    training_config = dict(
        optim="sgd",  # sgd | adam
        learning_rate=0.01,  # step size (> 0)
        momentum=0.9,  # SGD only; None -> 0
        batch_size=200,  # minibatch per step, drawn with replacement (<= num_training_data)
        num_steps=5000,  # optimisation steps
        init="haiku",  # initial weights: haiku (the original's) | torch
    )

    # --- extra diagnostics at w* (and the trained parameter) ---
    do_hessian_trace = False  # estimate of tr ∇²L on the num_test_data points
    hessian_trace_probes = 32  # Rademacher probes: Hessian-vector products per estimate (hutchpp: >= 3)
    hessian_trace_method = "hutchinson"  # hutchinson (default, as before) | hutchpp (Hutch++, same product budget)
    do_functional_rank = False  # numerical rank of d f(w, x) / d w on the num_test_data points

    # --- `calibrate` command: short SGLD runs at w* over a grid (llc.calibrate; docs/llc.md#the-dln-experiment) ---
    # calibrate: ε grid (each > 0) x nbetas x gammas; None -> the run's sgld_config values, burn-in None -> half
    calibration = dict(
        epsilons=[1e-7, 1e-6, 1e-5, 1e-4],  # ε grid, every entry > 0
        nbetas=None,  # nβ grid (None entries -> n / log n); None -> [the run's nβ]
        gammas=None,  # γ grid (>= 0); None -> [sgld_config.gamma]
        num_steps=500,  # steps per setting; None -> sgld_config.num_steps
        num_chains=None,  # None -> sgld_config.num_chains
        batch_size=None,  # None -> sgld_config.batch_size
        num_burnin_steps=None,  # None -> half of num_steps
        min_noise_fraction=0.9,  # stable needs noise share of the step >= this (bounds the ε bias near 10%)
    )

    # --- runtime ---
    device = "auto"  # auto | cpu | cuda
    dtype = "float32"  # float32 | float64
    log_max_points = 2000  # thinning of every logged time series
    verbose = False  # print the SGLD loss every 200 steps and the exact λ


def validate(config: dict) -> dict:
    """Check every user-facing key before any compute; returns the built dataclasses."""
    checks.integer("input_dim", config["input_dim"])
    checks.int_list("layer_widths", config["layer_widths"])
    n = checks.integer("num_training_data", config["num_training_data"], lo=2)
    checks.integer("num_test_data", config["num_test_data"])
    dist = checks.one_of("input_distribution", resolve_alias(config, "input_dist", "input_distribution"),
                         INPUT_DISTRIBUTIONS)
    if config["param_init"] is not None:
        raise ValueError(f"param_init is unused (as in the original) and must be None; got {config['param_init']!r}")
    tp = dict(config["true_param_config"])
    checks.known_entries("true_param_config", tp, {"method", "prop_rank_reduce", "mean", "std", "init", "rank_key"})
    checks.one_of("true_param_config.method", tp["method"], TRUE_PARAM_METHODS)
    checks.number("true_param_config.prop_rank_reduce", tp["prop_rank_reduce"], lo=0, hi=1)
    checks.number("true_param_config.std", tp["std"], lo=0)
    checks.one_of("true_param_config.init", tp.setdefault("init", "haiku"), INIT_SCHEMES)
    from models.dln import RANK_KEYS  # here, not in the import block, which another change rewrites

    checks.one_of("true_param_config.rank_key", tp.setdefault("rank_key", "independent"), RANK_KEYS)
    sgld_values = {**config["sgld_config"], "loss_trace_minibatch": config["loss_trace_minibatch"]}
    itemp = config["itemp"]
    if checks.number("itemp", itemp, lo=0, strict=True, none_ok=True) is not None:
        if sgld_values.get("nbeta") is not None:
            raise ValueError(f"set itemp or sgld_config.nbeta, not both; "
                             f"got itemp={itemp!r}, nbeta={sgld_values['nbeta']!r}")
        sgld_values["nbeta"] = itemp * n
    sgld = build_config(*split_sampler(sgld_values), "sgld_config")
    checks.at_most("sgld_config.batch_size", sgld.batch_size, "num_training_data", n)
    training, train_init = None, "haiku"
    if config["do_training"]:
        tc = dict(config["training_config"])
        train_init = tc.pop("init", "haiku")
        checks.one_of("training_config.init", train_init, INIT_SCHEMES)
        training = build_config(TrainingConfig, tc, "training_config")
        checks.at_most("training_config.batch_size", training.batch_size, "num_training_data", n)
    validate_hessian_trace(config)
    checks.integer("mala_acceptance_every", config["mala_acceptance_every"], lo=0)
    checks.integer("log_max_points", config["log_max_points"])
    for key in ("do_compute_distance", "save_true_param", "verbose"):
        checks.boolean(key, config[key])
    checks.one_of("dtype", config["dtype"], DTYPES)
    calibration = validate_calibration(config["calibration"], sgld, n)
    device = resolve_device(config["device"])
    check_config_device(sgld, device)  # sgld_config.amp="fp16" needs CUDA
    return {"sgld": sgld, "training": training, "train_init": train_init, "true_param": tp,
            "input_distribution": dist, "device": device, "calibration": calibration}


@unique
class Stream(IntEnum):
    """The run's independent random streams (derived_seed spawn keys); explicit values, so adding
    a stream reseeds no other."""
    TRUE_PARAM = 0
    DATA = 1
    SGLD_W_STAR = 2
    DIAG_W_STAR = 3
    INIT = 4
    BATCHES = 5
    SGLD_TRAINED = 6
    DIAG_TRAINED = 7
    TEST_DATA = 8


def _stream(seed: int, purpose: int, device="cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(derived_seed(seed, purpose))


def _mse(out, y):
    # Mean over batch and outputs, no 1/2 (docs/notes/llc.md#conventions). Written out rather than
    # F.mse_loss, whose backward breaks forward-over-reverse HVPs ("ZeroTensors are immutable").
    return ((out - y) ** 2).mean()


@ex.main
def main(_config, _run, _seed):
    checked = validate(_config)
    with checkpointing(_run, _config) as ck:  # with training: checkpoints at its steps, resume (tracking.preempt)
        return _main(_config, _run, _seed, checked, ck)


def build_problem(_config, _seed, checked) -> dict:
    """w*, its exact λ, the teacher data, and the network at w* (on the run's device and dtype).

    Shared by the main run and the ``calibrate`` command, so both see the same model, data and w*.
    """
    dtype, device = resolve_dtype(_config["dtype"]), checked["device"]
    input_dim, widths, n = _config["input_dim"], list(_config["layer_widths"]), _config["num_training_data"]
    tp = checked["true_param"]

    # --- true parameter and its exact learning coefficient ---
    w_star = make_true_params(
        input_dim, widths, tp["method"], _stream(_seed, Stream.TRUE_PARAM),
        prop_rank_reduce=tp["prop_rank_reduce"], mean=tp["mean"], std=tp["std"], init=tp["init"],
        rank_key=tp["rank_key"],
    )
    true_rank, prod_sv = numerical_rank(end_to_end_matrix(w_star))
    true_lambda, true_mult = dln_learning_coefficient(input_dim, widths, true_rank)

    # --- data: y = f(w*, x), noiseless; fresh test points for the diagnostics ---
    net = DeepLinearNetwork(input_dim, widths)
    f64 = lambda p, x: functional_call(net, p, (x,))  # noqa: E731
    dist = checked["input_distribution"]
    x, y = teacher_dataset(f64, w_star, n, input_dim, dist, _stream(_seed, Stream.DATA))
    # nβ·L_n of w*'s end-to-end map truncated to rank k-1, k = 1..r: how far, in units of the
    # posterior's temperature, w* is from the lower-rank teachers (docs/llc.md#the-dln-experiment).
    rank_gaps = checked["sgld"].resolve_nbeta(n) * rank_truncation_losses(end_to_end_matrix(w_star), x, true_rank)
    x, y = x.to(device=device, dtype=dtype), y.to(device=device, dtype=dtype)
    x_test, y_test = teacher_dataset(f64, w_star, _config["num_test_data"], input_dim, dist,
                                     _stream(_seed, Stream.TEST_DATA))
    x_test, y_test = x_test.to(device=device, dtype=dtype), y_test.to(device=device, dtype=dtype)

    net.load_state_dict({k: v.to(dtype) for k, v in w_star.items()})
    net.to(device=device, dtype=dtype)
    return dict(w_star=w_star, true_rank=true_rank, prod_sv=prod_sv, true_lambda=true_lambda, true_mult=true_mult,
                rank_gaps=rank_gaps, net=net, x=x, y=y, x_test=x_test, y_test=y_test)


def _main(_config, _run, _seed, checked, ck):
    seed_everything(_seed)
    sgld, device = checked["sgld"], checked["device"]
    dtype = resolve_dtype(_config["dtype"])
    input_dim, widths = _config["input_dim"], list(_config["layer_widths"])
    pb = build_problem(_config, _seed, checked)
    true_lambda, net = pb["true_lambda"], pb["net"]
    x, y, x_test, y_test = pb["x"], pb["y"], pb["x_test"], pb["y_test"]
    record_true_param(_run, pb, _config)
    f_flat, w_flat = flat_model_for_module(net, dtype, device)

    def loss(w, xb, yb):
        return _mse(f_flat(w, xb), yb)

    model_dim = w_flat.numel()
    if ck.state is not None:  # resumed during or after training: the λ̂ at w* is in the checkpoint
        result = json.loads(ck.state["result"])
    else:
        res, extra = _sgld(_run, "llc", loss, w_flat, x, y, sgld, derived_seed(_seed, Stream.SGLD_W_STAR), _config)
        result = {
            **res.summary(),
            **extra,
            **true_param_summary(pb),
            "model_dim": model_dim,
            "relative_error": (res.lambdahat - true_lambda) / true_lambda if true_lambda > 0 else None,
            **diagnostics(_run, "", loss, f_flat, w_flat, x_test, y_test, _config,
                          _stream(_seed, Stream.DIAG_W_STAR, w_flat.device)),
        }
        _run.log_scalar("llc/lambdahat", res.lambdahat, 0)

    # --- optional: train from a fresh init, then λ̂ at the trained parameter ---
    if checked["training"] is not None:
        cfg = checked["training"]
        gen_init = _stream(_seed, Stream.INIT)
        init = init_params(input_dim, widths, gen_init, checked["train_init"])
        trained = DeepLinearNetwork(input_dim, widths)
        trained.load_state_dict({k: v.to(dtype) for k, v in init.items()})
        trained.to(device=device, dtype=dtype)
        gen_batches = _stream(_seed, Stream.BATCHES, device)
        every = max(1, math.ceil(cfg.num_steps / _config["log_max_points"]))

        def log_train(step, value):  # logged as training goes, so an interrupted run keeps it
            if step % every == 0 or step == cfg.num_steps - 1:
                _run.log_scalar("train/loss", value, step)

        def boundary(steps_done, capture):  # the last one always saves: λ̂ at w_trained then resumes without retraining
            ck.boundary(steps_done, lambda: {"train": capture(), "result": json.dumps(json_ready(result))},
                        force=steps_done == cfg.num_steps)

        with ck.deferring():
            losses = train(trained, _mse, x, y, cfg, gen_batches, callback=log_train, boundary=boundary,
                           resume=ck.state["train"] if ck.state else None)
        w_trained = torch.cat([p.detach().reshape(-1) for p in trained.parameters()])
        seed_t = derived_seed(_seed, Stream.SGLD_TRAINED)
        res_t, extra_t = _sgld(_run, "trained/llc", loss, w_trained, x, y, sgld, seed_t, _config)
        rank_t, sv_t = numerical_rank(end_to_end_matrix(dict(trained.named_parameters())))
        _run.info["trained_end_to_end_singular_values"] = sv_t.tolist()
        result["trained"] = {
            **res_t.summary(),
            **extra_t,
            "true_lambda": true_lambda,  # the trained w sits near the true set, of rank true_rank
            "numerical_rank": rank_t,
            "final_train_loss": float(losses[-1]),
            "relative_error": (res_t.lambdahat - true_lambda) / true_lambda if true_lambda > 0 else None,
            **diagnostics(_run, "trained_", loss, f_flat, w_trained, x_test, y_test, _config,
                          _stream(_seed, Stream.DIAG_TRAINED, w_trained.device)),
        }
        _run.log_scalar("trained/llc/lambdahat", res_t.lambdahat, 0)
    return json_ready(result)


def _sgld(_run, prefix, loss, w0, x, y, sgld, seed, config):
    """λ̂ at w0 by SGLD, with the original's per-step records; logs traces, returns (LLCResult, summary).

    Records, as the original's sgld_utils.run_sgld: ||w_t - w0||₂ per step (do_compute_distance)
    and, every ``mala_acceptance_every`` steps, the MALA acceptance probability of the step
    w_t -> w_{t+1} on that step's own minibatch (the original used the next step's batch).
    """
    C, T = sgld.num_chains, sgld.num_steps
    nbeta, every = sgld.resolve_nbeta(x.shape[0]), config["mala_acceptance_every"]
    dist = np.full((C, T), np.nan) if config["do_compute_distance"] else None
    acc_t, acc_p = [], []

    def callback(t, w_t, w_next, idx):
        if dist is not None:
            dist[:, t] = (w_t - w0).norm(dim=1).double().cpu().numpy()
        if every and t % every == 0:
            acc_t.append(t)
            acc_p.append(mala_acceptance_probability(loss, w_t, w_next, x[idx], y[idx], w0, sgld.epsilon, nbeta,
                                                     sgld.gamma).cpu().numpy())
        if config["verbose"] and t % 200 == 0:
            batch_loss = torch.func.vmap(loss)(w_t, x[idx], y[idx])  # (C,)
            print(f"{prefix} step {t}, loss {[round(float(v), 6) for v in batch_loss]}")

    init = initial_loss(loss, w0, x, y)
    needed = dist is not None or every > 0 or config["verbose"]
    trace = run_sgld(loss, w0, x, y, sgld, seed, callback=callback if needed else None)
    res = llc_result(trace.loss, init, trace.nbeta, trace.burnin, sgld, trace.compile_mode)
    extra = {}
    max_points = config["log_max_points"]
    for c in range(C):
        log_series(_run, f"{prefix}/loss_trace/chain{c}", res.loss_trace[c], max_points)
        if dist is not None:
            log_series(_run, f"{prefix}/distance/chain{c}", dist[c], max_points)
    arrays = dict(loss_trace=res.loss_trace, burnin=res.burnin, lambdahat_per_chain=res.lambdahat_per_chain)
    if dist is not None:
        arrays["distance"] = dist  # (C, T)
        extra["final_distance"] = dist[:, -1].tolist()
    if acc_t:
        probs = np.stack(acc_p)  # (K, C)
        arrays["mala_acceptance_t"], arrays["mala_acceptance_probs"] = np.array(acc_t), probs
        _run.info[f"{prefix.replace('/', '_')}_mala_acceptance_probs"] = {"t": acc_t, "probs": probs.tolist()}
        for k, t in enumerate(acc_t):
            _run.log_scalar(f"{prefix}/mala_acceptance", float(probs[k].mean()), t)
        extra["mala_acceptance_mean"] = float(probs.mean())
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, f"{prefix.replace('/', '_')}_trace.npz")
        np.savez_compressed(path, **arrays)
        _run.add_artifact(path)
    return res, extra


@ex.command
def calibrate(_config, _run):
    """Sweep calibration.epsilons (× nbetas × gammas) at w*; figure calibration.png, table in info['calibration'].

    Same model, data and w* as the main run, and the seed of its λ̂ at w*: at the run's
    ε with its steps, chains and burn-in, the setting's λ̂ is the main run's.
    """
    checked = validate(_config)
    _seed = main_seed(ex)  # the main run's seed, so the same model, data and SGLD draws
    seed_everything(_seed)
    pb = build_problem(_config, _seed, checked)
    title = f"DLN {_config['input_dim']}->{list(_config['layer_widths'])}, λ = {pb['true_lambda']}"
    out = run_calibration(_run, pb["net"], _mse, (pb["x"], pb["y"]), checked["calibration"],
                          derived_seed(_seed, Stream.SGLD_W_STAR), checked["device"], title)
    return {**out, "true_lambda": pb["true_lambda"]}


if __name__ == "__main__":
    run_cli(ex)
