"""Choosing a sampler by name: ``estimate_llc(..., sampler="sgnht", sampler_options={...})``.

Every sampler runs on llc.chain's driver from the shared keys (ε, γ, steps, batch,
chains, nβ, burn-in, trace kind, compile); ``sampler_options`` holds the keys only
one sampler has:

======== ============================================ ==========================================
sampler  step                                          sampler_options (defaults)
======== ============================================ ==========================================
sgld     llc.sgld (Lau et al.)                          none
psgld    llc.psgld (RMSprop-preconditioned, Li 2016)    rho 0.99, delta 1e-3, kappa 1e-4,
                                                        adapt_steps None, localisation 'relative'
mala     llc.mala (full batch, Metropolis-adjusted)     adapt_step_size True, target_acceptance 0.574
sgnht    llc.sghmc (Nosé–Hoover thermostat, devinterp)  diffusion_factor 0.01, thermostat_init None
sghmc    llc.sghmc (Chen et al. 2014)                   friction 0.1
======== ============================================ ==========================================

MALA is full-batch: ``batch_size`` and ``loss_trace_minibatch`` do not apply (its
trace is the exact L_n(w_t)), and it takes no callbacks (they see each step's minibatch).
"""
from __future__ import annotations

import dataclasses

from torch import Tensor

from core import checks
from core.types import FlatLoss
from llc.chain import StepCallback, Stream
from llc.mala import MALAConfig, run_mala
from llc.precision import check_amp_device
from llc.psgld import PSGLDConfig, run_psgld
from llc.sghmc import SGHMCConfig, SGNHTConfig, run_sghmc, run_sgnht
from llc.sgld import SGLDConfig, run_sgld

SAMPLERS = ("sgld", "psgld", "mala", "sgnht", "sghmc")
SAMPLER_OPTIONS = {
    "sgld": (),
    "psgld": ("rho", "delta", "kappa", "adapt_steps", "localisation"),
    "mala": ("adapt_step_size", "target_acceptance"),
    "sgnht": ("diffusion_factor", "thermostat_init"),
    "sghmc": ("friction",),
}
# The samplers an experiment's sgld_config can name: those whose config is an SGLDConfig.
EXPERIMENT_SAMPLERS = ("sgld", "sgnht", "sghmc")
MINIBATCH_CONFIGS = {"sgld": SGLDConfig, "sgnht": SGNHTConfig, "sghmc": SGHMCConfig}
# The samplers that take a Dataset / DataLoader streamed from the host (llc.streaming): the minibatch ones.
STREAMING_SAMPLERS = ("sgld", "psgld", "sgnht", "sghmc")


def check_sampler(sampler, options: dict | None) -> dict:
    """The validated options dict; ValueError naming ``sampler`` or the unknown option key."""
    checks.one_of("sampler", sampler, SAMPLERS)
    options = {} if options is None else options
    if not isinstance(options, dict):
        raise ValueError(f"sampler_options must be a dict or None; got {type(options).__name__}")
    allowed = SAMPLER_OPTIONS[sampler]
    for key in options:
        if key not in allowed:
            raise ValueError(f"sampler_options: {key!r} is not an option of sampler={sampler!r}; allowed: {allowed}")
    return dict(options)


def resolve_sampler(sampler: str, config: SGLDConfig) -> str:
    """The sampler to run: ``sampler``, or the config's own when sampler is the default "sgld".

    An SGNHTConfig or SGHMCConfig passed where an SGLDConfig is expected runs its own
    sampler, never SGLD; naming another sampler than the config's is a ValueError.
    """
    own = getattr(config, "sampler_name", "sgld")
    if sampler == "sgld" or sampler == own:
        return own
    if own != "sgld":
        raise ValueError(f"sampler={sampler!r} does not match the config, a {type(config).__name__} ({own!r})")
    return sampler


def split_sampler(values: dict, key: str = "sgld_config") -> tuple[type, dict]:
    """An experiment's ``key`` dict -> (SGLDConfig, SGNHTConfig or SGHMCConfig, the values to build it from).

    Pops ``sampler`` (one of EXPERIMENT_SAMPLERS) and every momentum sampler's keys
    (``diffusion_factor``, ``thermostat_init``, ``friction``: always present in the dict, so
    Sacred can override them); the chosen sampler's are kept, and another sampler's key set
    away from its default is a ValueError naming ``key.<name>``.
    """
    values = dict(values)
    sampler = values.pop("sampler", "sgld")
    checks.one_of(f"{key}.sampler", sampler, EXPERIMENT_SAMPLERS)
    options = {}
    for name in ("sgnht", "sghmc"):
        defaults = {f.name: f.default for f in dataclasses.fields(MINIBATCH_CONFIGS[name])}
        for opt in SAMPLER_OPTIONS[name]:
            if opt not in values:
                continue
            value = values.pop(opt)
            if name == sampler:
                options[opt] = value
            elif value != defaults[opt]:
                raise ValueError(f"{key}.{opt} applies to sampler={name!r} only; got {opt}={value!r} "
                                 f"with sampler={sampler!r}")
    return MINIBATCH_CONFIGS[sampler], {**values, **options}


