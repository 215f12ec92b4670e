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

from gen_commands import sweep

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


def _paper() -> list[dict]:
    """The original server scripts' runs, one sub-grid per (script, dataset); ``fixed`` keys go on every line."""
    common = dict(depths=[6], widths=[1024], base_lr=[0.01], batch_size=[512], n_trials=[5])
    steps = {"mnist": 600, "cifar10": 1200}
    out = []
    for ds in ("mnist", "cifar10"):
        for p, fixed in [("mup", {}), ("ipllr", {}), ("standard_ip", {"init_mean": 1.0}), ("ipllr_bias", {})]:
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
        for p, scaling in [("standard_ip", "none"), ("standard_ip", "multiplier_lr"),  # non_centered/training.py
                           ("standard_ip_calibrated", "multiplier_lr")]:
            out.append(dict(common, parameterizations=[p], activations=ACTS5, datasets=[ds],
                            n_steps=[400 if ds == "mnist" else 1200],
                            fixed=dict(script, init_mean=1.0, input_scaling=scaling)))
    return out


PRESETS = {
    "paper": _paper(),
    "vanishing_ip": dict(
        parameterizations=["standard_ip"], activations=["relu"], datasets=["mnist"], depths=[2, 3, 4, 5, 6],
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

# option dest -> config key, in the order keys are written on each line.
SETTING_KEYS = {
    "parameterizations": "parameterization",
    "activations": "activation",
    "datasets": "dataset",
    "depths": "L",
    "widths": "width",
    "base_lr": "base_lr",
    "batch_size": "batch_size",
    "n_steps": "n_steps",
    "n_trials": "n_trials",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python gen_commands/expt_abc_params.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help="commands file to write (refused if it exists, unless --force)")
    p.add_argument("--preset", choices=sorted(PRESETS), help="named sweep; other options override its values")
    p.add_argument("--command", choices=COMMANDS, help="Sacred command of every line (default main)")
    p.add_argument("--seed", type=int, default=0, help="seed of the generator's RNG (default 0)")
    g = p.add_argument_group("settings (each a list of values; all lists are crossed)")
    g.add_argument("--parameterizations", nargs="+", choices=PARAMETERIZATIONS, metavar="NAME",
                   help=f"parameterization, among {', '.join(PARAMETERIZATIONS)} (default mup)")
    g.add_argument("--activations", nargs="+", choices=ACTIVATIONS, metavar="ACT",
                   help=f"activation, among {', '.join(ACTIVATIONS)} (default relu)")
    g.add_argument("--datasets", nargs="+", choices=DATASETS, metavar="DATA", help="dataset: mnist, cifar10 (default mnist)")
    g.add_argument("--depths", type=int, nargs="+", help="L, hidden layers (default: not written, i.e. 6)")
    g.add_argument("--widths", type=int, nargs="+", help="width m (main only; default: not written, i.e. 1024)")
    g.add_argument("--base-lr", type=float, nargs="+", help="base_lr (default: not written, i.e. 0.01)")
    g.add_argument("--batch-size", type=int, nargs="+", help="batch_size (default: not written, i.e. 512)")
    g.add_argument("--n-steps", type=int, nargs="+", help="n_steps, SGD steps per trial (default: not written, i.e. 600)")
    g.add_argument("--n-trials", type=int, nargs="+", help="n_trials per run (default: not written, i.e. 5)")
    g.add_argument("--seeds", type=int, nargs="+", help="run seeds (default: one drawn from --seed, shared by all lines)")
    g.add_argument("--grid", action="append", default=[], metavar="KEY=[...]",
                   help="extra axis over any config key, e.g. \"base_lr=[0.01, 0.1]\" or "
                        "\"coord_check_config.widths=[[64, 256, 1024]]\"; replaces that key's option")
    g = p.add_argument_group("line format")
    g.add_argument("--expt-name", help="expt_name config entry, a label for plots (default: the preset's name)")
    g.add_argument("--device", choices=("auto", "cpu", "cuda"), help="device config entry (default: not written, i.e. auto)")
    obs = g.add_mutually_exclusive_group()
    obs.add_argument("-F", "--file-storage", metavar="DIR", help=f"record with a FileStorageObserver in DIR (default {DEFAULT_RUNS_DIR})")
    obs.add_argument("-m", "--mongo", metavar="HOST:PORT:DB", help="record with a MongoObserver instead")
    g.add_argument("--python", default="python", help="interpreter written at the start of each line (default python)")
    g.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    return p


def resolve_settings(args: argparse.Namespace) -> list[dict]:
    """BASE, then each of the preset's sub-grids, then explicit options; validated. Raises ValueError."""
    preset = PRESETS[args.preset] if args.preset else {}
    return [_resolve(args, sub) for sub in (preset if isinstance(preset, list) else [preset])]


def _resolve(args: argparse.Namespace, preset: dict) -> dict:
    s = dict(BASE, fixed={})
    s.update(preset)
    for key in BASE:
        value = getattr(args, key, None)
        if value is not None:
            s[key] = value
    for opt, lo in [("depths", 1), ("widths", 1), ("batch_size", 1), ("n_steps", 1), ("n_trials", 1)]:
        if s[opt] is not None and min(s[opt]) < lo:
            raise ValueError(f"--{opt.replace('_', '-')} values must be >= {lo}; got {s[opt]}")
    if s["base_lr"] is not None and min(s["base_lr"]) <= 0:
        raise ValueError(f"--base-lr values must be > 0; got {s['base_lr']}")
    if s["command"] == "coord_check":
        for opt in ("widths", "n_steps", "n_trials"):  # coord_check reads coord_check_config instead
            if getattr(args, opt) is not None:
                raise ValueError(f"--{opt.replace('_', '-')} is not read by coord_check; "
                                 "use --grid \"coord_check_config.<key>=[...]\"")
            s[opt] = None
    return s


def generate(args: argparse.Namespace) -> list[str]:
    """The command lines, in a deterministic order (settings crossed, then seeds)."""
    grid = sweep.parse_grid(args.grid)
    if sweep.RUN_KEY in grid:
        raise ValueError("--grid cannot set run_key: the generator computes it")
    observer = sweep.observer_flag(mongo=args.mongo) if args.mongo else \
        sweep.observer_flag(file_storage=args.file_storage or DEFAULT_RUNS_DIR)
    seeds = args.seeds if args.seeds is not None else [sweep.sample_seed(sweep.make_rng(args.seed))]
    expt_name = args.expt_name if args.expt_name is not None else args.preset
    lines = []
    for s in resolve_settings(args):
        lines += _lines(s, grid, seeds, expt_name, observer, args)
    return lines


def _lines(s: dict, grid: dict, seeds: list, expt_name, observer: str, args) -> list[str]:
    axes = {key: s[opt] for opt, key in SETTING_KEYS.items() if s[opt] is not None}
    axes.update({k: [v] for k, v in s["fixed"].items() if k not in grid})
    axes.update(grid)  # a --grid axis replaces the option's values, keeping the key's position
    # A coord_check line gets its own run key, so it never counts as the main run of the same config.
    experiment, command = (EXPERIMENT, "") if s["command"] == "main" else (f"{EXPERIMENT}/{s['command']}", f"{s['command']} ")
    lines = []
    for combo in sweep.cartesian(axes):
        overrides = {} if expt_name is None else {"expt_name": expt_name}
        if args.device is not None:
            overrides["device"] = args.device
        overrides.update(combo)
        for seed in seeds if "seed" not in grid else [None]:
            run = overrides if seed is None else {**overrides, "seed": seed}
            # format_command writes `python SCRIPT OBSERVER with ...`; Sacred reads the command name
            # anywhere before `with`, so it goes in front of the observer flag.
            lines.append(sweep.format_command(SCRIPT, experiment, run, command + observer, args.python))
    return lines


def main(argv: list[str] | None = None) -> int:
    return sweep.generator_main(build_parser(), generate, argv)


if __name__ == "__main__":
    sys.exit(main())
