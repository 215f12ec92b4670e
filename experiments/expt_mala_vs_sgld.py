"""λ̂ from minibatch SGLD against λ̂ from full-batch MALA, and what each costs, over n.

The set-up of the original MALA_vs_SGLD.ipynb (edmundlth/validating_lambdahat): a ReLU
network 10 -> 20 -> 20 -> 10 whose true parameter w* has Haiku's default init with the
hidden biases redrawn from N(0, 1) (models.relu_mlp.notebook_teacher), realisable data
x ~ U(-10, 10)^10, y = f(w*, x), and n in round(10^linspace(2, 5, 7)). Both samplers
target the same localized tempered posterior

    p(w) ∝ exp(-nβ L_n(w) - (γ/2) ||w - w*||²),    nβ = n / log n,

with L the MSE (mean over batch and outputs, no 1/2). SGLD (llc.sgld) steps on a
minibatch; MALA (llc.mala) is exact but needs a full-data gradient per step. The
notebook's MALA is numpyro's HMC with one leapfrog step of size sqrt(ε), which is MALA
with step ε. Both samplers run the same ``num_chains`` chains of ``num_steps`` draws
(the notebook: 5 runs of one chain, 10000 draws, every draw averaged), so
``time_ratio`` = MALA's wall time / SGLD's compares equal work.

``epsilon_scaling``: 'fixed' uses ``epsilon`` at every n (the notebook's 1e-5);
'nbeta' uses ε = ``epsilon_nbeta`` / nβ, which holds the step fixed relative to the
posterior's width 1/sqrt(nβ h) in a direction of curvature h, so each sampler behaves
the same at every n (at fixed ε, MALA's acceptance falls as n grows).

    python experiments/expt_mala_vs_sgld.py with paper seed=0
    python experiments/expt_mala_vs_sgld.py with 'num_training_data=[100, 1000]' num_steps=2000
"""
from __future__ import annotations

import json
import math
import time
from enum import IntEnum, unique

import torch
from sacred import Experiment
from torch.func import functional_call, vmap

from core import checks
from core.config_docs import with_nested_docs
from core.runtime import DTYPES, derived_seed, resolve_device, resolve_dtype, stream_generator
from data.synthetic import INPUT_DISTRIBUTIONS, teacher_dataset
from llc.estimate import flat_model_for_module
from llc.mala import MALAConfig, estimate_llc_mala
from llc.psgld import initial_loss, llc_result
from llc.sgld import SGLDConfig, SGLDDivergenceError, mala_acceptance_probability, run_sgld, step_path
from models.relu_mlp import INITS, ReLUMLP, notebook_teacher
from tracking.key_aliases import resolve_alias
from tracking.preempt import add_checkpoint_config, checkpointing
from tracking.sacred_utils import build_config, configure_experiment, json_ready, run_cli, seed_everything

ex = add_checkpoint_config(configure_experiment(Experiment("mala_vs_sgld")))

SAMPLERS = ("sgld", "mala")
SGLD_TRACES = ("pre_step", "post_step")
EPSILON_SCALINGS = ("fixed", "nbeta")
PAPER_NS = [100, 316, 1000, 3162, 10000, 31623, 100000]  # np.round(10 ** np.linspace(2, 5, 7))
# Means over the notebook's 5 runs, per n in PAPER_NS (data/mala_v_sgld_results.json of the original).
PUBLISHED = {
    "sgld": [54.9, 86.7, 136.9, 211.2, 294.9, 349.3, 355.8],
    "mala": [54.3, 86.4, 140.0, 215.4, 296.2, 359.1, 349.1],
}
# The notebook's variable names -> the keys here (accepted as deprecated aliases).
ALIASES = {"step_size": "epsilon", "num_samples": "num_steps", "num_runs": "num_chains",
           "dataset_sizes": "num_training_data", "batch_size": "sgld_config.batch_size"}


