"""Write one ``experiments/expt_llc_curve.py`` command per line: the product of the list options.

    python gen_commands/expt_llc_curve.py cmds.txt --preset paper_lr
    python gen_commands/expt_llc_curve.py cmds.txt --lr 1e-3 5e-3 --batch 128 512 \\
        --momentum None 0.9 --l2 None 0.01 --seeds 0 1 -F runs/llc_curve

Every list-valued option (learning rate, batch size, momentum, L2 penalty, ...)
is an axis; the generator writes the cartesian product of the axes, then of the
``--grid`` axes, then the seeds, in that order (the last varying fastest). ``None``
is a value of --momentum and --l2 (no momentum, no penalty).

Presets: ``readme`` is the original README's single example command; the
``paper_*`` presets are the paper's sweeps (docs/notes/llc.md#published-results), each varying one of
the learning rate, batch size, momentum and L2 penalty around the README's settings,
over five seeds. Explicit options override a preset's values.
"""
from __future__ import annotations

import argparse
import sys

from gen_commands import sweep

EXPERIMENT = "llc_curve"  # Sacred Experiment name in experiments/expt_llc_curve.py
SCRIPT = "experiments/expt_llc_curve.py"
DEFAULT_RUNS_DIR = f"runs/{EXPERIMENT}"
OPTIMS = ("sgd", "adam")
MODELS = ("resnet18", "resnet18_cifar")

# option dest -> config key, in the order keys are written on each line.
KEYS = {
    "model": "model_data_config.model_name",
    "width_factor": "model_data_config.layer_width_factor",
    "label_noise": "model_data_config.label_noise_level",
    "optim": "training_config.optim",
    "lr": "training_config.learning_rate",
    "batch": "training_config.batch_size",
    "momentum": "training_config.momentum",
    "l2": "training_config.l2_regularization",
    "steps": "training_config.num_steps",
    "logging_period": "logging_period",
    "sgld_epsilon": "sgld_config.epsilon",
    "sgld_gamma": "sgld_config.gamma",
    "sgld_steps": "sgld_config.num_steps",
    "sgld_batch": "sgld_config.batch_size",
    "num_chains": "sgld_config.num_chains",
    "force_realisable": "force_realisable",
}

# The original README's example command; the paper's sweeps vary one axis around it.
README = dict(
    optim=["sgd"], lr=[0.005], batch=[512], momentum=[None], l2=[None], steps=[30001], logging_period=[1000],
    sgld_epsilon=[2e-7], sgld_gamma=[1.0], sgld_steps=[5000], sgld_batch=[2048], force_realisable=[False],
    seeds=[0],
)
PAPER_SEEDS = [0, 1, 2, 3, 4]
PRESETS = {
    "readme": README,
    "paper_lr": {**README, "lr": [0.005, 0.01, 0.05, 0.1, 0.2], "seeds": PAPER_SEEDS},
    "paper_batch": {**README, "batch": [16, 32, 64, 128, 256, 512, 1024], "seeds": PAPER_SEEDS},
    "paper_momentum": {**README, "momentum": [None, 0.1, 0.3, 0.5, 0.7, 0.9], "seeds": PAPER_SEEDS},
    "paper_l2": {**README, "l2": [None, 0.01, 0.025, 0.05, 0.075, 0.1], "seeds": PAPER_SEEDS},
}


