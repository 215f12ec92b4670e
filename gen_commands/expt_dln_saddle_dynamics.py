"""Write one ``experiments/expt_dln_saddle_dynamics.py`` command per line: the product of the list options.

    python gen_commands/expt_dln_saddle_dynamics.py cmds.txt --preset paper
    python gen_commands/expt_dln_saddle_dynamics.py cmds.txt --width 10 50 100 --seeds 0 1 2

Every list-valued option is an axis; the generator writes the cartesian product of
the axes, then of the ``--grid`` axes, then the seeds (the last varying fastest).

Presets: ``paper`` is the original README's run (width 500, 50k SGD steps, λ̂ every
100 steps); ``widths`` sweeps the width at the Jacot et al. defaults; ``cpu`` is the
width-10 run that shows every plateau within minutes on a laptop (learning rate
3e-4, 6000 steps). Explicit options override a preset's values.
"""
from __future__ import annotations

import argparse
import sys

from gen_commands import sweep

EXPERIMENT = "dln_saddle_dynamics"  # Sacred Experiment name in experiments/expt_dln_saddle_dynamics.py
SCRIPT = "experiments/expt_dln_saddle_dynamics.py"
DEFAULT_RUNS_DIR = f"runs/{EXPERIMENT}"

# option dest -> (config key, type, lower bound, help), in the order keys are written on each line.
KEYS = {
    "width": ("width", int, 1, "hidden width"),
    "layers": ("num_hidden_layers", int, 0, "number of hidden layers"),
    "init_exponent": ("initialisation_exponent", float, None, "initial weights N(0, width^-exponent)"),
    "n": ("num_training_data", int, 2, "n"),
    "lr": ("training_config.learning_rate", float, 0, "SGD learning rate (> 0)"),
    "batch": ("training_config.batch_size", int, 1, "SGD batch size"),
    "steps": ("training_config.num_steps", int, 1, "SGD steps"),
    "logging_period": ("logging_period", int, 1, "SGD steps between checkpoints"),
    "sgld_epsilon": ("sgld_config.epsilon", float, 0, "SGLD step size (> 0)"),
    "sgld_gamma": ("sgld_config.gamma", float, 0, "SGLD localisation (>= 0)"),
    "sgld_steps": ("sgld_config.num_steps", int, 1, "SGLD steps per checkpoint"),
    "num_chains": ("sgld_config.num_chains", int, 1, "SGLD chains"),
}
STRICT = {"lr", "sgld_epsilon"}  # bound is exclusive

PRESETS = {
    "paper": dict(width=[500], steps=[50000], logging_period=[100], seeds=[42]),
    "widths": dict(width=[10, 50, 100, 500], steps=[20000], logging_period=[50], seeds=[0, 1, 2]),
    "cpu": dict(width=[10], lr=[3e-4], steps=[6000], logging_period=[100], seeds=[0]),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python gen_commands/expt_dln_saddle_dynamics.py", description=__doc__,
                                epilog="presets: " + ", ".join(PRESETS),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help="commands file to write (refused if it exists, unless --force)")
    p.add_argument("--preset", choices=sorted(PRESETS), help="named sweep; other options override its values")
    g = p.add_argument_group("axes (each a list of values; all lists are crossed; unset -> the experiment's default)")
    for dest, (key, kind, _, text) in KEYS.items():
        g.add_argument(f"--{dest.replace('_', '-')}", type=kind, nargs="+", help=f"{key}: {text}")
    g.add_argument("--seeds", type=int, nargs="+", help="run seeds (default 0)")
    g.add_argument("--grid", action="append", default=[], metavar="KEY=[...]",
                   help="extra axis over any config key, e.g. \"rank_threshold=[0.5, 1.0]\"")
    g = p.add_argument_group("line format")
    g.add_argument("--expt-name", help="expt_name config entry (default: the preset's name)")
    g.add_argument("--device", choices=("auto", "cpu", "cuda"), help="device config entry (default: not written)")
    obs = g.add_mutually_exclusive_group()
    obs.add_argument("-F", "--file-storage", metavar="DIR", help=f"FileStorageObserver directory (default {DEFAULT_RUNS_DIR})")
    obs.add_argument("-m", "--mongo", metavar="HOST:PORT:DB", help="record with a MongoObserver instead")
    g.add_argument("--python", default="python", help="interpreter written at the start of each line")
    g.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    return p


def resolve_settings(args: argparse.Namespace) -> dict:
    """The preset, then explicit options; validated. Raises ValueError naming the option."""
    s = dict(PRESETS[args.preset]) if args.preset else {}
    for key in [*KEYS, "seeds"]:
        value = getattr(args, key, None)
        if value is not None:
            s[key] = value
    for dest, (_, _, lo, _) in KEYS.items():
        if lo is None or not s.get(dest):
            continue
        bad = [v for v in s[dest] if (v <= lo if dest in STRICT else v < lo)]
        if bad:
            raise ValueError(f"--{dest.replace('_', '-')} values must be {'>' if dest in STRICT else '>='} {lo}; got {bad}")
    return s


def generate(args: argparse.Namespace) -> list[str]:
    """The command lines, in a deterministic order (axes in KEYS order, then --grid, then seeds)."""
    s = resolve_settings(args)
    grid = sweep.parse_grid(args.grid)
    if sweep.RUN_KEY in grid:
        raise ValueError("--grid cannot set run_key: the generator computes it")
    observer = sweep.observer_flag(mongo=args.mongo) if args.mongo else \
        sweep.observer_flag(file_storage=args.file_storage or DEFAULT_RUNS_DIR)
    axes = {KEYS[k][0]: s[k] for k in KEYS if s.get(k) is not None}
    axes.update(grid)
    expt_name = args.expt_name if args.expt_name is not None else args.preset
    fixed = {} if expt_name is None else {"expt_name": expt_name}
    if args.device is not None:
        fixed["device"] = args.device
    lines = []
    for combo in sweep.cartesian(axes):
        for seed in (s.get("seeds") or [0]) if "seed" not in grid else [None]:
            run = {**fixed, **combo, **({} if seed is None else {"seed": seed})}
            lines.append(sweep.format_command(SCRIPT, EXPERIMENT, run, observer, args.python))
    return lines


def main(argv: list[str] | None = None) -> int:
    return sweep.generator_main(build_parser(), generate, argv)


if __name__ == "__main__":
    sys.exit(main())
