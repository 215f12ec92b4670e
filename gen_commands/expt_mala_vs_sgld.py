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

import sys

from gen_commands import cli, presets

EXPERIMENT = "mala_vs_sgld"  # Sacred Experiment name in experiments/expt_mala_vs_sgld.py
SCRIPT = "experiments/expt_mala_vs_sgld.py"
DEFAULT_RUNS_DIR = f"runs/{EXPERIMENT}"
PAPER_NS = presets.constant(SCRIPT, "PAPER_NS")  # the experiment's n grid, round(10^linspace(2, 5, 7))
EPSILON_SCALINGS = ("fixed", "nbeta")

# The axes, in the order keys are written on each line; each n is its own line (num_training_data=[n]).
AXES = (
    cli.Axis("n", "num_training_data", int, "training-set sizes, one per line (>= 2)", cli.at_least(2),
             wrap=lambda n: [n]),
    cli.Axis("epsilon_scaling", "epsilon_scaling", help="one value for every line", choices=EPSILON_SCALINGS,
             single=True),
    cli.Axis("epsilon", "epsilon", float, "epsilon: step size ε of both samplers (> 0), with epsilon_scaling=fixed",
             cli.above(0)),
    cli.Axis("epsilon_nbeta", "epsilon_nbeta", float, "epsilon_nbeta: ε·nβ (> 0), with epsilon_scaling=nbeta",
             cli.above(0)),
    cli.Axis("gamma", "gamma", float, "gamma: localisation strength γ (>= 0)", cli.at_least(0)),
    cli.Axis("num_steps", "num_steps", int, "num_steps: draws per chain, both samplers", cli.at_least(1)),
    cli.Axis("num_chains", "num_chains", int, "num_chains: chains per sampler", cli.at_least(1)),
    cli.Axis("batch_size", "sgld_config.batch_size", int, "sgld_config.batch_size: SGLD minibatch", cli.at_least(1)),
)

PRESETS = {
    "paper": dict(n=PAPER_NS, seeds=[0]),
    "small": dict(n=PAPER_NS[:3], num_steps=[2000], num_chains=[2], seeds=[0]),
}


def validate(s: dict, args) -> None:
    """ε or ε·nβ, whichever epsilon_scaling reads (the experiment refuses the other)."""
    scaling = s.get("epsilon_scaling") or "fixed"
    if scaling == "fixed" and s.get("epsilon_nbeta") is not None:
        raise ValueError("--epsilon-nbeta needs --epsilon-scaling nbeta")
    if scaling == "nbeta" and (s.get("epsilon_nbeta") is None or s.get("epsilon") is not None):
        raise ValueError("--epsilon-scaling nbeta takes --epsilon-nbeta (and no --epsilon)")


SPEC = cli.Spec(
    experiment=EXPERIMENT, script=SCRIPT, description=__doc__, presets=PRESETS, axes=AXES,
    base=dict(n=PAPER_NS), validate=validate, epilog="presets: " + ", ".join(PRESETS),
    grid_help="extra axis over any config key, e.g. \"dtype=['float32', 'float64']\"",
)
build_parser, generate, main = SPEC.build_parser, SPEC.generate, SPEC.main

if __name__ == "__main__":
    sys.exit(main())
