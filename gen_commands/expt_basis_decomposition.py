"""Write one ``experiments/expt_basis_decomposition.py`` command per line: model × optimizer × init_scale × seed.

    python gen_commands/expt_basis_decomposition.py cmds.txt --preset mnist_depth --seeds 0 1 2
    python gen_commands/expt_basis_decomposition.py cmds.txt --model resnet18 vit --optimizer sgd lars \\
        --init-scale 0.5 1.0 --data cifar10 --seeds 0 1 --grid "num_epoch=[100]" -F runs/basis_decomposition

A preset is a list of blocks; each block maps config keys to lists of values that
are crossed (in the order written), and the lines of all blocks are concatenated.
``--model``, ``--optimizer``, ``--init-scale``, ``--data``, ``--loss-fn`` and
``--grid`` replace that axis in every block; ``--seeds`` is crossed last. Without
a preset the grid is the options alone, on top of the experiment's defaults.

``lr_setting`` follows the optimizer unless a block or ``--grid`` sets it
(``OPTIMIZER_LR``): sgd uses train.py's default [0.1, 5, 0.01] and lars the
original README's [2, 0, 0.01]; the lamb and adamw values are this generator's
choices (the original code gives none).

Presets (docs/basis_decomposition.md#sweeps-and-figures; figure numbers of Ma, Guo & Fattahi 2022):

* ``mnist_depth``: Fig. 3(a–c), mnist.py: the 2-, 3- and 4-block CNNs on MNIST
  (the original used seed 0, and 64 for the 4-block CNN: ``--seeds``).
* ``fig2``: Fig. 2(a–c): small-init.py, grad_indep.py and beta_domin.py, each with its
  own settings (the original seeds were 1, 83 and 0: ``--seeds``, or the experiment's
  named configs of the same names).
* ``cifar10_models``: train.py's CIFAR-10 runs (Figs. 1, 3(d–f), 5–8): AlexNet,
  VGG-11 and ResNet-18/34/50 with the README's LARS command, the ViT with AdamW
  and the one-cycle schedule.
* ``optimizers``: ResNet-18 on CIFAR-10 with each of sgd, lars, lamb, adamw.
* ``init_scale``: ResNet-18 on CIFAR-10 with init_scale 0.25, 0.5, 1, 2.
* ``cifar100``: ResNet-18 on CIFAR-100, MSE with k_M = [5, 5] and cross-entropy.
* ``demo``: the 3-block CNN at width 16 on 2048 MNIST images, 3 epochs, each
  optimizer (warm-up over the first 5 or 0 iterations, no decay): minutes on a CPU.
"""
from __future__ import annotations

import argparse
import sys

from gen_commands import cli, presets, sweep

EXPERIMENT = "basis_decomposition"  # Sacred Experiment name in experiments/expt_basis_decomposition.py
SCRIPT = "experiments/expt_basis_decomposition.py"
DEFAULT_RUNS_DIR = f"runs/{EXPERIMENT}"
MODELS = ("alexnet", "vgg11", "resnet18", "resnet34", "resnet50", "vit", "vit_timm", "cnn2", "cnn3", "cnn4", "fig2_cnn",
          "fig2_cnn_bn1d")
OPTIMIZERS = ("sgd", "lars", "lamb", "adamw")
DATA = ("mnist", "cifar10", "cifar100")
LOSSES = ("ce_loss", "mse_loss")
OPTIMIZER_LR = {"sgd": [0.1, 5, 0.01], "lars": [2.0, 0, 0.01], "lamb": [0.01, 5, 0.001], "adamw": [0.001, 5, 0.0001]}


def _named(name: str, *skip: str) -> dict[str, list]:
    """The experiment's named config ``name`` as a one-value-per-key block, less ``skip`` (and ``seed``: the
    generator's seeds come from --seeds)."""
    return {k: [v] for k, v in presets.named_config(SCRIPT, name, skip={"seed", *skip}).items()}


# The original scripts' settings: the experiment's named configs of the same names, read from its source.
MNIST = _named("mnist", "model")  # mnist.py; the preset crosses its three CNNs
GRAD_INDEP = _named("grad_indep")  # grad_indep.py
BETA_DOMIN = _named("beta_domin")  # beta_domin.py
SMALL_INIT = _named("small_init")  # small-init.py
README = _named("readme_example", "model")  # the original README's train.py command (AlexNet, CIFAR-10, LARS)
VIT = _named("vit", "model")  # train.py's ViT option (AdamW, one-cycle)
CIFAR10_RESNET18 = {"model": ["resnet18"], "data": ["cifar10"], "loss_fn": ["mse_loss"]}

