"""λ̂ along the saddle-to-saddle training dynamics of a deep linear network.

The setup of Jacot et al. 2021 ("Saddle-to-saddle dynamics in deep linear
networks: small initialization training, symmetry, and sparsity"; docs/notes/llc.md#saddle):
a teacher 10·diag(1, ..., d), inputs x ~ N(0, I_d), a bias-free DLN with
``num_hidden_layers`` hidden layers of ``width`` and small initial weights
N(0, width^-initialisation_exponent), trained with plain SGD. The loss plateaus and
drops; at each drop the end-to-end matrix W_L...W_1 gains one singular value.

Every ``logging_period`` SGD steps (and before the first and after the last) the run
records the training loss, the end-to-end matrix's singular values and rank, Aoyagi's
λ and multiplicity at that rank, and λ̂ at the current weights w_t estimated with
realisable targets y = f(w_t, x), so that w_t is a true parameter. Each record keeps
its SGLD loss trace (``loss_trace``, chains x steps, as the original), and the artifact
``saddle_traces.npz`` holds all of them; ``do_plot`` saves the curve as an artifact.

    python experiments/expt_dln_saddle_dynamics.py with width=500 \\
        training_config.num_steps=50000 logging_period=100 seed=42
"""
from __future__ import annotations

import os
import tempfile
from enum import IntEnum, unique

import numpy as np
import torch
from sacred import Experiment

from core import checks
from core.config_docs import with_nested_docs
from core.runtime import DTYPES, derived_seed, resolve_device, resolve_dtype, stream_generator
from dynamics.train import TrainingConfig, train
from llc.aoyagi import dln_learning_coefficient
from llc.estimate import estimate_llc_flat, flat_model_for_module
from llc.samplers import check_config_device, split_sampler
from llc.sgld import SGLDDivergenceError
from models.dln import DeepLinearNetwork, end_to_end_matrix, numerical_rank
from tracking.preempt import add_checkpoint_config, checkpointing
from tracking.sacred_utils import build_config, configure_experiment, json_ready, run_cli, seed_everything

ex = add_checkpoint_config(configure_experiment(Experiment("dln_saddle_dynamics")))


@with_nested_docs  # print_config shows the comments of the keys inside the dict blocks too
@ex.config
def cfg():
    expt_name = None  # free label to group runs in plots

    # --- teacher and data (Jacot et al. 2021) ---
    in_out_dim = 5  # d: teacher 10·diag(1..d), input and output size
    num_training_data = 10000  # n; x ~ N(0, I_d), y = teacher x

    # --- student: bias-free DLN, d -> width -> ... -> width -> d ---
    width = 10  # hidden width (the paper's README uses 500)
    num_hidden_layers = 4  # hidden layers; num_hidden_layers + 1 weight matrices
    initialisation_exponent = 1.5  # initial weights N(0, width^-exponent): small init for > 1

    # --- training: plain SGD on the MSE (mean over batch and outputs) ---
    training_config = dict(
        optim="sgd",  # sgd | adam
        learning_rate=1e-4,  # step size (> 0)
        momentum=None,  # SGD only; None -> 0
        batch_size=128,  # minibatch per step, drawn with replacement
        num_steps=20000,  # optimisation steps
        weight_decay=None,  # L2 penalty; None -> 0
    )
    logging_period = 50  # SGD steps between checkpoints (> 0)
    rank_threshold = 1.0  # singular values of W_L...W_1 above this count toward its rank (teacher's: 10..10d)

    # --- SGLD / LLC at each checkpoint, targets y = f(w_t, x) ---
    sgld_config = dict(
        epsilon=1e-6,  # step size ε
        gamma=1.0,  # localisation strength γ
        num_steps=100,  # steps per chain, burn-in included
        batch_size=128,  # minibatch per step and chain
        num_chains=4,  # vectorised with vmap
        nbeta=None,  # n·β; None -> n·itemp
        num_burnin_steps=None,  # None -> discard the first 90%
        compile="auto",  # torch.compile the step: "auto" (runs of >= 50,000 chain-steps) | True | False
        amp=None,  # None | "bf16" | "fp16" (CUDA only): the loss forward/backward under torch.autocast (llc.precision)
        sampler="sgld",  # "sgld", "sgnht" or "sghmc" (llc.samplers); the default runs SGLD as before
        diffusion_factor=0.01,  # sgnht only: noise 2Aε and (default) thermostat start A, as devinterp
        thermostat_init=None,  # sgnht only: the thermostat's start ζ_0; None -> diffusion_factor
        friction=0.1,  # sghmc only: momentum friction α in (0, 1]
    )
    itemp = None  # inverse temperature β (the original's key); None -> 1 / log n; or set sgld_config.nbeta
    loss_trace_minibatch = True  # average minibatch losses (free) vs full-data losses

    # --- runtime ---
    device = "auto"  # auto | cpu | cuda
    dtype = "float32"  # float32 | float64
    verbose = False  # print one line per checkpoint
    do_plot = False  # save λ̂ and the training loss over t as the artifact saddle_dynamics.png
    seed = 42  # the original's default


