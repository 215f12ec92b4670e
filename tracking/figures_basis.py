"""Figures of ``expt_basis_decomposition`` runs (Sacred experiment ``basis_decomposition``).

Each run stores its arrays as artifacts; :func:`basis_arrays` and :func:`rerun_arrays`
read them back as dicts of numpy arrays:

* ``basis.npz``: ``times`` (T,) recording iterations, ``epochs`` (T,), ``beta`` (T, k)
  coefficients β_i(t), ``s`` (k,) final singular values of B, ``residual`` (T,),
  ``eval_loss`` / ``eval_accuracy`` (T,), ``small_init`` (k, k) |β_ij(θ_0)| when
  recorded, and per-epoch ``train_*`` curves;
* ``rerun.npz`` (grad_indep / beta_domin): ``times`` (R,), ``beta`` (R, n),
  ``grad_norms`` (R, n) ‖∇β_i‖, ``cosines`` (R, n, n), ``max_abs_cos`` (R,).

Figures are plain ``matplotlib.figure.Figure`` objects built without pyplot, as in
``tracking.figures``; save them with ``tracking.figures.save_figure``.
"""
from __future__ import annotations

import io

import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

EXPERIMENT = "basis_decomposition"
X_AXES = ("epochs", "iterations")


def _npz(source, run_id, name, experiment) -> dict[str, np.ndarray]:
    from tracking.load import load_artifact

    with np.load(io.BytesIO(load_artifact(source, run_id, name, experiment=experiment))) as z:
        return {k: z[k] for k in z.files}


def basis_arrays(source, run_id, experiment: str = EXPERIMENT) -> dict[str, np.ndarray]:
    """The ``basis.npz`` arrays of one run (see the module docstring)."""
    return _npz(source, run_id, "basis.npz", experiment)


def rerun_arrays(source, run_id, experiment: str = EXPERIMENT) -> dict[str, np.ndarray]:
    """The ``rerun.npz`` arrays of a run with grad_indep or beta_domin."""
    return _npz(source, run_id, "rerun.npz", experiment)


def _axes(ax: Axes | None, figsize) -> Axes:
    return Figure(figsize=figsize, layout="constrained").subplots() if ax is None else ax


def _num(n: int | None, available: int, what: str) -> int:
    if n is None:
        return available
    if not 1 <= n <= available:
        raise ValueError(f"n must be in [1, {available}] ({what}); got {n}")
    return n


def plot_beta_trajectories(arrays: dict, n: int | None = 5, ax: Axes | None = None, x: str = "epochs",
                           log_x: bool = False, title: str | None = None) -> Figure:
    """β_i(t) for i < n against epochs or iterations, each with its final value s_i dashed.

    Args:
        arrays: ``basis_arrays`` of one run.
        n: number of coefficients (None -> all k).
        ax: axes to draw on; None -> a new 5.5x4 in figure.
        x: 'epochs' or 'iterations'.
        log_x: symmetric-log x axis (linear near 0), to show the early recordings.
        title: axes title; None -> none.

    Returns:
        The figure; ``ax.lines`` holds the n trajectories, then the n dashed levels.
    """
    if x not in X_AXES:
        raise ValueError(f"x must be one of {X_AXES}; got {x!r}")
    beta, s = np.asarray(arrays["beta"]), np.asarray(arrays["s"])
    n = _num(n, beta.shape[1], "coefficients recorded")
    t = np.asarray(arrays["epochs"] if x == "epochs" else arrays["times"], dtype=float)
    ax = _axes(ax, (5.5, 4))
    lines = [ax.plot(t, beta[:, i], lw=1.5, label=f"β_{i + 1}")[0] for i in range(n)]
    for i, line in enumerate(lines):
        ax.axhline(s[i], color=line.get_color(), ls="--", lw=0.8)
    if log_x:
        ax.set_xscale("symlog", linthresh=t[t > 0].min() if (t > 0).any() else 1.0)
    ax.set(xlabel=x, ylabel="β_i(θ_t)  (dashed: s_i)")
    ax.legend(loc="lower right", fontsize="small")
    if title is not None:
        ax.set_title(title)
    return ax.figure


