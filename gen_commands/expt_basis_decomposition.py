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

Presets (README, "Basis-function decomposition"; figure numbers of Ma, Guo & Fattahi 2022):

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

from gen_commands import sweep

EXPERIMENT = "basis_decomposition"  # Sacred Experiment name in experiments/expt_basis_decomposition.py
SCRIPT = "experiments/expt_basis_decomposition.py"
DEFAULT_RUNS_DIR = f"runs/{EXPERIMENT}"
MODELS = ("alexnet", "vgg11", "resnet18", "resnet34", "resnet50", "vit", "vit_timm", "cnn2", "cnn3", "cnn4", "fig2_cnn",
          "fig2_cnn_bn1d")
OPTIMIZERS = ("sgd", "lars", "lamb", "adamw")
DATA = ("mnist", "cifar10", "cifar100")
LOSSES = ("ce_loss", "mse_loss")
OPTIMIZER_LR = {"sgd": [0.1, 5, 0.01], "lars": [2.0, 0, 0.01], "lamb": [0.01, 5, 0.001], "adamw": [0.001, 5, 0.0001]}

# The MNIST scripts' settings (the experiment's named configs of the same names), written out key by key.
_MNIST_SHARED = {"data": ["mnist"], "loss_fn": ["mse_loss"], "optimizer": ["lars"], "decay_rate": [0.33],
                 "decay_stepsize": [50], "grad_clip": [0.1]}
MNIST = {  # mnist.py
    **_MNIST_SHARED, "normalize": [True], "batch_size": [256], "num_epoch": [20], "lr_setting": [[0.05, 0, 0.05]],
    "schedule_unit": ["epoch"], "record_epoch_ends": [False], "record_every": [20], "record_first": [1],
    "record_until": [2001], "small_init": [False],
}
GRAD_INDEP = {  # grad_indep.py
    "model": ["fig2_cnn"], **_MNIST_SHARED, "normalize": [True], "batch_size": [512], "num_epoch": [20],
    "lr_setting": [[0.05, 0, 0.05]], "schedule_unit": ["iteration"], "small_init": [False], "grad_indep": [True],
    "rerun_config.iterations": [10], "rerun_config.every": [1], "rerun_config.num_basis": [10],
}
BETA_DOMIN = {  # beta_domin.py
    "model": ["fig2_cnn_bn1d"], **_MNIST_SHARED, "normalize": [False], "batch_size": [512], "num_epoch": [10],
    "lr_setting": [[0.5, 0, 0.5]], "schedule_unit": ["iteration"], "small_init": [False], "beta_domin": [True],
    "rerun_config.iterations": [400], "rerun_config.every": [1], "rerun_config.num_basis": [5],
}
SMALL_INIT = {  # small-init.py
    "model": ["fig2_cnn_bn1d"], **_MNIST_SHARED, "normalize": [False], "batch_size": [512], "num_epoch": [10],
    "lr_setting": [[2.0, 0, 2.0]], "schedule_unit": ["epoch"], "record_epoch_ends": [False], "small_init": [True],
}
# The original README's train.py command (AlexNet, CIFAR-10, LARS).
README = {
    "data": ["cifar10"], "loss_fn": ["mse_loss"], "optimizer": ["lars"], "batch_size": [512], "num_epoch": [300],
    "lr_setting": [[2.0, 0, 0.01]], "decay_rate": [0.33], "decay_stepsize": [50],
}
CIFAR10_RESNET18 = {"model": ["resnet18"], "data": ["cifar10"], "loss_fn": ["mse_loss"]}

