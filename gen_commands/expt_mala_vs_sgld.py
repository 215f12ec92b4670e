"""Write one ``experiments/expt_mala_vs_sgld.py`` command per line: one n per line × settings × seeds.

    python gen_commands/expt_mala_vs_sgld.py cmds.txt --preset paper
    python gen_commands/expt_mala_vs_sgld.py cmds.txt --n 1000 10000 --num-chains 2 --seeds 0 1

Each line runs both samplers at one n (``num_training_data=[n]``), so the n values of a
sweep can run in parallel or on different machines; a single run can still sweep its
own list of n (the experiment's default). The generator crosses the n values, the
list-valued settings, the ``--grid`` axes and the seeds (the last varying fastest).

Presets: ``paper`` is MALA_vs_SGLD.ipynb's sweep, its 7 n from 1e2 to 1e5 at the
experiment's defaults (ε = 1e-5 at every n, 5 chains × 10000 draws); ``small`` is its
three smallest n with 2 chains of 2000 draws, for a laptop.
"""
from __future__ import annotations

import argparse
import sys

from gen_commands import sweep

EXPERIMENT = "mala_vs_sgld"  # Sacred Experiment name in experiments/expt_mala_vs_sgld.py
SCRIPT = "experiments/expt_mala_vs_sgld.py"
DEFAULT_RUNS_DIR = f"runs/{EXPERIMENT}"
PAPER_NS = [100, 316, 1000, 3162, 10000, 31623, 100000]  # round(10^linspace(2, 5, 7)), as the experiment's
EPSILON_SCALINGS = ("fixed", "nbeta")

# option dest -> (config key, type, lower bound, strict, help), in the order keys are written on each line.
KEYS = {
    "epsilon": ("epsilon", float, 0, True, "step size ε of both samplers (> 0), with epsilon_scaling=fixed"),
    "epsilon_nbeta": ("epsilon_nbeta", float, 0, True, "ε·nβ (> 0), with epsilon_scaling=nbeta"),
    "gamma": ("gamma", float, 0, False, "localisation strength γ (>= 0)"),
    "num_steps": ("num_steps", int, 1, False, "draws per chain, both samplers"),
    "num_chains": ("num_chains", int, 1, False, "chains per sampler"),
    "batch_size": ("sgld_config.batch_size", int, 1, False, "SGLD minibatch"),
}

PRESETS = {
    "paper": dict(n=PAPER_NS, seeds=[0]),
    "small": dict(n=PAPER_NS[:3], num_steps=[2000], num_chains=[2], seeds=[0]),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python gen_commands/expt_mala_vs_sgld.py", description=__doc__,
                                epilog="presets: " + ", ".join(PRESETS),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help="commands file to write (refused if it exists, unless --force)")
    p.add_argument("--preset", choices=sorted(PRESETS), help="named sweep; other options override its values")
    g = p.add_argument_group("axes (each a list of values; all lists are crossed; unset -> the experiment's default)")
    g.add_argument("--n", type=int, nargs="+", help="training-set sizes, one per line (>= 2)")
    g.add_argument("--epsilon-scaling", choices=EPSILON_SCALINGS, help="one value for every line")
    for dest, (key, kind, _, _, text) in KEYS.items():
        g.add_argument(f"--{dest.replace('_', '-')}", type=kind, nargs="+", help=f"{key}: {text}")
    g.add_argument("--seeds", type=int, nargs="+", help="run seeds (default 0)")
    g.add_argument("--grid", action="append", default=[], metavar="KEY=[...]",
                   help="extra axis over any config key, e.g. \"dtype=['float32', 'float64']\"")
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
    for key in [*KEYS, "n", "seeds", "epsilon_scaling"]:
        value = getattr(args, key, None)
        if value is not None:
            s[key] = value
    bad_n = [n for n in s.get("n") or [] if n < 2]
    if bad_n:
        raise ValueError(f"--n values must be >= 2; got {bad_n}")
    for dest, (_, _, lo, strict, _) in KEYS.items():
        bad = [v for v in s.get(dest) or [] if (v <= lo if strict else v < lo)]
        if bad:
            raise ValueError(f"--{dest.replace('_', '-')} values must be {'>' if strict else '>='} {lo}; got {bad}")
    scaling = s.get("epsilon_scaling", "fixed")
    if scaling == "fixed" and s.get("epsilon_nbeta") is not None:
        raise ValueError("--epsilon-nbeta needs --epsilon-scaling nbeta")
    if scaling == "nbeta" and (s.get("epsilon_nbeta") is None or s.get("epsilon") is not None):
        raise ValueError("--epsilon-scaling nbeta takes --epsilon-nbeta (and no --epsilon)")
    return s


def generate(args: argparse.Namespace) -> list[str]:
    """The command lines, in a deterministic order (n, settings, --grid, seed)."""
    s = resolve_settings(args)
    grid = sweep.parse_grid(args.grid)
    if sweep.RUN_KEY in grid:
        raise ValueError("--grid cannot set run_key: the generator computes it")
    observer = sweep.observer_flag(mongo=args.mongo) if args.mongo else \
        sweep.observer_flag(file_storage=args.file_storage or DEFAULT_RUNS_DIR)
    axes = {"num_training_data": [[n] for n in (s.get("n") or PAPER_NS)]}
    if s.get("epsilon_scaling") is not None:
        axes["epsilon_scaling"] = [s["epsilon_scaling"]]
    axes.update({KEYS[k][0]: s[k] for k in KEYS if s.get(k) is not None})
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
