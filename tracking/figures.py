"""Figures from ``tracking.load.load_runs`` tables: λ̂ against the exact λ, and its relative error.

Figures are plain ``matplotlib.figure.Figure`` objects built without pyplot: no global
figure list, no GUI backend, nothing shown. In a notebook, ``display(fig)``; on disk,
``save_figure(fig, path)``.

Columns read (``prefix='trained.'`` reads the λ̂ measured at the trained parameter):

* ``{prefix}lambdahat``: the SGLD estimate λ̂ = nβ (E_t[L(w_t)] − L_n(w*));
* ``{prefix}lambdahat_std``: its std across chains (error bars);
* ``{prefix}true_lambda``, else ``true_lambda``: Aoyagi's exact λ.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator


def lambdahat_columns(df: pd.DataFrame, prefix: str = "") -> dict[str, str]:
    """The columns of ``df`` holding λ̂, its std and the true λ for ``prefix``.

    Raises:
        ValueError: a column is missing, naming it and the prefix.
    """
    true = f"{prefix}true_lambda" if f"{prefix}true_lambda" in df.columns else "true_lambda"
    columns = {"lambdahat": f"{prefix}lambdahat", "lambdahat_std": f"{prefix}lambdahat_std", "true_lambda": true}
    missing = [c for c in columns.values() if c not in df.columns]
    if missing:
        raise ValueError(f"df lacks columns {missing} (prefix={prefix!r}); λ̂ columns in df: "
                         f"{[c for c in df.columns if 'lambda' in c]}")
    return columns


def _plottable(df: pd.DataFrame, prefix: str, hue: str | None = None) -> pd.DataFrame:
    """Rows with finite λ̂ > 0 and λ > 0 (log axes, relative error): lambdahat, lambdahat_std, true_lambda[, hue]."""
    columns = lambdahat_columns(df, prefix)
    if hue is not None:
        if hue not in df.columns:
            raise ValueError(f"hue column {hue!r} is not in df")
        columns["hue"] = hue
    data = pd.DataFrame({key: pd.to_numeric(df[column], errors="coerce") for key, column in columns.items()})
    keep = np.isfinite(data["lambdahat"]) & (data["lambdahat"] > 0) & (data["true_lambda"] > 0)
    if not keep.any():
        raise ValueError(f"df has no run with {prefix}lambdahat > 0 and true λ > 0 to plot")
    if not keep.all():
        warnings.warn(f"left out {int((~keep).sum())} of {len(data)} runs with a missing or non-positive "
                      f"{prefix}lambdahat or true λ")
    return data[keep]


def _where(prefix: str) -> str:
    return f", at the {prefix.rstrip('.')} parameter" if prefix else ""


def _plain_log_labels(axis, lo: float, hi: float) -> None:
    """Tick labels as plain numbers (3, 10, 50); also at 2 and 5 between decades on short axes."""
    short = np.log10(hi / lo) < 2

    def minor(v, _):
        mantissa = round(v / 10 ** np.floor(np.log10(v)), 6)
        return f"{v:g}" if short and mantissa in (2.0, 5.0) else ""

    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(FuncFormatter(minor))


def _axes(ax: Axes | None, figsize: tuple[float, float]) -> Axes:
    return Figure(figsize=figsize, layout="constrained").subplots() if ax is None else ax


def plot_lambdahat_vs_true(
    df: pd.DataFrame,
    ax: Axes | None = None,
    hue: str | None = "model_dim",
    prefix: str = "",
    log_hue: bool = True,
    title: str | None = None,
) -> Figure:
    """Scatter λ̂ against the exact λ on log-log axes, with the line λ̂ = λ.

    Args:
        df: one row per run, as from ``load_runs`` (completed runs; others are left out
            with a warning when λ̂ is missing).
        ax: axes to draw on; None -> a new 5x4 in figure.
        hue: column colouring the points (colour bar); None -> one colour.
        prefix: column prefix, e.g. ``'trained.'`` for λ̂ at the trained parameter.
        log_hue: logarithmic colour scale (used when every hue value is > 0).
        title: axes title; None -> none.

    Returns:
        The figure holding ``ax``. The points are ``ax.collections[-1]``, the error bars
        (± lambdahat_std across chains) an errorbar container, the diagonal a line labelled 'λ̂ = λ'.
    """
    data = _plottable(df, prefix, hue)
    x, y = data["true_lambda"].to_numpy(), data["lambdahat"].to_numpy()
    ax = _axes(ax, (5, 4))
    ax.set_xscale("log")
    ax.set_yscale("log")
    lo, hi = min(x.min(), y.min()) / 1.5, max(x.max(), y.max()) * 1.5
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="λ̂ = λ", zorder=1)
    ax.errorbar(x, y, yerr=data["lambdahat_std"].fillna(0).to_numpy(), fmt="none", ecolor="0.6", elinewidth=0.8,
                zorder=2)
    if hue is None:
        ax.scatter(x, y, s=18, zorder=3)
    else:
        c = data["hue"].to_numpy(dtype=float)
        norm = LogNorm(c.min(), c.max()) if log_hue and (c > 0).all() else Normalize(c.min(), c.max())
        points = ax.scatter(x, y, c=c, norm=norm, cmap="viridis", s=18, zorder=3)
        bar = ax.figure.colorbar(points, ax=ax, label=hue)
        if isinstance(norm, LogNorm):
            _plain_log_labels(bar.ax.yaxis, c.min(), c.max())
    ax.set(xlabel="true λ (Aoyagi)", ylabel=f"λ̂ (SGLD){_where(prefix)}", xlim=(lo, hi), ylim=(lo, hi))
    _plain_log_labels(ax.xaxis, lo, hi)
    _plain_log_labels(ax.yaxis, lo, hi)
    if title is not None:
        ax.set_title(title)
    ax.legend(loc="upper left")
    return ax.figure


def plot_relative_error_hist(
    df: pd.DataFrame,
    ax: Axes | None = None,
    prefix: str = "",
    bins: int = 20,
    title: str | None = None,
) -> Figure:
    """Histogram of the relative error (λ̂ − λ) / λ over runs, with its median marked.

    Args:
        df: one row per run, as from ``load_runs``; runs with λ = 0 are left out.
        ax: axes to draw on; None -> a new 5x3.5 in figure.
        prefix: column prefix, e.g. ``'trained.'``.
        bins: number of histogram bins.
        title: axes title; None -> none.

    Returns:
        The figure holding ``ax``; the median is a vertical line labelled 'median ...'.
    """
    if bins < 1:
        raise ValueError(f"bins must be >= 1; got {bins}")
    data = _plottable(df, prefix)
    rel = ((data["lambdahat"] - data["true_lambda"]) / data["true_lambda"]).to_numpy()
    median = float(np.median(rel))
    ax = _axes(ax, (5, 3.5))
    ax.hist(rel, bins=bins, color="C0", edgecolor="white")
    ax.axvline(0.0, color="k", ls=":", lw=1, label="λ̂ = λ")
    ax.axvline(median, color="C3", lw=1.5, label=f"median {median:+.1%}")
    ax.set(xlabel=f"(λ̂ − λ) / λ{_where(prefix)}", ylabel="runs")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    if title is not None:
        ax.set_title(title)
    ax.legend()
    return ax.figure


def save_figure(fig: Figure, path: str | Path, dpi: int = 150) -> Path:
    """Write ``fig`` to ``path`` (format from the suffix), creating its folders; returns the path."""
    path = Path(path)
    if not path.suffix:
        raise ValueError(f"path must end in a format suffix such as .png or .pdf; got {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path