@with_nested_docs  # print_config shows the comments of the keys inside the dict blocks too
@ex.config
def cfg():
    expt_name = None  # free label to group runs in plots

    # --- teacher and data (MALA_vs_SGLD.ipynb) ---
    input_dim = 10  # d
    layer_widths = [20, 20, 10]  # [hidden..., output] of the ReLU MLP; ReLU after every layer but the last
    teacher_init = "haiku"  # haiku: hk.Linear's truncated normal, std 1/sqrt(fan_in), zero biases (original) | torch
    # hidden layers' biases of w* redrawn from N(0, s²) (original: 1); output bias keeps the init's
    hidden_bias_std = 1.0
    input_distribution = "uniform"  # x: 'uniform' U(-10, 10)^d (original) | 'unit_ball'
    num_training_data = list(PAPER_NS)  # the n values; nested prefixes of one dataset, as the notebook's seeded draws

    # --- both samplers: the same chains and draws, so time_ratio compares like with like ---
    epsilon = 1e-5  # step size ε with epsilon_scaling='fixed' (original: 1e-5 at every n)
    epsilon_scaling = "fixed"  # fixed: ε = epsilon at every n (original) | nbeta: ε = epsilon_nbeta / nβ
    epsilon_nbeta = None  # ε·nβ with epsilon_scaling='nbeta' (required there, unused otherwise)
    gamma = 1.0  # localisation strength γ
    num_steps = 10000  # draws per chain (original num_samples)
    num_chains = 5  # chains per sampler and n (original: num_runs = 5 runs of one chain)
    num_burnin_steps = 0  # leading draws discarded (original: 0, every draw averaged)
    sgld_config = dict(
        batch_size=32,  # minibatch per step and chain (<= every n)
        loss_trace_minibatch=True,  # True: L_B of each step's batch (original) | False: full-data L_n per draw
        compile="auto",  # torch.compile the step: "auto" (runs >= llc.sgld.COMPILE_AUTO_MIN_CHAIN_STEPS) | True | False
    )
    mala_config = dict(
        adapt_step_size=False,  # False: ε fixed (original) | True: tune each chain's ε during burn-in
        target_acceptance=0.574,  # the tuning's target (Roberts & Rosenthal 1998), with adapt_step_size
        compile="auto",  # "auto" | False: the eager step (MALA has no compiled step) | True: an error
    )
    mala_acceptance_every = 20  # SGLD's MALA acceptance probability every k-th step (original: 20); None: off
    # pre_step: L_B(w_t) on step t's batch (unbiased) | post_step: L_B(w_{t+1}) (original; biased low)
    sgld_trace = "pre_step"

    # --- the notebook's names (deprecated aliases; None: unset) ---
    step_size = None  # -> epsilon
    num_samples = None  # -> num_steps
    num_runs = None  # -> num_chains
    dataset_sizes = None  # -> num_training_data
    batch_size = None  # -> sgld_config.batch_size

    # --- runtime ---
    device = "auto"  # auto | cpu | cuda
    dtype = "float32"  # float32 (original: JAX's default) | float64
    verbose = False  # print one line per (n, sampler)


@ex.named_config
def paper():
    # MALA_vs_SGLD.ipynb: its 7 n, ε = 1e-5 at every n, 5 chains of 10000 draws each, every draw averaged.
    num_training_data = list(PAPER_NS)
    epsilon = 1e-5
    epsilon_scaling = "fixed"
    gamma = 1.0
    num_steps = 10000
    num_chains = 5
    num_burnin_steps = 0


