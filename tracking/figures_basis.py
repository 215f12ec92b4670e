"""Figures of ``expt_basis_decomposition`` runs (Sacred experiment ``basis_decomposition``).

Each run stores its arrays as artifacts; :func:`basis_arrays` and :func:`rerun_arrays`
read them back as dicts of numpy arrays:

* ``basis.npz``: ``times`` (T,) recording iterations, ``epochs`` (T,), ``beta`` (T, k)
  coefficients β_i(t), ``s`` (k,) final singular values of B, ``residual`` (T,),
  ``eval_loss`` / ``eval_accuracy`` (T,), ``small_init`` (k, k) |β_ij(θ_0)| when
  recorded, with ``small_init_signed`` and ``final_coefficient_matrix`` (k, k), and
  per-epoch ``train_*`` curves;
* ``rerun.npz`` (grad_indep / beta_domin): ``times`` (R,), ``beta`` (R, n),
  ``grad_norms`` (R, n) ‖∇β_i‖, ``cosines`` (R, n, n), ``max_abs_cos`` (R,),
  ``max_abs_cos_matrix`` (n, n) and ``num_points`` N;
* ``detail.npz`` (log='detail'): ``phi`` (N, p), ``F`` (T, N, C), ``W`` (C, p), ``F_final``.

Figures are plain ``matplotlib.figure.Figure`` objects built without pyplot, as in
``tracking.figures``; save them with ``tracking.figures.save_figure``.
"""
from __future__ import annotations

import io

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.colors import ListedColormap, Normalize
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


def plot_grad_indep_matrix(rerun: dict, ax: Axes | None = None, title: str | None = None) -> Figure:
    """grad_indep.py's figure: max_t |cos(∇β_i, ∇β_j)| as an (n, n) image with a colour bar."""
    m = np.asarray(rerun["max_abs_cos_matrix"])
    ax = _axes(ax, (4.5, 3.8))
    image = ax.imshow(m, vmin=0, vmax=1)
    ax.figure.colorbar(image, ax=ax, label="correlation")
    ticks = np.arange(m.shape[0])
    ax.set_xticks(ticks, [str(i + 1) for i in ticks])
    ax.set_yticks(ticks, [str(i + 1) for i in ticks])
    ax.set(xlabel="∇β_j(θ_t)", ylabel="∇β_i(θ_t)")
    if title is not None:
        ax.set_title(title)
    return ax.figure


BETA_DOMIN_CMAPS = ("Reds", "Blues", "Greens", "Purples", "Oranges")  # beta_domin.py's colour maps


def plot_beta_domin(rerun: dict, n: int | None = 4, ax: Axes | None = None, scale: str = "original",
                    title: str | None = None) -> Figure:
    """beta_domin.py's figure: log‖∇β_i‖ (y) against log|β_i| (x) for i < n on one axes, coloured by iteration.

    Args:
        rerun: ``rerun_arrays`` of one run with beta_domin.
        n: number of coefficients (beta_domin.py: 4; None -> all recorded, at most 5).
        ax: axes to draw on; None -> a new figure.
        scale: 'original': β and ∇β divided by √N, as beta_domin.py's β = tr(φᵀ F) / N
            does (a shift of both axes by −log √N); 'basis': the coefficients of
            dynamics.basis (train.py's normalisation).
        title: axes title; None -> none.

    Returns:
        The figure; ``ax.collections`` holds one scatter per coefficient, each with its colour map
        (light to dark over the iterations), and one colour bar for iteration.
    """
    if scale not in ("original", "basis"):
        raise ValueError(f"scale must be 'original' or 'basis'; got {scale!r}")
    beta, norms, t = np.asarray(rerun["beta"]), np.asarray(rerun["grad_norms"]), np.asarray(rerun["times"]) + 1.0
    n = _num(n, min(beta.shape[1], len(BETA_DOMIN_CMAPS)), "coefficients in the rerun (at most 5)")
    shift = 0.5 * np.log(float(rerun["num_points"])) if scale == "original" else 0.0
    ax = _axes(ax, (5.5, 4))
    tiny = np.finfo(float).tiny
    norm = Normalize(t.min(), t.max())
    for i in range(n):
        cmap = ListedColormap(colormaps[BETA_DOMIN_CMAPS[i]](np.linspace(0.5, 1.0, 256)))  # the darker half
        points = ax.scatter(np.log(np.abs(beta[:, i]) + tiny) - shift, np.log(norms[:, i] + tiny) - shift, c=t,
                            norm=norm, cmap=cmap, s=8, label=f"β_{i + 1}")
    ax.figure.colorbar(points, ax=ax, label="iteration")
    ax.set(xlabel="log(|β_i(θ_t)|)", ylabel="log(‖∇β_i(θ_t)‖)")
    ax.legend(fontsize="small")
    if title is not None:
        ax.set_title(title)
    return ax.figure


def small_init_bars(arrays: dict, top: int = 20) -> tuple[np.ndarray, float, np.ndarray]:
    """small-init.py's bars: |β_ij(θ_0)| at the ``top`` largest final β_ij, and the residual.

    The entries (i, j) are ranked by the final coefficient matrix β_ij(θ_T) (signed,
    descending; diag(s) up to rounding, so the diagonal comes first in the order of s_i and
    then off-diagonal entries near 0). The residual is √(‖β(θ_0)‖_F² − Σ_top β_ij(θ_0)²),
    the initial mass outside the shown entries.

    Returns:
        heights (m,) with m = min(top, k²), the residual, and the ranked flat indices (m,).
    """
    for key in ("small_init_signed", "final_coefficient_matrix"):
        if key not in arrays:
            raise ValueError(f"arrays has no {key!r} (run the experiment with small_init=True)")
    b0, bT = np.asarray(arrays["small_init_signed"]).ravel(), np.asarray(arrays["final_coefficient_matrix"]).ravel()
    order = np.argsort(-bT, kind="stable")[:top]
    residual = float(np.sqrt(max(np.sum(b0 ** 2) - np.sum(b0[order] ** 2), 0.0)))
    return np.abs(b0[order]), residual, order


def plot_small_init(arrays: dict, n: int = 20, ax: Axes | None = None, title: str | None = None) -> Figure:
    """small-init.py's figure: bars |β_i(θ_0)| indexed by the final basis, then a red residual bar.

    Args:
        arrays: ``basis_arrays`` of a run with small_init.
        n: number of entries shown (small-init.py: 20), see :func:`small_init_bars`.
        ax: axes to draw on; None -> a new figure.
        title: axes title; None -> none.

    Returns:
        The figure; ``ax.patches`` holds the bars, the last one the residual.
    """
    heights, residual, _ = small_init_bars(arrays, n)
    m = heights.shape[0]
    ax = _axes(ax, (max(4.0, 0.3 * m + 2), 3.5))
    bars = ax.bar(np.arange(m + 1), np.append(heights, residual))
    bars[-1].set_color("r")
    ticks = list(range(0, m, 2)) + [m]
    ax.set_xticks(ticks, [str(i + 1) for i in ticks[:-1]] + ["residual"])
    ax.set(xlabel="index", ylabel="|β_i(θ_0)|")
    if title is not None:
        ax.set_title(title)
    return ax.figure
