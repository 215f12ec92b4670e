"""Write one ``experiments/expt_sgd_regimes.py`` command per line: grid sweeps over any config keys.

    python gen_commands/expt_sgd_regimes.py cmds.txt --preset tutorial
    python gen_commands/expt_sgd_regimes.py cmds.txt --set dataset=mnist_parity ptr=1024 pte=2048 \\
        arch=mlp act=gelu h=64 L=8 dynamics=sgd alpha=1 bs=64 max_wall=120 \\
        --grid dt="[2**i for i in range(-3, 1)]"
    python -m gen_commands.run cmds.txt --jobs 2          # or add --run 2 above

This is the original ``python -m grid DIR "python -m edm ..." --dt "[...]"`` workflow:
``--set`` fixes keys, every ``--grid`` axis is crossed with the others (last axis
fastest), ``--where "bs <= ptr"`` drops combinations, and ``--seeds`` are crossed last. Values are
Python literals or simple list comprehensions over ``range`` (``gen_commands.sweep.parse_value``; never ``eval``).
Without ``--seeds`` every line gets the same run seed, drawn from ``--seed``, so the
lines of a sweep differ only in the swept keys. Keys are checked against the
experiment's config scope (read with ``ast``, without importing torch), and a sweep
that gives neither or both of dt and temp is refused.

Each preset's description names its source: the original README's sweeps (key for key); the
README of the ICML 2023 paper's code (AntonioScl/SGD_learning_regimes, Sclocchi, Geiger & Wyart,
"Dissecting the effects of SGD noise in distinct regimes of deep learning"), sweep for sweep and key
for key, under the sweep names it gives; a named paper; or this project (CPU-sized checks such as ``demo``);
``--set`` and ``--grid`` override a preset's keys (``temp`` replaces a preset's ``dt``).
"""
from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

from gen_commands import cli, presets, sweep

EXPERIMENT = "sgd_regimes"  # Sacred Experiment name in experiments/expt_sgd_regimes.py
SCRIPT = "experiments/expt_sgd_regimes.py"
DEFAULT_RUNS_DIR = f"runs/{EXPERIMENT}"
EXTRA_KEYS = ("seed", sweep.RUN_KEY)  # config keys Sacred adds outside the scope
EXCLUSIVE = {"dt": ("temp",), "temp": ("dt",)}  # exactly one of each group reaches the experiment

_P_SWEEP = "[1024, 2048, 4096, 8192, 16384]"
_ICML = "the ICML 2023 code's README (SGD_learning_regimes)"  # see the module docstring
_MNAS = dict(arch="mnas", act="relu", h=64, alpha=32768.0, pte=32768, loss="hinge", dynamics="sgd", bs=16,
             ckpt_grad_stats=128)
_BSTAR = dict(arch="linear", alpha=1.0, dataset="depleted_sign", d=32, pte=8192, loss="hinge", dynamics="sgd",
              temp=16.0, max_wall=1800.0, dtype="f64")


# The original README's "Phase diagrams learning rate - batch size" sweeps: their fixed keys in the README's order
# (the order the lines are written in).
_README_FC = dict(dataset="mnist_parity", pte=32768, arch="mlp", act="gelu", L=5, h=128, max_wall=40000.0,
                  loss="hinge", dynamics="sgd")


def _readme_perceptron(data_chi: float) -> dict:
    return dict(arch="linear", alpha=128.0, dataset="depleted_sign", pte=32768, loss="hinge", dynamics="sgd",
                max_wall=10000.0, data_chi=data_chi, d=128, ptr=8192)


def _readme_cnn(max_wall: float) -> dict:
    return dict(dataset="cifar_animal", pte=32768, arch="mnas", act="relu", h=32, max_wall=max_wall, loss="hinge",
                dynamics="sgd", ckpt_grad_stats=128)


def _phase_grid(bs: range, dt: range) -> dict:
    """A README phase-diagram grid: 5 init seeds x bs = 2^i (i in ``bs``) x dt = 2^j (j in ``dt``)."""
    return {"seed_init": "[i for i in range(5)]", "bs": f"[2**i for i in range({bs.start}, {bs.stop})]",
            "dt": f"[2**i for i in range({dt.start}, {dt.stop})]"}


def _named(name: str, grid: dict, description: str) -> tuple:
    """A preset whose fixed keys are the experiment's named config ``name`` (read from its source), less the
    keys the preset sweeps (``tutorial`` sets dt for its single run; the preset sweeps it)."""
    return {k: v for k, v in presets.named_config(SCRIPT, name).items() if k not in grid}, grid, description


