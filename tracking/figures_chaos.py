"""Figures of ``expt_chaos`` runs, read with ``tracking.load`` from a run store.

Like ``tracking.figures``, every function returns a plain ``matplotlib.figure.Figure``
built without pyplot (``display(fig)`` in a notebook, ``save_figure(fig, path)`` on disk)
and raises ValueError when there is nothing to draw.

* :func:`plot_lyapunov_over_training`: max / min Lyapunov exponent against step, and the
  final sorted spectrum (artifact ``lyapunov_final.npz``).
* :func:`plot_hessian_spectrum_stats`: negative-eigenvalue and local-chaos counts, and the
  extreme eigenvalues, against step.
* :func:`plot_accuracy_by_optimizer`: test accuracy of sgd against cgd pruning (chaotic,
  pos, neg), mean ± std over seeds (Figure 1 of the paper).
* :func:`plot_distances`: distance of each perturbed copy with its fit d² = a t + b t² + d0²
  and, given the Lyapunov run, the bounds d0·e^{χ t} (Figure 3).
* :func:`plot_subspace_similarity`: similarity of the expanding Lyapunov subspaces fixed at
  t_0 with later ones, against the random baseline.
"""
from __future__ import annotations

import io

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from tracking.figures import save_figure  # noqa: F401  (re-exported for notebooks)
from tracking.load import load_artifact, load_metrics, load_runs

EXPERIMENT = "chaos"

# Names older runs in a store still carry (renamed for one vocabulary across experiments):
# current name -> the earlier names, newest first; a run without the current name is read under these.
LEGACY_NAMES = {"epoch/train_accuracy": ("epoch/train_acc",), "epoch/test_accuracy": ("epoch/test_acc",),
                "train/batch_loss": ("train/loss",), "train/batch_accuracy": ("train/accuracy", "train/acc")}


def _runs(source, run_ids=None, filters=None) -> pd.DataFrame:
    df = load_runs(source, experiment=EXPERIMENT, filters=filters, status="COMPLETED")
    if run_ids is not None:
        df = df[df["run_id"].isin(list(run_ids))]
    if df.empty:
        raise ValueError(f"no chaos runs in {source!r}"
                         + (f" with run_ids {list(run_ids)}" if run_ids is not None else ""))
    return df.reset_index(drop=True)


def _series(source, run_id, names) -> dict[str, pd.DataFrame]:
    m = load_metrics(source, experiment=EXPERIMENT, run_ids=[run_id], names=names)
    return {name: g.sort_values("step") for name, g in m.groupby("name")}


def _metric_with_legacy(source, run_ids, metric: str) -> pd.DataFrame:
    """Rows of ``metric`` for the runs, read under a :data:`LEGACY_NAMES` name for runs recorded before the rename."""
    names = [metric, *LEGACY_NAMES.get(metric, ())]
    m = load_metrics(source, experiment=EXPERIMENT, run_ids=run_ids, names=names)
    if m.empty:
        return m
    rank = m["name"].map({name: i for i, name in enumerate(names)})
    best = rank.groupby(m["run_id"]).transform("min")  # per run: the newest name it has
    return m[rank == best].assign(name=metric)


def optimizer_label(row: pd.Series) -> str:
    """'sgd', or 'cgd neg' / 'cgd chaotic from 2000' / 'cgd global pos' from a run's config."""
    if row.get("optim.name") != "cgd":
        return "sgd"
    parts = ["cgd", "global" if row.get("optim.prune_global") else "", str(row.get("optim.prune_set"))]
    k = row.get("optim.k")
    if k is not None and not (isinstance(k, float) and np.isnan(k)):
        parts.append(f"k={int(k)}")
    start = row.get("optim.prune_start")
    if start:
        parts.append(f"from {int(start)}")
    return " ".join(p for p in parts if p)


