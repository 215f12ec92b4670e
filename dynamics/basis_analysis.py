"""Summaries of a recorded trajectory in the final network's basis (docs/basis_decomposition.md).

Pure functions on the recorded outputs F_t and the basis of :mod:`dynamics.basis`: the
coefficients β_i(t) of every recording, the learning-order statistics of the run's result
(monotone increments, saturation times) and the statistics of the re-initialised run
(``grad_indep``, ``beta_domin``).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from dynamics.basis import ConjugateKernelBasis, nonnegative_increment_fraction, saturation_times

RISING_LEVEL = 0.95  # the learning phase of β_i ends when it first reaches 0.95 s_i
CHUNK = 16  # recordings per batched projection (bounds the (chunk, N, C) intermediates)


def _chunked(fn, F_all: Tensor) -> Tensor:
    return torch.cat([fn(F_all[i:i + CHUNK]) for i in range(0, len(F_all), CHUNK)])


def trajectory_coefficients(basis: ConjugateKernelBasis, F_all: Tensor, n_basis: int,
                            matrix: bool = False) -> dict[str, np.ndarray]:
    """β_i(t) of every recording (T, k), the relative residual beyond the first n_basis (T,) and,
    with ``matrix``, every β_ij(t) (T, k, k).  F_all: (T, N, C)."""
    out = dict(beta=_chunked(basis.coefficients, F_all).cpu().numpy(),
               residual=_chunked(lambda F: basis.relative_residual(F, n_basis), F_all).cpu().numpy())
    if matrix:
        out["coefficient_matrix"] = _chunked(basis.coefficient_matrix, F_all).cpu().numpy()
    return out


def index_at(times, t) -> int:
    """Index of recording time t; the last index when t is NaN (never reached)."""
    return len(times) - 1 if math.isnan(t) else int(np.searchsorted(times, t))


def learning_order(times: np.ndarray, beta: np.ndarray, s: np.ndarray, n_basis: int, level: float) -> dict:
    """The result's learning-order statistics of β_i, i < n_basis.  times: (T,), beta: (T, k), s: (k,).

    Increments β_i(t_{j+1}) − β_i(t_j) >= 0 are counted from the first step on, and once more
    only while β_i is still rising (until it first reaches RISING_LEVEL · s_i), before the
    plateau where the evaluation outputs jitter with the minibatch noise (and BatchNorm's
    running statistics).  τ_i is the first recording with β_i >= level · s_i.
    """
    tau = saturation_times(times, beta[:, :n_basis], s[:n_basis], level)
    rising_end = saturation_times(times, beta[:, :n_basis], s[:n_basis], RISING_LEVEL)
    return {
        "nonneg_increment_fraction": [nonnegative_increment_fraction(beta[:, i], start=1) for i in range(n_basis)],
        "rising_nonneg_increment_fraction": [
            nonnegative_increment_fraction(beta[: index_at(times, rising_end[i]) + 1, i], start=1)
            for i in range(n_basis)],
        "saturation_times": [None if math.isnan(v) else int(v) for v in tau],
        "saturation_in_order": bool(not np.isnan(tau).any() and np.all(np.diff(tau) >= 0)),
    }


def log_beta_and_grad(beta: np.ndarray, grad_norms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """log|β_i| and log‖∇β_i‖ of the re-initialised run (both (R, num)); the smallest float keeps 0 finite."""
    tiny = np.finfo(float).tiny
    return np.log(np.abs(beta) + tiny), np.log(grad_norms + tiny)


def rerun_summary(r: dict, grad_indep: bool, beta_domin: bool) -> dict:
    """The result entries of the re-initialised run r (gradients_along_run's dict)."""
    out = {}
    if grad_indep:
        out["grad_indep_max_abs_cos"] = float(r["max_abs_cos"].max())
    if beta_domin:
        log_beta, log_grad = log_beta_and_grad(r["beta"], r["grad_norms"])
        out["beta_domin_corr"] = [float(np.corrcoef(log_grad[:, i], log_beta[:, i])[0, 1])
                                  for i in range(log_beta.shape[1])]
    return out


def initial_coefficients(basis: ConjugateKernelBasis, F_0: Tensor, F_final: Tensor) -> dict[str, np.ndarray]:
    """small_init: |β_ij(θ_0)| and β_ij(θ_0) on every u_i v_jᵀ (k, k), and the final network's
    coefficient matrix, diag(s) up to rounding (a check on the basis).  F_0, F_final: (N, C)."""
    beta0 = basis.coefficient_matrix(F_0)
    return dict(small_init=beta0.abs().cpu().numpy(), small_init_signed=beta0.cpu().numpy(),
                final_coefficient_matrix=basis.coefficient_matrix(F_final).cpu().numpy())


def basis_summary(basis: ConjugateKernelBasis, beta: np.ndarray, F_final: Tensor, n_basis: int) -> dict:
    """The result's description of the basis: its size, Φ's dimension and rank, s_i and β_i(0) for
    i < n_basis, and the final outputs' residual beyond all k functions (0 up to rounding)."""
    k = basis.size
    return {"num_basis_functions": k, "feature_dim": basis.V.shape[0], "feature_rank": basis.feature_rank,
            "singular_values": basis.s.cpu().numpy()[:n_basis], "beta_initial": beta[0, :n_basis],
            "final_relative_residual": float(basis.relative_residual(F_final, k))}
