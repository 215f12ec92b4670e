"""Figures of the SGD-regimes experiment from ``tracking.load.load_runs`` tables.

* ``plot_test_error_vs_temperature``: final test error against T = dt/(bs·h), one curve per α
  (the phase diagram read along T).
* ``plot_weight_change_vs_temperature``: |w − w₀| at the end of training against T, per α.
* ``plot_ntk_change_vs_alpha``: ||K − K₀||_F / ||K₀||_F of the NTK Gram matrix against α, per T
  (lazy training keeps it near 0 at large α).
* ``regime_table``: the median of any result column over seeds, α down, T across.
* ``crossover_table``, ``crossover_exponents``, ``plot_crossover_vs_P``: the batch size B* that
  separates the noise-dominated regime from the first-step one, and its growth B* ~ P^γ
  (the perceptron's γ = 1/(1+χ)), from bs sweeps at fixed T (generator presets bstar_chi0/1).

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
from matplotlib.ticker import FuncFormatter


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


def _plain_log_ticks(axis) -> None:
    """Tick labels as plain numbers (300, not 3×10²); minor ticks labelled at 2 and 5 only."""
    def minor(v, _):
        mantissa = round(v / 10 ** np.floor(np.log10(v)), 6) if v > 0 else 0
        return f"{v:g}" if mantissa in (2.0, 5.0) else ""

    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(FuncFormatter(minor))


def _finish(ax: Axes, xlabel: str, ylabel: str, logy: bool, title: str | None) -> Figure:
    ax.set_xscale("log")
    _plain_log_ticks(ax.xaxis)
    if logy:
        ax.set_yscale("log")
        _plain_log_ticks(ax.yaxis)
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


FINISHED = ("zero_loss", "mind_stop")  # stop reasons of a run that fitted its training set


# Settings a batch-size sweep holds fixed: runs that differ in one of them are not one sweep.
SWEEP_CONSTANTS = ("T", "alpha", "h", "d", "L", "arch", "act", "dataset", "loss", "dynamics")


def crossover_table(df: pd.DataFrame, y: str = "final.weights.delta", groups=("data_chi", "ptr", "seed"),
                    threshold: float = 1.5, small_bs: int = 8) -> pd.DataFrame:
    """The batch size B* where SGD leaves the noise-dominated regime, per group of a bs sweep at fixed T.

    Within each group (default: χ, P and seed), ``plateau`` is the median of ``y`` (|w − w₀| at
    the end) over runs with bs <= ``small_bs``, where it depends on T only. Two estimates:

    * ``bstar_threshold``: the bs, interpolated in log-log, where y first reaches
      ``threshold`` x plateau (NaN when the sweep's largest bs stays below);
    * ``bstar_intersect``: where the first step's displacement dt·|∇L(w₀)| = T·bs·h·|g₀|
      reaches the plateau, bs = plateau / (T·h·|g₀|).

    Only runs that fitted their training set (stop_reason in ``FINISHED``) are used.

    Returns:
        One row per group: the group columns, plateau, bstar_threshold, bstar_intersect, runs.

    Raises:
        ValueError: missing columns, or a group whose runs differ in a setting of
            ``SWEEP_CONSTANTS`` (T, α, architecture, ...): pass one batch-size sweep, e.g.
            ``df[df['expt_name'] == 'bstar_chi1']``.
    """
    needed = [*groups, "batch_size", "T", "h", "init.train.grad_norm", y, "stop_reason"]
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise ValueError(f"df lacks columns {missing}")
    done = df[df["stop_reason"].isin(FINISHED)]
    if len(done) < len(df):
        warnings.warn(f"left out {len(df) - len(done)} of {len(df)} runs that did not fit their training set",
                      stacklevel=2)
    rows = []
    constants = [c for c in SWEEP_CONSTANTS if c in done.columns and c not in groups]
    for key, group in done.groupby(list(groups), sort=True):
        values = {c: sorted(group[c].astype(str).unique()) for c in constants}
        mixed = {c: v for c, v in values.items() if len(v) > 1}
        if mixed:
            where = ", ".join(f"{g}={v}" for g, v in zip(groups, key))
            raise ValueError(f"runs with {where} are not one batch-size sweep: they differ in {mixed}; "
                             "pass the runs of one sweep, e.g. df[df['expt_name'] == 'bstar_chi1']")
        g = group.sort_values("batch_size")
        bs, values = g["batch_size"].to_numpy(float), g[y].to_numpy(float)
        small = values[bs <= small_bs]
        if small.size == 0:
            continue
        plateau = float(np.median(small))
        ratio = values / plateau
        bstar = np.nan
        for i in range(1, len(bs)):
            if bs[i] > small_bs and ratio[i] >= threshold > ratio[i - 1]:
                frac = np.log(threshold / ratio[i - 1]) / np.log(ratio[i] / ratio[i - 1])
                bstar = float(np.exp(np.log(bs[i - 1]) + frac * np.log(bs[i] / bs[i - 1])))
                break
        step = float(g["T"].iloc[0] * g["h"].iloc[0] * g["init.train.grad_norm"].iloc[0])
        rows.append({**dict(zip(groups, key)), "plateau": plateau, "bstar_threshold": bstar,
                     "bstar_intersect": plateau / step, "runs": len(g)})
    return pd.DataFrame(rows)


def crossover_exponents(table: pd.DataFrame, x: str = "ptr", by: str = "data_chi") -> pd.DataFrame:
    """Least-squares slopes γ of log B* against log P per χ (B* averaged over seeds in log), with 1/(1+χ)."""
    rows = []
    for chi, group in table.groupby(by, sort=True):
        row = {by: chi, "theory": 1.0 / (1.0 + chi), "points": group[x].nunique()}
        for column in ("bstar_threshold", "bstar_intersect", "plateau"):
            means = np.exp(np.log(group[column]).groupby(group[x]).mean()).dropna()
            row[f"gamma_{column.removeprefix('bstar_')}"] = (
                float(np.polyfit(np.log(means.index.to_numpy(float)), np.log(means.to_numpy()), 1)[0])
                if len(means) > 1 else np.nan)
        rows.append(row)
    return pd.DataFrame(rows)


def plot_crossover_vs_P(table: pd.DataFrame, ax: Axes | None = None, column: str = "bstar_threshold",
                        x: str = "ptr", by: str = "data_chi", title: str | None = None) -> Figure:
    """B* against P on log-log axes, one colour per χ: geometric means over seeds with min-max bars,
    the fitted power law (solid) and the perceptron's P^(1/(1+χ)) through the same centre (dashed)."""
    ax = _axes(ax, (5, 4))
    exponents = crossover_exponents(table, x, by).set_index(by)
    for k, (chi, group) in enumerate(table.groupby(by, sort=True)):
        logs = np.log(group[column]).groupby(group[x])
        centre, lo, hi = np.exp(logs.mean()).dropna(), np.exp(logs.min()), np.exp(logs.max())
        ps = centre.index.to_numpy(float)
        colour = f"C{k}"
        ax.errorbar(ps, centre, yerr=[centre - lo[centre.index], hi[centre.index] - centre], fmt="o", color=colour,
                    capsize=3, label=f"χ = {chi:g}")
        if len(ps) > 1:
            gamma = exponents.loc[chi, f"gamma_{column.removeprefix('bstar_')}"]
            mid_p, mid_b = np.exp(np.log(ps).mean()), np.exp(np.log(centre.to_numpy()).mean())
            for slope, style, text in ((gamma, "-", f"fit γ = {gamma:.2f}"),
                                       (1.0 / (1.0 + chi), "--", f"1/(1+χ) = {1.0 / (1.0 + chi):.2f}")):
                ax.plot(ps, mid_b * (ps / mid_p) ** slope, style, color=colour, lw=1, label=text)
    ax.set_yscale("log")
    return _finish(ax, "training points P", f"B* ({column.removeprefix('bstar_')})", True, title)
