"""Figures of the SGD-regimes experiment from ``tracking.load.load_runs`` tables.

* ``plot_test_error_vs_temperature``: final test error against T = dt/(bs·h), one curve per α
  (the phase diagram read along T).
* ``plot_weight_change_vs_temperature``: |w − w₀| at the end of training against T, per α.
* ``plot_ntk_change_vs_alpha``: ||K − K₀||_F / ||K₀||_F of the NTK Gram matrix against α, per T
  (lazy training keeps it near 0 at large α).
* ``regime_table``: the median of any result column over seeds, α down, T across.

Each curve is the median over the runs sharing (hue, x), with a band from the smallest to
the largest of them. Diverged runs (result ``diverged``) and runs without the column are
left out with a warning. Figures are built without pyplot, as in ``tracking.figures``
(whose ``save_figure`` writes them to disk).

Columns read: config ``alpha``; result ``T``, ``final.test.err``, ``final.weights.delta``,
``ntk.train.rel_change`` (``ckpt_grad_stats > 0``), ``diverged``.
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure


def _axes(ax: Axes | None, figsize: tuple[float, float]) -> Axes:
    return Figure(figsize=figsize, layout="constrained").subplots() if ax is None else ax


def _usable(df: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Rows with finite numbers in ``columns`` and not diverged; ValueError naming a missing column."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"df lacks columns {missing}; columns available: {sorted(map(str, df.columns))}")
    data = pd.DataFrame({c: pd.to_numeric(df[c], errors="coerce") for c in columns})
    keep = np.isfinite(data).all(axis=1)
    if "diverged" in df.columns:
        keep &= ~df["diverged"].fillna(False).astype(bool)
    dropped = int((~keep).sum())
    if dropped:
        warnings.warn(f"left out {dropped} of {len(df)} runs (diverged, or no finite {columns})", stacklevel=3)
    if not keep.any():
        raise ValueError(f"no run has finite values of {columns}")
    return data[keep]


def curves(df: pd.DataFrame, x: str, y: str, hue: str) -> dict[float, pd.DataFrame]:
    """hue value -> DataFrame indexed by x with columns median, lo, hi, n of ``y`` over runs."""
    data = _usable(df, [x, y, hue])
    out = {}
    for value, group in data.groupby(hue, sort=True):
        stats = group.groupby(x)[y].agg(median="median", lo="min", hi="max", n="count")
        out[float(value)] = stats.sort_index()
    return out


def _hue_norm(values) -> Normalize:
    values = np.asarray(values, dtype=float)
    if len(values) > 1 and (values > 0).all():
        return LogNorm(values.min(), values.max())
    return Normalize(values.min(), values.max() if values.max() > values.min() else values.min() + 1)


def _plot_curves(ax: Axes, data: dict, hue: str, cmap: str = "viridis") -> None:
    norm = _hue_norm(list(data))
    for value, stats in data.items():
        colour = colormaps[cmap](0.85 * float(norm(value)))  # the top of viridis / plasma is too pale on white
        xs = stats.index.to_numpy(dtype=float)
        ax.fill_between(xs, stats["lo"], stats["hi"], color=colour, alpha=0.15, lw=0)
        ax.plot(xs, stats["median"], "o-", color=colour, ms=3.5, label=f"{hue} = {value:g}")


def _finish(ax: Axes, xlabel: str, ylabel: str, logy: bool, title: str | None) -> Figure:
    ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set(xlabel=xlabel, ylabel=ylabel)
    if title is not None:
        ax.set_title(title)
    ax.legend(fontsize="small", frameon=False)
    return ax.figure


def plot_test_error_vs_temperature(df: pd.DataFrame, ax: Axes | None = None, hue: str = "alpha",
                                   y: str = "final.test.err", title: str | None = None) -> Figure:
    """Final test error against T (log axis), one curve per ``hue`` value.

    Args:
        df: one row per run, from ``load_runs(..., experiment='sgd_regimes')``.
        ax: axes to draw on; None -> a new 5x4 in figure.
        hue: column distinguishing the curves (default α).
        y: the error column (``final.train.err`` for the training error).
        title: axes title; None -> none.

    Returns:
        The figure; one line (median) and one band (min-max over runs) per curve.
    """
    ax = _axes(ax, (5, 4))
    _plot_curves(ax, curves(df, "T", y, hue), hue)
    return _finish(ax, "temperature T = dt / (bs·h)", "test error" if "test" in y else y, False, title)


def plot_weight_change_vs_temperature(df: pd.DataFrame, ax: Axes | None = None, hue: str = "alpha",
                                      y: str = "final.weights.delta", title: str | None = None) -> Figure:
    """|w − w₀| at the end of training against T, log-log, one curve per ``hue`` value."""
    ax = _axes(ax, (5, 4))
    _plot_curves(ax, curves(df, "T", y, hue), hue)
    return _finish(ax, "temperature T = dt / (bs·h)", "|w − w₀|" if y == "final.weights.delta" else y, True, title)


def plot_ntk_change_vs_alpha(df: pd.DataFrame, ax: Axes | None = None, hue: str = "T",
                             y: str = "ntk.train.rel_change", title: str | None = None) -> Figure:
    """Relative change of the NTK Gram matrix over training against α, log-log, one curve per ``hue``.

    Runs need ``ckpt_grad_stats > 0``; a change of exactly 0 (a linear model) cannot sit on a
    log axis and is left out with the warning.
    """
    data = df.copy()
    if y in data.columns:
        data[y] = pd.to_numeric(data[y], errors="coerce").where(lambda v: v > 0)
    ax = _axes(ax, (5, 4))
    _plot_curves(ax, curves(data, "alpha", y, hue), hue, cmap="plasma")
    return _finish(ax, "α (output scale; large = lazy)", "||K − K₀|| / ||K₀|| (NTK, train)", True, title)


def regime_table(df: pd.DataFrame, value: str = "final.test.err", index: str = "alpha",
                 columns: str = "T") -> pd.DataFrame:
    """Median of ``value`` over runs, ``index`` down and ``columns`` across (e.g. the (α, T) phase diagram)."""
    data = _usable(df, [index, columns, value])
    return data.pivot_table(index=index, columns=columns, values=value, aggfunc="median")
