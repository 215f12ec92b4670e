"""Slow scientific check: λ̂ tracks Aoyagi's exact λ on random rank-reduced DLNs.

Six seeded random `rand_rank` DLNs (2-4 layers, widths 5-10, input 5-10, half of
the matrices rank-reduced) at their true parameter w*, with the hyperparameters
below. Measured when written (CPU, float32, 4 chains): relative errors +3.5%,
+10.2%, +4.7%, +1.1%, +2.9%, +2.3% (median 3.2%, max 10.2%; R-hat <= 1.03).
"""
import numpy as np
import pytest
import torch

from tests.conftest import load_experiment

SGLD = dict(epsilon=2e-5, gamma=1.0, num_steps=10_000, num_burnin_steps=5_000, batch_size=500, num_chains=4)
N = 10_000  # nβ = n / log n; ε nβ ≈ 0.02 mixes the sharp directions in tens of steps


def _architectures(count=6, seed=0):
    rng = np.random.default_rng(seed)
    for i in range(count):
        layers = int(rng.integers(2, 5))
        widths = [int(v) for v in rng.integers(5, 11, size=layers)]
        yield int(rng.integers(5, 11)), widths, 100 + i


@pytest.mark.slow
def test_lambdahat_tracks_aoyagi_on_random_rank_reduced_dlns():
    torch.set_num_threads(1)  # tiny matmuls: one thread is fastest and steadiest
    expt = load_experiment("expt_dln")
    rows = []
    for input_dim, widths, seed in _architectures():
        res = expt.ex.run(config_updates=dict(
            layer_widths=widths, input_dim=input_dim, num_training_data=N, device="cpu", dtype="float32",
            true_param_config=dict(method="rand_rank", prop_rank_reduce=0.5, init="torch"), sgld_config=SGLD, seed=seed,
        )).result
        rows.append((input_dim, widths, res["true_rank"], res["true_lambda"], res["lambdahat"], res["relative_error"]))
    for row in rows:
        print("input_dim=%d widths=%s rank=%d λ=%.1f λ̂=%.2f rel.err=%+.3f" % row)
    errors = np.abs([r[-1] for r in rows])
    assert any(r[2] < min(r[0], *r[1]) for r in rows), "the sample should include rank-reduced products"
    assert np.median(errors) <= 0.10, errors
    assert errors.max() <= 0.25, errors


# --- Issue 12 §1 acceptance: λ̂ tracks λ at depth, random (Haiku-init) teachers -------------
# The paper table's row for n = 1e5 (widths 5–100, 2–10 layers): ε = 5e-7, batch 500, 10k steps;
# γ = 1 as in the original's sweep generator; the last 10% of each trace as in the original's
# plots (BURN_IN_PROP = 0.9); 4 chains. Teachers: true_param_config.method=random with the
# Haiku init (the default). Architectures: the first four 6–12-matrix and the first ≥20-matrix
# draws of np.random.default_rng(0) with widths and input dim in 5..20 (no selection).
DEEP_SGLD = dict(epsilon=5e-7, gamma=1.0, num_steps=10_000, batch_size=500, num_chains=4)
DEEP_N = 100_000
DEEP_DLNS = [  # (input_dim, layer_widths, seed)
    (13, [15, 13, 9, 9, 5, 6, 5, 7, 18, 15, 19], 100),
    (11, [20, 16, 15, 13, 13, 19, 9, 18, 15, 5], 101),
    (12, [13, 5, 17, 16, 18, 7, 6, 18, 5, 13, 6, 9], 102),
    (9, [11, 5, 5, 6, 5, 15, 13, 15], 103),
    (17, [11, 18, 11, 17, 10, 8, 17, 19, 6, 5, 15, 10, 14, 7, 18, 12, 19, 17, 16, 8], 108),
]


def _draw_deep_dlns(seed=0):
    """The draw DEEP_DLNS was taken from: 8 with 6–12 matrices, then 4 with 20–24."""
    rng = np.random.default_rng(seed)
    for i in range(12):
        layers = int(rng.integers(6, 13)) if i < 8 else int(rng.integers(20, 25))
        widths = [int(v) for v in rng.integers(5, 21, size=layers)]
        yield int(rng.integers(5, 21)), widths, 100 + i


def test_deep_dlns_are_the_stated_unselected_draw():
    drawn = list(_draw_deep_dlns())
    assert DEEP_DLNS == drawn[:4] + [drawn[8]]
    assert sum(6 <= len(w) <= 12 for _, w, _ in DEEP_DLNS) >= 4 and any(len(w) >= 20 for _, w, _ in DEEP_DLNS)