PRESETS: dict[str, list[dict[str, list]]] = {
    "mnist_depth": [{"model": ["cnn2", "cnn3", "cnn4"], **MNIST}],
    "fig2": [SMALL_INIT, GRAD_INDEP, BETA_DOMIN],
    "cifar10_models": [
        {"model": ["alexnet", "vgg11", "resnet18", "resnet34", "resnet50"], **README},
        {"model": ["vit"], "data": ["cifar10"], "loss_fn": ["mse_loss"], **VIT, "batch_size": [128],
         "num_epoch": [200]},
    ],
    "optimizers": [{**CIFAR10_RESNET18, "optimizer": list(OPTIMIZERS)}],
    "init_scale": [{**CIFAR10_RESNET18, "optimizer": ["sgd"], "init_scale": [0.25, 0.5, 1.0, 2.0]}],
    "cifar100": [{"model": ["resnet18"], "data": ["cifar100"], "loss_fn": ["mse_loss", "ce_loss"],
                  "optimizer": ["sgd"]}],
    "demo": [{"model": ["cnn3"], "width": [16], "data": ["mnist"], "train_points": [2048], "eval_points": [512],
              "loss_fn": ["mse_loss"], "optimizer": list(OPTIMIZERS), "batch_size": [128], "num_epoch": [3],
              "schedule_unit": ["iteration"], "decay_stepsize": [1000], "early_points": [16], "augment": [False]}],
}
# These replace the axis of the same key in every block.
AXES = (
    cli.Axis("model", "model", help=f"one or more of {', '.join(MODELS)}", choices=MODELS, metavar="MODEL"),
    cli.Axis("optimizer", "optimizer", help=f"one or more of {', '.join(OPTIMIZERS)}", choices=OPTIMIZERS,
             metavar="OPT"),
    cli.Axis("init_scale", "init_scale", float, "init_scale values (>= 0)", cli.at_least(0)),
    cli.Axis("data", "data", help=f"one or more of {', '.join(DATA)}", choices=DATA, metavar="DATA"),
    cli.Axis("loss_fn", "loss_fn", help=f"one or more of {', '.join(LOSSES)}", choices=LOSSES, metavar="LOSS"),
)


def resolve(spec: cli.Spec, args: argparse.Namespace) -> list[dict[str, list]]:
    """The preset's blocks (or one empty block) with the axis options applied. Raises ValueError."""
    for axis in AXES:
        cli.check_values(axis.flag, getattr(args, axis.dest), axis.check)
    if args.seeds is not None and min(args.seeds) < 0:
        raise ValueError(f"--seeds must be >= 0; got {args.seeds}")
    out = []
    for block in PRESETS[args.preset] if args.preset else [{}]:
        block = {k: list(v) for k, v in block.items()}
        block.update({k: list(v) for k, v in cli.axis_values(AXES, vars(args)).items()})
        out.append(block)
    return out


def lines(sw: cli.Sweep) -> list[str]:
    """Per block: its axes (--grid replacing a key's values in place) crossed, then the seeds."""
    args = sw.args
    seeds = args.seeds if args.seeds is not None else [0]
    out = []
    for block in sw.settings:
        block = {**block, **sw.grid}  # a --grid axis replaces the block's values, keeping the key's position
        for combo in sweep.cartesian(block):
            overrides = {} if sw.expt_name is None else {"expt_name": sw.expt_name}
            overrides.update(combo)
            if "lr_setting" not in overrides and "optimizer" in overrides:
                overrides["lr_setting"] = OPTIMIZER_LR[overrides["optimizer"]]
            if args.data_root is not None:
                overrides["data_root"] = args.data_root
            if args.device is not None:
                overrides["device"] = args.device
            for seed in seeds:
                out.append(sw.command({**overrides, "seed": seed}))
    return out


SPEC = cli.Spec(
    experiment=EXPERIMENT, script=SCRIPT, description=__doc__, presets=PRESETS, axes=AXES, lines=lines,
    resolve=resolve, line_options=("data_root", "device"), axes_title="axes (each a list of values; all are crossed)",
    seeds_help="run seeds, crossed last (default 0)", reserved={"seed": "use --seeds"},
    grid_help="extra axis over any config key, e.g. \"num_epoch=[50, 100]\"; replaces that key's values",
)
build_parser, generate, main = SPEC.build_parser, SPEC.generate, SPEC.main

if __name__ == "__main__":
    sys.exit(main())
