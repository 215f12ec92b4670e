"""Write one ``experiments/expt_rescaling_invariance.py`` command per line: architectures × settings × seeds.

    python gen_commands/expt_rescaling_invariance.py cmds.txt --preset paper
    python gen_commands/expt_rescaling_invariance.py cmds.txt --preset paper_small --per-alpha
    python gen_commands/expt_rescaling_invariance.py cmds.txt --layer-sizes "[10, 20, 10]" \\
        --samplers psgld_fixed sgld --sgld-epsilon 1e-5 3e-6 --seeds 0 1

By default each line sweeps every α itself, as the notebook's loop does, so its
result holds the spread over α. ``--per-alpha`` writes one line per α instead
(``alphas=[α_k] first_alpha_index=k``): line k runs the very chains of α_k in the
full sweep, so the lines can run as separate jobs. The α grid is ``--alphas`` or
the experiment's default (17 values, 10^-4 ... 10^4). The generator crosses the
architectures (``--layer-sizes``, each a Python list), the list-valued sampler
settings, the ``--grid`` axes and the seeds (the last varying fastest; α after
the seed with ``--per-alpha``). ``--samplers`` is one value, the list of samplers
every run uses.

Presets: ``paper_small``, ``paper_medium`` and ``paper_large`` are the notebook's
networks [10,20,10], [20,30,20] and [30,40,30] (the experiment's named configs of
the same names) with its sampler ``psgld_fixed``, seed 0; ``paper`` is all three;
``compare`` is [10,20,10] with ``psgld_fixed`` and plain ``sgld``; ``small`` is
[10,20,10] at n = 2000 with both, for a laptop.
"""
from __future__ import annotations

import argparse
import sys

from gen_commands import sweep

EXPERIMENT = "rescaling_invariance"  # Sacred Experiment name in experiments/expt_rescaling_invariance.py
SCRIPT = "experiments/expt_rescaling_invariance.py"
DEFAULT_RUNS_DIR = f"runs/{EXPERIMENT}"
SAMPLERS = ("psgld_fixed", "psgld", "sgld")  # the experiment's SAMPLERS
DEFAULT_ALPHAS = [10 ** (k / 2) for k in range(-8, 9)]  # the experiment's default alphas
PAPER = {"paper_small": [10, 20, 10], "paper_medium": [20, 30, 20], "paper_large": [30, 40, 30]}

# option dest -> (config key, type, lower bound, strict, help), in the order keys are written on each line.
KEYS = {
    "n": ("num_training_data", int, 2, False, "n"),
    "psgld_epsilon": ("psgld_config.epsilon", float, 0, True, "preconditioned step size (> 0)"),
    "psgld_gamma": ("psgld_config.gamma", float, 0, False, "preconditioned localisation (>= 0)"),
    "psgld_steps": ("psgld_config.num_steps", int, 1, False, "preconditioned SGLD steps"),
    "sgld_epsilon": ("sgld_config.epsilon", float, 0, True, "plain SGLD step size (> 0)"),
    "sgld_gamma": ("sgld_config.gamma", float, 0, False, "plain SGLD localisation (>= 0)"),
    "sgld_steps": ("sgld_config.num_steps", int, 1, False, "plain SGLD steps"),
}

PRESETS = {
    **{name: dict(layer_sizes=[sizes], samplers=["psgld_fixed"], seeds=[0]) for name, sizes in PAPER.items()},
    "paper": dict(layer_sizes=list(PAPER.values()), samplers=["psgld_fixed"], seeds=[0]),
    "compare": dict(layer_sizes=[PAPER["paper_small"]], samplers=["psgld_fixed", "sgld"], seeds=[0]),
    "small": dict(layer_sizes=[PAPER["paper_small"]], samplers=["psgld_fixed", "sgld"], n=[2000], seeds=[0]),
}


