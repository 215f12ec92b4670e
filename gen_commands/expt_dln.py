"""Write one ``experiments/expt_dln.py`` command per line: random DLNs × settings × seeds.

    python gen_commands/expt_dln.py cmds.txt --preset paper1 --num-runs 50
    python gen_commands/expt_dln.py cmds.txt --widths 5 20 --layers 2 4 --n 10000 \\
        --epsilon 1e-6 5e-7 --grid "sgld_config.gamma=[1.0, 10.0]" -F runs/dln_lambdahat

For each of ``--num-runs`` random architectures (number of layers, each width and
the input dim drawn uniformly from their ranges LO..HI) the generator writes one
line per combination of the list-valued options (``--n``, ``--epsilon``, ...) and
of the ``--grid`` axes, and per seed. Without ``--seeds`` each architecture gets
one seed drawn from the generator's RNG, shared by its combinations, so they
see the same true parameter w*. ``--seed`` makes the whole file reproducible.

Ranges are half-open, [LO, HI), by default: the original generator drew with
``np.random.randint(LO, HI)``, so its sweep labelled "layers 2-5" has 2 to 4 layers;
``--range-upper inclusive`` includes HI.

Presets reproduce the paper's six DLN sweeps (docs/notes/llc.md#published-results: all rand_rank,
SGLD batch 500, trained first) and a small ``demo``; explicit options override
a preset's values.
"""
from __future__ import annotations

import argparse
import sys

from gen_commands import cli, sweep

EXPERIMENT = "dln_lambdahat"  # Sacred Experiment name in experiments/expt_dln.py
SCRIPT = "experiments/expt_dln.py"
DEFAULT_RUNS_DIR = f"runs/{EXPERIMENT}"
TRUE_PARAM_METHODS = ("random", "zero", "rand_rank", "rand_rank_sv")
OPTIMS = ("sgd", "adam")

# Defaults when neither a preset nor an option sets a value. Lists are crossed.
BASE = dict(
    num_runs=10,
    widths=(5, 50), layers=(2, 5), input_dim=None,  # input_dim None -> the widths range
    range_upper="exclusive",  # exclusive: [LO, HI) as the original's np.random.randint; inclusive: [LO, HI]
    n=[10000], epsilon=[1e-5], gamma=[1.0], steps=[5000], burnin=None, batch=[100], num_chains=[4],
    method=["rand_rank"], prop_rank_reduce=[0.5],
    training=False, train_steps=[5000], train_lr=[0.01], train_batch=[200], train_optim=["sgd"],
)


def _paper(widths, layers, n, eps, steps, num_runs=100):
    # docs/notes/llc.md#published-results: rand_rank, batch 500, trained first. γ = 1, prop_rank_reduce 0.5
    # and the training settings follow the original README's example command.
    return dict(
        num_runs=num_runs, widths=widths, layers=layers, n=[n], epsilon=[eps], gamma=[1.0],
        steps=[steps], batch=[500], num_chains=[4], method=["rand_rank"], prop_rank_reduce=[0.5],
        training=True, train_steps=[50000], train_lr=[0.01], train_batch=[500], train_optim=["sgd"],
    )


PRESETS = {
    "paper1": _paper((5, 50), (2, 5), 100_000, 5e-7, 10_000),
    "paper2": _paper((5, 100), (2, 10), 100_000, 5e-7, 10_000),
    "paper3": _paper((50, 500), (2, 10), 1_000_000, 1e-7, 50_000),
    "paper4": _paper((100, 1000), (2, 20), 1_000_000, 2e-8, 50_000),
    "paper5": _paper((500, 2000), (2, 20), 1_000_000, 2e-8, 50_000),
    "paper6": _paper((500, 3000), (2, 40), 1_000_000, 2e-8, 50_000),
    # 8 runs of 10-20 s of CPU each (2 at a time: 1-2 minutes on 2 cores), large enough for
    # λ̂ within ~10% of λ. ε and steps were measured on the 8 demo DLNs (generator seed 0),
    # median / max |λ̂ - λ|/λ: ε = 2e-5 with 2000 steps (1000 burn-in) 10% / 46%, with 4000
    # (2000) 11% / 64%, so λ̂ grows with run length at that ε (the chains drift); ε = 1e-5,
    # 4000 (2000): 2.7% / 19.6%; ε = 5e-6, 6000 (3000): 1.8% / 8.5%. The last, on the 8 DLNs
    # of generator seed 1: 5.0% / 12.0%.
    "demo": dict(
        num_runs=8, widths=(5, 21), layers=(2, 5), input_dim=(5, 21),  # [LO, HI): widths 5-20, 2-4 layers
        n=[10000], epsilon=[5e-6], gamma=[1.0], steps=[6000], burnin=[3000], batch=[500], num_chains=[4],
        method=["rand_rank"], prop_rank_reduce=[0.5], training=False,
    ),
}

