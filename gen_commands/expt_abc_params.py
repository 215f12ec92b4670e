"""Write one ``experiments/expt_abc_params.py`` command per line: parameterizations × settings × seeds.

    python gen_commands/expt_abc_params.py cmds.txt --preset paper
    python gen_commands/expt_abc_params.py cmds.txt --preset vanishing_ip -F runs/abc_params
    python gen_commands/expt_abc_params.py cmds.txt --preset coord_check
    python gen_commands/expt_abc_params.py cmds.txt --parameterizations mup ipllr --activations gelu \\
        --depths 4 --widths 256 --grid "base_lr=[0.01, 0.1]" --seeds 1 2

Every list-valued option (``--parameterizations``, ``--activations``, ``--datasets``,
``--depths``, ``--widths``, ...) and every ``--grid`` axis is crossed, in the order they
are written on the line, with the seeds varying fastest. Without ``--seeds`` one seed is
drawn from the generator's RNG (``--seed``) and shared by every line, so all settings see
the same validation split and the same per-trial seeds (``n_trials`` inits per run).

Presets:

* ``paper``: the original server scripts' grid (wide-networks scripts/server_scripts/abc_params/
  training and non_centered), L = 6, m = 1024, base lr 0.01, batch 512, 5 trials, validation on the
  training set (n_val=0), MNIST 600 steps and CIFAR-10 1200: the jobs fc_mup, fc_ipllr, fc_ip_non_centered
  and fc_ipllr_bias × relu, gelu, elu, tanh × both datasets, standard_fc_ip on MNIST only; muP.py's
  muP / renorm / renorm_scale_lr (input_scaling none / multiplier / multiplier_lr) × the four and
  sigmoid × both; training/ipllr.py's calib / calib_renorm / calib_renorm_scale_lr (the same three
  scalings) × the four × both; non_centered/training.py's IP non-centred, renorm_scale_lr and
  renorm_scale_lr_calib (standard_ip_calibrated) × five activations (MNIST 400 steps there); the
  scripts' lines cycle one fixed batch list (batch_order=fixed_list), the jobs' reshuffle (120 runs);
* ``vanishing_ip`` (not the original's): IP with its standard lrs (``standard_ip``) at base lr 0.01 over depth
  L ∈ {2..6} × width m ∈ {128..2048} on MNIST: IP stops learning at L >= 4 as m grows;
* ``coord_check`` (not the original's): the ``coord_check`` command (widths 64..4096) for ntk, mup and sp;
* ``demo`` (not the original's): mup and ipllr with gelu on MNIST at L = 4, m = 256, laptop-sized.
"""
from __future__ import annotations

import argparse
import sys

from gen_commands import cli, presets, sweep

EXPERIMENT = "abc_params"  # Sacred Experiment name in experiments/expt_abc_params.py
SCRIPT = "experiments/expt_abc_params.py"
DEFAULT_RUNS_DIR = f"runs/{EXPERIMENT}"
COMMANDS = ("main", "coord_check")
# Kept in step with models/abc.py and the experiment (tested); no torch import here.
PARAMETERIZATIONS = ("ntk", "mup", "ip", "standard_ip", "standard_ip_calibrated", "ipllr", "ipllr_bias", "sp")
ACTIVATIONS = ("relu", "gelu", "elu", "tanh", "sigmoid")
DATASETS = ("mnist", "cifar10")

# Defaults when neither a preset nor an option sets a value. Lists are crossed; None -> not written.
BASE = dict(
    command="main", parameterizations=["mup"], activations=["relu"], datasets=["mnist"], depths=None, widths=None,
    base_lr=None, batch_size=None, n_steps=None, n_trials=None,
)

ACTS4, ACTS5 = ["relu", "gelu", "elu", "tanh"], ["relu", "gelu", "elu", "tanh", "sigmoid"]


def _job(name: str) -> tuple[str, dict]:
    """The experiment's named config ``name`` (read from its source) as (parameterization, its other keys)."""
    config = presets.named_config(SCRIPT, name)
    return config.pop("parameterization"), config