@ex.named_config
def paper():
    """The original README's run: width 500, 50k SGD steps, λ̂ every 100 (the generator's ``paper`` preset)."""
    width = 500
    training_config = dict(num_steps=50000)
    logging_period = 100


@ex.named_config
def cpu():
    """Width 10: every plateau within minutes on a laptop (the generator's ``cpu`` preset)."""
    width = 10
    training_config = dict(learning_rate=3e-4, num_steps=6000)
    logging_period = 100


def validate(config: dict) -> dict:
    """Check every user-facing key before any compute; returns the built dataclasses."""
    checks.integer("in_out_dim", config["in_out_dim"])
    checks.integer("width", config["width"])
    checks.integer("num_hidden_layers", config["num_hidden_layers"], lo=0)
    n = checks.integer("num_training_data", config["num_training_data"], lo=2)
    checks.number("initialisation_exponent", config["initialisation_exponent"])
    checks.integer("logging_period", config["logging_period"])
    checks.number("rank_threshold", config["rank_threshold"], lo=0, strict=True, finite=False)
    training = build_config(TrainingConfig, dict(config["training_config"]), "training_config")
    checks.at_most("training_config.batch_size", training.batch_size, "num_training_data", n)
    sgld_values = {**config["sgld_config"], "loss_trace_minibatch": config["loss_trace_minibatch"]}
    itemp = config["itemp"]
    if checks.number("itemp", itemp, lo=0, strict=True, none_ok=True, finite=False) is not None:
        if sgld_values.get("nbeta") is not None:
            raise ValueError(f"set itemp or sgld_config.nbeta, not both; "
                             f"got itemp={itemp!r}, nbeta={sgld_values['nbeta']!r}")
        sgld_values["nbeta"] = itemp * n
    sgld = build_config(*split_sampler(sgld_values), "sgld_config")
    for key in ("do_plot", "verbose"):
        checks.boolean(key, config[key])
    checks.at_most("sgld_config.batch_size", sgld.batch_size, "num_training_data", n)
    checks.one_of("dtype", config["dtype"], DTYPES)
    device = resolve_device(config["device"])
    check_config_device(sgld, device)  # sgld_config.amp="fp16" needs CUDA
    return {"training": training, "sgld": sgld, "device": device}


@unique
class Stream(IntEnum):
    """The run's independent random streams (derived_seed spawn keys); explicit values, so adding
    a stream reseeds no other."""
    DATA = 0
    INIT = 1
    BATCHES = 2
    SGLD = 3


def _mse(out, y):
    return ((out - y) ** 2).mean()  # mean over batch and outputs, no 1/2 (docs/notes/llc.md#conventions)


