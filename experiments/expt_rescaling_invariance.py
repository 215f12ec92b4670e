"""λ̂ under the rescaling symmetry of ReLU networks: plain vs preconditioned SGLD.

A ReLU network's Linear layer l (weight and bias) times α and Linear l+1's weight
times 1/α compute the same function, so the local learning coefficient of the
teacher parameter w* is the same at every α. The run draws a teacher w*, generates
realisable data y = f(w*, x), checks that every rescaled w*_α gives the same outputs
to float tolerance, and estimates λ̂(w*_α) over a sweep of α with each sampler in
``samplers``:

    psgld_fixed: the original notebook's sampler (rescaling_invariance.ipynb): SGLD with
           the fixed per-tensor preconditioner D = α² (layer l), 1/α² (layer l+1's weight),
           1 elsewhere (models.relu_mlp.layer_preconditioner), run with ``sgld_config``;
    sgld:  plain SGLD (llc.sgld), whose step is not equivariant: at α the two layers
           see effective step sizes ε/α² and εα², and the localisation γ is isotropic
           in w, so λ̂ drifts with α (or the chain diverges);
    psgld: SGLD with an adaptive RMSprop-style diagonal preconditioner (llc.psgld), also
           equivariant under per-tensor rescaling, run with ``psgld_config``; each tensor's
           scale m comes from :func:`tensor_scales`, equivariant also for zero biases;
    sgnht, sghmc: llc.sghmc's momentum samplers, plain as sgld is (not invariant in α), run
           with ``sgld_config`` (its absolute ε; psgld's is dimensionless) and their keys in
           it, as in the other LLC experiments (docs/llc.md#sampler-keys).

The teacher is the notebook's (models.relu_mlp.notebook_teacher): Haiku's init, hidden
biases N(0, 1), first-layer units 1-5 and 8 copies of unit 0. Every α has its own
chains' seed (that of index ``first_alpha_index + i``, so a one-α run can repeat
one α of a sweep), so flatness in α is measured, not built in. Named configs
``paper_small``, ``paper_medium``, ``paper_large`` are the paper's three networks.
The notebook's variable names (``input_dim``, ``layer_widths``, ``degen_directions``,
``scaling_factors``, ``batch_size``, ``num_runs``, ``itemp``) are deprecated aliases.

Every estimate is recorded with the sampler's name; a diverging chain is recorded as
a failed estimate at that α and the sweep goes on.

    python experiments/expt_rescaling_invariance.py with 'layer_sizes=[20, 30, 20]' seed=1
"""
from __future__ import annotations

import dataclasses
import json
import math
from enum import IntEnum, unique

import torch
from sacred import Experiment
from torch.func import functional_call

from core import checks
from core.config_docs import with_nested_docs
from core.runtime import DTYPES, derived_seed, resolve_device, resolve_dtype, stream_generator
from data.synthetic import INPUT_DISTRIBUTIONS, sample_inputs
from llc.estimate import estimate_llc_flat, flat_model_for_module
from llc.psgld import PSGLDConfig, estimate_llc_psgld, estimate_llc_psgld_traced
from llc.samplers import MINIBATCH_CONFIGS, SAMPLER_OPTIONS
from llc.sgld import SGLDConfig, SGLDDivergenceError
from models.relu_mlp import INITS, ReLUMLP, layer_preconditioner, notebook_teacher, rescale_params
from tracking.key_aliases import resolve_alias
from tracking.preempt import add_checkpoint_config, checkpointing
from tracking.sacred_utils import build_config, configure_experiment, json_ready, run_cli, seed_everything

ex = add_checkpoint_config(configure_experiment(Experiment("rescaling_invariance")))

SAMPLERS = ("psgld_fixed", "psgld", "sgld", "sgnht", "sghmc")
MOMENTUM_SAMPLERS = ("sgnht", "sghmc")  # llc.sghmc, run with sgld_config and their own keys in it
ACCEPTANCE_DENSITIES = ("preconditioned", "identity")
PSGLD_KEYS = ("rho", "delta", "kappa", "adapt_steps", "localisation", "compile")


