"""Convergence diagnostics for multi-chain traces."""
from __future__ import annotations

import numpy as np


def split_rhat(draws: np.ndarray) -> float:
    """Split-R-hat of Gelman et al. (BDA3, eq. 11.4) for draws of shape (chains, steps).

    Each chain is cut in half, so a drifting single chain is also caught.
    Written here rather than imported from arviz: it is a few lines of numpy, and
    arviz would pull xarray and friends into every run's environment.

    Returns NaN for fewer than 2 chains or fewer than 4 draws per chain.
    """
    draws = np.asarray(draws, dtype=np.float64)
    if draws.ndim != 2:
        raise ValueError(f"draws must have shape (chains, steps); got {draws.shape}")
    chains, steps = draws.shape
    if chains < 2 or steps < 4:
        return float("nan")
    half = steps // 2
    split = np.concatenate([draws[:, :half], draws[:, steps - half:]], axis=0)  # (2C, half)
    n = split.shape[1]
    chain_means = split.mean(axis=1)
    between = n * chain_means.var(ddof=1)
    within = split.var(axis=1, ddof=1).mean()
    if within == 0:
        return float("nan") if between == 0 else float("inf")
    var_plus = (n - 1) / n * within + between / n
    return float(np.sqrt(var_plus / within))