def teacher_data(d: int, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Teacher T = 10·diag(1..d), x ~ N(0, I_d) (n, d), y = x Tᵀ (n, d); float64."""
    teacher = 10.0 * torch.diag(torch.arange(1, d + 1, dtype=torch.float64))
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    return teacher, x, x @ teacher.T


def small_init(net: DeepLinearNetwork, width: int, exponent: float, gen: torch.Generator) -> None:
    """Every weight i.i.d. N(0, σ²) with σ² = width^-exponent, drawn in float64 from ``gen``."""
    sigma = width ** (-exponent / 2)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * sigma)


@ex.main
def main(_config, _run, _seed):
    checked = validate(_config)
    with checkpointing(_run, _config) as ck:  # SIGTERM/SIGUSR1/SIGINT -> checkpoint at a step boundary; resume
        return _main(_config, _run, _seed, checked, ck)


def _main(_config, _run, _seed, checked, ck):
    seed_everything(_seed)
    training, sgld, device = checked["training"], checked["sgld"], checked["device"]
    dtype = resolve_dtype(_config["dtype"])
    d, n, width = _config["in_out_dim"], _config["num_training_data"], _config["width"]
    widths = [width] * _config["num_hidden_layers"] + [d]
    period, threshold = _config["logging_period"], _config["rank_threshold"]

    teacher, x, y = teacher_data(d, n, stream_generator(_seed, Stream.DATA))
    x, y = x.to(device=device, dtype=dtype), y.to(device=device, dtype=dtype)
    net = DeepLinearNetwork(d, widths)
    small_init(net, width, _config["initialisation_exponent"], stream_generator(_seed, Stream.INIT))
    net.to(device=device, dtype=dtype)
    f_flat, _ = flat_model_for_module(net, dtype, device)

    def loss(w, xb, yb):
        return _mse(f_flat(w, xb), yb)

    _run.info["teacher_singular_values"] = torch.linalg.svdvals(teacher).tolist()
    checkpoints = _run.info.setdefault("checkpoints", [])  # restored on resume
    traces = [t.numpy() for t in ck.state["traces"]] if ck.state else []  # (C, T) each

    def checkpoint(t: int, batch_loss: float | None) -> None:
        w_t = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
        with torch.no_grad():
            y_t = f_flat(w_t, x)  # realisable targets: w_t is a true parameter of (x, y_t)
            train_loss = float(_mse(y_t, y))
        rank_num, sv = numerical_rank(end_to_end_matrix(dict(net.named_parameters())))
        rank = int((sv > threshold).sum())
        true_lambda, true_mult = dln_learning_coefficient(d, widths, rank)
        rec = {"t": t, "train_loss": train_loss, "batch_loss": batch_loss, "rank": rank,
               "numerical_rank": rank_num, "singular_values": sv.tolist(),
               "true_lambda": true_lambda, "true_multiplicity": true_mult}
        try:
            res = estimate_llc_flat(loss, w_t, x, y_t, sgld, seed=derived_seed(_seed, Stream.SGLD, len(checkpoints)))
            rec.update(status="ok", **res.summary(), loss_trace=res.loss_trace.tolist())
            traces.append(res.loss_trace)
            _run.log_scalar("llc/lambdahat", res.lambdahat, t)
            _run.log_scalar("llc/lambdahat_std", res.lambdahat_std, t)
        except (SGLDDivergenceError, FloatingPointError) as err:  # one bad checkpoint: record it, keep training
            rec.update(status="failed", reason=str(err))
            traces.append(np.full((sgld.num_chains, sgld.num_steps), np.nan))
        _run.log_scalar("train/loss", train_loss, t)
        _run.log_scalar("dln/rank", rank, t)
        _run.log_scalar("dln/numerical_rank", rank_num, t)
        _run.log_scalar("aoyagi/lambda", true_lambda, t)
        _run.log_scalar("aoyagi/multiplicity", true_mult, t)
        checkpoints.append(json_ready(rec))
        if _config["verbose"]:
            print(f"t={t} loss={train_loss:.4g} rank={rank} lambdahat={rec.get('lambdahat', float('nan')):.3g} "
                  f"lambda={true_lambda:g} {rec['status']}")

    def callback(step: int, batch_loss: float) -> None:
        t = step + 1  # SGD steps done
        if t % period == 0 or t == training.num_steps:
            _run.log_scalar("train/batch_loss", batch_loss, t)
            checkpoint(t, batch_loss)

    def boundary(steps_done, train_capture):
        ck.boundary(steps_done, lambda: {"train": train_capture(), "traces": [torch.from_numpy(t) for t in traces]})

    if ck.state is None:
        checkpoint(0, None)
    with ck.deferring():
        train(net, _mse, x, y, training, stream_generator(_seed, Stream.BATCHES, device=device), callback=callback,
              boundary=boundary, resume=ck.state["train"] if ck.state else None)

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "saddle_traces.npz")
        np.savez_compressed(path, loss_trace=np.stack(traces), t=np.array([c["t"] for c in checkpoints]))  # (K, C, T)
        _run.add_artifact(path)
        if _config["do_plot"]:
            from tracking.figures_llc import checkpoints_frame, plot_llc_curve, save_figure

            frame = checkpoints_frame([{k: v for k, v in c.items() if k != "loss_trace"} for c in checkpoints])
            title = f"DLN saddle dynamics: M={_config['num_hidden_layers']}, H={width}, seed {_seed}"
            fig = plot_llc_curve(frame, title=title)
            _run.add_artifact(str(save_figure(fig, os.path.join(tmp, "saddle_dynamics.png"))))

    ranks = [c["rank"] for c in checkpoints]
    final = checkpoints[-1]
    ok = [c for c in checkpoints if c["status"] == "ok"]
    return json_ready({
        "final_t": final["t"],
        "final_train_loss": final["train_loss"],
        "final_rank": final["rank"],
        "final_lambdahat": final.get("lambdahat"),
        "final_lambdahat_std": final.get("lambdahat_std"),
        "final_true_lambda": final["true_lambda"],
        "final_relative_error": (final["lambdahat"] - final["true_lambda"]) / final["true_lambda"]
        if final["status"] == "ok" and final["true_lambda"] > 0 else None,
        "rank_sequence": [int(r) for i, r in enumerate(ranks) if i == 0 or r != ranks[i - 1]],
        "num_checkpoints": len(checkpoints),
        "num_failed_checkpoints": len(checkpoints) - len(ok),
        "model_dim": sum(p.numel() for p in net.parameters()),
    })


if __name__ == "__main__":
    run_cli(ex)
