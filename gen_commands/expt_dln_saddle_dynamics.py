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

import sys

from gen_commands import cli, presets

EXPERIMENT = "dln_saddle_dynamics"  # Sacred Experiment name in experiments/expt_dln_saddle_dynamics.py
SCRIPT = "experiments/expt_dln_saddle_dynamics.py"
DEFAULT_RUNS_DIR = f"runs/{EXPERIMENT}"

# The axes, in the order keys are written on each line.
AXES = (
    cli.Axis("width", "width", int, "width: hidden width", cli.at_least(1)),
    cli.Axis("layers", "num_hidden_layers", int, "num_hidden_layers: number of hidden layers", cli.at_least(0)),
    cli.Axis("init_exponent", "initialisation_exponent", float,
             "initialisation_exponent: initial weights N(0, width^-exponent)"),
    cli.Axis("n", "num_training_data", int, "num_training_data: n", cli.at_least(2)),
    cli.Axis("lr", "training_config.learning_rate", float, "training_config.learning_rate: SGD learning rate (> 0)",
             cli.above(0)),
    cli.Axis("batch", "training_config.batch_size", int, "training_config.batch_size: SGD batch size", cli.at_least(1)),
    cli.Axis("steps", "training_config.num_steps", int, "training_config.num_steps: SGD steps", cli.at_least(1)),
    cli.Axis("logging_period", "logging_period", int, "logging_period: SGD steps between checkpoints", cli.at_least(1)),
    *cli.sampler_axes("sgld_config", "SGLD", steps_help="SGLD steps per checkpoint"),
    cli.Axis("num_chains", "sgld_config.num_chains", int, "sgld_config.num_chains: SGLD chains", cli.at_least(1)),
)

# paper and cpu are the experiment's named configs of the same names, read from its source.
PRESETS = {
    "paper": {**presets.as_options(presets.named_config(SCRIPT, "paper"), AXES), "seeds": [42]},
    "widths": dict(width=[10, 50, 100, 500], steps=[20000], logging_period=[50], seeds=[0, 1, 2]),
    "cpu": {**presets.as_options(presets.named_config(SCRIPT, "cpu"), AXES), "seeds": [0]},
}

SPEC = cli.Spec(
    experiment=EXPERIMENT, script=SCRIPT, description=__doc__, presets=PRESETS, axes=AXES,
    epilog="presets: " + ", ".join(PRESETS),
    grid_help="extra axis over any config key, e.g. \"rank_threshold=[0.5, 1.0]\"",
)
build_parser, generate, main = SPEC.build_parser, SPEC.generate, SPEC.main

if __name__ == "__main__":
    sys.exit(main())
