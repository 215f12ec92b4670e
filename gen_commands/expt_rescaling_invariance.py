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

from gen_commands import cli, presets, sweep

EXPERIMENT = "rescaling_invariance"  # Sacred Experiment name in experiments/expt_rescaling_invariance.py
SCRIPT = "experiments/expt_rescaling_invariance.py"
DEFAULT_RUNS_DIR = f"runs/{EXPERIMENT}"
SAMPLERS = presets.constant(SCRIPT, "SAMPLERS")  # read from the experiment's source
DEFAULT_ALPHAS = [10 ** (k / 2) for k in range(-8, 9)]  # the experiment's default alphas
# The notebook's three networks: the experiment's named configs of the same names, read from its source.
PAPER = {name: presets.named_config(SCRIPT, name)["layer_sizes"]
         for name in ("paper_small", "paper_medium", "paper_large")}

PRESETS = {
    **{name: dict(layer_sizes=[sizes], samplers=["psgld_fixed"], seeds=[0]) for name, sizes in PAPER.items()},
    "paper": dict(layer_sizes=list(PAPER.values()), samplers=["psgld_fixed"], seeds=[0]),
    "compare": dict(layer_sizes=[PAPER["paper_small"]], samplers=["psgld_fixed", "sgld"], seeds=[0]),
    "small": dict(layer_sizes=[PAPER["paper_small"]], samplers=["psgld_fixed", "sgld"], n=[2000], seeds=[0]),
}


def _layer_sizes(text: str) -> list[int]:
    value = sweep.parse_value(text)
    if not isinstance(value, (list, tuple)) or len(value) < 3 or not all(isinstance(v, int) and v >= 1 for v in value):
        raise argparse.ArgumentTypeError(
            f"expected a list [input, hidden..., output] of >= 3 positive ints; got {text!r}")
    return list(value)


# The axes, in the order keys are written on each line.
AXES = (
    cli.Axis("layer_sizes", "layer_sizes", _layer_sizes, "layer_sizes, each quoted, e.g. \"[10, 20, 10]\"",
             metavar="LIST"),
    cli.Axis("samplers", "samplers", help="samplers, one list for every run", choices=SAMPLERS, whole=True),
    cli.Axis("n", "num_training_data", int, "num_training_data: n", cli.at_least(2)),
    *cli.sampler_axes("psgld_config", "preconditioned", steps_help="preconditioned SGLD steps"),
    *cli.sampler_axes("sgld_config", "plain SGLD"),
)


def options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--alphas", type=float, nargs="+", help="the α grid, > 0 (default: the experiment's 17 values)")
    p.add_argument("--per-alpha", action="store_true",
                   help="one line per α (alphas=[α_k] first_alpha_index=k: the full sweep's chains at α_k)")


def validate(s: dict, args) -> None:
    cli.check_values("--alphas", s.get("alphas"), cli.above(0))
    if s.get("samplers") is not None and len(set(s["samplers"])) != len(s["samplers"]):
        raise ValueError(f"--samplers must be distinct; got {s['samplers']}")


def lines(sw: cli.Sweep) -> list[str]:
    """Architectures × settings × --grid × seeds; with --per-alpha, one line per α after the seed."""
    alphas = sw.settings.get("alphas")
    if sw.args.per_alpha:  # line k: alphas=[α_k] first_alpha_index=k, the full sweep's chains at α_k
        tail = [{"alphas": [a], "first_alpha_index": k} for k, a in enumerate(alphas or DEFAULT_ALPHAS)]
    else:
        tail = [{} if alphas is None else {"alphas": list(alphas)}]
    return cli.crossed_lines(sw, tail)


_USE_OPTIONS = "use --alphas and --per-alpha"
SPEC = cli.Spec(
    experiment=EXPERIMENT, script=SCRIPT, description=__doc__, presets=PRESETS, axes=AXES, lines=lines,
    base=dict(alphas=None), options=options, validate=validate, epilog="presets: " + ", ".join(PRESETS),
    reserved={"alphas": _USE_OPTIONS, "first_alpha_index": _USE_OPTIONS},
    grid_help="extra axis over any config key, e.g. \"rescale_layer=[0, 1]\"",
)
build_parser, generate, main = SPEC.build_parser, SPEC.generate, SPEC.main

if __name__ == "__main__":
    sys.exit(main())
