"""llc.diagnostics: rank R-hat, bulk/tail ESS, the trend test and LLCResult's healthy flag."""
import numpy as np
import pytest
import torch
from scipy import stats

from llc.diagnostics import (
    ESS_MIN,
    RHAT_MAX,
    diagnose,
    ess_bulk,
    ess_tail,
    rank_rhat,
    split_rhat,
    trend_pvalues,
)
from llc.estimate import estimate_llc
from llc.psgld import llc_result
from llc.sgld import SGLDConfig


def ar1(rng, chains, m, rho):
    """Stationary Gaussian AR(1) chains (chains, m): x_t = ρ x_{t-1} + e_t, Var x = 1/(1-ρ²)."""
    e = rng.normal(size=(chains, m))
    x = np.empty((chains, m))
    x[:, 0] = e[:, 0] / np.sqrt(1 - rho**2)
    for t in range(1, m):
        x[:, t] = rho * x[:, t - 1] + e[:, t]
    return x


def _bda3_rhat(z):
    """Split chains already given: classic R-hat of BDA3 eq. 11.4 on (M, n)."""
    n = z.shape[1]
    w = z.var(axis=1, ddof=1).mean()
    b = n * z.mean(axis=1).var(ddof=1)
    return np.sqrt(((n - 1) / n * w + b / n) / w)


def _rank_normalise(a):
    """Vehtari et al. (2021) eq. 14: z = Φ⁻¹((r − 3/8) / (S + 1/4)), r pooled average ranks."""
    r = stats.rankdata(a, method="average").reshape(a.shape)
    return stats.norm.ppf((r - 3 / 8) / (a.size + 1 / 4))


def _reference_rank_rhat(draws):
    half = draws.shape[1] // 2
    split = np.concatenate([draws[:, :half], draws[:, -half:]])
    bulk = _bda3_rhat(_rank_normalise(split))
    folded = np.abs(split - np.median(split))
    return max(bulk, _bda3_rhat(_rank_normalise(folded)))


@pytest.mark.parametrize("shift", [0.0, 0.7])
def test_rank_rhat_matches_the_paper_formula(shift):
    rng = np.random.default_rng(3)
    draws = rng.standard_t(df=3, size=(3, 41))  # odd length: the middle draw is dropped by the split
    draws[1] += shift
    # Same arithmetic in a different order: agreement to float64 rounding of sums over 120 numbers.
    assert rank_rhat(draws) == pytest.approx(_reference_rank_rhat(draws), rel=1e-12)


def test_rank_rhat_differs_from_classic_on_heavy_tails_and_catches_a_scale_mismatch():
    rng = np.random.default_rng(0)
    draws = rng.normal(size=(4, 2000))
    draws[0] *= 3.0  # same mean, wider chain: the classic R-hat barely moves, the folded one sees it
    assert split_rhat(draws) < RHAT_MAX < rank_rhat(draws)


def test_ess_of_ar1_chains_matches_the_closed_form():
    # AR(1): τ = (1 + ρ)/(1 − ρ) = 3, ESS = C m / τ. Sokal's error of τ̂ over a window M ≈ 5τ is
    # sqrt(2 (2M + 1) / N) ≈ 2.8% for N = 80 000, so 10% is > 3.5σ.
    x = ar1(np.random.default_rng(1), 4, 20000, 0.5)
    assert ess_bulk(x) == pytest.approx(80000 / 3, rel=0.10)
    iid = np.random.default_rng(2).normal(size=(4, 20000))
    assert ess_tail(iid) == pytest.approx(80000, rel=0.10)
    assert ess_bulk(ar1(np.random.default_rng(3), 4, 200, 0.99)) < ESS_MIN  # τ ≈ 199: ~4 draws' worth


def test_trend_test_is_calibrated_on_autocorrelated_chains_and_detects_drift():
    rng = np.random.default_rng(0)
    x = ar1(rng, 300, 2000, 0.9)
    p = trend_pvalues(x)
    # Without the ESS correction the OLS test rejects ~60% of stationary ρ = 0.9 chains at 5%.
    # Corrected it is near 5%: Binomial(300, 0.05) has sd 1.3%, and the ESS estimate adds a little.
    assert 0.01 < (p < 0.05).mean() < 0.10
    # Slope 6/2000 against sd(b) = sqrt(Var x · τ / Σ(t − t̄)²) = sqrt(5.26 · 19 / 6.7e8) = 3.9e-4:
    # z ≈ 7.7 ± 1, so p < 1e-5 (z > 4.4) holds with > 3σ to spare for each of 5 chains.
    drift = x[:5] + np.linspace(0, 6.0, 2000)
    assert (trend_pvalues(drift) < 1e-5).all()
    assert np.isnan(trend_pvalues(np.ones((2, 10)))).all()


