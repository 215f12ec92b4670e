"""Figures for the LLC-over-training, saddle-to-saddle, rescaling and MALA-vs-SGLD experiments.

Like ``tracking.figures``: plain ``matplotlib.figure.Figure`` objects built without
pyplot, drawn from the tables of ``tracking.load``:

* :func:`plot_llc_curves` (``llc_curve``): λ̂ and the test loss against the SGD step,
  one curve per value of a hyperparameter (mean over seeds, band = ± std);
* :func:`plot_saddle_dynamics` (``dln_saddle_dynamics``): the training loss, λ̂ and
  Aoyagi's λ at the current rank against t, the rank changes marked;
* :func:`plot_rescaling` (``rescaling_invariance``): λ̂ against α per sampler;
* :func:`plot_mala_vs_sgld` (``mala_vs_sgld``): λ̂ and wall time against n per sampler.

Metrics come from ``load_metrics`` (long form: run_id, name, step, value); per-run
lists (α, n, λ̂ per α) from ``load_runs`` result columns.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from tracking.figures import save_figure

__all__ = [
    "checkpoints_frame", "run_keys", "metrics_wide", "llc_curve_table", "plot_llc_curve", "plot_llc_curves",
    "plot_saddle_dynamics", "rescaling_table", "plot_rescaling", "mala_table", "plot_mala_vs_sgld", "save_figure",
]


def run_keys(df: pd.DataFrame) -> pd.Series:
    """A run's identity across stores: '<source>#<run_id>' (run ids alone repeat between file stores)."""
    if "source" in df.columns:
        return df["source"].astype(str) + "#" + df["run_id"].astype(str)
    return df["run_id"].astype(str)


def metrics_wide(metrics: pd.DataFrame, names: dict[str, str]) -> pd.DataFrame:
    """Long metrics -> one row per (run, step) with a column per metric.

    Args:
        metrics: ``load_metrics`` output.
        names: metric name -> column name, e.g. ``{'llc/lambdahat': 'lambdahat'}``; a
            metric a run did not log is NaN.

    Returns:
        DataFrame with run (see :func:`run_keys`), run_id, t (the step) and the named
        columns, sorted by run and t.
    """
    missing = {"run_id", "name", "step", "value"} - set(metrics.columns)
    if missing:
        raise ValueError(f"metrics lacks columns {sorted(missing)}; pass load_metrics output")
    part = metrics[metrics["name"].isin(list(names))].assign(run=lambda d: run_keys(d))
    wide = part.pivot_table(index=["run", "run_id", "step"], columns="name", values="value", aggfunc="last")
    wide = wide.reindex(columns=list(names)).rename(columns=names).reset_index().rename(columns={"step": "t"})
    wide.columns.name = None
    return wide.sort_values(["run", "t"]).reset_index(drop=True)


def _axes(ax: Axes | None, figsize) -> Axes:
    return Figure(figsize=figsize, layout="constrained").subplots() if ax is None else ax


# --------------------------------------------------------------------- llc_curve

def checkpoints_frame(checkpoints: list[dict]) -> pd.DataFrame:
    """``info['checkpoints']`` of one llc_curve run as a DataFrame (failed estimates: NaN λ̂)."""
    df = pd.DataFrame(checkpoints)
    for column in ("lambdahat", "lambdahat_std"):
        if column not in df:
            df[column] = np.nan
    return df


def plot_llc_curve(checkpoints: pd.DataFrame, ax: Axes | None = None, title: str | None = None) -> Figure:
    """One run: λ̂ (± std across chains) against t, and the train and test losses on a twin axis.

    Args:
        checkpoints: columns t, lambdahat, lambdahat_std, train_loss, test_loss (e.g.
            :func:`checkpoints_frame`).
        ax: axes for λ̂; None -> a new 6x3.5 in figure.
        title: axes title.
    """
    ax = _axes(ax, (6, 3.5))
    df = checkpoints.sort_values("t")
    ax.errorbar(df["t"], df["lambdahat"], yerr=df["lambdahat_std"].fillna(0), color="C0", marker="o", ms=3,
                lw=1, label="λ̂")
    ax.set(xlabel="SGD step t", ylabel="λ̂")
    loss_ax = ax.twinx()
    for column, color in (("train_loss", "C1"), ("test_loss", "C2")):
        if column in df:
            loss_ax.plot(df["t"], df[column], color=color, lw=1, label=column.replace("_", " "))
    loss_ax.set_ylabel("loss")
    handles = ax.get_legend_handles_labels()[0] + loss_ax.get_legend_handles_labels()[0]
    ax.legend(handles=handles, loc="best", fontsize="small")
    if title is not None:
        ax.set_title(title)
    return ax.figure