@with_nested_docs  # print_config shows the comments of the keys inside the dict blocks too
@ex.config
def cfg():
    expt_name = None  # free label to group runs in plots

    # --- network, teacher and data (rescaling_invariance.ipynb) ---
    # [input, hidden..., output] of the ReLU MLP (the paper: [10,20,10], [20,30,20], [30,40,30])
    layer_sizes = [10, 20, 10]
    teacher_init = "haiku"  # haiku: hk.Linear's truncated normal, std 1/sqrt(fan_in), zero biases (original) | torch
    hidden_bias_std = 1.0  # hidden layers' biases redrawn from N(0, s²) (original: 1); 0 makes them zero
    degenerate_units = [1, 2, 3, 4, 5, 8]  # first-layer units made copies of unit 0 (original); [] for none
    num_training_data = 10000  # n
    input_distribution = "uniform"  # x: 'uniform' U(-10, 10)^d | 'unit_ball'
    rescale_layer = 0  # Linear l (weight, bias) × α and Linear l+1's weight × 1/α; 0 <= l <= len(layer_sizes) - 3
    alphas = [10 ** (k / 2) for k in range(-8, 9)]  # α values: 10^-4 ... 10^4, 17 values
    first_alpha_index = 0  # chains at alphas[i] use the seed of index first_alpha_index + i (a --per-alpha line: k)

    # --- samplers: each runs at every α, with its own seed per α, and is recorded by name ---
    samplers = ["psgld_fixed"]  # psgld_fixed (notebook's) | psgld (psgld_config) | sgld | sgnht | sghmc: sgld_config
    # MALA acceptance probability of every k-th psgld_fixed/sgld step (original: 20); None: off
    mala_acceptance_every = 20
    # preconditioned: the chain's own proposal N(w - εD∇U/2, εD) | identity: D = 1 (original; not the chain's at α ≠ 1)
    mala_acceptance_density = "preconditioned"
    psgld_config = dict(
        epsilon=0.05,  # step size ε, dimensionless (D ≈ (nβ ∇²L)⁻¹: every direction relaxes at ~ε/2 per step)
        gamma=0.03,  # localisation γ relative to each tensor's mean(w*²): 0.03 ≈ absolute γ = 1 at PyTorch's init
        num_steps=3000,  # steps per chain, burn-in included
        batch_size=200,  # minibatch per step and chain
        num_chains=4,  # vectorised with vmap
        nbeta=None,  # n·β; None -> n / log n
        num_burnin_steps=1000,  # None -> the first 90%; the preconditioner adapts during burn-in
        rho=0.99,  # decay of the running second moment V
        delta=1e-3,  # relative floor of V, per parameter tensor
        kappa=1e-4,  # initial D = κ · mean(w*²) per tensor
        adapt_steps=None,  # None -> the burn-in
        localisation="relative",  # relative: γ/2 Σ_s ‖w_s - w*_s‖²/mean(w*_s²) (equivariant) | absolute: γ/2 ‖w - w*‖²
        compile="auto",  # "auto" | False: the eager step (pSGLD has no compiled step) | True: an error
    )
    sgld_config = dict(  # psgld_fixed, plain sgld, sgnht, sghmc (the notebook's values); momentum keys last
        epsilon=1e-5,  # step size ε
        gamma=0.0,  # localisation strength γ, isotropic in w (original: 0, no localisation)
        num_steps=10000,  # steps per chain
        batch_size=500,  # minibatch per step and chain
        num_chains=5,  # the notebook's num_runs, vectorised with vmap
        nbeta=None,  # None -> n / log n (original itemp = 1 / log n)
        num_burnin_steps=0,  # original: every draw is averaged
        # "auto": >= llc.sgld.COMPILE_AUTO_MIN_CHAIN_STEPS chain-steps; only with mala_acceptance_every=None (else
        # it and psgld_fixed run the eager pSGLD step; compile_mode says which ran)
        compile="auto",  # torch.compile plain sgld's step (mala_acceptance_every=None only): "auto" | True | False
        diffusion_factor=0.01,  # sgnht only: noise 2Aε and (default) thermostat start A, as devinterp
        thermostat_init=None,  # sgnht only: the thermostat's start ζ_0; None -> diffusion_factor
        friction=0.1,  # sghmc only: momentum friction α in (0, 1]
    )
    # False: full-data L_n at every draw (original) | True: the step's minibatch loss (no full-data pass)
    loss_trace_minibatch = False

    # --- the notebook's names, deprecated aliases (None: unset; docs/llc.md#rescaling) ---
    input_dim = None  # layer_sizes[0]
    layer_widths = None  # layer_sizes[1:]
    degen_directions = None  # degenerate_units
    scaling_factors = None  # alphas
    batch_size = None  # sgld_config.batch_size
    num_runs = None  # sgld_config.num_chains
    itemp = None  # inverse temperature β: sgld_config.nbeta = n · itemp (None -> 1 / log n)

    # --- runtime ---
    device = "auto"  # auto | cpu | cuda
    dtype = "float64"  # float64 shows the preconditioned sampler's equivariance down to rounding
    verbose = False  # print one line per (α, sampler)


