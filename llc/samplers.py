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

from llc.chain import FlatLoss, StepCallback
from llc.mala import MALAConfig, run_mala
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


def check_sampler(sampler, options: dict | None) -> dict:
    """The validated options dict; ValueError naming ``sampler`` or the unknown option key."""
    if not isinstance(sampler, str) or sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}; got {sampler!r}")
    options = {} if options is None else options
    if not isinstance(options, dict):
        raise ValueError(f"sampler_options must be a dict or None; got {type(options).__name__}")
    allowed = SAMPLER_OPTIONS[sampler]
    for key in options:
        if key not in allowed:
            raise ValueError(f"sampler_options: {key!r} is not an option of sampler={sampler!r}; allowed: {allowed}")
    return dict(options)


def sampler_configs(sampler: str, config: SGLDConfig, options: dict | None = None):
    """The config(s) ``run_sampler`` passes on, built (and validated) before any compute."""
    options = check_sampler(sampler, options)
    shared = {f.name: getattr(config, f.name) for f in dataclasses.fields(SGLDConfig)}
    if sampler == "sgld":
        return config
    if sampler == "psgld":
        return config, PSGLDConfig(compile=config.compile, **options)
    if sampler == "mala":
        keep = ("epsilon", "gamma", "num_steps", "num_chains", "nbeta", "num_burnin_steps", "compile")
        return MALAConfig(**{k: shared[k] for k in keep}, **options)
    cls = SGNHTConfig if sampler == "sgnht" else SGHMCConfig
    return cls(**shared, **options)


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
):
    """Run the named sampler; returns its trace (``loss``, ``nbeta``, ``burnin``, ``final_w``)."""
    if sampler == "sgld":
        return run_sgld(loss_fn, w_star, x, y, configs, seed, eval_batch_size, callback=callback)
    if sampler == "psgld":
        return run_psgld(loss_fn, w_star, x, y, configs[0], configs[1], seed, segments, eval_batch_size,
                         callback=callback)
    if sampler == "mala":
        if callback is not None:
            raise ValueError("callbacks: sampler='mala' takes no callbacks (it is full-batch)")
        return run_mala(loss_fn, w_star, x, y, configs, seed, eval_batch_size)
    run = run_sgnht if sampler == "sgnht" else run_sghmc
    return run(loss_fn, w_star, x, y, configs, seed, eval_batch_size, callback=callback)