def validate(config: dict) -> dict:
    """Check every user-facing key before any compute; returns the resolved settings.

    Returns a dict with ``ns``, ``epsilon`` (n -> ε), ``sgld`` and ``mala`` (the common
    fields and each sampler's own, ε excluded), ``device``.
    """
    v = {new: resolve_alias(config, old, new) for old, new in ALIASES.items()}
    checks.integer("input_dim", config["input_dim"])
    checks.int_list("layer_widths ([hidden..., output])", config["layer_widths"], min_len=2)
    checks.one_of("teacher_init", config["teacher_init"], INITS)
    checks.number("hidden_bias_std", config["hidden_bias_std"], lo=0)
    checks.one_of("input_distribution", config["input_distribution"], INPUT_DISTRIBUTIONS)
    ns = checks.int_list("num_training_data", v["num_training_data"], lo=2)

    scaling = checks.one_of("epsilon_scaling", config["epsilon_scaling"], EPSILON_SCALINGS)
    if scaling == "fixed":
        checks.number("epsilon", v["epsilon"], lo=0, strict=True)
        if config["epsilon_nbeta"] is not None:
            raise ValueError("epsilon_nbeta is set but epsilon_scaling='fixed' uses epsilon; "
                             "set epsilon_scaling='nbeta' or leave epsilon_nbeta=None")
        eps = {n: float(v["epsilon"]) for n in ns}
    else:
        checks.number("epsilon_nbeta (required with epsilon_scaling='nbeta')", config["epsilon_nbeta"],
                      lo=0, strict=True)
        eps = {n: float(config["epsilon_nbeta"]) * math.log(n) / n for n in ns}

    common = dict(gamma=config["gamma"], num_steps=v["num_steps"], num_chains=v["num_chains"],
                  num_burnin_steps=config["num_burnin_steps"])
    sgld_values = {**config["sgld_config"], "batch_size": v["sgld_config.batch_size"]}
    checks.number("gamma", common["gamma"], lo=0)
    checks.integer("num_steps", common["num_steps"])
    checks.integer("num_chains", common["num_chains"])
    burn = checks.integer("num_burnin_steps", common["num_burnin_steps"], lo=0, none_ok=True)
    if burn is not None and burn >= common["num_steps"]:
        raise ValueError(f"num_burnin_steps must be < num_steps ({common['num_steps']}); got {burn}")
    sgld = {**common, **sgld_values}
    mala = {**common, **config["mala_config"]}
    build_config(SGLDConfig, {**sgld, "epsilon": 1.0}, "sgld_config")
    build_config(MALAConfig, {**mala, "epsilon": 1.0}, "mala_config")
    checks.at_most("sgld_config.batch_size", sgld["batch_size"], "every num_training_data, min", min(ns))
    checks.integer("mala_acceptance_every", config["mala_acceptance_every"], none_ok=True)
    checks.one_of("sgld_trace", config["sgld_trace"], SGLD_TRACES)
    if config["sgld_trace"] == "post_step" and not sgld.get("loss_trace_minibatch", True):
        raise ValueError("sgld_trace='post_step' is a minibatch trace; it needs sgld_config.loss_trace_minibatch=True")
    checks.one_of("dtype", config["dtype"], DTYPES)
    return {"ns": ns, "epsilon": eps, "sgld": sgld, "mala": mala, "device": resolve_device(config["device"])}


# Rows per chunk of MALA's full-data passes (llc.mala.full_data_value_and_grad): fewer, larger chunks.
EVAL_BATCH = 16384

@unique
class Stream(IntEnum):
    """The run's independent random streams (derived_seed spawn keys); explicit values, so adding
    a stream reseeds no other."""
    TRUE_PARAM = 0
    DATA = 1
    SGLD_CHAINS = 2
    MALA_CHAINS = 3


def _mse(out, y):
    return ((out - y) ** 2).mean()  # mean over batch and outputs, no 1/2 (the notebook's mse_loss)


def run_sgld_with_acceptance(loss, w_star, x, y, cfg: SGLDConfig, seed: int, every: int | None,
                             post_step: bool = False):
    """SGLD λ̂ (an LLCResult), the mean MALA acceptance probability of every ``every``-th step,
    and the seconds that diagnostic took (so the sampler's own time can be told apart).

    The acceptance probability is the notebook's diagnostic: the SGLD transition
    w_t -> w_{t+1} scored as a MALA proposal on the step's own minibatch potential
    (llc.sgld.mala_acceptance_probability), at steps every, 2·every, ...
    With ``post_step`` the λ̂ trace is the original's L_{B_t}(w_{t+1}), the loss on the batch
    the step has just descended (biased low), instead of run_sgld's L_{B_t}(w_t).
    """
    n = x.shape[0]
    nbeta = cfg.resolve_nbeta(n)
    probs = []
    spent = [0.0]  # seconds inside the diagnostic
    after = []  # post_step: (C,) L_{B_t}(w_{t+1}) per step
    batched = vmap(loss)

    def callback(t, w_t, w_next, idx):  # idx (C, B)
        if post_step:
            with torch.no_grad():
                after.append(batched(w_next, x[idx], y[idx]).double())
        if every is not None and (t + 1) % every == 0:
            start = time.perf_counter()
            xb = x.index_select(0, idx.reshape(-1)).view(*idx.shape, *x.shape[1:])  # (C, B, d)
            yb = y.index_select(0, idx.reshape(-1)).view(*idx.shape, *y.shape[1:])
            probs.append(mala_acceptance_probability(loss, w_t, w_next, xb, yb, w_star, cfg.epsilon, nbeta, cfg.gamma))
            spent[0] += time.perf_counter() - start

    init = initial_loss(loss, w_star, x, y)
    trace = run_sgld(loss, w_star, x, y, cfg, seed, callback=callback if every is not None or post_step else None)
    accept = float(torch.stack(probs).mean()) if probs else None
    losses = torch.stack(after, 1).cpu() if post_step else trace.loss  # (C, T)
    return llc_result(losses, init, trace.nbeta, trace.burnin, cfg, trace.compile_mode), accept, spent[0]