# name -> (fixed keys, grid axes as text, description)
PRESETS = {
    "tutorial": _named(
        "tutorial",
        {"dt": "[2**i for i in range(-3, 1)]"},
        "the original README, 'Tuto: sweeping over many parameters': its dt sweep (4 runs)",
    ),
    "mnist_fc5": _named(
        "mnist_fc5",
        {"seed_init": "[i for i in range(5)]", "ptr": _P_SWEEP, "temp": "[2**i for i in range(-13, 3)]"},
        f"{_ICML}, mnist-FC-5L: 5-hidden-layer ReLU MLP, h=128, parity MNIST, α=32768 (lazy), bs=16; "
        "seed_init x P x T (400 runs)",
    ),
    "cifar_fc5": (
        dict(presets.named_config(SCRIPT, "mnist_fc5"), dataset="cifar_animal"),
        {"seed_init": "[i for i in range(5)]", "ptr": _P_SWEEP, "temp": "[2**i for i in range(-13, 3)]"},
        f"{_ICML}, cifar-FC-5L: the same on CIFAR animals vs vehicles (400 runs)",
    ),
    "mnist_alpha_dt": _named(
        "mnist_alpha_dt",
        {"seed_init": "[i for i in range(9)]", "alpha": "[2.0**i for i in range(-14, 12)]",
         "dt": "[2**i for i in range(-15, 16)]"},
        f"{_ICML}, mnist-alpha_dt-FC-5L: the (α, dt) phase diagram, 5-hidden-layer GELU MLP, h=128, parity MNIST, "
        "P=1024, bs=16 (7254 runs)",
    ),
    "perceptron": _named(
        "perceptron",
        {"seed_init": "[i for i in range(5)]", "data_chi": "[3.0, 1.0, 0.0]", "d": "[16, 32, 64, 128]",
         "ptr": _P_SWEEP, "dt": "[2**i for i in range(-15, 3)]"},
        f"{_ICML}, depleted_perceptron: the lazy (α=32768) perceptron on depleted_sign, bs=2; "
        "χ x d x P x dt (5400 runs)",
    ),
    "mnist_mnas": (
        dict(_MNAS, dataset="mnist_parity", max_wall=10000.0),
        {"seed_init": "[i for i in range(5)]", "ptr": _P_SWEEP, "temp": "[2**i for i in range(-20, 1)]"},
        f"{_ICML}, mnist-MNAS: mnas CNN, h=64, parity MNIST, α=32768 (lazy), bs=16; seed_init x P x T (525 runs)",
    ),
    "cifar_mnas": (
        dict(_MNAS, dataset="cifar_animal", max_wall=8000.0),
        {"seed_init": "[i for i in range(5)]", "ptr": _P_SWEEP, "temp": "[2**i for i in range(-20, 1)]"},
        f"{_ICML}, cifar-MNAS: the same on CIFAR animals vs vehicles, max_wall 8000 s (525 runs)",
    ),
    "cifar_alpha_dt": (
        dict(arch="mnas", act="relu", h=32, dataset="cifar_animal", ptr=1024, pte=32768, loss="hinge",
             dynamics="sgd", bs=64, ckpt_grad_stats=1024, max_wall=3600.0),
        {"seed_init": "[i for i in range(4)]", "alpha": "[2.0**i for i in range(-14, 12)]",
         "dt": "[2**i for i in range(-13, 11)]"},
        f"{_ICML}, cifar-alpha_dt-MNAS: the (α, dt) phase diagram, mnas h=32, CIFAR animals, P=1024, bs=64 (2496 runs)",
    ),
    "perceptron_bs": _named(
        "perceptron_bs",
        {"data_chi": "[0.0, 1.0]", "bs": "[2**i for i in range(14)]", "dt": "[2.0**i for i in range(-6, 5)]"},
        "this project's CPU-sized cut of the original README's perceptron phase diagrams: "
        "bs 2^0..2^13 x dt, χ in {0, 1} (308 runs)",
    ),
    "bstar_chi0": (
        dict(_BSTAR, data_chi=0.0),
        {"ptr": "[128, 256, 512]", "seed": "[0, 1, 2]", "bs": "[2**i for i in range(1, 10)]"},
        "this project (issue 6), for B* ~ P^γ of Sclocchi & Wyart 2024: perceptron to zero loss at T = 16, "
        "χ = 0 (72 runs, minutes each)",
    ),
    "bstar_chi1": (
        dict(_BSTAR, data_chi=1.0),
        {"ptr": "[128, 256, 512, 1024]", "seed": "[0, 1, 2]", "bs": "[2**i for i in range(1, 11)]"},
        "this project: the same at χ = 1 (102 runs, seconds to a minute each)",
    ),
    # the original README's "Phase diagrams learning rate - batch size" sweeps, key for key
    "perceptron_chi0": (
        _readme_perceptron(data_chi=0.0), _phase_grid(bs=range(0, 14), dt=range(-5, 14)),
        "the original README, perceptron_chi0: Gaussian perceptron, bs x dt (1330 runs)",
    ),
    "perceptron_chi1": (
        _readme_perceptron(data_chi=1.0), _phase_grid(bs=range(0, 14), dt=range(-10, 13)),
        "the original README, perceptron_chi1: depleted perceptron χ = 1, bs x dt (1610 runs)",
    ),
    "fc_small_margin": (
        dict(_README_FC, alpha=32768.0, ptr=32768, ckpt_grad_stats=128), _phase_grid(bs=range(11), dt=range(-11, 12)),
        "the original README, FC_small_margin: 5-layer GELU MLP on parity MNIST, α = 32768 (1265 runs)",
    ),
    "fc_margin_one": (
        dict(_README_FC, ckpt_grad_stats=128, alpha=1.0, ptr=16384), _phase_grid(bs=range(0, 13), dt=range(-5, 8)),
        "the original README, FC_margin_one: the same at α = 1, ptr 16384 (845 runs)",
    ),
    "cnn_small_margin": (
        dict(_readme_cnn(max_wall=80000.0), alpha=32768.0, ptr=16384), _phase_grid(bs=range(11), dt=range(-6, 11)),
        "the original README, CNN_small_margin: mnas on CIFAR animals, α = 32768 (935 runs)",
    ),
    "cnn_margin_one": (
        dict(_readme_cnn(max_wall=160000.0), alpha=1.0, ptr=16384), _phase_grid(bs=range(12), dt=range(-7, 10)),
        "the original README, CNN_margin_one: the same at α = 1 (1020 runs)",
    ),
    "demo": (
        dict(arch="linear", alpha=1.0, dataset="depleted_sign", d=32, data_chi=1.0, pte=8192, loss="hinge",
             dynamics="sgd", temp=16.0, max_wall=300.0, dtype="f64"),
        {"ptr": "[256, 1024]", "bs": "[2, 8, 32, 128]"},
        "this project: CPU-sized B* check, perceptron, χ = 1, T = 16, to zero loss (8 runs, seconds to a minute each)",
    ),
}


