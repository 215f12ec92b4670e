"""The five samplers on the one chain driver: SGNHT and SGHMC updates, λ = d/2, Aoyagi's λ, selection."""
import math

import pytest
import torch
from torch.func import grad
from torch.utils.data import TensorDataset

from llc.aoyagi import dln_learning_coefficient
from llc.chain import ChainDivergenceError, chain_generators
from llc.estimate import estimate_llc, estimate_llc_flat
from llc.samplers import SAMPLERS
from llc.sghmc import SGHMCConfig, SGNHTConfig, run_sghmc, run_sgnht
from llc.sgld import SGLDConfig
from tests.cases import dln_case, mse


def _draws(seed, c, T, B, n, P, dtype):
    """Chain c's numbers in the driver's order: v_0, then one block of T indices and T noise vectors."""
    g = chain_generators(seed, c + 1, torch.device("cpu"))[c]
    v0 = torch.randn(P, generator=g, dtype=dtype)
    idx = torch.randint(0, n, (T, B), generator=g)
    xi = torch.randn(T, P, generator=g, dtype=dtype)
    return v0, idx, xi


def _force(loss, w, w_star, xb, yb, nbeta, gamma):
    return nbeta * grad(loss)(w, xb, yb) + gamma * (w - w_star)


def reference_sghmc(loss, w_star, x, y, cfg, seed):
    """Chen et al. (2014) eq. 15 with β̂ = 0, one chain at a time, in the learning-rate variables."""
    eps, a, P = cfg.epsilon, cfg.friction, w_star.numel()
    traces, ws = [], []
    for c in range(cfg.num_chains):
        v0, idx, xi = _draws(seed, c, cfg.num_steps, cfg.batch_size, x.shape[0], P, w_star.dtype)
        w, v, trace = w_star.clone(), math.sqrt(eps) * v0, []
        for t in range(cfg.num_steps):
            xb, yb = x[idx[t]], y[idx[t]]
            trace.append(float(loss(w, xb, yb)))
            v = v - eps * _force(loss, w, w_star, xb, yb, cfg.nbeta, cfg.gamma) - a * v + math.sqrt(2 * a * eps) * xi[t]
            w = w + v
        traces.append(trace)
        ws.append(w)
    return torch.tensor(traces, dtype=torch.float64), torch.stack(ws)


def reference_sgnht(loss, w_star, x, y, cfg, seed):
    """devinterp's SGNHT step order (force, friction ζ on the updated v, noise, move, thermostat), one chain."""
    eps, A, P = cfg.epsilon, cfg.diffusion_factor, w_star.numel()
    traces, ws, zetas = [], [], []
    for c in range(cfg.num_chains):
        v0, idx, xi = _draws(seed, c, cfg.num_steps, cfg.batch_size, x.shape[0], P, w_star.dtype)
        w, v, zeta, trace = w_star.clone(), math.sqrt(eps) * v0, cfg.resolve_thermostat_init(), []
        for t in range(cfg.num_steps):
            xb, yb = x[idx[t]], y[idx[t]]
            trace.append(float(loss(w, xb, yb)))
            v = v - eps * _force(loss, w, w_star, xb, yb, cfg.nbeta, cfg.gamma)
            v = (1.0 - zeta) * v + math.sqrt(2 * A * eps) * xi[t]
            w = w + v
            zeta = zeta + float(v @ v) / P - eps
        traces.append(trace)
        ws.append(w)
        zetas.append(zeta)
    return torch.tensor(traces, dtype=torch.float64), torch.stack(ws), torch.tensor(zetas, dtype=w_star.dtype)


# Float64 throughout: the vectorised step and the reference sum the same terms in another order
# ((1-ζ)v vs v - ζv, one backward through vmap vs grad), ~1e-16 relative per op; 40 steps of a
# contracting map keep that below ~1e-13 relative. Losses are means of squared residuals near
# zero at w*, whose rounding scales with mean(y²): atol 1e-13·mean(y²) (as tests/test_sgld.py).
def _assert_close_trace(trace, ref, y):
    torch.testing.assert_close(trace, ref, rtol=1e-10, atol=1e-13 * float((y ** 2).mean()))