def plot_grad_indep(reruns, ax: Axes | None = None, title: str | None = None) -> Figure:
    """max_{i≠j} |cos(∇β_i, ∇β_j)| against iteration along re-initialised runs.

    Args:
        reruns: one ``rerun_arrays`` dict, or a list of (label, dict) pairs (e.g. one per run).
        ax: axes to draw on; None -> a new 5x3.5 in figure.
        title: axes title; None -> none.

    Returns:
        The figure; one line (with markers) per run.
    """
    pairs = [("", reruns)] if isinstance(reruns, dict) else list(reruns)
    if not pairs:
        raise ValueError("reruns is empty")
    ax = _axes(ax, (5, 3.5))
    for label, r in pairs:
        ax.plot(r["times"], r["max_abs_cos"], marker="o", ms=3, label=label or None)
    ax.set(xlabel="iteration", ylabel="max$_{i≠j}$ |cos(∇β_i, ∇β_j)|", ylim=(0, 1))
    if any(label for label, _ in pairs):
        ax.legend(fontsize="small")
    if title is not None:
        ax.set_title(title)
    return ax.figure


def plot_beta_domin(rerun: dict, n: int | None = 5, fig: Figure | None = None, title: str | None = None) -> Figure:
    """log|β_i| against log‖∇β_i‖ along a re-initialised run, one panel per i < n, coloured by iteration.

    Args:
        rerun: ``rerun_arrays`` of one run with beta_domin.
        n: number of coefficients (None -> all recorded).
        fig: figure to draw into (its axes are replaced); None -> a new one.
        title: figure title; None -> none.

    Returns:
        The figure: n scatter panels sharing one colour bar (iteration).
    """
    beta, norms, t = np.asarray(rerun["beta"]), np.asarray(rerun["grad_norms"]), np.asarray(rerun["times"])
    n = _num(n, beta.shape[1], "coefficients in the rerun")
    fig = Figure(figsize=(2.6 * n + 1, 2.8), layout="constrained") if fig is None else fig
    fig.clear()
    axes = np.atleast_1d(fig.subplots(1, n))
    norm = Normalize(t.min(), t.max())
    tiny = np.finfo(float).tiny
    for i, ax in enumerate(axes):
        points = ax.scatter(np.log(norms[:, i] + tiny), np.log(np.abs(beta[:, i]) + tiny), c=t, norm=norm,
                            cmap="viridis_r", s=8)
        ax.set(xlabel=f"log‖∇β_{i + 1}‖", ylabel=f"log|β_{i + 1}|" if i == 0 else None)
    fig.colorbar(points, ax=list(axes), label="iteration")
    if title is not None:
        fig.suptitle(title)
    return fig


def plot_small_init(arrays: dict, n: int | None = None, ax: Axes | None = None, title: str | None = None) -> Figure:
    """Bars of |β_ii(θ_0)| and max_{j≠i} |β_ij(θ_0)| beside the final s_i, for i < n, on a log scale.

    Args:
        arrays: ``basis_arrays`` of a run with small_init.
        n: number of basis indices (None -> all k).
        ax: axes to draw on; None -> a new figure.
        title: axes title; None -> none.

    Returns:
        The figure; ``ax.containers`` holds the three bar groups.
    """
    if "small_init" not in arrays:
        raise ValueError("arrays has no 'small_init' (run the experiment with small_init=True)")
    m, s = np.abs(np.asarray(arrays["small_init"])), np.asarray(arrays["s"])
    n = _num(n, m.shape[0], "basis functions")
    off = np.where(np.eye(m.shape[0], dtype=bool), 0.0, m)
    idx = np.arange(n)
    ax = _axes(ax, (max(4.0, 0.45 * n + 2), 3.5))
    width = 0.28
    ax.bar(idx - width, np.diag(m)[:n], width, label="|β_i(θ_0)|")
    ax.bar(idx, off.max(axis=1)[:n], width, label="max$_{j≠i}$ |β_ij(θ_0)|")
    ax.bar(idx + width, s[:n], width, label="s_i (final)", color="0.6")
    ax.set_yscale("log")
    ax.set_xticks(idx, [str(i + 1) for i in idx])
    ax.set(xlabel="i (index of the final basis)", ylabel="magnitude")
    ax.legend(fontsize="small")
    if title is not None:
        ax.set_title(title)
    return ax.figure
