"""Write one ``experiments/expt_chaos.py`` command per line: the paper's figure table as presets.

    python gen_commands/expt_chaos.py fig1.txt --preset fig1 --seeds 0 1 2
    python gen_commands/expt_chaos.py lya.txt --preset fig3_lyapunov      # run these first,
    python gen_commands/expt_chaos.py dist.txt --preset fig3_distance     # then these
    python gen_commands/expt_chaos.py demo.txt --preset demo --grid "optim.lr=[1e-3, 1e-2]"

Presets follow the original README's experiment table (seed 002 §4), MLP on USPS
without momentum unless stated:

* fig1: sgd, and cgd pruning the chaotic, pos and neg eigendirections.
* fig2: sgd, and cgd (chaotic) starting at step 2000, 5000 or 10000. The original table
  wrote these as ``optim=sgd ... prune_start=...``, which would not prune; they are cgd.
* fig3_lyapunov: Lyapunov runs that save their directions (save_eigenthings), USPS and
  FashionMNIST, seed 42.
* fig3_distance: five perturbed copies (perturb_strat=all) of the same runs (same seed,
  hence the same batches), reading the directions of the fig3_lyapunov run with the
  same options by its run_key; run them after fig3_lyapunov has finished.
* subsim: CNN, similarity of the expanding Lyapunov subspace fixed at steps 10 and 10000.
* demo: fig1 at CPU size (1000 training points, 3 epochs, 16 tangent directions).

``--cgd-rules original`` writes the six ``cgd.*`` keys that restore the original's
pruning rules on every line (the named config ``cgd_original``); the default writes none.

Every line carries an explicit seed and a run_key; the same call writes the same file.
This module imports no torch.
"""
from __future__ import annotations

import argparse
import sys

from gen_commands import cli, presets, sweep

EXPERIMENT = "chaos"  # Sacred Experiment name in experiments/expt_chaos.py
SCRIPT = "experiments/expt_chaos.py"
DEFAULT_RUNS_DIR = f"runs/{EXPERIMENT}"

COMMON = {"model.name": "mlp", "dataset": "usps", "optim.momentum": 0.0}
FIG1 = [{"optim.name": "sgd"}] + [{"optim.name": "cgd", "optim.prune_set": s} for s in ("chaotic", "pos", "neg")]
DATASETS3 = [{"dataset": d, "logging.save_eigenthings": True} for d in ("usps", "fmnist")]
DISTANCE = {"logging.log_eigenthings": False, "logging.log_lyapunov": False, "perturb_eps": [0.1],
            "perturb_strat": "all", "parallel": 5}

# The original's CGD pruning rules: the experiment's named config cgd_original (dynamics.cgd_select.CgdRules.original).
CGD_ORIGINAL = presets.named_config(SCRIPT, "cgd_original")

PRESETS = {
    "fig1": dict(runs=FIG1, seeds=[0]),
    "fig2": dict(runs=[{"optim.name": "sgd"}]
                 + [{"optim.name": "cgd", "optim.prune_start": s} for s in (2000, 5000, 10000)],
                 seeds=[0]),
    "fig3_lyapunov": dict(runs=DATASETS3, seeds=[42]),
    "fig3_distance": dict(runs=DATASETS3, seeds=[42], distance=True),
    "subsim": dict(runs=[{"model.name": "cnn", "logging.log_lyapunov_subsim": True, "logging.t_lya_subsim": [10, 10000],
                          "logging.log_freq": 10}], seeds=[0]),
    "demo": dict(runs=FIG1, seeds=[0],
                 extra={"num_train": 1000, "max_epochs": 3, "lyapunov.k": 16, "logging.log_freq": 10}),
}


# One value each, written on every line after the preset's keys.
AXES = (
    cli.Axis("max_epochs", "max_epochs", int, "max_epochs for every run (default: not written, i.e. 40)",
             cli.at_least(1), single=True),
    cli.Axis("max_steps", "max_steps", int, "max_steps for every run (default: not written)", cli.at_least(1),
             single=True),
    cli.Axis("lyapunov_k", "lyapunov.k", int, "lyapunov.k, tangent directions tracked (not with fig3_*)",
             cli.at_least(1), single=True),
)


def options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cgd-rules", choices=("fixed", "original"), default="fixed",
                   help="original: write the cgd.* keys restoring the original's pruning rules (default fixed: none)")


def validate(s: dict, args) -> None:
    if args.seeds is not None and len(set(args.seeds)) != len(args.seeds):
        raise ValueError(f"--seeds must be distinct; got {args.seeds}")
    if args.lyapunov_k is not None and args.preset.startswith("fig3"):
        raise ValueError("--lyapunov-k cannot be used with fig3_*: saving Lyapunov directions needs the full frame")


def lines(sw: cli.Sweep) -> list[str]:
    """The preset's runs × --grid × seeds; fig3_distance lines point at their Lyapunov run by its run_key."""
    preset, args = sw.settings, sw.args
    expt_name = args.expt_name
    if expt_name is None:
        expt_name = args.preset.replace("_distance", "").replace("_lyapunov", "")
    options = {k: v for k, (v,) in sw.axes().items()}
    out = []
    for spec in preset["runs"]:
        for combo in sweep.cartesian(sw.grid):
            for seed in preset["seeds"]:
                run = {"expt_name": expt_name, **COMMON, **spec, **preset.get("extra", {}), **options}
                if args.device is not None:
                    run["device"] = args.device
                if args.cgd_rules == "original":
                    run.update(CGD_ORIGINAL)
                run.update(combo)
                run["seed"] = seed
                if preset.get("distance", False):  # the matching Lyapunov run, found by its run_key
                    key = sweep.run_key(EXPERIMENT, run)
                    run.pop("logging.save_eigenthings")
                    run.update(DISTANCE)
                    run.update({"eigenthings_run.source": sw.source, "eigenthings_run.run_key": key})
                out.append(sw.command(run))
    return out


SPEC = cli.Spec(
    experiment=EXPERIMENT, script=SCRIPT, description=__doc__, presets=PRESETS, axes=AXES, lines=lines,
    options=options, validate=validate, preset_required=True,
    axes_title="run options (one value each, written on every line)",
    seeds_help="run seeds (default: the preset's, 0 or 42)", reserved={"seed": "use --seeds"},
    grid_help="extra axis over any config key, e.g. \"optim.lr=[1e-3, 1e-2]\"; crossed with the runs",
)
build_parser, generate, main = SPEC.build_parser, SPEC.generate, SPEC.main

if __name__ == "__main__":
    sys.exit(main())
