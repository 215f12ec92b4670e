"""Trace plots of a λ̂ estimate: each chain's λ̂ draws and running mean, with its diagnostics.

Built without pyplot (a plain ``matplotlib.figure.Figure``, as in ``tracking.figures``),
so it works in notebooks, scripts and headless tests alike.
"""
from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure


def running_mean(draws: np.ndarray) -> np.ndarray:
    """(C, m) -> (C, m): mean of draws 0..t of each chain."""
    return np.cumsum(draws, axis=1) / np.arange(1, draws.shape[1] + 1)


def plot_llc_trace(result, title: str | None = None) -> Figure:
    """Left: per-draw λ̂ contributions nβ (L(w_t) − L_n(w*)) per chain, burn-in shaded.
    Right: each chain's running post-burn-in λ̂. Title: λ̂ ± std, rank R-hat, ESS, health.

    ``result`` is an ``llc.estimate.LLCResult`` (any sampler's).
    """
    trace = result.lambdahat_trace()  # (C, T)
    chains, steps = trace.shape
    burnin = result.burnin
    fig = Figure(figsize=(11, 3.6), layout="constrained")
    ax_trace, ax_run = fig.subplots(1, 2)
    t = np.arange(steps)
    for c in range(chains):
        ax_trace.plot(t, trace[c], lw=0.6, alpha=0.7, label=f"chain {c}")
        post = trace[c, burnin:]
        if post.size:
            ax_run.plot(t[burnin:], running_mean(post[None])[0], lw=1.2)
    if burnin:
        ax_trace.axvspan(0, burnin, color="0.85", zorder=0, label="burn-in")
    ax_run.axhline(result.lambdahat, color="k", ls="--", lw=1, label="λ̂")
    ax_trace.set(xlabel="draw t", ylabel="nβ (L(w_t) − L_n(w*))", title="per-draw λ̂")
    ax_run.set(xlabel="draw t", ylabel="running λ̂", title="running mean after burn-in")
    ax_trace.legend(fontsize=7, ncol=2)
    ax_run.legend(fontsize=7)
    state = "healthy" if result.healthy else "UNHEALTHY: " + "; ".join(result.health_reasons)
    head = f"λ̂ = {result.lambdahat:.3g} ± {result.lambdahat_std:.2g}, rank R-hat {result.rhat_rank:.3f}, " \
           f"ESS bulk {result.ess_bulk:.0f} / tail {result.ess_tail:.0f} — {state}"
    fig.suptitle(head if title is None else f"{title}\n{head}", fontsize=9)
    return fig


def plot_calibration(calibration) -> Figure:
    """λ̂ (± std over chains) and the noise share of the step against ε, one curve per (nβ, γ).

    Diverged settings are marked with an x on the ε axis; the recommended (largest
    stable) ε of each curve is a dashed vertical line. ``calibration`` is an
    ``llc.calibrate.Calibration``.
    """
    fig = Figure(figsize=(10, 3.6), layout="constrained")
    ax_l, ax_n = fig.subplots(1, 2)
    for (nbeta, gamma), best in calibration.recommended.items():
        rows = [r for r in calibration.rows if (r.nbeta, r.gamma) == (nbeta, gamma)]
        eps = np.array([r.epsilon for r in rows])
        lam = np.array([r.lambdahat for r in rows])
        std = np.array([r.lambdahat_std for r in rows])
        label = f"nβ={nbeta:.3g}, γ={gamma:.3g}"
        (line,) = ax_l.plot(eps, lam, "o-", label=label)
        ax_l.fill_between(eps, lam - std, lam + std, color=line.get_color(), alpha=0.2)
        ax_n.plot(eps, [r.noise_fraction for r in rows], "o-", color=line.get_color(), label=label)
        bad = eps[[r.divergence_rate > 0 for r in rows]]
        for ax in (ax_l, ax_n):
            ax.plot(bad, np.zeros_like(bad), "x", color=line.get_color(), ms=8)
            if best is not None:
                ax.axvline(best, color=line.get_color(), ls="--", lw=1)
    ax_l.set(xscale="log", xlabel="ε", ylabel="λ̂", title="λ̂ per ε (x: diverged, dashed: recommended)")
    ax_n.set(xscale="log", xlabel="ε", ylabel="εP / E‖Δw‖²", title="noise share of the step", ylim=(0, 1.05))
    ax_l.legend(fontsize=7)
    return fig
