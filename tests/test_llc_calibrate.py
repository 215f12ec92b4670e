"""calibrate_epsilon: grid validation, the noise share against the OU closed form, the recommendation."""
import math

import numpy as np
import pytest
import torch
from torch.func import hessian

from llc.calibrate import calibrate_epsilon
from llc.estimate import flat_loss_for_module

mse = torch.nn.functional.mse_loss


def _regression(noise=0.0):
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 1).double()
    x = torch.randn(500, 3, dtype=torch.float64)
    return net, x, net(x).detach() + noise * torch.randn(500, 1, dtype=torch.float64)


@pytest.mark.parametrize("bad", [[1e-3, 0.0], [-1e-4], [float("nan")], []])
def test_non_positive_epsilons_fail_naming_the_argument(bad):
    net, x, y = _regression()
    with pytest.raises(ValueError, match="epsilons"):
        calibrate_epsilon(net, mse, (x, y), bad, num_steps=10)


def test_other_bad_grids_fail_before_compute():
    net, x, y = _regression()
    with pytest.raises(ValueError, match=r"nbetas must hold finite numbers > 0 or None; bad: \[0\]"):
        calibrate_epsilon(net, mse, (x, y), [1e-3], nbetas=[None, 0], num_steps=10)
    with pytest.raises(ValueError, match=r"gammas must hold finite numbers >= 0; bad: \[-1.0\]"):
        calibrate_epsilon(net, mse, (x, y), [1e-3], gammas=[-1.0], num_steps=10)
    with pytest.raises(ValueError, match="min_noise_fraction"):
        calibrate_epsilon(net, mse, (x, y), [1e-3], min_noise_fraction=2.0, num_steps=10)


def test_noise_share_and_lambdahat_match_the_discretised_ou_process():
    # Linear regression on noiseless data: L_n is exactly quadratic with Hessian H. Per eigenvalue h,
    # a = nβ h + γ, the discretised OU chain has stationary variance 1/(a(1 − εa/4)), so
    # E‖Δw‖² = ε Σ 1/(1 − εa/4) and the noise share is P / Σ 1/(1 − εa/4).
    net, x, y = _regression()
    loss, w = flat_loss_for_module(net, mse, torch.float64, torch.device("cpu"))
    h = torch.linalg.eigvalsh(hessian(lambda v: loss(v, x, y))(w))
    nbeta, gamma, eps = 500 / math.log(500), 10.0, [1e-3, 4e-3, 8e-3]
    a = nbeta * h + gamma
    cal = calibrate_epsilon(net, mse, (x, y), eps, gammas=[gamma], num_steps=2000, batch_size=500, seed=1)
    for e, row in zip(eps, cal.rows):
        share = float(4 / (1 / (1 - e * a / 4)).sum())
        # MC error of mean ‖Δw‖² over 4 chains × 1000 steps ≈ 1.1%; with-replacement minibatches add
        # gradient noise the OU formula omits (measured ≈ 1.5% lower share): 0.03 covers both.
        assert row.noise_fraction == pytest.approx(share, abs=0.03)
        lam = float((nbeta * h / (2 * a * (1 - e * a / 4))).sum())
        assert row.lambdahat == pytest.approx(lam, rel=0.1)  # 4-chain MC error ≈ 3% here
    assert [r.stable for r in cal.rows] == [True, False, False]  # shares 0.96, 0.83, 0.66 vs 0.9
    assert cal.recommended == {(nbeta, gamma): 1e-3}


def test_divergent_settings_are_reported_and_the_largest_stable_epsilon_recommended():
    net, x, y = _regression(noise=0.1)
    cal = calibrate_epsilon(net, mse, (x, y), [3e-1, 1e-4, 1e-3], nbetas=[None, 20.0], num_steps=300)
    table = cal.table()
    assert list(table["epsilon"]) == [1e-4, 1e-3, 3e-1] * 2  # sorted per (nβ, γ)
    div = table[table["epsilon"] == 3e-1]
    assert (div["divergence_rate"] > 0).all() and not div["stable"].any() and div["lambdahat"].isna().all()
    for (nbeta, gamma), best in cal.recommended.items():
        rows = table[(table["nbeta"] == nbeta) & (table["gamma"] == gamma)]
        assert best == rows[rows["stable"]]["epsilon"].max()
    assert set(cal.recommended) == {(500 / math.log(500), 10.0), (20.0, 10.0)}


