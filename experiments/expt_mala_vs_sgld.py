"""λ̂ from SGLD against λ̂ from full-batch MALA, and what each costs, over n.

Both samplers target the same localized tempered posterior
p(w) ∝ exp(-nβ L_n(w) - (γ/2)||w - w*||²) around the true parameter w* of a small
deep linear network (whose exact λ is known from Aoyagi's formula). MALA
(llc.mala) is exact but needs a full-data gradient every step; SGLD (llc.sgld) uses
a minibatch and has a step-size bias. For each n in ``num_training_data`` the run
estimates λ̂ with both and records their agreement, MALA's acceptance rate and the
wall time of each (reference.md §1: the paper found agreement within ~2% for n
from 1e2 to 1e5, SGLD 6-30x cheaper).

Step sizes are given as ε·nβ, held fixed across n: the posterior's width in a
direction of curvature h is 1/sqrt(nβ h), so ε·nβ fixes the step relative to it and
each sampler behaves the same at every n.

    python experiments/expt_mala_vs_sgld.py with 'num_training_data=[100, 1000, 10000]' seed=0
"""
from __future__ import annotations

import math
import time

import torch
from sacred import Experiment
from torch.func import functional_call

from data.synthetic import INPUT_DISTRIBUTIONS, teacher_dataset
from llc.aoyagi import dln_learning_coefficient
from llc.estimate import estimate_llc_flat, flat_model_for_module
from llc.mala import MALAConfig, estimate_llc_mala
from llc.sgld import SGLDConfig, SGLDDivergenceError
from models.device import DTYPES, derived_seed, resolve_device, resolve_dtype
from models.dln import TRUE_PARAM_METHODS, DeepLinearNetwork, end_to_end_matrix, make_true_params, numerical_rank
from tracking.sacred_utils import build_config, configure_experiment, json_ready, run_cli, seed_everything

ex = configure_experiment(Experiment("mala_vs_sgld"))

SAMPLERS = ("sgld", "mala")


@ex.config
def cfg():
    expt_name = None  # free label to group runs in plots

    # --- model and data: a DLN teacher, y = f(w*, x) ---
    input_dim = 4  # H_0
    layer_widths = [6, 3]  # [H_1, ..., H_L]; the last entry is the output size
    true_param_method = "random"  # random | zero | rand_rank | rand_rank_sv (models.dln.make_true_params)
    input_distribution = "unit_ball"  # 'uniform': U(-10, 10)^d | 'unit_ball'
    num_training_data = [100, 1000, 10000, 100000]  # n values, as in the paper; nested draws of one dataset

    # --- samplers (step sizes as ε·nβ, the same at every n) ---
    sgld_config = dict(
        epsilon_nbeta=0.002,  # ε·nβ
        gamma=1.0,  # localisation strength γ
        num_steps=6000,  # steps per chain, burn-in included
        batch_size=100,  # minibatch per step and chain (<= every n)
        num_chains=8,  # vectorised with vmap
        num_burnin_steps=1000,  # None -> the first 90%
    )
    mala_config = dict(
        epsilon_nbeta=0.01,  # ε·nβ, the starting value when adapt_step_size
        gamma=1.0,  # must equal sgld_config.gamma for the comparison to mean anything
        num_steps=4000,  # full-batch steps per chain, burn-in included
        num_chains=4,
        num_burnin_steps=1000,  # also the step-size adaptation window
        adapt_step_size=True,  # tune each chain's ε towards target_acceptance during burn-in
        target_acceptance=0.574,  # optimal for MALA (Roberts & Rosenthal 1998)
    )
    loss_trace_minibatch = True  # SGLD's trace: minibatch losses (free) vs full-data losses

    # --- runtime ---
    device = "auto"  # auto | cpu | cuda
    dtype = "float64"  # float64 keeps MALA's Metropolis ratio exact for tiny models
    verbose = False  # print one line per (n, sampler)


def _positive_int(key, value, lo=1):
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ValueError(f"{key} must be an integer >= {lo}; got {value!r}")


