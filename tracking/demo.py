"""``make demo``: a small real sweep of expt_dln, end to end.

1. ``gen_commands/expt_dln.py --preset demo`` writes the sweep (random rank-reduced
   DLNs, 4 chains each), the same generator that serves full sweeps;
2. ``gen_commands.run`` runs the lines two at a time, recording the runs in
   ``runs/dln_lambdahat`` (finished lines are skipped, so a second demo is quick);
3. the runs are loaded back with ``tracking.load``, tabulated (λ, λ̂ ± std,
   relative error) and drawn with ``tracking.figures`` into ``figures/``.

    python -m tracking.demo [--runs-dir runs] [--figures-dir figures] [--jobs 2]
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import pandas as pd

from gen_commands import expt_dln as gen_dln
from gen_commands import run as runner
from tracking.figures import plot_lambdahat_vs_true, plot_relative_error_hist, save_figure
from tracking.load import load_runs

EXPT_NAME = "demo"


def _table(df: pd.DataFrame) -> pd.DataFrame:
    table = pd.DataFrame({
        "input_dim": df["input_dim"],
        "layer_widths": df["layer_widths"].map(lambda w: "x".join(map(str, w))),
        "model_dim": df["model_dim"],
        "rank": df["true_rank"],
        "lambda": df["true_lambda"],
        "lambdahat": df["lambdahat"].map(lambda v: f"{v:.2f}"),
        "std": df["lambdahat_std"].map(lambda v: f"{v:.2f}"),
        "rel_err": df["relative_error"].map(lambda v: f"{v:+.1%}"),
    })
    return table.sort_values("model_dim").reset_index(drop=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs-dir", default="runs", help="file store root (default ./runs)")
    parser.add_argument("--figures-dir", default="figures", help="where the figures go (default ./figures)")
    parser.add_argument("--jobs", type=int, default=2, help="runs at once (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    args = parser.parse_args(argv)

    store = os.path.join(args.runs_dir, gen_dln.EXPERIMENT)
    commands = Path(args.runs_dir) / "demo_commands.txt"
    commands.parent.mkdir(parents=True, exist_ok=True)
    gen_dln.main([str(commands), "--preset", "demo", "--force", "--seed", str(args.seed),
                  "--expt-name", EXPT_NAME, "-F", store])
    status = runner.main([str(commands), "--jobs", str(args.jobs)])
    if status != 0:
        print(f"demo: some runs failed (see {commands}.failures*)", file=sys.stderr)

    df = load_runs(store, experiment=gen_dln.EXPERIMENT, status="COMPLETED", filters={"expt_name": EXPT_NAME})
    if df.empty:
        print("demo: no completed runs to show", file=sys.stderr)
        return 1
    with pd.option_context("display.width", 120, "display.max_columns", 20):
        print(_table(df).to_string())
    err = df["relative_error"].abs()
    print(f"\n{len(df)} runs: median |λ̂ − λ|/λ = {err.median():.1%}, max = {err.max():.1%}")
    for name, fig in [("dln_lambdahat_vs_lambda.png", plot_lambdahat_vs_true(df)),
                      ("dln_relative_error.png", plot_relative_error_hist(df))]:
        print("wrote", save_figure(fig, Path(args.figures_dir) / name))
    return status


if __name__ == "__main__":
    sys.exit(main())