def test_calibration_figure_draws_each_curve():
    from tracking.traceplot import plot_calibration

    net, x, y = _regression(noise=0.1)
    cal = calibrate_epsilon(net, mse, (x, y), [1e-4, 1e-3], num_steps=100)
    ax_l, ax_n = plot_calibration(cal).axes
    np.testing.assert_array_equal(ax_l.get_lines()[0].get_ydata(), [r.lambdahat for r in cal.rows])
    np.testing.assert_array_equal(ax_n.get_lines()[0].get_ydata(), [r.noise_fraction for r in cal.rows])


# (sampler, a small ε, a huge ε): pSGLD's ε is dimensionless (llc.psgld), the others' is SGLD's.
SAMPLER_GRIDS = [("sgld", 1e-4, 3e-1), ("sgnht", 1e-4, 3e-1), ("sghmc", 1e-4, 3e-1), ("psgld", 1e-2, 1e8),
                 ("mala", 1e-4, 3e-1)]


@pytest.mark.parametrize("sampler,small,huge", SAMPLER_GRIDS)
def test_every_sampler_calibrates_and_reports_a_huge_epsilon_without_raising(sampler, small, huge):
    net, x, y = _regression(noise=0.1)
    cal = calibrate_epsilon(net, mse, (x, y), [huge, small], gammas=[10.0], num_steps=200, sampler=sampler)
    assert cal.sampler == sampler
    assert [r.epsilon for r in cal.rows] == [small, huge]  # one row per setting, sorted
    ok, bad = cal.rows
    # A regular 4-parameter model: λ = d/2 = 2 in the limit; 200 short steps only promise finite and >= 0.
    assert math.isfinite(ok.lambdahat) and ok.lambdahat >= 0 and ok.divergence_rate == 0.0
    assert math.isfinite(ok.noise_fraction) and 0 < ok.noise_fraction
    assert not bad.stable
    if sampler in ("sgld", "sgnht", "sghmc"):  # εa ≫ 4 on the stiffest direction: every chain blows up
        assert bad.divergence_rate > 0 and math.isnan(bad.lambdahat)
    elif sampler == "mala":  # MALA rejects the non-finite proposals: nothing moves, nothing diverges
        assert bad.divergence_rate == 0.0 and bad.lambdahat == 0.0 and math.isnan(bad.noise_fraction)
    else:  # pSGLD's D ∝ 1/g² bounds the steps: finite but drift-dominated
        assert bad.divergence_rate == 0.0 and bad.noise_fraction < 1e-3
    assert cal.recommended == {(500 / math.log(500), 10.0): small if ok.stable else None}


def test_calibration_sampler_arguments_fail_before_compute_naming_the_argument():
    net, x, y = _regression()
    with pytest.raises(ValueError, match=r"sampler must be one of .*; got 'hmc'"):
        calibrate_epsilon(net, mse, (x, y), [1e-3], sampler="hmc", num_steps=10)
    with pytest.raises(ValueError, match=r"'friction' is not an option of sampler='sgnht'"):
        calibrate_epsilon(net, mse, (x, y), [1e-3], sampler="sgnht", sampler_options={"friction": 0.1}, num_steps=10)
    with pytest.raises(ValueError, match="friction must be"):
        calibrate_epsilon(net, mse, (x, y), [1e-3], sampler="sghmc", sampler_options={"friction": 2.0}, num_steps=10)
    with pytest.raises(ValueError, match=r"sampler_options.adapt_step_size: .* must be False; got True"):
        calibrate_epsilon(net, mse, (x, y), [1e-3], sampler="mala", sampler_options={"adapt_step_size": True},
                          num_steps=10)
    for sampler in ("psgld", "mala", "sghmc"):
        with pytest.raises(ValueError, match="epsilons"):
            calibrate_epsilon(net, mse, (x, y), [1e-3, 0.0], sampler=sampler, num_steps=10)


def test_mala_calibration_at_a_fixed_epsilon_reproduces_run_mala():
    # The calibration row's λ̂ is the fixed-ε MALA run's own: same seed, steps, chains and burn-in.
    from llc.mala import MALAConfig, estimate_llc_mala

    net, x, y = _regression(noise=0.1)
    cal = calibrate_epsilon(net, mse, (x, y), [1e-4], num_steps=100, num_chains=2, sampler="mala", seed=3)
    loss, w = flat_loss_for_module(net, mse, torch.float64, torch.device("cpu"))
    cfg = MALAConfig(epsilon=1e-4, num_steps=100, num_chains=2, num_burnin_steps=50, adapt_step_size=False)
    ref = estimate_llc_mala(loss, w, x, y, cfg, seed=3)
    assert cal.rows[0].lambdahat == ref.llc.lambdahat  # the same computation, so equal, not close