def _scaled_config(cls, values: dict, key: str, extra: dict):
    """Validate ``values`` (with epsilon_nbeta in place of epsilon) as ``cls``; returns (ε·nβ, the checked dict)."""
    values = dict(values)
    if "epsilon_nbeta" not in values:
        raise ValueError(f"{key}.epsilon_nbeta is required (the step size as ε·nβ)")
    eps_nbeta = values.pop("epsilon_nbeta")
    if not (isinstance(eps_nbeta, (int, float)) and not isinstance(eps_nbeta, bool) and math.isfinite(eps_nbeta) and eps_nbeta > 0):
        raise ValueError(f"{key}.epsilon_nbeta must be a finite number > 0; got {eps_nbeta!r}")
    if "epsilon" in values or "nbeta" in values:
        raise ValueError(f"{key} takes epsilon_nbeta; epsilon and nbeta are derived per n")
    build_config(cls, {**values, **extra, "epsilon": 1.0}, key)  # the other fields' checks
    return float(eps_nbeta), {**values, **extra}


def validate(config: dict) -> dict:
    """Check every user-facing key before any compute."""
    _positive_int("input_dim", config["input_dim"])
    widths = config["layer_widths"]
    if not isinstance(widths, (list, tuple)) or not widths:
        raise ValueError(f"layer_widths must be a non-empty list of positive integers; got {widths!r}")
    for w in widths:
        _positive_int("layer_widths entries", w)
    if config["true_param_method"] not in TRUE_PARAM_METHODS:
        raise ValueError(f"true_param_method must be one of {TRUE_PARAM_METHODS}; got {config['true_param_method']!r}")
    if config["input_distribution"] not in INPUT_DISTRIBUTIONS:
        raise ValueError(f"input_distribution must be one of {INPUT_DISTRIBUTIONS}; got {config['input_distribution']!r}")
    ns = config["num_training_data"]
    if not isinstance(ns, (list, tuple)) or not ns:
        raise ValueError(f"num_training_data must be a non-empty list of integers >= 2; got {ns!r}")
    for n in ns:
        _positive_int("num_training_data entries", n, lo=2)
    sgld = _scaled_config(SGLDConfig, config["sgld_config"], "sgld_config",
                          {"loss_trace_minibatch": config["loss_trace_minibatch"]})
    mala = _scaled_config(MALAConfig, config["mala_config"], "mala_config", {})
    if sgld[1]["batch_size"] > min(ns):
        raise ValueError(f"sgld_config.batch_size must be <= every num_training_data (min {min(ns)}); got {sgld[1]['batch_size']}")
    if sgld[1].get("gamma", SGLDConfig.gamma) != mala[1].get("gamma", MALAConfig.gamma):
        raise ValueError(f"mala_config.gamma must equal sgld_config.gamma (same posterior); got "
                         f"{mala[1].get('gamma')} and {sgld[1].get('gamma')}")
    if config["dtype"] not in DTYPES:
        raise ValueError(f"dtype must be one of {tuple(DTYPES)}; got {config['dtype']!r}")
    return {"sgld": sgld, "mala": mala, "device": resolve_device(config["device"])}


# Independent random streams, all derived from the run's seed.
TRUE_PARAM, DATA, SGLD_CHAINS, MALA_CHAINS = range(4)


def _mse(out, y):
    return ((out - y) ** 2).mean()  # mean over batch and outputs, no 1/2 (reference.md §1)