def check_config_device(config: SGLDConfig, device, key: str = "sgld_config") -> None:
    """ValueError naming ``key.amp`` where the config's amp cannot run on ``device`` (fp16 off CUDA)."""
    try:
        check_amp_device(config.amp, device)
    except ValueError as err:
        raise ValueError(f"{key}.{err}") from None


def sampler_kwargs(config: SGLDConfig) -> dict:
    """estimate_llc's ``sampler`` and ``sampler_options`` for an SGLDConfig or a subclass of it."""
    base = {f.name for f in dataclasses.fields(SGLDConfig)}
    own = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name not in base}
    return {"sampler": config.sampler_name, "sampler_options": own or None}


def run_minibatch(loss_fn: FlatLoss, w_star: Tensor, x: Tensor, y: Tensor, config: SGLDConfig, seed: int,
                  eval_batch_size: int = 4096, callback: StepCallback | None = None):
    """run_sgld, run_sgnht or run_sghmc, whichever ``config`` (SGLDConfig or a subclass) belongs to."""
    run = {"sgld": run_sgld, "sgnht": run_sgnht, "sghmc": run_sghmc}[config.sampler_name]
    return run(loss_fn, w_star, x, y, config, seed, eval_batch_size, callback=callback)


def sampler_configs(sampler: str, config: SGLDConfig, options: dict | None = None):
    """The config(s) ``run_sampler`` passes on, built (and validated) before any compute."""
    options = check_sampler(sampler, options)
    shared = {f.name: getattr(config, f.name) for f in dataclasses.fields(SGLDConfig)}
    if sampler == "sgld":
        return config
    if sampler == "psgld":
        return config, PSGLDConfig(compile=config.compile, **options)
    if sampler == "mala":
        if config.amp is not None:
            raise ValueError(f"amp: sampler='mala' runs in the run's dtype only (its Metropolis test compares "
                             f"nβ-scaled full-data losses, which {config.amp} rounding would dominate); got "
                             f"amp={config.amp!r}")
        keep = ("epsilon", "gamma", "num_steps", "num_chains", "nbeta", "num_burnin_steps", "compile")
        return MALAConfig(**{k: shared[k] for k in keep}, **options)
    cls = MINIBATCH_CONFIGS[sampler]
    if isinstance(config, cls):  # keep its own options, overridden by any given
        shared = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    return cls(**{**shared, **options})


def run_sampler(
    sampler: str,
    configs,
    loss_fn: FlatLoss,
    w_star: Tensor,
    x: Tensor,
    y: Tensor,
    seed: int,
    eval_batch_size: int = 4096,
    callback: StepCallback | None = None,
    segments=None,
    stream: Stream | None = None,
):
    """Run the named sampler; returns its trace (``loss``, ``nbeta``, ``burnin``, ``final_w``).

    ``stream`` (llc.streaming.StreamedData, with x and y None) feeds a minibatch sampler
    (STREAMING_SAMPLERS) its rows from the host.
    """
    if stream is not None:
        check_streams(sampler)
    if sampler == "sgld":
        return run_sgld(loss_fn, w_star, x, y, configs, seed, eval_batch_size, callback=callback, stream=stream)
    if sampler == "psgld":
        return run_psgld(loss_fn, w_star, x, y, configs[0], configs[1], seed, segments, eval_batch_size,
                         callback=callback, stream=stream)
    if sampler == "mala":
        if callback is not None:
            raise ValueError("callbacks: sampler='mala' takes no callbacks (it is full-batch)")
        return run_mala(loss_fn, w_star, x, y, configs, seed, eval_batch_size)
    run = run_sgnht if sampler == "sgnht" else run_sghmc
    return run(loss_fn, w_star, x, y, configs, seed, eval_batch_size, callback=callback, stream=stream)


def check_streams(sampler: str) -> None:
    """ValueError naming ``sampler`` unless it can take a streamed Dataset / DataLoader (a minibatch sampler)."""
    if sampler not in STREAMING_SAMPLERS:
        raise ValueError(f"sampler: a Dataset or DataLoader is streamed with a minibatch sampler, one of "
                         f"{STREAMING_SAMPLERS}; got {sampler!r} (full-batch: pass (x, y) tensors)")
