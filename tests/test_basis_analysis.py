"""dynamics.basis_analysis and tracking.basis_record on hand-made trajectories with known answers."""
import math

import numpy as np
import pytest

from dynamics.basis_analysis import index_at, learning_order, log_beta_and_grad, rerun_summary
from tracking.basis_record import log_columns

TIMES = np.array([0, 10, 20, 30, 40])
# β_1 rises to s_1 = 1 by t = 20, then jitters; β_2 rises by t = 30 with one dip; β_3 never reaches 0.8 s_3
BETA = np.array([[0.0, 0.0, 0.0],
                 [0.5, 0.1, 0.1],
                 [1.0, 0.05, 0.2],
                 [0.98, 0.9, 0.3],
                 [1.0, 1.0, 0.4]])
S = np.array([1.0, 1.0, 1.0])


def test_index_at_finds_the_time_and_maps_never_to_the_last_recording():
    assert index_at(TIMES, 20.0) == 2
    assert index_at(TIMES, math.nan) == len(TIMES) - 1


def test_learning_order_counts_by_hand():
    got = learning_order(TIMES, BETA, S, n_basis=3, level=0.8)
    # increments from the first step on (3 per column): β_1 +,+,−... = [+0.5, −0.02, +0.02] -> 2/3
    # β_2: [−0.05, +0.85, +0.1] -> 2/3; β_3: all rising -> 1
    assert got["nonneg_increment_fraction"] == pytest.approx([2 / 3, 2 / 3, 1.0], abs=1e-12)
    # rising phase ends at 0.95 s_i: β_1 at t = 20 (index 2: increments from index 1: [+0.5]) -> 1;
    # β_2 at t = 40 (index 4: all three) -> 2/3; β_3 never: the whole series -> 1
    assert got["rising_nonneg_increment_fraction"] == pytest.approx([1.0, 2 / 3, 1.0], abs=1e-12)
    assert got["saturation_times"] == [20, 30, None]
    assert got["saturation_in_order"] is False  # τ_3 missing
    assert learning_order(TIMES, BETA, S, n_basis=2, level=0.8)["saturation_in_order"] is True


def test_rerun_summary_matches_a_direct_correlation():
    rng = np.random.default_rng(0)
    r = dict(beta=rng.normal(size=(6, 2)), grad_norms=rng.uniform(0.1, 2, size=(6, 2)), max_abs_cos=rng.uniform(size=6))
    got = rerun_summary(r, grad_indep=True, beta_domin=True)
    assert got["grad_indep_max_abs_cos"] == r["max_abs_cos"].max()
    for i in range(2):
        x, y = np.log(r["grad_norms"][:, i]), np.log(np.abs(r["beta"][:, i]))
        dx, dy = x - x.mean(), y - y.mean()
        direct = np.sum(dx * dy) / math.sqrt(np.sum(dx ** 2) * np.sum(dy ** 2))
        # two float64 formulas of one number in [-1, 1]: they agree to rounding (~1e-15)
        assert got["beta_domin_corr"][i] == pytest.approx(direct, abs=1e-12)
    assert set(rerun_summary(r, grad_indep=False, beta_domin=False)) == set()


def test_log_of_zero_stays_finite():
    log_beta, log_grad = log_beta_and_grad(np.zeros((1, 1)), np.zeros((1, 1)))
    assert np.isfinite(log_beta).all() and np.isfinite(log_grad).all()


def test_log_columns_names_each_column_and_keeps_the_times():
    logged = []

    class Run:
        def log_scalar(self, name, value, step):
            logged.append((name, value, step))

    log_columns(Run(), "basis/beta_{}", np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([0, 5]))
    assert logged == [("basis/beta_1", 1.0, 0), ("basis/beta_1", 3.0, 5), ("basis/beta_2", 2.0, 0),
                      ("basis/beta_2", 4.0, 5)]