def test_rank_truncation_losses_match_explicit_low_rank_teachers():
    from models.dln import rank_truncation_losses

    gen = np.random.default_rng(3)
    h_out, h_in, r, n = 6, 5, 4, 2000
    u, _ = np.linalg.qr(gen.normal(size=(h_out, r)))
    v, _ = np.linalg.qr(gen.normal(size=(h_in, r)))
    sv = np.array([3.0, 1.0, 0.5, 0.2])
    m = (u * sv) @ v.T  # (h_out, h_in), rank r
    x = gen.uniform(-10, 10, size=(n, h_in))
    got = rank_truncation_losses(torch.from_numpy(m), torch.from_numpy(x), r).numpy()
    uu, ss, vv = np.linalg.svd(m)
    for k in range(1, r + 1):
        m_low = (uu[:, :k - 1] * ss[:k - 1]) @ vv[:k - 1]  # best rank-(k-1) approximation
        want = ((x @ (m - m_low).T) ** 2).mean()
        # float64 SVDs of a 6x5 matrix agree to ~1e-14 relative; the losses are >= 0.2² · E[x²]/6 ≈ 0.2
        np.testing.assert_allclose(got[k - 1], want, rtol=1e-9)


def test_expt_dln_records_the_rank_gap_of_its_teacher():
    """true_rank_gap = nβ L_n(rank r-1 truncation) ≈ nβ σ_r² E[x_i²] / H_L with E[x_i²] = 100/3 for U(-10, 10)."""
    expt = load_experiment("expt_dln")
    n = 20_000
    run = expt.ex.run(config_updates=dict(
        input_dim=4, layer_widths=[3, 2], num_training_data=n, device="cpu", save_true_param=True,
        sgld_config=dict(num_steps=5, batch_size=50, num_chains=2), mala_acceptance_every=0, seed=1,
    ))
    w = [np.array(run.info["true_param"][f"layers.{i}.weight"]) for i in range(2)]
    sv = np.linalg.svd(w[1] @ w[0], compute_uv=False)
    assert run.result["true_rank"] == 2
    want = n / np.log(n) * sv[-1] ** 2 * (100 / 3) / 2
    # For |v| = 1 and iid uniform entries, Var((v·x)²) / E[(v·x)²]² = 2 - 1.2 Σv_i⁴ <= 1.7 (d = 4), so
    # the sample mean over n = 20000 points has relative sd <= sqrt(1.7 / n) ≈ 0.9%; rtol 5% ≈ 5.4 sd.
    assert run.result["true_rank_gap"] == pytest.approx(want, rel=0.05)
    gaps = run.info["true_rank_truncation_gaps"]
    assert len(gaps) == 2 and gaps[0] > gaps[1] == run.result["true_rank_gap"]


# The original's own estimator falls short at depth too. DLN_lambdahat_bounds.ipynb (cell 20, outputs
# in the notebook) ran 200 random Haiku-init DLNs (2-19 matrices, widths 2-29, inputs U(-10, 10): the
# outputs match those, not the unit ball its printed code draws, README "The DLN experiment"; n = 1e4,
# ε = 1e-5, γ = 10, 5000 steps, batch 500, one chain, whole-trace mean): of the 190 finite
# λ̂, median |λ̂ - λ|/λ is 7.5% for 2-5 matrices, 20% for 6-12 (max 954%) and 36% for 13-19 (median
# signed error -28%); with every width >= 5, the 27 DLNs with 6-12 matrices range from -40% to +78%,
# and the 11 with >= 13 from -66% to -10%.
@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason=(
    "open: these random deep teachers have end-to-end singular values with small rank gaps "
    "nβ·L_n(rank-(k-1) truncation); at ε = 5e-7 and 10k steps λ̂ is off by -37.5%..+9.2% (median |error| 29%) and "
    "the chains are not mixed (docs/llc.md#the-dln-experiment); the original's set-up is the same"))
def test_lambdahat_tracks_aoyagi_on_deep_random_dlns():
    torch.set_num_threads(1)
    expt = load_experiment("expt_dln")
    rows = []
    for input_dim, widths, seed in DEEP_DLNS:
        res = expt.ex.run(config_updates=dict(
            layer_widths=widths, input_dim=input_dim, num_training_data=DEEP_N, device="cpu", dtype="float32",
            true_param_config=dict(method="random"), sgld_config=DEEP_SGLD, mala_acceptance_every=0, seed=seed,
        )).result
        rows.append((len(widths), res["true_rank"], res["true_lambda"], res["lambdahat"], res["relative_error"],
                     res["true_rank_gap"]))
    for row in rows:
        print("matrices=%d rank=%d λ=%.1f λ̂=%.2f rel.err=%+.3f rank gap=%.3g" % row)
    errors = np.abs([r[4] for r in rows])
    assert np.median(errors) <= 0.10, errors
    assert errors.max() <= 0.25, errors