def llc_curve_table(runs: pd.DataFrame, metrics: pd.DataFrame, hue: str) -> pd.DataFrame:
    """λ̂ and test loss per (run, t), with the run's ``hue`` value (None/NaN shown as 'None')."""
    if hue not in runs.columns:
        raise ValueError(f"hue column {hue!r} is not in runs; e.g. {[c for c in runs.columns if 'config' in c][:8]}")
    wide = metrics_wide(metrics, {"llc/lambdahat": "lambdahat", "test/loss": "test_loss"})
    labels = pd.Series(runs[hue].to_numpy(), index=run_keys(runs)).map(
        lambda v: "None" if v is None or (isinstance(v, float) and np.isnan(v)) else v)
    return wide.assign(hue=wide["run"].map(labels)).dropna(subset=["hue"])


def plot_llc_curves(runs: pd.DataFrame, metrics: pd.DataFrame, hue: str, title: str | None = None) -> Figure:
    """λ̂ and test loss against t, one curve per value of ``hue`` (mean over its runs, band ± std).

    Args:
        runs: ``load_runs(..., experiment='llc_curve')``.
        metrics: ``load_metrics`` of the same runs, with 'llc/lambdahat' and 'test/loss'.
        hue: config column whose values get one curve each, e.g.
            ``'training_config.learning_rate'``.
        title: figure title.

    Returns:
        A figure with two axes (λ̂, test loss); each line is labelled '<hue>=<value>'.
    """
    table = llc_curve_table(runs, metrics, hue)
    if table.empty:
        raise ValueError("no llc/lambdahat or test/loss metrics for these runs")
    fig = Figure(figsize=(10, 3.8), layout="constrained")
    ax_l, ax_t = fig.subplots(1, 2)
    values = sorted(table["hue"].unique(), key=lambda v: (isinstance(v, str), v))
    for i, value in enumerate(values):
        stats = table[table["hue"] == value].groupby("t")[["lambdahat", "test_loss"]].agg(["mean", "std"])
        for ax, column in ((ax_l, "lambdahat"), (ax_t, "test_loss")):
            mean, std = stats[(column, "mean")], stats[(column, "std")].fillna(0)
            ax.plot(stats.index, mean, color=f"C{i % 10}", lw=1.2, label=f"{hue.split('.')[-1]}={value}")
            ax.fill_between(stats.index, mean - std, mean + std, color=f"C{i % 10}", alpha=0.2, lw=0)
    ax_l.set(xlabel="SGD step t", ylabel="λ̂")
    ax_t.set(xlabel="SGD step t", ylabel="test loss")
    ax_l.legend(fontsize="small")
    if title is not None:
        fig.suptitle(title)
    return fig


# ------------------------------------------------------------- saddle dynamics

SADDLE_METRICS = {"train/loss": "train_loss", "llc/lambdahat": "lambdahat", "llc/lambdahat_std": "lambdahat_std",
                  "aoyagi/lambda": "true_lambda", "dln/rank": "rank"}


