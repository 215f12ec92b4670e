"""Figures of ``expt_abc_params`` runs: training curves, accuracy by activation, coordinate check, IP vs width.

Like ``tracking.figures``, figures are ``matplotlib.figure.Figure`` objects built without
pyplot. Inputs are what ``tracking.load`` returns:

* ``runs``: ``load_runs(source, experiment='abc_params')``, one row per run with config
  columns (``parameterization``, ``activation``, ``L``, ``width``, ...) and result columns
  (``test_accuracy`` = mean over trials, ``test_accuracy_std``, ...);
* ``metrics``: ``load_metrics(...)``, long form (run_id, name, step, value) with per-trial
  names such as ``train/loss/trial0``;
* a coordinate-check table: ``load_info(source, run_id)['coord_check']`` of a ``coord_check`` run.
"""
from __future__ import annotations

import re

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from tracking.figures import save_figure  # noqa: F401  (re-exported for notebooks and the experiment)

_TRIAL = re.compile(r"^(?P<metric>.+)/trial(?P<trial>\d+)$")
CHANCE_ACCURACY = 0.1  # MNIST and CIFAR-10 have 10 balanced classes


def _axes(ax: Axes | None, figsize: tuple[float, float]) -> Axes:
    return Figure(figsize=figsize, layout="constrained").subplots() if ax is None else ax


def _log2_widths(ax: Axes) -> None:
    """Log2 width axis with plain tick labels (64, 128, ...)."""
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))


def _require(df: pd.DataFrame, columns, what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what} lacks columns {missing}; it has {sorted(df.columns)}")


def trial_curves(metrics: pd.DataFrame, runs: pd.DataFrame, metric: str = "train/loss",
                 hue: str = "parameterization") -> pd.DataFrame:
    """Per-step mean and std over every trial of every run, grouped by ``hue``.

    Returns:
        DataFrame (hue, step, mean, std, n): n trials at that step.

    Raises:
        ValueError: missing columns, or no ``{metric}/trial<k>`` series for the runs.
    """
    _require(metrics, ["run_id", "name", "step", "value"], "metrics")
    _require(runs, ["run_id", hue], "runs")
    parsed = metrics["name"].str.extract(_TRIAL)
    data = metrics[parsed["metric"] == metric].merge(runs[["run_id", hue]], on="run_id")
    if data.empty:
        raise ValueError(f"no '{metric}/trial<k>' metrics for these runs; "
                         f"names: {sorted(metrics['name'].unique())[:10]}")
    grouped = data.groupby([hue, "step"])["value"]
    out = pd.DataFrame({"mean": grouped.mean(), "std": grouped.std(ddof=0), "n": grouped.size()}).reset_index()
    return out.rename(columns={hue: "hue"})


def plot_training_curves(metrics: pd.DataFrame, runs: pd.DataFrame, metric: str = "train/loss",
                         hue: str = "parameterization", ax: Axes | None = None, log_y: bool | None = None,
                         title: str | None = None) -> Figure:
    """One curve per ``hue`` value: the per-step mean over trials and runs, ± one std shaded.

    Args:
        metrics, runs: from ``load_metrics`` and ``load_runs`` (module docstring).
        metric: per-trial series name without the ``/trial<k>`` suffix, e.g. ``train/accuracy``,
            ``train/output_abs_mean``, ``coord/h3``, ``lr/layer0``.
        hue: runs column grouping the curves.
        ax: axes to draw on; None -> a new 6x4 in figure.
        log_y: logarithmic y axis; None -> for losses only.
        title: axes title; None -> none.

    Returns:
        The figure holding ``ax``; line i is labelled with its hue value.
    """
    curves = trial_curves(metrics, runs, metric, hue)
    ax = _axes(ax, (6, 4))
    for i, (value, c) in enumerate(curves.groupby("hue", sort=True)):
        ax.plot(c["step"], c["mean"], color=f"C{i}", label=str(value))
        ax.fill_between(c["step"], c["mean"] - c["std"], c["mean"] + c["std"], color=f"C{i}", alpha=0.2, lw=0)
    if log_y if log_y is not None else "loss" in metric:
        ax.set_yscale("log")
    ax.set(xlabel="SGD step", ylabel=metric)
    if title is not None:
        ax.set_title(title)
    ax.legend(title=hue)
    return ax.figure