def _paper() -> list[dict]:
    """The original server scripts' runs, one sub-grid per (script, dataset); ``fixed`` keys go on every line."""
    common = dict(depths=[6], widths=[1024], base_lr=[0.01], batch_size=[512], n_trials=[5])
    steps = {"mnist": 600, "cifar10": 1200}
    # the jobs fc_mup, fc_ipllr, fc_ip_non_centered and fc_ipllr_bias (the last two: named configs)
    jobs = [("mup", {}), ("ipllr", {}), _job("ip_non_centered"), _job("ipllr_bias")]
    non_centered, non_centered_fixed = _job("ip_non_centered")
    out = []
    for ds in ("mnist", "cifar10"):
        for p, fixed in jobs:
            out.append(dict(common, parameterizations=[p], activations=ACTS4, datasets=[ds], n_steps=[steps[ds]],
                            fixed=dict(fixed, n_val=0)))
        if ds == "mnist":
            out.append(dict(common, parameterizations=["standard_ip"], activations=ACTS4, datasets=[ds],
                            n_steps=[600], fixed=dict(n_val=0)))
        # The server scripts cycle one fixed list of batches (batch_order=fixed_list).
        script = dict(n_val=0, batch_order="fixed_list")
        for scaling in ("none", "multiplier", "multiplier_lr"):  # training/muP.py
            out.append(dict(common, parameterizations=["mup"], activations=ACTS5, datasets=[ds], n_steps=[steps[ds]],
                            fixed=dict(script, input_scaling=scaling)))
        for scaling in ("none", "multiplier", "multiplier_lr"):  # training/ipllr.py: calib, renorm, renorm_scale_lr
            out.append(dict(common, parameterizations=["ipllr"], activations=ACTS4, datasets=[ds], n_steps=[steps[ds]],
                            fixed=dict(script, input_scaling=scaling)))
        # non_centered/training.py: IP non-centred, renorm_scale_lr, and the calibrated run (a named config)
        for p, fixed in [(non_centered, dict(non_centered_fixed, input_scaling="none")),
                         (non_centered, dict(non_centered_fixed, input_scaling="multiplier_lr")),
                         _job("ip_non_centered_calibrated")]:
            out.append(dict(common, parameterizations=[p], activations=ACTS5, datasets=[ds],
                            n_steps=[400 if ds == "mnist" else 1200], fixed=dict(script, **fixed)))
    return out


PRESETS = {
    "paper": _paper(),
    "vanishing_ip": dict(  # the named config's parameterization, over depth and width
        parameterizations=[_job("vanishing_ip")[0]], activations=["relu"], datasets=["mnist"], depths=[2, 3, 4, 5, 6],
        widths=[128, 256, 512, 1024, 2048], base_lr=[0.01], batch_size=[512], n_steps=[600], n_trials=[5],
    ),
    # muP's features move by Θ(1) per step only at a large base lr (c = 0): 1.0 shows it; sp may blow up there.
    "coord_check": dict(
        command="coord_check", parameterizations=["ntk", "mup", "sp"], activations=["relu"], datasets=["mnist"],
        depths=[4], base_lr=[0.1, 1.0], batch_size=[512],
    ),
    "demo": dict(
        parameterizations=["mup", "ipllr"], activations=["gelu"], datasets=["mnist"], depths=[4], widths=[256],
        base_lr=[0.01], batch_size=[128], n_steps=[200], n_trials=[2],
    ),
}