def _layer_sizes(text: str) -> list[int]:
    value = sweep.parse_value(text)
    if not isinstance(value, (list, tuple)) or len(value) < 3 or not all(isinstance(v, int) and v >= 1 for v in value):
        raise argparse.ArgumentTypeError(f"expected a list [input, hidden..., output] of >= 3 positive ints; got {text!r}")
    return list(value)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python gen_commands/expt_rescaling_invariance.py", description=__doc__,
                                epilog="presets: " + ", ".join(PRESETS),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help="commands file to write (refused if it exists, unless --force)")
    p.add_argument("--preset", choices=sorted(PRESETS), help="named sweep; other options override its values")
    g = p.add_argument_group("axes (each a list of values; all lists are crossed; unset -> the experiment's default)")
    g.add_argument("--layer-sizes", type=_layer_sizes, nargs="+", metavar="LIST",
                   help="layer_sizes, each quoted, e.g. \"[10, 20, 10]\"")
    g.add_argument("--samplers", nargs="+", choices=SAMPLERS, help="samplers, one list for every run")
    for dest, (key, kind, _, _, text) in KEYS.items():
        g.add_argument(f"--{dest.replace('_', '-')}", type=kind, nargs="+", help=f"{key}: {text}")
    g.add_argument("--seeds", type=int, nargs="+", help="run seeds (default 0)")
    g.add_argument("--alphas", type=float, nargs="+", help="the α grid, > 0 (default: the experiment's 17 values)")
    g.add_argument("--per-alpha", action="store_true",
                   help="one line per α (alphas=[α_k] first_alpha_index=k: the full sweep's chains at α_k)")
    g.add_argument("--grid", action="append", default=[], metavar="KEY=[...]",
                   help="extra axis over any config key, e.g. \"rescale_layer=[0, 1]\"")
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
    for key in [*KEYS, "layer_sizes", "samplers", "seeds", "alphas"]:
        value = getattr(args, key, None)
        if value is not None:
            s[key] = value
    for dest, (_, _, lo, strict, _) in KEYS.items():
        bad = [v for v in s.get(dest) or [] if (v <= lo if strict else v < lo)]
        if bad:
            raise ValueError(f"--{dest.replace('_', '-')} values must be {'>' if strict else '>='} {lo}; got {bad}")
    if s.get("alphas") is not None and any(not a > 0 for a in s["alphas"]):
        raise ValueError(f"--alphas values must be > 0; got {s['alphas']}")
    if s.get("samplers") is not None and len(set(s["samplers"])) != len(s["samplers"]):
        raise ValueError(f"--samplers must be distinct; got {s['samplers']}")
    return s


def generate(args: argparse.Namespace) -> list[str]:
    """The command lines, in a deterministic order (architecture, settings, --grid, seed)."""
    s = resolve_settings(args)
    grid = sweep.parse_grid(args.grid)
    if sweep.RUN_KEY in grid:
        raise ValueError("--grid cannot set run_key: the generator computes it")
    if {"alphas", "first_alpha_index"} & set(grid):
        raise ValueError("--grid cannot set alphas or first_alpha_index: use --alphas and --per-alpha")
    observer = sweep.observer_flag(mongo=args.mongo) if args.mongo else \
        sweep.observer_flag(file_storage=args.file_storage or DEFAULT_RUNS_DIR)
    axes = {}
    if s.get("layer_sizes") is not None:
        axes["layer_sizes"] = s["layer_sizes"]
    if s.get("samplers") is not None:
        axes["samplers"] = [list(s["samplers"])]
    axes.update({KEYS[k][0]: s[k] for k in KEYS if s.get(k) is not None})
    axes.update(grid)
    expt_name = args.expt_name if args.expt_name is not None else args.preset
    fixed = {} if expt_name is None else {"expt_name": expt_name}
    if args.device is not None:
        fixed["device"] = args.device
    alphas = s.get("alphas")
    if args.per_alpha:  # line k: alphas=[α_k] first_alpha_index=k, the full sweep's chains at α_k
        sweeps = [{"alphas": [a], "first_alpha_index": k} for k, a in enumerate(alphas or DEFAULT_ALPHAS)]
    else:
        sweeps = [{} if alphas is None else {"alphas": list(alphas)}]
    lines = []
    for combo in sweep.cartesian(axes):
        for seed in (s.get("seeds") or [0]) if "seed" not in grid else [None]:
            for part in sweeps:
                run = {**fixed, **combo, **({} if seed is None else {"seed": seed}), **part}
                lines.append(sweep.format_command(SCRIPT, EXPERIMENT, run, observer, args.python))
    return lines


def main(argv: list[str] | None = None) -> int:
    return sweep.generator_main(build_parser(), generate, argv)


if __name__ == "__main__":
    sys.exit(main())