def test_diagnose_healthy_and_each_unhealthy_reason():
    rng = np.random.default_rng(5)
    good = rng.normal(size=(4, 1000))
    d = diagnose(good, lambdahat=2.0)
    assert d.healthy and d.reasons == []
    shifted = good.copy()
    shifted[2] += 1.0
    assert any("R-hat" in r for r in diagnose(shifted, 2.0).reasons)
    assert any("ESS" in r for r in diagnose(ar1(rng, 4, 200, 0.99), 2.0).reasons)
    assert [r for r in diagnose(good, -0.5).reasons] == ["λ̂ = -0.5 is negative"]
    trending = good.copy()
    trending[1] += np.linspace(0, 1.0, 1000)
    reasons = diagnose(trending, 2.0).reasons
    assert any("chain(s) [1] still trending" in r for r in reasons)
    short = diagnose(good[:, :3], 2.0)
    assert not short.healthy and "only 3 post-burn-in draws" in short.reasons[0]
    one = diagnose(good[:1], 2.0)  # one chain: no R-hat, and that alone is not a failure
    assert np.isnan(one.rhat_rank) and one.healthy


def test_every_llc_result_carries_diagnostics_on_its_post_burnin_trace():
    # llc.psgld builds LLCResult itself: its results get the same diagnostics.
    trace = torch.from_numpy(np.random.default_rng(0).normal(1.0, 0.1, size=(3, 500)))
    res = llc_result(trace, init_loss=0.5, nbeta=10.0, burnin=100, config=SGLDConfig())
    post = trace[:, 100:].numpy()
    assert res.rhat == split_rhat(post)  # the old field keeps its meaning
    assert res.rhat_rank == rank_rhat(post) and res.ess_bulk == ess_bulk(post) and res.ess_tail == ess_tail(post)
    np.testing.assert_allclose(res.lambdahat_trace()[:, 100:].mean(1), res.lambdahat_per_chain, rtol=1e-12)
    s = res.summary()
    assert s["healthy"] is True and s["health_reasons"] == [] and s["ess_bulk"] == res.ess_bulk


def _regular_problem():
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 1).double()
    x = torch.randn(500, 3, dtype=torch.float64)
    y = net(x).detach() + 0.1 * torch.randn(500, 1, dtype=torch.float64)
    return net, x, y


def test_estimate_llc_healthy_on_a_regular_model_and_flags_a_short_burnin():
    net, x, y = _regular_problem()
    mse = torch.nn.functional.mse_loss
    ok = estimate_llc(net, mse, (x, y), epsilon=1e-3, num_steps=2000, num_chains=4, num_burnin_steps=500)
    assert ok.healthy, ok.health_reasons
    # ε = 1e-5 relaxes over ~2/(ε nβ) ≈ 2500 steps: after 400 steps the loss is still rising.
    bad = estimate_llc(net, mse, (x, y), epsilon=1e-5, num_steps=400, num_chains=4, num_burnin_steps=0)
    assert not bad.healthy and any("trending" in r for r in bad.health_reasons)


def test_trace_plot_draws_each_chain_and_its_running_lambdahat():
    from tracking.traceplot import plot_llc_trace

    trace = torch.from_numpy(np.random.default_rng(1).normal(1.0, 0.1, size=(2, 300)))
    res = llc_result(trace, init_loss=0.5, nbeta=10.0, burnin=100, config=SGLDConfig())
    fig = plot_llc_trace(res, title="demo")
    ax_trace, ax_run = fig.axes
    lines = ax_trace.get_lines()
    np.testing.assert_array_equal(lines[1].get_ydata(), res.lambdahat_trace()[1])
    run_ends = [ln.get_ydata()[-1] for ln in ax_run.get_lines()[:2]]
    np.testing.assert_allclose(run_ends, res.lambdahat_per_chain, rtol=1e-12)  # running mean ends at λ̂_c
    assert "rank R-hat" in fig._suptitle.get_text()