# The settings axes, in the order keys are written on each line.
AXES = (
    cli.Axis("parameterizations", "parameterization", help=f"parameterization, among {', '.join(PARAMETERIZATIONS)} "
             "(default mup)", choices=PARAMETERIZATIONS, metavar="NAME"),
    cli.Axis("activations", "activation", help=f"activation, among {', '.join(ACTIVATIONS)} (default relu)",
             choices=ACTIVATIONS, metavar="ACT"),
    cli.Axis("datasets", "dataset", help="dataset: mnist, cifar10 (default mnist)", choices=DATASETS, metavar="DATA"),
    cli.Axis("depths", "L", int, "L, hidden layers (default: not written, i.e. 6)", cli.at_least(1)),
    cli.Axis("widths", "width", int, "width m (main only; default: not written, i.e. 1024)", cli.at_least(1)),
    cli.Axis("base_lr", "base_lr", float, "base_lr (default: not written, i.e. 0.01)", cli.above(0)),
    cli.Axis("batch_size", "batch_size", int, "batch_size (default: not written, i.e. 512)", cli.at_least(1)),
    cli.Axis("n_steps", "n_steps", int, "n_steps, SGD steps per trial (default: not written, i.e. 600)",
             cli.at_least(1)),
    cli.Axis("n_trials", "n_trials", int, "n_trials per run (default: not written, i.e. 5)", cli.at_least(1)),
)


def options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--command", choices=COMMANDS, help="Sacred command of every line (default main)")
    p.add_argument("--seed", type=int, default=0, help="seed of the generator's RNG (default 0)")


def validate(s: dict, args) -> None:
    if s["command"] == "coord_check":
        for opt in ("widths", "n_steps", "n_trials"):  # coord_check reads coord_check_config instead
            if getattr(args, opt) is not None:
                raise ValueError(f"--{opt.replace('_', '-')} is not read by coord_check; "
                                 "use --grid \"coord_check_config.<key>=[...]\"")
            s[opt] = None


def resolve(spec: cli.Spec, args: argparse.Namespace) -> list[dict]:
    """BASE, then each of the preset's sub-grids, then explicit options; validated. Raises ValueError."""
    preset = PRESETS[args.preset] if args.preset else {}
    return [cli.resolve_preset(spec, args, sub) for sub in (preset if isinstance(preset, list) else [preset])]


def lines(sw: cli.Sweep) -> list[str]:
    """Per sub-grid: the settings and its fixed keys crossed with --grid, then the seeds."""
    args, grid = sw.args, sw.grid
    seeds = args.seeds if args.seeds is not None else [sweep.sample_seed(sweep.make_rng(args.seed))]
    out = []
    for s in sw.settings:
        axes = cli.axis_values(AXES, s)
        axes.update({k: [v] for k, v in s["fixed"].items() if k not in grid})
        axes.update(grid)  # a --grid axis replaces the option's values, keeping the key's position
        # A coord_check line gets its own run key, so it never counts as the main run of the same config.
        if s["command"] == "main":
            experiment, command = EXPERIMENT, ""
        else:
            experiment, command = f"{EXPERIMENT}/{s['command']}", f"{s['command']} "
        for combo in sweep.cartesian(axes):
            overrides = {} if sw.expt_name is None else {"expt_name": sw.expt_name}
            if args.device is not None:
                overrides["device"] = args.device
            overrides.update(combo)
            for seed in seeds if "seed" not in grid else [None]:
                run = overrides if seed is None else {**overrides, "seed": seed}
                # Sacred reads the command name anywhere before `with`, so it goes in front of the observer flag.
                out.append(sw.command(run, experiment, command))
    return out


SPEC = cli.Spec(
    experiment=EXPERIMENT, script=SCRIPT, description=__doc__, presets=PRESETS, axes=AXES, lines=lines,
    base=dict(BASE, fixed={}), resolve=resolve, options=options, validate=validate,
    axes_title="settings (each a list of values; all lists are crossed)",
    seeds_help="run seeds (default: one drawn from --seed, shared by all lines)",
    grid_help="extra axis over any config key, e.g. \"base_lr=[0.01, 0.1]\" or "
              "\"coord_check_config.widths=[[64, 256, 1024]]\"; replaces that key's option",
)
build_parser, generate, main = SPEC.build_parser, SPEC.generate, SPEC.main

if __name__ == "__main__":
    sys.exit(main())