def plot_lyapunov_over_training(source, run_ids=None, title: str | None = None) -> Figure:
    """Left: lyapunov/max and lyapunov/min against step per run. Right: each run's final sorted spectrum."""
    runs = _runs(source, run_ids)
    fig = Figure(figsize=(10, 3.8), layout="constrained")
    ax, ax2 = fig.subplots(1, 2)
    drawn = False
    for i, row in runs.iterrows():
        s = _series(source, row["run_id"], ["lyapunov/max", "lyapunov/min"])
        if not s:
            continue
        label = f"run {row['run_id']} ({optimizer_label(row)})"
        for name, style in (("lyapunov/max", "-"), ("lyapunov/min", "--")):
            if name in s:
                ax.plot(s[name]["step"], s[name]["value"], style, color=f"C{i % 10}",
                        label=f"{label} {name.split('/')[1]}")
        drawn = True
        try:
            blob = load_artifact(source, row["run_id"], "lyapunov_final.npz", EXPERIMENT)
            spec = np.load(io.BytesIO(blob))["exponents"]
            ax2.plot(np.arange(1, spec.size + 1), spec, color=f"C{i % 10}", label=label)
        except ValueError:
            pass
    if not drawn:
        raise ValueError(f"no lyapunov/* metrics in the chosen runs of {source!r} (logging.log_lyapunov was off?)")
    ax.axhline(0, color="k", lw=0.8, ls=":")
    ax.set(xlabel="step", ylabel="Lyapunov exponent χ (per step)", title=title or "extreme exponents over training")
    ax.legend(fontsize=7)
    ax2.axhline(0, color="k", lw=0.8, ls=":")
    ax2.set(xlabel="index i (sorted)", ylabel="χ_i at the end", title="final spectrum")
    if ax2.get_lines():
        ax2.legend(fontsize=7)
    return fig


def plot_hessian_spectrum_stats(source, run_ids=None) -> Figure:
    """Per run: negative-eigenvalue and local-chaos counts (left), extreme Hessian eigenvalues (right)."""
    runs = _runs(source, run_ids)
    fig = Figure(figsize=(10, 3.8), layout="constrained")
    ax, ax2 = fig.subplots(1, 2)
    for i, row in runs.iterrows():
        s = _series(source, row["run_id"], ["hessian/num_neg", "chaos/num_large", "hessian/min_eig", "hessian/max_eig"])
        if not s:
            continue
        color = f"C{i % 10}"
        label = f"run {row['run_id']} ({optimizer_label(row)})"
        if "hessian/num_neg" in s:
            ax.plot(s["hessian/num_neg"]["step"], s["hessian/num_neg"]["value"], color=color, label=f"{label}: λ < 0")
        if "chaos/num_large" in s:
            ax.plot(s["chaos/num_large"]["step"], s["chaos/num_large"]["value"], ":", color=color,
                    label=f"{label}: λ > 2/lr")
        for name, style in (("hessian/max_eig", "-"), ("hessian/min_eig", "--")):
            if name in s:
                ax2.plot(s[name]["step"], s[name]["value"], style, color=color, label=f"{label} {name.split('/')[1]}")
    if not ax.get_lines() and not ax2.get_lines():
        raise ValueError(f"no hessian/* metrics in the chosen runs of {source!r} (logging.log_eigenthings was off?)")
    ax.set(xlabel="step", ylabel="number of directions", title="local chaos")
    ax2.axhline(0, color="k", lw=0.8, ls=":")
    ax2.set(xlabel="step", ylabel="eigenvalue of H_t", title="extreme eigenvalues")
    ax2.set_yscale("symlog", linthresh=1e-2)
    ax.legend(fontsize=7)
    ax2.legend(fontsize=7)
    return fig


def plot_accuracy_by_optimizer(source, filters=None, metric: str = "epoch/test_accuracy") -> Figure:
    """``metric`` against step, one curve per optimizer label (mean ± std over seeds and repeats).

    Runs recorded before a rename are read under the old name (:data:`LEGACY_NAMES`)."""
    runs = _runs(source, filters=filters)
    runs = runs.assign(label=runs.apply(optimizer_label, axis=1))
    m = _metric_with_legacy(source, list(runs["run_id"]), metric)
    if m.empty:
        raise ValueError(f"no {metric!r} metric in the chosen chaos runs of {source!r}")
    m = m.merge(runs[["run_id", "label"]], on="run_id")
    fig = Figure(figsize=(5.5, 4), layout="constrained")
    ax = fig.subplots()
    order = ["sgd"] + sorted(set(m["label"]) - {"sgd"})
    for i, label in enumerate(lab for lab in order if lab in set(m["label"])):
        g = m[m["label"] == label].groupby("step")["value"]
        mean, std, count = g.mean(), g.std().fillna(0.0), g.count()
        ax.plot(mean.index, mean.values, color=f"C{i}", label=f"{label} ({int(count.max())} runs)")
        ax.fill_between(mean.index, mean - std, mean + std, color=f"C{i}", alpha=0.2)
    ax.set(xlabel="step", ylabel=metric.split("/")[-1].replace("_", " "), title="SGD against CGD pruning")
    ax.legend(fontsize=8)
    return fig