@ex.named_config
def paper_small():
    # The paper's 10 -> 20 -> 10 network (published λ̂ ≈ 166, data/llc_rescaling_results.json).
    layer_sizes = [10, 20, 10]


@ex.named_config
def paper_medium():
    # The paper's 20 -> 30 -> 20 network (published λ̂ ≈ 537, data/llc_rescaling_results_2.json).
    layer_sizes = [20, 30, 20]


@ex.named_config
def paper_large():
    # The paper's 30 -> 40 -> 30 network (published λ̂ ≈ 1111, data/llc_rescaling_results_3.json).
    layer_sizes = [30, 40, 30]


def resolve_original_keys(config: dict) -> dict:
    """A copy of the config with the notebook's names (set, not None) moved to the keys here."""
    config = {**config, "sgld_config": dict(config["sgld_config"])}
    if config["input_dim"] is not None or config["layer_widths"] is not None:
        # the notebook's input_dim and layer_widths: layer_sizes = [input_dim, *layer_widths]
        sizes = config["layer_sizes"]
        sizes = list(sizes) if isinstance(sizes, (list, tuple)) and sizes else [sizes]
        if config["input_dim"] is not None:
            sizes[:1] = [resolve_alias(config, "input_dim", "layer_sizes")]
        if config["layer_widths"] is not None:
            widths = resolve_alias(config, "layer_widths", "layer_sizes")
            sizes[1:] = list(widths) if isinstance(widths, (list, tuple)) else [widths]
        config["layer_sizes"] = sizes
    config["degenerate_units"] = resolve_alias(config, "degen_directions", "degenerate_units")
    config["alphas"] = resolve_alias(config, "scaling_factors", "alphas")
    config["sgld_config"]["batch_size"] = resolve_alias(config, "batch_size", "sgld_config.batch_size")
    config["sgld_config"]["num_chains"] = resolve_alias(config, "num_runs", "sgld_config.num_chains")
    itemp = config["itemp"]
    if itemp is not None:
        checks.number("itemp", itemp, lo=0, strict=True, none_ok=True, finite=False)
        if config["sgld_config"]["nbeta"] is not None:
            raise ValueError(f"set itemp or sgld_config.nbeta, not both; got itemp={itemp!r}, "
                             f"nbeta={config['sgld_config']['nbeta']!r}")
        config["sgld_config"]["nbeta"] = itemp * config["num_training_data"]
    return config