def plot_saddle_dynamics(metrics: pd.DataFrame, run=None, title: str | None = None) -> Figure:
    """One saddle-to-saddle run: loss (log) on top; λ̂ and Aoyagi's λ below; rank changes marked.

    Args:
        metrics: ``load_metrics`` of dln_saddle_dynamics runs.
        run: the run to draw, its key '<source>#<run_id>' (:func:`run_keys`) or its run_id;
            None -> the only run in ``metrics``.
        title: figure title.

    Returns:
        A figure with two axes sharing t. Each rank change gets a dotted vertical line
        (the first one labelled 'rank change') and a text 'r=<rank>' on the loss axes.
    """
    wide = metrics_wide(metrics, SADDLE_METRICS)
    keys = wide["run"].unique()
    if run is None:
        if len(keys) != 1:
            raise ValueError(f"metrics hold runs {list(keys)}; pass run")
        run = keys[0]
    df = wide[(wide["run"] == str(run)) | (wide["run_id"].astype(str) == str(run))]
    if df["run"].nunique() > 1:
        raise ValueError(f"run_id {run!r} is in several stores {list(df['run'].unique())}; pass '<source>#<run_id>'")
    if df.empty:
        raise ValueError(f"no saddle metrics for run {run!r}")
    fig = Figure(figsize=(7, 5), layout="constrained")
    ax_loss, ax_l = fig.subplots(2, 1, sharex=True)
    ax_loss.plot(df["t"], df["train_loss"], color="C1", lw=1.2, label="train loss")
    ax_loss.set(yscale="log", ylabel="training loss")
    ax_l.errorbar(df["t"], df["lambdahat"], yerr=df["lambdahat_std"].fillna(0), fmt="o", ms=2.5, color="C0",
                  ecolor="0.7", elinewidth=0.6, label="λ̂ (realisable targets)")
    ax_l.step(df["t"], df["true_lambda"], where="post", color="k", lw=1.2, label="Aoyagi λ at current rank")
    ax_l.set(xlabel="SGD step t", ylabel="learning coefficient")
    rank = df["rank"].to_numpy()
    changes = [i for i in range(len(rank)) if np.isfinite(rank[i]) and (i == 0 or rank[i] != rank[i - 1])]
    for i in changes:
        t = df["t"].iloc[i]
        for ax in (ax_loss, ax_l):
            ax.axvline(t, color="0.5", ls=":", lw=0.8, label="rank change" if ax is ax_l and i == changes[0] else None)
        ax_loss.annotate(f"r={int(rank[i])}", (t, 1), xycoords=("data", "axes fraction"), xytext=(2, -10),
                         textcoords="offset points", fontsize="small", va="top")
    ax_loss.legend(fontsize="small", loc="upper right")
    ax_l.legend(fontsize="small", loc="lower right")
    if title is not None:
        fig.suptitle(title)
    return fig


# ------------------------------------------------------------------ rescaling

def _explode(runs: pd.DataFrame, list_columns: dict[str, str], keep: list[str]) -> pd.DataFrame:
    """Per-run list columns (equal lengths) -> one row per list entry, with ``keep`` columns repeated."""
    rows = []
    for _, run in runs.iterrows():
        lists = {new: run[col] for col, new in list_columns.items() if isinstance(run.get(col), (list, tuple))}
        if not lists:
            continue
        length = len(next(iter(lists.values())))
        for i in range(length):
            rows.append({**{k: run[k] for k in keep}, **{new: values[i] for new, values in lists.items()}})
    return pd.DataFrame(rows)


def _per_sampler(runs: pd.DataFrame, samplers, columns: dict, keep: list) -> list[pd.DataFrame]:
    """For each sampler whose ``<sampler>.lambdahat`` column exists, :func:`_explode` of the runs that hold its
    list of estimates (``columns``: result column, ``{sampler}`` filled in -> new name), tagged ``sampler``;
    samplers with no rows are left out."""
    parts = []
    for sampler in samplers:
        if f"{sampler}.lambdahat" not in runs:
            continue
        has = runs[runs[f"{sampler}.lambdahat"].map(lambda v: isinstance(v, (list, tuple)))]
        named = {col.format(sampler=sampler): new for col, new in columns.items()}
        part = _explode(has.assign(run=run_keys(has)), named, keep)
        if not part.empty:
            parts.append(part.assign(sampler=sampler))
    return parts