def plot_accuracy_by_activation(runs: pd.DataFrame, metric: str = "test_accuracy", hue: str = "parameterization",
                                x: str = "activation", ax: Axes | None = None, title: str | None = None) -> Figure:
    """Grouped bars: ``metric`` (mean over the runs of each group) per ``x`` value and ``hue`` value.

    Error bars are the mean of ``{metric}_std`` (the std across a run's trials) when present.
    A dotted line marks chance accuracy. Bars are ``ax.patches`` in hue-major order.
    """
    _require(runs, [x, hue, metric], "runs")
    cols = [metric] + ([f"{metric}_std"] if f"{metric}_std" in runs.columns else [])
    table = runs.groupby([x, hue])[cols].mean(numeric_only=True)
    xs, hues = sorted(runs[x].dropna().unique()), sorted(runs[hue].dropna().unique())
    ax = _axes(ax, (1.2 + 0.9 * len(xs) * max(1, len(hues)) / 2, 4))
    width = 0.8 / len(hues)
    for j, h in enumerate(hues):
        means = [table[metric].get((v, h), np.nan) for v in xs]
        errs = [table[f"{metric}_std"].get((v, h), np.nan) for v in xs] if len(cols) > 1 else None
        ax.bar(np.arange(len(xs)) + (j - (len(hues) - 1) / 2) * width, means, width, yerr=errs,
               color=f"C{j}", label=str(h), capsize=2)
    if "accuracy" in metric:
        ax.axhline(CHANCE_ACCURACY, color="k", ls=":", lw=1, label="chance")
    ax.set_xticks(np.arange(len(xs)), [str(v) for v in xs])
    ax.set(xlabel=x, ylabel=metric)
    if title is not None:
        ax.set_title(title)
    ax.legend(title=hue, fontsize="small")
    return ax.figure


def plot_coord_check(table: dict, quantity: str = "h_abs", steps=None, title: str | None = None) -> Figure:
    """The standard coordinate-check figure: one panel per SGD step, mean |coordinate| against width.

    Args:
        table: ``info['coord_check']`` of a coord_check run: ``widths``, ``steps``, ``layers`` and
            arrays ``h_abs`` / ``dh_abs`` (W, T+1, L) and ``f_abs`` / ``df_abs`` (W, T+1).
        quantity: ``h_abs`` (mean |h_l|) or ``dh_abs`` (mean |h_l(t) − h_l(0)|, the update).
        steps: steps to draw; None -> all.
        title: figure title; None -> parameterization and activation.

    Returns:
        A figure with one log-log panel per step; in each, one line per hidden layer (``h_l``)
        and one for the logits (``output``). Flat lines mean width-independent coordinates.
    """
    if quantity not in ("h_abs", "dh_abs"):
        raise ValueError(f"quantity must be 'h_abs' or 'dh_abs'; got {quantity!r}")
    missing = [k for k in ("widths", "steps", "layers", quantity) if k not in table]
    if missing:
        raise ValueError(f"table lacks {missing}; pass load_info(source, run_id)['coord_check']")
    widths = np.asarray(table["widths"], dtype=float)
    h = np.asarray(table[quantity], dtype=float)  # (W, T+1, L)
    f = np.asarray(table["f_abs" if quantity == "h_abs" else "df_abs"], dtype=float)  # (W, T+1)
    steps = list(table["steps"]) if steps is None else list(steps)
    fig = Figure(figsize=(2.6 * len(steps), 2.8), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(steps), sharey=True))
    for ax, t in zip(axes, steps):
        for l in table["layers"]:
            ax.plot(widths, h[:, t, l], marker="o", ms=3, color=f"C{l % 10}", label=f"h_{l}")
        ax.plot(widths, f[:, t], marker="s", ms=3, color="k", ls="--", label="output")
        _log2_widths(ax)
        ax.set_yscale("log")
        ax.set(title=f"t = {t}", xlabel="width m")
    axes[0].set_ylabel("mean |h|" if quantity == "h_abs" else "mean |h(t) − h(0)|")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside right upper", fontsize="small")
    fig.suptitle(title if title is not None else
                 f"coordinate check: {table.get('parameterization', '')}, {table.get('activation', '')}, "
                 f"L = {table.get('L', '')}")
    return fig


def plot_accuracy_vs_width(runs: pd.DataFrame, metric: str = "test_accuracy", depth: str = "L",
                           ax: Axes | None = None, title: str | None = None) -> Figure:
    """``metric`` against width, one line per depth (the vanishing-IP figure), ± the trial std.

    Args:
        runs: runs of one parameterization (e.g. filtered ``{'parameterization': 'standard_ip'}``).
        metric: result column; ``{metric}_std`` gives error bars when present.
        depth: column of the depth.
        ax: axes; None -> a new 5x4 in figure.
        title: axes title.

    Returns:
        The figure; one errorbar line per depth labelled ``L = <depth>``, a dotted chance line.
    """
    _require(runs, ["width", depth, metric], "runs")
    cols = [metric] + ([f"{metric}_std"] if f"{metric}_std" in runs.columns else [])
    table = runs.groupby([depth, "width"])[cols].mean(numeric_only=True).reset_index()
    ax = _axes(ax, (5, 4))
    for i, (L, g) in enumerate(table.groupby(depth, sort=True)):
        g = g.sort_values("width")
        ax.errorbar(g["width"], g[metric], yerr=g[f"{metric}_std"] if len(cols) > 1 else None,
                    marker="o", ms=4, capsize=2, color=f"C{i}", label=f"L = {L}")
    if "accuracy" in metric:
        ax.axhline(CHANCE_ACCURACY, color="k", ls=":", lw=1, label="chance")
    _log2_widths(ax)
    ax.set(xlabel="width m", ylabel=metric)
    if title is not None:
        ax.set_title(title)
    ax.legend(fontsize="small")
    return ax.figure