def plot_distances(source, run_id, lyapunov_run_id=None) -> Figure:
    """Distances ‖w_i − w_0‖ of the perturbed copies (log scale) with their fits and, optionally, e^{χ t} bounds."""
    runs = _runs(source, [run_id])
    result = runs.iloc[0]
    m = load_metrics(source, experiment=EXPERIMENT, run_ids=[run_id], names=["perturb/distance/*"])
    if m.empty:
        raise ValueError(f"run {run_id} has no perturb/distance/* metrics (perturb_strat was None?)")
    chi = None
    if lyapunov_run_id is not None:
        lya = _runs(source, [lyapunov_run_id]).iloc[0]
        chi = (lya.get("lyapunov.max"), lya.get("lyapunov.min"))
    fig = Figure(figsize=(6, 4.2), layout="constrained")
    ax = fig.subplots()
    for i, (name, g) in enumerate(sorted(m.groupby("name"), key=lambda kv: int(kv[0].rsplit("copy", 1)[1]))):
        copy = name.rsplit("/", 1)[1]
        g = g.sort_values("step")
        t, d = g["step"].to_numpy(float), g["value"].to_numpy(float)
        strategy = result.get(f"perturb.{copy}.strategy", copy)
        ax.plot(t, d, color=f"C{i}", label=f"{strategy}")
        a, b, d0 = (result.get(f"perturb.{copy}.{k}") for k in ("a", "b", "d0"))
        if all(v is not None and np.isfinite(v) for v in (a, b, d0)):
            ax.plot(t, np.sqrt(np.clip(a * t + b * t**2 + d0**2, 0, None)), "--", color=f"C{i}", lw=1)
        if chi is not None and all(v is not None and np.isfinite(v) for v in chi):
            d_init = d[0]
            ax.plot(t, d_init * np.exp(np.minimum(chi[0] * t, 700)), ":", color="0.4", lw=0.8)
            ax.plot(t, d_init * np.exp(chi[1] * t), ":", color="0.7", lw=0.8)
    ax.set_yscale("log")
    ax.set(xlabel="step", ylabel="‖w_i − w_0‖",
           title=f"perturbed copies of run {run_id} (dashed: fit d² = at + bt² + d0²)")
    ax.legend(fontsize=8)
    return fig


def plot_subspace_similarity(source, run_id) -> Figure:
    """subsim/lyapunov/t* (and subsim/hessian_chaotic) with their random baselines, against step."""
    _runs(source, [run_id])
    m = load_metrics(source, experiment=EXPERIMENT, run_ids=[run_id], names=["subsim/*"])
    if m.empty:
        raise ValueError(f"run {run_id} has no subsim/* metrics (logging.log_lyapunov_subsim / log_subsim were off?)")
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    names = sorted(n for n in set(m["name"]) if not n.endswith("_baseline"))
    for i, name in enumerate(names):
        g = m[m["name"] == name].sort_values("step")
        ax.plot(g["step"], g["value"], color=f"C{i}", label=name.replace("subsim/", ""))
        base = m[m["name"] == f"{name}_baseline"].sort_values("step")
        if not base.empty:
            ax.plot(base["step"], base["value"], ":", color=f"C{i}", label=f"{name.replace('subsim/', '')} random")
    ax.set(xlabel="step", ylabel="‖VᵀW‖²_F / min(d_V, d_W)", ylim=(0, 1.05), title=f"subspace similarity, run {run_id}")
    ax.legend(fontsize=8)
    return fig