def rescaling_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (run, sampler, α).

    Columns: run, run_id, layer_sizes, alpha, sampler, lambdahat (NaN if failed), lambdahat_std, status.
    """
    columns = {"alphas": "alpha", "{sampler}.lambdahat": "lambdahat", "{sampler}.lambdahat_std": "lambdahat_std",
               "{sampler}.status": "status"}
    parts = _per_sampler(runs, ("psgld_fixed", "psgld", "sgld", "sgnht", "sghmc"), columns,
                         ["run", "run_id", "layer_sizes"])
    if not parts:
        raise ValueError("runs hold no rescaling_invariance results (columns 'alphas', 'psgld.lambdahat', ...)")
    table = pd.concat(parts, ignore_index=True)
    table["lambdahat"] = pd.to_numeric(table["lambdahat"], errors="coerce")
    table["lambdahat_std"] = pd.to_numeric(table["lambdahat_std"], errors="coerce")
    return table


def plot_rescaling(runs: pd.DataFrame, ax: Axes | None = None, title: str | None = None) -> Figure:
    """λ̂ against α (log axis), one line per (run, sampler); failed estimates marked at the bottom.

    Args:
        runs: ``load_runs(..., experiment='rescaling_invariance')``.
        ax: axes; None -> a new 6x4 in figure.
        title: axes title.

    Returns:
        The figure. Lines are labelled '<sampler> <layer_sizes>'; failed (diverged)
        estimates are 'x' markers labelled '<sampler> diverged'.
    """
    table = rescaling_table(runs)
    ax = _axes(ax, (6, 4))
    styles = {"psgld_fixed": dict(marker="o", ls="-"), "psgld": dict(marker="^", ls=":"),
              "sgld": dict(marker="s", ls="--"), "sgnht": dict(marker="v", ls="-."), "sghmc": dict(marker="D", ls="-.")}
    for i, ((_, sampler), part) in enumerate(table.groupby(["run", "sampler"], sort=True)):
        ok = part[part["lambdahat"].notna()]
        ax.errorbar(ok["alpha"], ok["lambdahat"], yerr=ok["lambdahat_std"].fillna(0), ms=4, lw=1.2, capsize=2,
                    color=f"C{i % 10}", label=f"{sampler} {part['layer_sizes'].iloc[0]}", **styles[sampler])
        failed = part[part["lambdahat"].isna()]
        if not failed.empty:
            ax.plot(failed["alpha"], np.zeros(len(failed)), "x", color=f"C{i % 10}", ms=7, label=f"{sampler} diverged")
    ax.set_xscale("log")
    ax.set(xlabel="rescaling α (layer l × α, layer l+1 × 1/α)", ylabel="λ̂")
    ax.legend(fontsize="small")
    if title is not None:
        ax.set_title(title)
    return ax.figure


# --------------------------------------------------------------- MALA vs SGLD

def mala_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (run, sampler, n): run, run_id, n, sampler, lambdahat, lambdahat_std, time_s, true_lambda."""
    columns = {"n": "n", "{sampler}.lambdahat": "lambdahat", "{sampler}.lambdahat_std": "lambdahat_std",
               "{sampler}.time_s": "time_s"}
    parts = _per_sampler(runs, ("sgld", "mala"), columns, ["run", "run_id", "true_lambda"])
    if not parts:
        raise ValueError("runs hold no mala_vs_sgld results (columns 'n', 'sgld.lambdahat', 'mala.lambdahat', ...)")
    table = pd.concat(parts, ignore_index=True)
    for column in ("lambdahat", "lambdahat_std", "time_s", "n", "true_lambda"):
        table[column] = pd.to_numeric(table[column], errors="coerce")
    return table


def plot_mala_vs_sgld(runs: pd.DataFrame, title: str | None = None) -> Figure:
    """λ̂ against n (left) and wall time against n (right) for SGLD and MALA, log n.

    Args:
        runs: ``load_runs(..., experiment='mala_vs_sgld')``.
        title: figure title.

    Returns:
        A figure with two axes; lines are labelled 'sgld' / 'mala' (with the run id when
        there are several runs) and the exact λ is a dashed line labelled 'Aoyagi λ'.
    """
    table = mala_table(runs)
    several = table["run"].nunique() > 1
    fig = Figure(figsize=(10, 3.8), layout="constrained")
    ax_l, ax_t = fig.subplots(1, 2)
    for (run, sampler), part in table.groupby(["run", "sampler"], sort=True):
        part = part.sort_values("n")
        label = f"{sampler} ({run})" if several else sampler
        color = "C0" if sampler == "sgld" else "C3"
        ax_l.errorbar(part["n"], part["lambdahat"], yerr=part["lambdahat_std"].fillna(0), marker="o", ms=4,
                      capsize=2, color=color, label=label)
        ax_t.plot(part["n"], part["time_s"], marker="o", color=color, label=label)
    for _, part in table.groupby("run"):
        if part["true_lambda"].notna().any():
            ax_l.axhline(part["true_lambda"].iloc[0], color="k", ls="--", lw=1, label="Aoyagi λ")
            break
    ax_l.set(xscale="log", xlabel="n", ylabel="λ̂")
    ax_t.set(xscale="log", yscale="log", xlabel="n", ylabel="wall time (s)")
    ratio = (table[table["sampler"] == "mala"].groupby("n")["time_s"].mean()
             / table[table["sampler"] == "sgld"].groupby("n")["time_s"].mean()).dropna()
    for n, r in ratio.items():
        ax_t.annotate(f"{r:.1f}×", (n, table[(table["n"] == n) & (table["sampler"] == "mala")]["time_s"].mean()),
                      xytext=(3, 3), textcoords="offset points", fontsize="small")
    ax_l.legend(fontsize="small")
    ax_t.legend(fontsize="small", title="time MALA / SGLD", title_fontsize="small")
    if title is not None:
        fig.suptitle(title)
    return fig