PRESETS: dict[str, list[dict[str, list]]] = {
    "mnist_depth": [{"model": ["cnn2", "cnn3", "cnn4"], **MNIST}],
    "fig2": [SMALL_INIT, GRAD_INDEP, BETA_DOMIN],
    "cifar10_models": [
        {"model": ["alexnet", "vgg11", "resnet18", "resnet34", "resnet50"], **README},
        {"model": ["vit"], "data": ["cifar10"], "loss_fn": ["mse_loss"], "optimizer": ["adamw"],
         "scheduler": ["onecycle"], "lr_setting": [[0.001, 0, 0.001]], "weight_decay": [0.1], "batch_size": [128],
         "num_epoch": [200]},
    ],
    "optimizers": [{**CIFAR10_RESNET18, "optimizer": list(OPTIMIZERS)}],
    "init_scale": [{**CIFAR10_RESNET18, "optimizer": ["sgd"], "init_scale": [0.25, 0.5, 1.0, 2.0]}],
    "cifar100": [{"model": ["resnet18"], "data": ["cifar100"], "loss_fn": ["mse_loss", "ce_loss"], "optimizer": ["sgd"]}],
    "demo": [{"model": ["cnn3"], "width": [16], "data": ["mnist"], "train_points": [2048], "eval_points": [512],
              "loss_fn": ["mse_loss"], "optimizer": list(OPTIMIZERS), "batch_size": [128], "num_epoch": [3],
              "schedule_unit": ["iteration"], "decay_stepsize": [1000], "early_points": [16], "augment": [False]}],
}
# option dest -> config key; these replace the axis in every block.
AXIS_OPTIONS = {"model": "model", "optimizer": "optimizer", "init_scale": "init_scale", "data": "data",
                "loss_fn": "loss_fn"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python gen_commands/expt_basis_decomposition.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help="commands file to write (refused if it exists, unless --force)")
    p.add_argument("--preset", choices=sorted(PRESETS), help="named sweep; the axis options below replace its values")
    g = p.add_argument_group("axes (each a list of values; all are crossed)")
    g.add_argument("--model", nargs="+", choices=MODELS, metavar="MODEL", help=f"one or more of {', '.join(MODELS)}")
    g.add_argument("--optimizer", nargs="+", choices=OPTIMIZERS, metavar="OPT", help=f"one or more of {', '.join(OPTIMIZERS)}")
    g.add_argument("--init-scale", type=float, nargs="+", help="init_scale values (>= 0)")
    g.add_argument("--data", nargs="+", choices=DATA, metavar="DATA", help=f"one or more of {', '.join(DATA)}")
    g.add_argument("--loss-fn", nargs="+", choices=LOSSES, metavar="LOSS", help=f"one or more of {', '.join(LOSSES)}")
    g.add_argument("--seeds", type=int, nargs="+", default=[0], help="run seeds, crossed last (default 0)")
    g.add_argument("--grid", action="append", default=[], metavar="KEY=[...]",
                   help="extra axis over any config key, e.g. \"num_epoch=[50, 100]\"; replaces that key's values")
    g = p.add_argument_group("line format")
    g.add_argument("--expt-name", help="expt_name config entry, a label for plots (default: the preset's name)")
    g.add_argument("--data-root", help="data_root config entry (default: not written)")
    g.add_argument("--device", choices=("auto", "cpu", "cuda"), help="device config entry (default: not written, i.e. auto)")
    obs = g.add_mutually_exclusive_group()
    obs.add_argument("-F", "--file-storage", metavar="DIR", help=f"record with a FileStorageObserver in DIR (default {DEFAULT_RUNS_DIR})")
    obs.add_argument("-m", "--mongo", metavar="HOST:PORT:DB", help="record with a MongoObserver instead")
    g.add_argument("--python", default="python", help="interpreter written at the start of each line (default python)")
    g.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    return p


def blocks(args: argparse.Namespace) -> list[dict[str, list]]:
    """The preset's blocks (or one empty block) with the axis options and --grid applied. Raises ValueError."""
    if args.init_scale is not None and min(args.init_scale) < 0:
        raise ValueError(f"--init-scale values must be >= 0; got {args.init_scale}")
    if min(args.seeds) < 0:
        raise ValueError(f"--seeds must be >= 0; got {args.seeds}")
    grid = sweep.parse_grid(args.grid)
    for key in (sweep.RUN_KEY, "seed"):
        if key in grid:
            raise ValueError(f"--grid cannot set {key}: " + ("the generator computes it" if key == sweep.RUN_KEY else "use --seeds"))
    out = []
    for block in PRESETS[args.preset] if args.preset else [{}]:
        block = {k: list(v) for k, v in block.items()}
        for dest, key in AXIS_OPTIONS.items():
            values = getattr(args, dest)
            if values is not None:
                block[key] = list(values)
        block.update(grid)  # a --grid axis replaces the block's values, keeping the key's position
        out.append(block)
    return out


def generate(args: argparse.Namespace) -> list[str]:
    """The command lines, in a deterministic order (block, axes in order, seed last)."""
    observer = sweep.observer_flag(mongo=args.mongo) if args.mongo else \
        sweep.observer_flag(file_storage=args.file_storage or DEFAULT_RUNS_DIR)
    expt_name = args.expt_name if args.expt_name is not None else args.preset
    lines = []
    for block in blocks(args):
        for combo in sweep.cartesian(block):
            overrides = {} if expt_name is None else {"expt_name": expt_name}
            overrides.update(combo)
            if "lr_setting" not in overrides and "optimizer" in overrides:
                overrides["lr_setting"] = OPTIMIZER_LR[overrides["optimizer"]]
            if args.data_root is not None:
                overrides["data_root"] = args.data_root
            if args.device is not None:
                overrides["device"] = args.device
            for seed in args.seeds:
                lines.append(sweep.format_command(SCRIPT, EXPERIMENT, {**overrides, "seed": seed}, observer, args.python))
    return lines


def main(argv: list[str] | None = None) -> int:
    return sweep.generator_main(build_parser(), generate, argv)


if __name__ == "__main__":
    sys.exit(main())