# The settings axes, in the order keys are written on each line (do_training and, with training, the
# training axes follow).
SETTING_AXES = (
    cli.Axis("n", "num_training_data", int, "num_training_data (default 10000)", cli.at_least(2)),
    cli.Axis("method", "true_param_config.method",
             help=f"true_param_config.method, one of {', '.join(TRUE_PARAM_METHODS)} (default rand_rank)",
             choices=TRUE_PARAM_METHODS, metavar="METHOD"),
    cli.Axis("prop_rank_reduce", "true_param_config.prop_rank_reduce", float,
             "true_param_config.prop_rank_reduce in [0, 1] (default 0.5)",
             cli.Check(lambda v: 0 <= v <= 1, "in [0, 1]")),
    cli.Axis("epsilon", "sgld_config.epsilon", float, "sgld_config.epsilon, SGLD step size (default 1e-5)",
             cli.above(0)),
    cli.Axis("gamma", "sgld_config.gamma", float, "sgld_config.gamma, localisation (default 1.0)", cli.at_least(0)),
    cli.Axis("steps", "sgld_config.num_steps", int, "sgld_config.num_steps (default 5000)", cli.at_least(1)),
    cli.Axis("burnin", "sgld_config.num_burnin_steps", int,
             "sgld_config.num_burnin_steps, < steps (default: not written, i.e. 90%% of steps)"),
    cli.Axis("batch", "sgld_config.batch_size", int, "sgld_config.batch_size (default 100)", cli.at_least(1)),
    cli.Axis("num_chains", "sgld_config.num_chains", int, "sgld_config.num_chains (default 4)", cli.at_least(1)),
)
TRAINING_AXES = (
    cli.Axis("train_optim", "training_config.optim", help="training_config.optim, sgd or adam (default sgd)",
             choices=OPTIMS, metavar="OPTIM"),
    cli.Axis("train_lr", "training_config.learning_rate", float, "training_config.learning_rate (default 0.01)",
             cli.above(0)),
    cli.Axis("train_batch", "training_config.batch_size", int, "training_config.batch_size (default 200)",
             cli.at_least(1)),
    cli.Axis("train_steps", "training_config.num_steps", int, "training_config.num_steps (default 5000)",
             cli.at_least(1)),
)


def _presets_help() -> str:
    rows = ["presets (widths, layers, n, epsilon, SGLD steps, batch, training):"]
    for name, pr in PRESETS.items():
        rows.append(f"  {name:7s} widths {pr['widths'][0]}-{pr['widths'][1]}, "
                    f"layers {pr['layers'][0]}-{pr['layers'][1]}, "
                    f"n {pr['n'][0]}, eps {pr['epsilon'][0]:g}, steps {pr['steps'][0]}, batch {pr['batch'][0]}, "
                    f"training {'on' if pr['training'] else 'off'}, {pr['num_runs']} runs")
    return "\n".join(rows)