def validate(config: dict) -> dict:
    """Check every user-facing key before any compute; returns the built dataclasses."""
    sizes = checks.int_list("layer_sizes ([input, hidden..., output])", config["layer_sizes"], min_len=3)
    checks.one_of("teacher_init", config["teacher_init"], INITS)
    checks.number("hidden_bias_std", config["hidden_bias_std"], lo=0)
    checks.int_list("degenerate_units", config["degenerate_units"], lo=1, hi=sizes[1] - 1, min_len=0)
    every = checks.integer("mala_acceptance_every", config["mala_acceptance_every"], none_ok=True)
    checks.one_of("mala_acceptance_density", config["mala_acceptance_density"], ACCEPTANCE_DENSITIES)
    n = checks.integer("num_training_data", config["num_training_data"], lo=2)
    checks.one_of("input_distribution", config["input_distribution"], INPUT_DISTRIBUTIONS)
    checks.integer("rescale_layer", config["rescale_layer"], lo=0, hi=len(sizes) - 3)
    checks.number_list("alphas", config["alphas"], lo=0, strict=True)
    checks.integer("first_alpha_index", config["first_alpha_index"], lo=0)
    samplers = checks.distinct_names("samplers", config["samplers"], SAMPLERS)
    psgld_values = dict(config["psgld_config"])
    precond = build_config(PSGLDConfig, {k: psgld_values.pop(k) for k in PSGLD_KEYS if k in psgld_values},
                           "psgld_config")
    trace = {"loss_trace_minibatch": config["loss_trace_minibatch"]}
    shared, momentum = split_momentum_keys(config["sgld_config"], samplers)
    sgld = build_config(SGLDConfig, {**shared, **trace}, "sgld_config")
    configs = {"psgld": build_config(SGLDConfig, {**psgld_values, **trace}, "psgld_config"),
               "sgld": sgld, "psgld_fixed": sgld}
    moving = [name for name in samplers if name in MOMENTUM_SAMPLERS]
    if sgld.compile is True and ("sgld" not in samplers or every is not None or moving):
        raise ValueError("sgld_config.compile=True compiles only the plain 'sgld' sampler "
                         "with mala_acceptance_every=None "
                         "(psgld_fixed, and sgld with the acceptance diagnostic, run the eager pSGLD step; "
                         "sgnht and sghmc have no compiled step); "
                         f"got samplers={list(samplers)!r}, mala_acceptance_every={every!r}")
    for name in moving:
        configs[name] = build_config(MINIBATCH_CONFIGS[name], {**shared, **trace, **momentum[name]}, "sgld_config")
    for name in samplers:
        key = f"{'psgld' if name == 'psgld' else 'sgld'}_config.batch_size"
        checks.at_most(key, configs[name].batch_size, "num_training_data", n)
    checks.one_of("dtype", config["dtype"], DTYPES)
    return {"configs": configs, "precond": precond, "device": resolve_device(config["device"])}


def split_momentum_keys(values: dict, samplers: list) -> tuple[dict, dict]:
    """sgld_config -> (its SGLDConfig keys, {momentum sampler: its own keys}) for the samplers listed.

    The momentum keys are always in the dict (so Sacred can override them); one set away
    from its default while its sampler is not in ``samplers`` is a ValueError naming it, as
    llc.samplers.split_sampler does for a single sampler.
    """
    shared, own = dict(values), {}
    for name in MOMENTUM_SAMPLERS:
        defaults = {f.name: f.default for f in dataclasses.fields(MINIBATCH_CONFIGS[name])}
        own[name] = {opt: shared.pop(opt) for opt in SAMPLER_OPTIONS[name] if opt in shared}
        for opt, value in own[name].items():
            if name not in samplers and value != defaults[opt]:
                raise ValueError(f"sgld_config.{opt} applies to sampler {name!r} only, which is not in samplers; "
                                 f"got {opt}={value!r} with samplers={list(samplers)!r}")
    return shared, own


@unique
class Stream(IntEnum):
    """The run's independent random streams (derived_seed spawn keys); explicit values, so adding
    a stream reseeds no other."""
    TEACHER = 0
    DATA = 1
    SAMPLING = 2


