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

import sys

from core import checks
from gen_commands import cli, presets

EXPERIMENT = "llc_curve"  # Sacred Experiment name in experiments/expt_llc_curve.py
SCRIPT = "experiments/expt_llc_curve.py"
DEFAULT_RUNS_DIR = f"runs/{EXPERIMENT}"
OPTIMS = ("sgd", "adam")
MODELS = ("resnet18", "resnet18_cifar")


def _float_or_none(text: str):
    return None if text == "None" else float(text)


# The axes, in the order keys are written on each line.
AXES = (
    cli.Axis("model", "model_data_config.model_name", help="model_data_config.model_name", choices=MODELS),
    cli.Axis("width_factor", "model_data_config.layer_width_factor", int,
             "model_data_config.layer_width_factor: channels k of the first stage (k, 2k, 4k, 8k; default 64)",
             cli.at_least(1)),
    cli.Axis("label_noise", "model_data_config.label_noise_level", float,
             "model_data_config.label_noise_level in [0, 1]", cli.Check(lambda v: 0 <= v <= 1, "in [0, 1]")),
    cli.Axis("optim", "training_config.optim", help="training_config.optim", choices=OPTIMS),
    cli.Axis("lr", "training_config.learning_rate", float, "training_config.learning_rate (> 0)", cli.above(0)),
    cli.Axis("batch", "training_config.batch_size", int, "training_config.batch_size (>= 1)", cli.at_least(1)),
    cli.Axis("momentum", "training_config.momentum", _float_or_none, "training_config.momentum in [0, 1), or None",
             cli.Check(lambda v: v is None or 0 <= v < 1, "None or in [0, 1)")),
    cli.Axis("l2", "training_config.l2_regularization", _float_or_none,
             "training_config.l2_regularization >= 0, or None",
             cli.Check(lambda v: v is None or v >= 0, "None or >= 0")),
    cli.Axis("steps", "training_config.num_steps", int, "training_config.num_steps (>= 1)", cli.at_least(1)),
    cli.Axis("logging_period", "logging_period", int, "logging_period, SGD steps between λ̂ estimates (>= 1)",
             cli.at_least(1)),
    *cli.sampler_axes("sgld_config", "SGLD"),
    cli.Axis("sgld_batch", "sgld_config.batch_size", int, "sgld_config.batch_size (>= 1)", cli.at_least(1)),
    cli.Axis("num_chains", "sgld_config.num_chains", int, "sgld_config.num_chains (>= 1)", cli.at_least(1)),
    cli.Axis("force_realisable", "force_realisable", checks.cli_type(checks.boolean, checks.parse_bool),
             "force_realisable", metavar="{True,False}"),
)

# The original README's example command: the experiment's named config ``readme``, read from its source.
README = {**presets.as_options(presets.named_config(SCRIPT, "readme"), AXES), "seeds": [0]}
PAPER_SEEDS = [0, 1, 2, 3, 4]
PRESETS = {
    "readme": README,
    "paper_lr": {**README, "lr": [0.005, 0.01, 0.05, 0.1, 0.2], "seeds": PAPER_SEEDS},
    "paper_batch": {**README, "batch": [16, 32, 64, 128, 256, 512, 1024], "seeds": PAPER_SEEDS},
    "paper_momentum": {**README, "momentum": [None, 0.1, 0.3, 0.5, 0.7, 0.9], "seeds": PAPER_SEEDS},
    "paper_l2": {**README, "l2": [None, 0.01, 0.025, 0.05, 0.075, 0.1], "seeds": PAPER_SEEDS},
}



SPEC = cli.Spec(
    experiment=EXPERIMENT, script=SCRIPT, description=__doc__, presets=PRESETS, axes=AXES,
    line_options=("device", "data_root"), epilog="presets: " + ", ".join(PRESETS),
    grid_help="extra axis over any config key, e.g. \"sgld_config.num_burnin_steps=[500, 900]\"",
)
build_parser, generate, main = SPEC.build_parser, SPEC.generate, SPEC.main

if __name__ == "__main__":
    sys.exit(main())