# Presets whose grids cross bs with ptr keep only the valid lines.
PRESET_WHERE = {"bstar_chi0": "bs <= ptr", "bstar_chi1": "bs <= ptr"}


def config_keys(script: str | Path | None = None) -> set[str]:
    """Top-level names assigned in the experiment's ``@ex.config`` scope, plus seed and run_key.

    The script is parsed, not imported, so the generator never loads torch.
    """
    path = Path(script) if script else Path(__file__).resolve().parents[1] / SCRIPT
    tree = ast.parse(path.read_text())
    keys: set[str] = set(EXTRA_KEYS)
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and any(
                isinstance(dec, ast.Attribute) and dec.attr == "config" for dec in node.decorator_list):
            for stmt in ast.walk(node):
                if isinstance(stmt, ast.Assign):
                    keys.update(t.id for t in stmt.targets if isinstance(t, ast.Name))
    return keys


def _presets_help() -> str:
    return "presets:\n" + "\n".join(f"  {name:15s} {desc}" for name, (_, _, desc) in PRESETS.items())


def options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                   help="fixed config values, e.g. arch=mlp alpha=1 \"act='gelu'\"")
    p.add_argument("--where", metavar="EXPR", help="keep only lines where EXPR holds, e.g. \"bs <= ptr\" "
                   "(comparisons of keys and numbers joined by 'and'; presets over bs and ptr set it)")
    p.add_argument("--seed", type=int, default=0, help="seed of the generator's RNG (default 0)")
    p.add_argument("--run", type=int, metavar="JOBS",
                   help="then run the file with gen_commands.run, JOBS lines at a time")


def _parse_set(specs: list[str]) -> dict:
    fixed = {}
    for spec in specs:
        key, sep, text = spec.partition("=")
        key = key.strip()
        if not sep or not sweep.KEY_RE.match(key):
            raise ValueError(f"--set expects key=value with a config key; got {spec!r}")
        try:
            value = sweep.parse_value(text)
        except ValueError:
            value = text  # a bare word such as arch=mlp, as Sacred reads it
        fixed[key] = sweep.canonical(value)
    return fixed


_COMPARE = {ast.Lt: lambda a, b: a < b, ast.LtE: lambda a, b: a <= b, ast.Gt: lambda a, b: a > b,
            ast.GtE: lambda a, b: a >= b, ast.Eq: lambda a, b: a == b, ast.NotEq: lambda a, b: a != b}