def options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--num-runs", type=int, help=f"random architectures to draw (default {BASE['num_runs']})")
    p.add_argument("--seed", type=int, default=0, help="seed of the generator's RNG (default 0)")
    g = p.add_argument_group("architecture (ranges LO HI, sampled uniformly; "
                             "HI excluded unless --range-upper inclusive)")
    g.add_argument("--widths", type=int, nargs=2, metavar=("LO", "HI"),
                   help="width of every layer, output included (default 5 50)")
    g.add_argument("--layers", type=int, nargs=2, metavar=("LO", "HI"),
                   help="number of layers = len(layer_widths) (default 2 5)")
    g.add_argument("--input-dim", type=int, nargs=2, metavar=("LO", "HI"),
                   help="input dim H_0 (default: the --widths range)")
    g.add_argument("--range-upper", choices=("exclusive", "inclusive"),
                   help="exclusive (default): [LO, HI), as the original generator's np.random.randint; "
                        "inclusive: [LO, HI]")
    p.add_argument("--training", action=argparse.BooleanOptionalAction,
                   help="do_training: also train and estimate λ̂ at the trained parameter (default off)")


def validate(s: dict, args) -> None:
    """The architecture ranges (closed: [LO, HI - 1] when HI is excluded) and the cross-option bounds."""
    if s["num_runs"] < 1:
        raise ValueError(f"--num-runs must be >= 1; got {s['num_runs']}")
    s["input_dim"] = s["input_dim"] or s["widths"]
    for opt, key in (("--widths", "widths"), ("--layers", "layers"), ("--input-dim", "input_dim")):
        lo, hi = s[key]
        sweep.check_range(opt, lo, hi, minimum=1)
        if s["range_upper"] == "exclusive":
            if hi <= lo:
                raise ValueError(f"{opt} expects LO < HI with --range-upper exclusive (HI is excluded); got {lo} {hi}")
            s[key] = (lo, hi - 1)  # the closed range actually drawn
    if s["burnin"] is not None and (min(s["burnin"]) < 0 or max(s["burnin"]) >= min(s["steps"])):
        raise ValueError(f"--burnin values must be in [0, min(--steps)={min(s['steps'])}); got {s['burnin']}")
    for opt in ("batch",) + (("train_batch",) if s["training"] else ()):
        if max(s[opt]) > min(s["n"]):
            raise ValueError(f"--{opt.replace('_', '-')} must be <= every --n ({min(s['n'])}); got {max(s[opt])}")


def lines(sw: cli.Sweep) -> list[str]:
    """Per drawn architecture, the settings (and --grid) crossed, then the seeds."""
    s, grid, args = sw.settings, sw.grid, sw.args
    rng = sweep.make_rng(args.seed)
    axes = sw.axes(SETTING_AXES)
    axes["do_training"] = [bool(s["training"])]
    if s["training"]:
        axes.update(sw.axes(TRAINING_AXES))
    axes.update(grid)  # a --grid axis replaces the option's values, keeping the key's position
    out = []
    for _ in range(s["num_runs"]):
        num_layers = sweep.sample_int(rng, *s["layers"])
        arch = {
            "input_dim": sweep.sample_int(rng, *s["input_dim"]),
            "layer_widths": sweep.sample_ints(rng, *s["widths"], size=num_layers),
        }
        seeds = args.seeds if args.seeds is not None else [sweep.sample_seed(rng)]
        for combo in sweep.cartesian(axes):
            overrides = {} if sw.expt_name is None else {"expt_name": sw.expt_name}
            overrides.update({k: v for k, v in arch.items() if k not in grid})
            if args.device is not None:
                overrides["device"] = args.device
            overrides.update(combo)
            for seed in seeds if "seed" not in grid else [None]:
                out.append(sw.command(overrides if seed is None else {**overrides, "seed": seed}))
    return out


SPEC = cli.Spec(
    experiment=EXPERIMENT, script=SCRIPT, description=__doc__, presets=PRESETS, lines=lines,
    axes=SETTING_AXES + TRAINING_AXES, base=BASE, options=options, validate=validate, epilog=_presets_help(),
    axes_title="settings (each a list of values; all lists are crossed)",
    seeds_help="run seeds for every architecture (default: one drawn per architecture)",
    grid_help="extra axis over any config key, e.g. \"sgld_config.gamma=[1, 10]\" or "
              "\"sgld_config.epsilon=[2**-i * 1e-6 for i in range(3)]\"; replaces that key's value",
)
build_parser, generate, main = SPEC.build_parser, SPEC.generate, SPEC.main

if __name__ == "__main__":
    sys.exit(main())