def test_sghmc_matches_unvectorised_reference():
    _, loss, w_star, x, y = dln_case(n=60)
    cfg = SGHMCConfig(epsilon=1e-4, gamma=3.0, num_steps=40, batch_size=7, num_chains=3, nbeta=11.0, friction=0.2)
    out = run_sghmc(loss, w_star, x, y, cfg, seed=5)
    ref_trace, ref_w = reference_sghmc(loss, w_star, x, y, cfg, seed=5)
    _assert_close_trace(out.loss, ref_trace, y)
    # Weights are O(1): 1e-12 absolute is ~1e4 ulp, a margin over 40 steps of reordered sums.
    torch.testing.assert_close(out.final_w, ref_w, rtol=1e-10, atol=1e-12)
    assert out.thermostat is None


def test_sgnht_matches_unvectorised_reference():
    _, loss, w_star, x, y = dln_case(n=60)
    cfg = SGNHTConfig(epsilon=1e-4, gamma=3.0, num_steps=40, batch_size=7, num_chains=3, nbeta=11.0,
                      diffusion_factor=0.05, thermostat_init=0.2)
    out = run_sgnht(loss, w_star, x, y, cfg, seed=5)
    ref_trace, ref_w, ref_zeta = reference_sgnht(loss, w_star, x, y, cfg, seed=5)
    _assert_close_trace(out.loss, ref_trace, y)
    torch.testing.assert_close(out.final_w, ref_w, rtol=1e-10, atol=1e-12)
    # ζ moves by |v|²/P - ε ~ ε = 1e-4 per step from 0.2: its rounding is ~1e-16 absolute per step.
    torch.testing.assert_close(out.thermostat, ref_zeta, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("run, cfg_cls", [(run_sghmc, SGHMCConfig), (run_sgnht, SGNHTConfig)])
def test_momentum_chain_is_independent_of_number_of_chains(run, cfg_cls):
    _, loss, w_star, x, y = dln_case(n=80)
    def chains(c):
        return run(loss, w_star, x, y, cfg_cls(epsilon=1e-5, num_steps=150, batch_size=10, num_chains=c), seed=2)

    two, three = chains(2), chains(3)
    torch.testing.assert_close(two.loss, three.loss[:2], rtol=0, atol=0)  # vmapped: bit for bit
    torch.testing.assert_close(two.final_w, three.final_w[:2], rtol=0, atol=0)
    assert not torch.equal(three.loss[0], three.loss[1])


def test_momentum_divergence_names_sampler_chain_and_step():
    _, loss, w_star, x, y = dln_case(n=80)
    match = r"SGHMC diverged: chain \d+ has non-finite loss .* at step \d+"
    with pytest.raises(ChainDivergenceError, match=match) as err:
        run_sghmc(loss, w_star, x, y, SGHMCConfig(epsilon=1.0, num_steps=300, batch_size=10, num_chains=2), seed=0)
    assert 0 < err.value.step < 300


@pytest.mark.parametrize("cls, kwargs, key", [
    (SGHMCConfig, dict(friction=0.0), "friction"),
    (SGHMCConfig, dict(friction=1.5), "friction"),
    (SGHMCConfig, dict(compile=True), "compile"),
    (SGNHTConfig, dict(diffusion_factor=0.0), "diffusion_factor"),
    (SGNHTConfig, dict(thermostat_init=float("nan")), "thermostat_init"),
    (SGNHTConfig, dict(epsilon=-1.0), "epsilon"),
])
def test_momentum_config_validation_names_the_key(cls, kwargs, key):
    with pytest.raises(ValueError, match=key):
        cls(**kwargs)


def test_sampler_selection_fails_before_compute_and_names_the_argument():
    net, _, _, x, y = dln_case(n=50)
    kw = dict(num_steps=10, batch_size=5, num_chains=2, device="cpu")
    allowed = r"\('sgld', 'psgld', 'mala', 'sgnht', 'sghmc'\)"
    with pytest.raises(ValueError, match=r"sampler must be one of " + allowed + r"; got 'hmc'"):
        estimate_llc(net, mse, (x, y), sampler="hmc", **kw)
    with pytest.raises(ValueError, match=r"'friction' is not an option of sampler='sgnht'"):
        estimate_llc(net, mse, (x, y), sampler="sgnht", sampler_options={"friction": 0.1}, **kw)
    with pytest.raises(ValueError, match="friction must be"):
        estimate_llc(net, mse, (x, y), sampler="sghmc", sampler_options={"friction": -1}, **kw)
    with pytest.raises(ValueError, match="sampler: a Dataset"):
        estimate_llc(net, mse, TensorDataset(x, y), sampler="mala", **kw)


def test_estimate_llc_runs_the_chosen_sampler_with_its_options():
    net, loss, w_star, x, y = dln_case(n=50)
    kw = dict(epsilon=1e-5, gamma=2.0, num_steps=30, batch_size=5, num_chains=2)
    res = estimate_llc(net, mse, (x, y), sampler="sghmc", sampler_options={"friction": 0.3}, seed=1, device="cpu", **kw)
    assert isinstance(res.config, SGHMCConfig) and res.config.friction == 0.3
    direct = run_sghmc(loss, w_star, x, y, SGHMCConfig(friction=0.3, **kw), seed=1)
    # Same draws and the same kernel; the module path only adds functional_call's views.
    torch.testing.assert_close(torch.as_tensor(res.loss_trace), direct.loss, rtol=1e-12,
                               atol=1e-13 * float((y ** 2).mean()))


# Per-sampler step size on the regular model below (Hessian eigenvalues h ≈ 22, nβ = n/log n ≈ 263):
# ε nβ h ≈ 0.06 keeps SGLD's discretisation bias (≈ ε nβ h / 4 relative) near 1.5% and the momentum
# samplers' oscillation (ω = sqrt(ε nβ h) ≈ 0.24 rad/step) well resolved; pSGLD's ε is dimensionless
# (every direction relaxes at ~ε/2 per step, llc.psgld), so it takes 0.1.
EPS_REGULAR = {"sgld": 1e-5, "psgld": 1e-1, "mala": 1e-5, "sgnht": 1e-5, "sghmc": 1e-5}


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_each_sampler_recovers_half_the_dimension_on_a_regular_model(sampler):
    """Linear regression (4 -> 3, d = 12) is regular: λ = d/2 = 6, within 3.5 standard errors of the chain mean.

    γ = 1 against nβ h ≈ 5800 shifts λ̂ by ½ Σ γ/(nβ h + γ) ≈ 0.001, far below the ~0.1 standard error.
    """
    _, loss, w, x, y = dln_case(input_dim=4, widths=(3,), n=2000, seed=1)
    cfg = SGLDConfig(epsilon=EPS_REGULAR[sampler], gamma=1.0, num_steps=3000, batch_size=200, num_chains=8,
                     num_burnin_steps=750, compile=False)
    res = estimate_llc_flat(loss, w, x, y, cfg, seed=0, sampler=sampler)
    se = res.lambdahat_std / math.sqrt(cfg.num_chains)
    assert abs(res.lambdahat - 6.0) < 3.5 * se, (res.lambdahat, se)
    assert 0 < se < 0.5  # the chains spread (so the test can fail), and not so much that it cannot

# (ε, steps) per sampler on the DLN below: its curvature is higher than the regular model's, and the
# momentum samplers' O(ε) bias (discretisation and minibatch-gradient noise, which SGNHT's thermostat
# only corrects on average) is larger than SGLD's: measured at seed 0, SGNHT is +18% at ε = 2e-6 and
# +5% at 5e-7, SGHMC +4.5% at 2e-6, SGLD -2.5% at 2e-6, pSGLD +1.3% at 3e-2, MALA 0% (no ε bias).
DLN_SETTINGS = {"sgld": (2e-6, 4000), "psgld": (3e-2, 4000), "mala": (1e-5, 4000), "sgnht": (5e-7, 8000),
                "sghmc": (2e-6, 4000)}


@pytest.mark.slow
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_each_sampler_matches_aoyagis_lambda_on_a_small_dln(sampler):
    """DLN 3 -> 4 -> 2 with a rank-2 teacher: Aoyagi's λ = 3 (d = 20, so the model is singular), within 10%."""
    net, loss, w, x, y = dln_case(input_dim=3, widths=(4, 2), n=5000, seed=0)
    mats = [p for _, p in net.named_parameters()]
    rank = int(torch.linalg.matrix_rank(mats[1] @ mats[0]))
    lam = dln_learning_coefficient(3, [4, 2], rank)[0]
    assert (rank, lam) == (2, 3.0)
    eps, steps = DLN_SETTINGS[sampler]
    cfg = SGLDConfig(epsilon=eps, gamma=1.0, num_steps=steps, batch_size=200, num_chains=8,
                     num_burnin_steps=steps // 4, compile=False)
    res = estimate_llc_flat(loss, w, x, y, cfg, seed=0, sampler=sampler, segments=[m.numel() for m in mats])
    assert abs(res.lambdahat - lam) < 0.10 * lam, res.lambdahat