def _warm_up(loss, w_star, x, y, checked) -> None:
    """Two untimed steps of each sampler, so neither time_s pays for first-call set-up (allocator, vmap).

    The SGLD warm-up compiles when the sweep's runs will (compile=True, or "auto" on long
    runs off CUDA), so torch.compile's first call is not in the first n's time_s either. A
    CUDA-graph run (llc.cuda_graph) captures its own graph, in its time_s (a few steps' worth).
    """
    two = dict(num_steps=2, num_burnin_steps=0)
    cfg = SGLDConfig(**checked["sgld"], epsilon=1.0)
    compiles = step_path(cfg.compile, cfg.num_chains * cfg.num_steps, w_star.device.type, cfg.amp) == "compiled"
    run_sgld_with_acceptance(loss, w_star, x, y, SGLDConfig(**{**checked["sgld"], **two, "compile": compiles},
                                                            epsilon=1e-12), 0, 1)
    estimate_llc_mala(loss, w_star, x, y, MALAConfig(**{**checked["mala"], **two}, epsilon=1e-12), seed=0,
                      eval_batch_size=EVAL_BATCH)


@ex.main
def main(_config, _run, _seed):
    checked = validate(_config)
    with checkpointing(_run, _config) as ck:  # SIGTERM/SIGUSR1/SIGINT -> checkpoint after the running (n, sampler)
        return _main(_config, _run, _seed, checked, ck)


