"""Sacred records of the basis-decomposition experiment: metric columns, npz artifacts and the
re-initialised run's metrics (docs/basis_decomposition.md)."""
from __future__ import annotations

import os
import tempfile

import numpy as np

from dynamics.basis_analysis import log_beta_and_grad, rerun_summary


def log_columns(run, name: str, values: np.ndarray, times: np.ndarray) -> None:
    """Log column i of values (T, m) as metric ``name.format(i + 1)`` at the recording times (T,)."""
    for i in range(values.shape[1]):
        for t, v in zip(times.tolist(), values[:, i].tolist()):
            run.log_scalar(name.format(i + 1), float(v), int(t))


def add_npz(run, name: str, arrays: dict) -> None:
    """Save arrays as the compressed artifact ``name``."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, name)
        np.savez_compressed(path, **arrays)
        run.add_artifact(path)


def record_rerun(run, r: dict, grad_indep: bool, beta_domin: bool) -> dict:
    """Log and save the re-initialised run r (gradients_along_run's dict); return its result entries."""
    if grad_indep:
        log_columns(run, "grad_indep/max_abs_cos", r["max_abs_cos"][:, None], r["times"])
    if beta_domin:
        log_beta, log_grad = log_beta_and_grad(r["beta"], r["grad_norms"])  # (R, num)
        log_columns(run, "beta_domin/log_abs_beta_{}", log_beta, r["times"])
        log_columns(run, "beta_domin/log_grad_norm_{}", log_grad, r["times"])
    add_npz(run, "rerun.npz", r)
    return rerun_summary(r, grad_indep, beta_domin)