def _float_or_none(text: str):
    return None if text == "None" else float(text)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python gen_commands/expt_llc_curve.py", description=__doc__,
                                epilog="presets: " + ", ".join(PRESETS),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help="commands file to write (refused if it exists, unless --force)")
    p.add_argument("--preset", choices=sorted(PRESETS), help="named sweep; other options override its values")
    g = p.add_argument_group("axes (each a list of values; all lists are crossed; unset -> the experiment's default)")
    g.add_argument("--model", nargs="+", choices=MODELS, help="model_data_config.model_name")
    g.add_argument("--width-factor", type=int, nargs="+", help="model_data_config.layer_width_factor: channels k of the first stage (k, 2k, 4k, 8k; default 64)")
    g.add_argument("--label-noise", type=float, nargs="+", help="model_data_config.label_noise_level in [0, 1]")
    g.add_argument("--optim", nargs="+", choices=OPTIMS, help="training_config.optim")
    g.add_argument("--lr", type=float, nargs="+", help="training_config.learning_rate (> 0)")
    g.add_argument("--batch", type=int, nargs="+", help="training_config.batch_size (>= 1)")
    g.add_argument("--momentum", type=_float_or_none, nargs="+", help="training_config.momentum in [0, 1), or None")
    g.add_argument("--l2", type=_float_or_none, nargs="+", help="training_config.l2_regularization >= 0, or None")
    g.add_argument("--steps", type=int, nargs="+", help="training_config.num_steps (>= 1)")
    g.add_argument("--logging-period", type=int, nargs="+", help="logging_period, SGD steps between λ̂ estimates (>= 1)")
    g.add_argument("--sgld-epsilon", type=float, nargs="+", help="sgld_config.epsilon (> 0)")
    g.add_argument("--sgld-gamma", type=float, nargs="+", help="sgld_config.gamma (>= 0)")
    g.add_argument("--sgld-steps", type=int, nargs="+", help="sgld_config.num_steps (>= 1)")
    g.add_argument("--sgld-batch", type=int, nargs="+", help="sgld_config.batch_size (>= 1)")
    g.add_argument("--num-chains", type=int, nargs="+", help="sgld_config.num_chains (>= 1)")
    g.add_argument("--force-realisable", type=lambda s: {"True": True, "False": False}[s], nargs="+",
                   metavar="{True,False}", help="force_realisable")
    g.add_argument("--seeds", type=int, nargs="+", help="run seeds (default 0)")
    g.add_argument("--grid", action="append", default=[], metavar="KEY=[...]",
                   help="extra axis over any config key, e.g. \"sgld_config.num_burnin_steps=[500, 900]\"")
    g = p.add_argument_group("line format")
    g.add_argument("--expt-name", help="expt_name config entry (default: the preset's name)")
    g.add_argument("--device", choices=("auto", "cpu", "cuda"), help="device config entry (default: not written)")
    g.add_argument("--data-root", help="data_root config entry (default: not written)")
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
    checks = [("lr", lambda v: v > 0, "> 0"), ("batch", lambda v: v >= 1, ">= 1"), ("steps", lambda v: v >= 1, ">= 1"),
              ("logging_period", lambda v: v >= 1, ">= 1"), ("sgld_epsilon", lambda v: v > 0, "> 0"),
              ("sgld_gamma", lambda v: v >= 0, ">= 0"), ("sgld_steps", lambda v: v >= 1, ">= 1"),
              ("sgld_batch", lambda v: v >= 1, ">= 1"), ("num_chains", lambda v: v >= 1, ">= 1"),
              ("width_factor", lambda v: v >= 1, ">= 1"), ("label_noise", lambda v: 0 <= v <= 1, "in [0, 1]"),
              ("momentum", lambda v: v is None or 0 <= v < 1, "None or in [0, 1)"),
              ("l2", lambda v: v is None or v >= 0, "None or >= 0")]
    for key, ok, what in checks:
        bad = [v for v in s.get(key) or [] if not ok(v)]
        if bad:
            raise ValueError(f"--{key.replace('_', '-')} values must be {what}; got {bad}")
    return s


def generate(args: argparse.Namespace) -> list[str]:
    """The command lines, in a deterministic order (axes in KEYS order, then --grid, then seeds)."""
    s = resolve_settings(args)
    grid = sweep.parse_grid(args.grid)
    if sweep.RUN_KEY in grid:
        raise ValueError("--grid cannot set run_key: the generator computes it")
    observer = sweep.observer_flag(mongo=args.mongo) if args.mongo else \
        sweep.observer_flag(file_storage=args.file_storage or DEFAULT_RUNS_DIR)
    axes = {KEYS[k]: s[k] for k in KEYS if s.get(k) is not None}
    axes.update(grid)
    expt_name = args.expt_name if args.expt_name is not None else args.preset
    fixed = {} if expt_name is None else {"expt_name": expt_name}
    for key, value in (("device", args.device), ("data_root", args.data_root)):
        if value is not None:
            fixed[key] = value
    seeds = s.get("seeds") or [0]
    lines = []
    for combo in sweep.cartesian(axes):
        for seed in seeds if "seed" not in grid else [None]:
            run = {**fixed, **combo, **({} if seed is None else {"seed": seed})}
            lines.append(sweep.format_command(SCRIPT, EXPERIMENT, run, observer, args.python))
    return lines


def main(argv: list[str] | None = None) -> int:
    return sweep.generator_main(build_parser(), generate, argv)


if __name__ == "__main__":
    sys.exit(main())