def _main(_config, _run, _seed, checked, ck):
    """The n sweep; the unit of work is one (n, sampler) estimate, and a signal lets the running one finish.

    ``ck.boundary(k)`` after the k-th estimate: the checkpoint holds the rows of the k
    estimates done (``ck.state['rows']``, JSON), so a resumed run skips them; each
    estimate's chains have their own seed, so the remaining ones draw what they would have.
    """
    seed_everything(_seed)
    device, dtype = checked["device"], resolve_dtype(_config["dtype"])
    sizes = [_config["input_dim"], *_config["layer_widths"]]
    ns = checked["ns"]

    w64 = notebook_teacher(sizes, stream_generator(_seed, Stream.TRUE_PARAM),
                           init=_config["teacher_init"], hidden_bias_std=_config["hidden_bias_std"])
    net = ReLUMLP(sizes)
    net.load_state_dict({k: v.to(dtype) for k, v in w64.items()})
    net.to(device=device, dtype=dtype)
    # y = f(w*, x) in the run's dtype, so L_n(w*) = 0 up to rounding as in the notebook
    w_run = {k: v.to(dtype) for k, v in w64.items()}
    gen_data = stream_generator(_seed, Stream.DATA)
    x_all, y_all = teacher_dataset(lambda p, xb: functional_call(net, p, (xb,)), w_run, max(ns), sizes[0],
                                   _config["input_distribution"], gen_data)
    f_flat, w_flat = flat_model_for_module(net, dtype, device)

    def loss(w, xb, yb):
        return _mse(f_flat(w, xb), yb)

    _warm_up(loss, w_flat, x_all[:ns[0]].to(device), y_all[:ns[0]].to(device), checked)
    fields = ("lambdahat", "lambdahat_std", "lambdahat_per_chain", "rhat", "acceptance_rate", "time_s",
              "time_per_chain_step_s", "diagnostic_time_s", "status", "reason", "compile_mode")
    rows = {name: {k: [] for k in fields} for name in SAMPLERS}
    done = 0  # (n, sampler) estimates completed, in sweep order
    if ck.state is not None:
        rows, done = json.loads(ck.state["rows"]), int(ck.state["done"])
    every = _config["mala_acceptance_every"]
    unit = 0

    def capture():
        return {"rows": json.dumps(json_ready(rows)), "done": unit}

    with ck.deferring():
        for n in ns:
            x, y = x_all[:n].to(device), y_all[:n].to(device)
            eps = checked["epsilon"][n]
            for name in SAMPLERS:
                unit += 1
                if unit <= done:
                    continue  # done before the interruption: its row and metrics are restored
                row = rows[name]
                start = time.perf_counter()
                try:
                    if name == "sgld":
                        cfg = SGLDConfig(**checked["sgld"], epsilon=eps)
                        llc, accept, diagnostic_s = run_sgld_with_acceptance(
                            loss, w_flat, x, y, cfg, derived_seed(_seed, Stream.SGLD_CHAINS, n), every,
                            post_step=_config["sgld_trace"] == "post_step")
                    else:
                        cfg = MALAConfig(**checked["mala"], epsilon=eps)
                        res = estimate_llc_mala(loss, w_flat, x, y, cfg,
                                                seed=derived_seed(_seed, Stream.MALA_CHAINS, n),
                                                eval_batch_size=EVAL_BATCH)
                        llc, accept, diagnostic_s = res.llc, float(res.acceptance_rate.mean()), 0.0
                    values = dict(lambdahat=llc.lambdahat, lambdahat_std=llc.lambdahat_std,
                                  lambdahat_per_chain=llc.lambdahat_per_chain,
                                  rhat=None if math.isnan(llc.rhat) else llc.rhat, acceptance_rate=accept,
                                  status="ok", reason=None, compile_mode=llc.compile_mode)
                except (SGLDDivergenceError, FloatingPointError) as err:
                    diagnostic_s = 0.0
                    values = dict(lambdahat=None, lambdahat_std=None, lambdahat_per_chain=None, rhat=None,
                                  acceptance_rate=None, status="failed", reason=str(err), compile_mode=None)
                elapsed = time.perf_counter() - start - diagnostic_s  # the sampler's own time
                values.update(time_s=elapsed, time_per_chain_step_s=elapsed / (cfg.num_steps * cfg.num_chains),
                              diagnostic_time_s=diagnostic_s)
                for key in fields:
                    row[key].append(values[key])
                _run.log_scalar(f"{name}/time_s", elapsed, n)
                if values["lambdahat"] is not None:
                    _run.log_scalar(f"{name}/lambdahat", values["lambdahat"], n)
                    _run.log_scalar(f"{name}/lambdahat_std", values["lambdahat_std"], n)
                if values["acceptance_rate"] is not None:
                    _run.log_scalar(f"{name}/acceptance_rate", values["acceptance_rate"], n)
                if _config["verbose"]:
                    print(f"n={n} {name}: lambdahat={values['lambdahat']} accept={values['acceptance_rate']} "
                          f"time={elapsed:.3g}s {values['status']}", flush=True)
                if name != SAMPLERS[-1]:
                    ck.boundary(unit, capture)
            if unit <= done:
                continue  # this n's comparison was logged before the interruption
            s, m = rows["sgld"]["lambdahat"][-1], rows["mala"]["lambdahat"][-1]
            if s is not None and m:
                _run.log_scalar("compare/relative_difference", (s - m) / m, n)
            _run.log_scalar("compare/time_ratio", rows["mala"]["time_s"][-1] / rows["sgld"]["time_s"][-1], n)
            ck.boundary(unit, capture)  # after this n's comparison, so a resume never logs it twice

    pairs = list(zip(rows["sgld"]["lambdahat"], rows["mala"]["lambdahat"]))
    notebook_net = sizes == [10, 20, 20, 10]
    published = {name: [PUBLISHED[name][PAPER_NS.index(n)] if notebook_net and n in PAPER_NS else None for n in ns]
                 for name in SAMPLERS}
    return json_ready({
        "n": ns,
        "epsilon": [checked["epsilon"][n] for n in ns],
        "nbeta": [n / math.log(n) for n in ns],
        "true_lambda": None,  # unknown for a ReLU teacher (the figures draw it when a run has one)
        "model_dim": w_flat.numel(),
        "sgld": rows["sgld"],
        "mala": rows["mala"],
        # per n: (λ̂_SGLD - λ̂_MALA) / λ̂_MALA, and MALA's wall time over SGLD's at equal chains and draws
        "relative_difference": [(s - m) / m if s is not None and m else None for s, m in pairs],
        "time_ratio": [tm / ts for tm, ts in zip(rows["mala"]["time_s"], rows["sgld"]["time_s"])],
        "published": published,  # the original's λ̂ at the n it ran, for its network (None elsewhere)
    })


if __name__ == "__main__":
    run_cli(ex)