@ex.main
def main(_config, _run, _seed):
    checked = validate(_config)
    seed_everything(_seed)
    device, dtype = checked["device"], resolve_dtype(_config["dtype"])
    input_dim, widths = _config["input_dim"], list(_config["layer_widths"])
    ns = [int(n) for n in _config["num_training_data"]]

    w_star = make_true_params(input_dim, widths, _config["true_param_method"],
                              torch.Generator().manual_seed(derived_seed(_seed, TRUE_PARAM)))
    rank, _ = numerical_rank(end_to_end_matrix(w_star))
    true_lambda, true_mult = dln_learning_coefficient(input_dim, widths, rank)
    net = DeepLinearNetwork(input_dim, widths)
    x_all, y_all = teacher_dataset(lambda p, xb: functional_call(net, p, (xb,)), w_star, max(ns), input_dim,
                                   _config["input_distribution"], torch.Generator().manual_seed(derived_seed(_seed, DATA)))
    net.load_state_dict({k: v.to(dtype) for k, v in w_star.items()})
    net.to(device=device, dtype=dtype)
    f_flat, w_flat = flat_model_for_module(net, dtype, device)

    def loss(w, xb, yb):
        return _mse(f_flat(w, xb), yb)

    rows = {name: {"lambdahat": [], "lambdahat_std": [], "time_s": [], "time_per_chain_step_s": [], "status": [],
                   "reason": []} for name in SAMPLERS}
    rows["mala"].update(acceptance_rate=[], epsilon_nbeta=[])
    for n in ns:
        x = x_all[:n].to(device=device, dtype=dtype)
        y = y_all[:n].to(device=device, dtype=dtype)
        nbeta = n / math.log(n)
        for name in SAMPLERS:
            eps_nbeta, values = checked[name]
            row = rows[name]
            start = time.perf_counter()
            try:
                if name == "sgld":
                    cfg = SGLDConfig(**values, epsilon=eps_nbeta / nbeta)
                    res = estimate_llc_flat(loss, w_flat, x, y, cfg, seed=derived_seed(_seed, SGLD_CHAINS, n))
                    llc = res
                else:
                    cfg = MALAConfig(**values, epsilon=eps_nbeta / nbeta)
                    res = estimate_llc_mala(loss, w_flat, x, y, cfg, seed=derived_seed(_seed, MALA_CHAINS, n))
                    llc = res.llc
                    row["acceptance_rate"].append(float(res.acceptance_rate.mean()))
                    row["epsilon_nbeta"].append(float(res.epsilon.mean() * nbeta))
                    _run.log_scalar("mala/acceptance_rate", float(res.acceptance_rate.mean()), n)
                status, reason = "ok", None
            except (SGLDDivergenceError, FloatingPointError) as err:
                llc, status, reason = None, "failed", str(err)
                if name == "mala":
                    row["acceptance_rate"].append(None)
                    row["epsilon_nbeta"].append(None)
            elapsed = time.perf_counter() - start
            row["time_per_chain_step_s"].append(elapsed / (values["num_steps"] * values["num_chains"]))
            row["lambdahat"].append(llc.lambdahat if llc else None)
            row["lambdahat_std"].append(llc.lambdahat_std if llc else None)
            row["time_s"].append(elapsed)
            row["status"].append(status)
            row["reason"].append(reason)
            _run.log_scalar(f"{name}/time_s", elapsed, n)
            if llc:
                _run.log_scalar(f"{name}/lambdahat", llc.lambdahat, n)
                _run.log_scalar(f"{name}/lambdahat_std", llc.lambdahat_std, n)
            if _config["verbose"]:
                print(f"n={n} {name}: lambdahat={row['lambdahat'][-1]} time={elapsed:.3g}s {status}")
        s, m = rows["sgld"]["lambdahat"][-1], rows["mala"]["lambdahat"][-1]
        if s is not None and m is not None:
            _run.log_scalar("compare/relative_difference", (s - m) / m, n)
        _run.log_scalar("compare/time_ratio", rows["mala"]["time_s"][-1] / rows["sgld"]["time_s"][-1], n)

    pairs = list(zip(rows["sgld"]["lambdahat"], rows["mala"]["lambdahat"]))
    return json_ready({
        "n": ns,
        "true_lambda": true_lambda,
        "true_multiplicity": true_mult,
        "true_rank": rank,
        "model_dim": w_flat.numel(),
        "sgld": rows["sgld"],
        "mala": rows["mala"],
        # per n: (λ̂_SGLD - λ̂_MALA) / λ̂_MALA; MALA's wall time over SGLD's (each with its own steps and
        # chains); and the same per chain-step, i.e. the cost of one full-batch step over one minibatch step
        "relative_difference": [(s - m) / m if s is not None and m else None for s, m in pairs],
        "time_ratio": [tm / ts for tm, ts in zip(rows["mala"]["time_s"], rows["sgld"]["time_s"])],
        "step_cost_ratio": [tm / ts for tm, ts in zip(rows["mala"]["time_per_chain_step_s"],
                                                      rows["sgld"]["time_per_chain_step_s"])],
    })


if __name__ == "__main__":
    run_cli(ex)