def where_filter(expr: str):
    """A predicate on a line's overrides from e.g. ``"bs <= ptr and bs < 512"``; ValueError otherwise."""
    try:
        tree = ast.parse(expr.strip(), mode="eval").body
    except SyntaxError as err:
        raise ValueError(f"--where {expr!r}: {err.msg}") from None

    def value(node, line):
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value
        if isinstance(node, ast.Name):
            if node.id not in line:
                raise ValueError(f"--where {expr!r}: {node.id!r} is not a key of the sweep's lines")
            return line[node.id]
        raise ValueError(f"--where {expr!r}: only keys and numbers can be compared")

    def holds(node, line):
        if isinstance(node, ast.BoolOp) and isinstance(node.op, ast.And):
            return all(holds(v, line) for v in node.values)
        if isinstance(node, ast.Compare) and all(type(op) in _COMPARE for op in node.ops):
            left = value(node.left, line)
            for op, comp in zip(node.ops, node.comparators):
                right = value(comp, line)
                if not _COMPARE[type(op)](left, right):
                    return False
                left = right
            return True
        raise ValueError(f"--where {expr!r}: expected comparisons joined by 'and'")

    return lambda line: holds(tree, line)


def lines(sw: cli.Sweep) -> list[str]:
    """The preset's and --set/--grid keys merged, the grid crossed and filtered by --where, then the seeds."""
    args = sw.args
    fixed, grid = {}, {}
    if args.preset:
        preset_fixed, preset_grid, _ = PRESETS[args.preset]
        fixed.update(preset_fixed)
        grid.update(sweep.parse_grid(f"{k}={v}" for k, v in preset_grid.items()))
    user_fixed, user_grid = _parse_set(args.set), sw.grid
    for key in (*user_fixed, *user_grid):
        # a user key replaces the preset's value or axis; dt and temp spell one step, so either replaces both
        for replaced in {key, *EXCLUSIVE.get(key, ())}:
            fixed.pop(replaced, None)
            grid.pop(replaced, None)
    fixed.update(user_fixed)
    grid.update(user_grid)
    known = config_keys()
    unknown = sorted((set(fixed) | set(grid)) - known)
    if unknown:
        raise ValueError(f"unknown config keys {unknown}; known: {sorted(known - set(EXTRA_KEYS))}")
    if sweep.RUN_KEY in fixed or sweep.RUN_KEY in grid:
        raise ValueError("run_key is computed by the generator; do not set it")
    given = [k for k in ("dt", "temp") if fixed.get(k) is not None or k in grid]
    if len(given) != 1:
        raise ValueError(f"give exactly one of dt and temp (by --set or --grid); got {given or 'neither'}")
    if args.seeds is not None and ("seed" in user_fixed or "seed" in user_grid):
        raise ValueError("give the run seeds once: --seeds or --set/--grid seed=..., not both")
    if args.seeds is not None and ("seed" in fixed or "seed" in grid):  # --seeds replaces a preset's seeds
        fixed.pop("seed", None)
        grid.pop("seed", None)
    if "seed" in fixed or "seed" in grid:
        seeds = [None]
    else:
        seeds = args.seeds if args.seeds is not None else [sweep.sample_seed(sweep.make_rng(args.seed))]
    expt_name = sw.expt_name
    where = args.where if args.where is not None else (PRESET_WHERE.get(args.preset) if args.preset else None)
    keep = where_filter(where) if where else (lambda line: True)
    out = []
    for combo in sweep.cartesian(grid):
        overrides = {} if expt_name is None else {"expt_name": expt_name}
        overrides.update(fixed)
        overrides.update(combo)
        if not keep(overrides):
            continue
        for seed in seeds:
            run = overrides if seed is None else {**overrides, "seed": seed}
            out.append(sw.command(run))
    return out


def _check_run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.run is not None and args.run < 1:
        parser.error(f"--run expects a number of jobs >= 1; got {args.run}")


def _run_after(args: argparse.Namespace, path) -> int:
    if args.run is None:
        return 0
    from gen_commands import run as runner

    return runner.main([str(path), "--jobs", str(args.run)])


SPEC = cli.Spec(
    experiment=EXPERIMENT, script=SCRIPT, description=__doc__, presets=PRESETS, lines=lines,
    resolve=lambda spec, args: None, options=options, line_options=(), epilog=_presets_help(),
    axes_title="sweep", seeds_help="run seeds crossed with the grid (default: one drawn from --seed)",
    grid_help="a swept key, e.g. dt=\"[2**i for i in range(-3, 1)]\"; repeat to cross several",
    check_args=_check_run, after=_run_after,
)
build_parser, generate, main = SPEC.build_parser, SPEC.generate, SPEC.main

if __name__ == "__main__":
    sys.exit(main())