def tensor_scales(params: dict, x: torch.Tensor) -> list[float]:
    """m per parameter tensor for the adaptive psgld, transforming as the tensor under ReLU rescalings.

    mean(w*_s²) for a tensor that is not all zero (llc.psgld.tensor_scale's rule). An all-zero
    bias of Linear l takes the mean square of the pre-activations z_l = W_l h_(l-1) + b_l it is
    added to, over x; an all-zero weight takes mean(z_l²) / mean(h_(l-1)²); 1 where those vanish.
    Both scale as the tensor does under any rescaling, where llc.psgld's fallback (the mean over
    all of w*) does not (its module docstring). ``params`` in ReLUMLP order, x (n, d_0).
    """
    names = list(params)
    scales, h = [], x
    for layer in range(len(names) // 2):
        w, b = params[names[2 * layer]], params[names[2 * layer + 1]]
        z = h @ w.T + b  # (n, d_l) pre-activations
        z2, h2 = float((z ** 2).mean()), float((h ** 2).mean())
        for tensor, fallback in ((w, z2 / h2 if h2 > 0 else 0.0), (b, z2)):
            m = float((tensor ** 2).mean())
            scales.append(m if m > 0 else fallback if fallback > 0 else 1.0)
        h = torch.relu(z)
    return scales


def _mse(out, y):
    return ((out - y) ** 2).mean()  # mean over batch and outputs, no 1/2 (docs/notes/llc.md#conventions)


@ex.main
def main(_config, _run, _seed):
    _config = resolve_original_keys(_config)
    checked = validate(_config)
    with checkpointing(_run, _config) as ck:  # SIGTERM/SIGUSR1/SIGINT -> checkpoint after the running (α, sampler)
        return _main(_config, _run, _seed, checked, ck)


def _main(_config, _run, _seed, checked, ck):
    """The α sweep; the unit of work is one (α, sampler) estimate, and a signal lets the running one finish.

    ``ck.boundary(k)`` after the k-th estimate: the checkpoint holds the table of the k
    estimates done and the per-α output checks (``ck.state``, JSON), so a resumed run
    skips them; each α has its own chains' seed, so the rest draw what they would have.
    """
    seed_everything(_seed)
    device, dtype = checked["device"], resolve_dtype(_config["dtype"])
    sizes, n, layer = list(_config["layer_sizes"]), _config["num_training_data"], _config["rescale_layer"]
    alphas, samplers = [float(a) for a in _config["alphas"]], list(_config["samplers"])

    # --- teacher w* and realisable data y = f(w*, x) ---
    net = ReLUMLP(sizes)
    w_star = notebook_teacher(sizes, stream_generator(_seed, Stream.TEACHER),
                              _config["teacher_init"], _config["hidden_bias_std"], _config["degenerate_units"])
    gen_data = stream_generator(_seed, Stream.DATA)
    x = sample_inputs(n, sizes[0], _config["input_distribution"], gen_data)
    with torch.no_grad():
        y = functional_call(net, w_star, (x,))
    x, y = x.to(device=device, dtype=dtype), y.to(device=device, dtype=dtype)
    net.to(device=device, dtype=dtype)
    f_flat, _ = flat_model_for_module(net, dtype, device)
    names = [k for k, _ in net.named_parameters()]
    segments = [p.numel() for _, p in net.named_parameters()]

    def loss(w, xb, yb):
        return _mse(f_flat(w, xb), yb)

    keys = ("lambdahat", "lambdahat_std", "rhat", "status", "reason", "mala_acceptance", "compile_mode")
    table = {name: {k: [] for k in keys} for name in samplers}
    every = _config["mala_acceptance_every"]
    identity = _config["mala_acceptance_density"] == "identity"
    absolute = PSGLDConfig(localisation="absolute")
    output_diffs = []
    done = 0  # (α, sampler) estimates completed, in sweep order
    if ck.state is not None:
        saved = json.loads(ck.state["json"])
        table, output_diffs, done = saved["table"], saved["output_diffs"], saved["done"]
    unit = 0

    def capture():
        return {"json": json.dumps(json_ready({"table": table, "output_diffs": output_diffs, "done": unit}))}

    with ck.deferring():
        for i, alpha in enumerate(alphas):
            w_alpha = rescale_params(w_star, layer, alpha)
            w_flat = torch.cat([w_alpha[k].reshape(-1) for k in names]).to(device=device, dtype=dtype)
            if unit >= done:  # this α not started before an interruption
                with torch.no_grad():
                    diff = float((f_flat(w_flat, x) - y).abs().max() / y.abs().max())
                output_diffs.append(diff)
                assert diff < (1e-9 if dtype == torch.float64 else 1e-4), \
                    f"rescaling by α={alpha} changed the function ({diff})"
                _run.log_scalar("rescaling/log10_alpha", math.log10(alpha), i)
            for name in samplers:
                unit += 1
                if unit <= done:
                    continue  # done before the interruption: its row and metrics are restored
                # each α its own chains: flatness is measured, not built in
                seed = derived_seed(_seed, Stream.SAMPLING, _config["first_alpha_index"] + i)
                row = table[name]
                accept = None
                try:
                    if name == "psgld":
                        scales = tensor_scales({k: w_alpha[k].to(x) for k in names}, x)
                        m = torch.repeat_interleave(torch.tensor(scales, dtype=dtype),
                                                    torch.tensor(segments)).to(device)  # (P,)
                        res = estimate_llc_psgld(loss, w_flat, x, y, checked["configs"][name], checked["precond"], seed,
                                                 segments, scales=m)
                    elif name in MOMENTUM_SAMPLERS:  # llc.sghmc, from its SGNHTConfig / SGHMCConfig
                        res = estimate_llc_flat(loss, w_flat, x, y, checked["configs"][name], seed)
                    elif name == "psgld_fixed" or every is not None:  # plain SGLD is the fixed D = 1
                        factors = (layer_preconditioner(sizes, layer, alpha) if name == "psgld_fixed"
                                   else [1.0] * len(segments))
                        d = torch.repeat_interleave(torch.tensor(factors, dtype=dtype),
                                                    torch.tensor(segments)).to(device)
                        res, trace = estimate_llc_psgld_traced(loss, w_flat, x, y, checked["configs"][name], absolute,
                                                               seed, segments, preconditioner=d, accept_every=every,
                                                               accept_identity_density=identity)
                        acc = trace.mala_acceptance  # None when not recorded; empty when fewer than k steps
                        accept = float(acc.mean()) if acc is not None and acc.size else None
                    else:
                        res = estimate_llc_flat(loss, w_flat, x, y, checked["configs"][name], seed)
                    values = (res.lambdahat, res.lambdahat_std, None if math.isnan(res.rhat) else res.rhat, "ok",
                              None, accept, res.compile_mode)
                    _run.log_scalar(f"{name}/lambdahat", res.lambdahat, i)
                    _run.log_scalar(f"{name}/lambdahat_std", res.lambdahat_std, i)
                    if accept is not None:
                        _run.log_scalar(f"{name}/mala_acceptance", accept, i)
                except (SGLDDivergenceError, FloatingPointError) as err:
                    values = (None, None, None, "failed", str(err), None, None)
                for key, value in zip(keys, values):
                    row[key].append(value)
                if _config["verbose"]:
                    print(f"alpha={alpha:.3g} {name}: lambdahat={values[0]} {values[3]}")
                ck.boundary(unit, capture)
    _run.info["output_max_relative_difference"] = output_diffs

    result = {"alphas": alphas, "samplers": samplers, "model_dim": sum(segments),
              "output_max_relative_difference": max(output_diffs)}
    for name in samplers:
        ok = [v for v in table[name]["lambdahat"] if v is not None]
        mean = sum(ok) / len(ok) if ok else None
        result[name] = {
            **table[name],
            "num_failed": len(alphas) - len(ok),
            "lambdahat_mean": mean,
            # (max - min) / mean over the α values where the estimate succeeded
            "relative_spread": (max(ok) - min(ok)) / mean if ok and mean else None,
        }
    first = result[samplers[0]]  # the headline numbers: the first sampler's (default: the notebook's)
    result.update(sampler=samplers[0], lambdahat_per_alpha=first["lambdahat"],
                  lambdahat_std_per_alpha=first["lambdahat_std"], spread=first["relative_spread"])
    return json_ready(result)


if __name__ == "__main__":
    run_cli(ex)
