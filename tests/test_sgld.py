"""SGLD sampler and λ̂ estimator: update rule, streams, reproducibility, failures."""
import math

import numpy as np
import pytest
import torch
from torch.func import grad

from llc.diagnostics import split_rhat
from llc.estimate import estimate_llc, estimate_llc_flat
from llc.sgld import SGLDConfig, SGLDDivergenceError, chain_generators, run_sgld
from tests.cases import dln_case, mse


def test_update_rule_matches_manual_replay():
    """Two steps replayed by hand from the chain's own generator stream."""
    _, loss, w_star, x, y = dln_case(n=50)
    cfg = SGLDConfig(epsilon=1e-3, gamma=3.0, num_steps=2, batch_size=7, num_chains=2, nbeta=11.0)
    out = run_sgld(loss, w_star, x, y, cfg, seed=5)
    for c, g in enumerate(chain_generators(5, 2, torch.device("cpu"))):
        idx = torch.randint(0, 50, (2, 7), generator=g)
        xi = torch.randn(2, w_star.numel(), generator=g, dtype=w_star.dtype)
        w = w_star.clone()
        for t in range(2):
            assert out.loss[c, t].item() == pytest.approx(loss(w, x[idx[t]], y[idx[t]]).item(), rel=1e-12)
            g_t = grad(loss)(w, x[idx[t]], y[idx[t]])
            w = w - 1e-3 / 2 * (11.0 * g_t + 3.0 * (w - w_star)) + math.sqrt(1e-3) * xi[t]
        torch.testing.assert_close(out.final_w[c], w, rtol=1e-12, atol=1e-12)


def test_chain_is_independent_of_number_of_chains():
    _, loss, w_star, x, y = dln_case()
    def chains(c):
        cfg = SGLDConfig(epsilon=1e-4, num_steps=300, batch_size=20, num_chains=c)
        return run_sgld(loss, w_star, x, y, cfg, seed=3)

    one, two, three = chains(1), chains(2), chains(3)
    torch.testing.assert_close(two.loss, three.loss[:2], rtol=0, atol=0)  # vmapped: bit for bit
    torch.testing.assert_close(two.final_w, three.final_w[:2], rtol=0, atol=0)
    # One chain runs without vmap: the same draws, other kernels, so equal to float64 rounding.
    # The loss is a mean of squared residuals r = f - y, each a difference of O(|y|) numbers, so
    # its rounding error scales with mean(y²), not with the loss: at w* the loss is ~1e-15 (the
    # teacher's float32 targets) and carries a relative error up to ~1e-9. 1e-13·mean(y²) is
    # ~500 ulp of the loss scale; rtol covers the losses far from zero.
    torch.testing.assert_close(one.loss[0], three.loss[0], rtol=1e-12, atol=1e-13 * float((y**2).mean()))
    # Weights are O(1); 300 steps of differently ordered sums drift by ~300 ulp, so entries
    # near zero need an absolute floor of that size (1e-12 leaves a 10x margin).
    torch.testing.assert_close(one.final_w[0], three.final_w[0], rtol=1e-12, atol=1e-12)
    assert not torch.equal(three.loss[0], three.loss[1])


def test_same_seed_same_numbers_other_seed_other_numbers():
    net, *_ , x, y = dln_case()
    kw = dict(epsilon=1e-4, gamma=10.0, num_steps=200, batch_size=20, num_chains=2, device="cpu")
    a = estimate_llc(net, mse, (x, y), seed=1, **kw)
    b = estimate_llc(net, mse, (x, y), seed=1, **kw)
    c = estimate_llc(net, mse, (x, y), seed=2, **kw)
    np.testing.assert_array_equal(a.lambdahat_per_chain, b.lambdahat_per_chain)
    assert not np.array_equal(a.lambdahat_per_chain, c.lambdahat_per_chain)


def test_module_entry_point_equals_flat_core():
    net, loss, w, x, y = dln_case()
    cfg = SGLDConfig(epsilon=1e-4, num_steps=100, batch_size=20, num_chains=2)
    flat = estimate_llc_flat(loss, w, x, y, cfg, seed=4)
    mod = estimate_llc(net, mse, (x, y), epsilon=1e-4, num_steps=100, batch_size=20, num_chains=2, seed=4, device="cpu")
    # λ̂ = nβ (mean loss - L_0) can be near zero; the two paths differ in summation order only,
    # so the absolute error is nβ (~80) times a loss rounding error (~1e-15): atol 1e-10.
    np.testing.assert_allclose(mod.lambdahat_per_chain, flat.lambdahat_per_chain, rtol=1e-12, atol=1e-10)
    assert mod.init_loss == pytest.approx(flat.init_loss)


def test_lambdahat_formula_and_defaults():
    _, loss, w, x, y = dln_case(n=400)
    cfg = SGLDConfig(epsilon=1e-4, num_steps=100, batch_size=20, num_chains=2)
    res = estimate_llc_flat(loss, w, x, y, cfg, seed=0)
    assert res.nbeta == pytest.approx(400 / math.log(400))
    assert res.burnin == 90
    expected = res.nbeta * (res.loss_trace[:, 90:].mean(axis=1) - res.init_loss)
    # Same formula, other summation order: nβ (~67) times float64 rounding of the loss mean.
    np.testing.assert_allclose(res.lambdahat_per_chain, expected, rtol=1e-7, atol=1e-10)
    assert res.lambdahat == pytest.approx(expected.mean())
    assert res.lambdahat_std == pytest.approx(expected.std(ddof=1))


def test_full_data_trace_only_after_burnin():
    _, loss, w, x, y = dln_case(n=300)
    cfg = SGLDConfig(epsilon=1e-4, num_steps=60, batch_size=20, num_chains=2, num_burnin_steps=40,
                     loss_trace_minibatch=False)
    res = estimate_llc_flat(loss, w, x, y, cfg, seed=0)
    assert np.isnan(res.loss_trace[:, :40]).all() and np.isfinite(res.loss_trace[:, 40:]).all()
    assert np.isfinite(res.lambdahat)


def test_divergence_raises_with_chain_and_step():
    _, loss, w, x, y = dln_case()
    cfg = SGLDConfig(epsilon=10.0, gamma=0.0, num_steps=500, batch_size=20, num_chains=2)
    with pytest.raises(SGLDDivergenceError) as err:
        run_sgld(loss, w, x, y, cfg, seed=0)
    assert 0 <= err.value.chain < 2 and 0 < err.value.step < 500
    assert "chain" in str(err.value) and "step" in str(err.value)


@pytest.mark.parametrize(
    "kwargs,key",
    [
        (dict(epsilon=-1.0), "epsilon"), (dict(epsilon=float("nan")), "epsilon"), (dict(gamma=-1.0), "gamma"),
        (dict(num_steps=0), "num_steps"), (dict(batch_size=0), "batch_size"), (dict(num_chains=0), "num_chains"),
        (dict(num_steps=10, num_burnin_steps=10), "num_burnin_steps"), (dict(nbeta=0.0), "nbeta"),
        (dict(num_steps=2.5), "num_steps"),
    ],
)
def test_config_validation_names_the_key(kwargs, key):
    with pytest.raises(ValueError, match=key):
        SGLDConfig(**kwargs)


def test_batch_larger_than_data_is_refused():
    _, loss, w, x, y = dln_case(n=30)
    with pytest.raises(ValueError, match="batch_size"):
        run_sgld(loss, w, x, y, SGLDConfig(batch_size=31, num_steps=5), seed=0)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_dtypes(dtype):
    net, *_, x, y = dln_case()
    res = estimate_llc(net, mse, (x, y), epsilon=1e-4, num_steps=50, batch_size=10, num_chains=2, seed=0,
                       dtype=dtype, device="cpu")
    assert np.isfinite(res.lambdahat) and res.loss_trace.shape == (2, 50)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_statistically():
    net, *_, x, y = dln_case(n=2000)
    kw = dict(epsilon=1e-4, gamma=10.0, num_steps=2000, batch_size=100, num_chains=4, seed=0, dtype="float64")
    cpu = estimate_llc(net, mse, (x, y), device="cpu", **kw)
    gpu = estimate_llc(net, mse, (x, y), device="cuda", **kw)
    se = math.hypot(cpu.lambdahat_std, gpu.lambdahat_std) / 2
    assert abs(cpu.lambdahat - gpu.lambdahat) < 3.5 * se + 0.05 * cpu.lambdahat


def test_regular_model_lambda_is_half_dimension():
    """A single linear layer is regular: λ = d/2 (here d = 12, λ = 6)."""
    net, loss, w, x, y = dln_case(input_dim=4, widths=(3,), n=20000, seed=1)
    cfg = SGLDConfig(epsilon=2e-6, gamma=1.0, num_steps=3000, batch_size=200, num_chains=4)
    res = estimate_llc_flat(loss, w, x, y, cfg, seed=0)
    assert res.lambdahat == pytest.approx(6.0, rel=0.15)


def test_split_rhat():
    rng = np.random.default_rng(0)
    assert split_rhat(rng.normal(size=(4, 2000))) == pytest.approx(1.0, abs=0.01)
    shifted = rng.normal(size=(4, 2000)) + np.arange(4)[:, None]
    assert split_rhat(shifted) > 1.5
    assert math.isnan(split_rhat(rng.normal(size=(1, 100))))
    with pytest.raises(ValueError):
        split_rhat(np.zeros(5))


def test_mala_acceptance_of_an_sgld_step_matches_the_formula_by_hand():
    """α = min(1, exp(U(w) - U(w') + log q(w|w') - log q(w'|w))) for U = nβ L_B + γ/2 ||w - w*||²."""
    from llc.sgld import mala_acceptance_probability

    _, loss, w_star, x, y = dln_case(n=50)
    gen = torch.Generator().manual_seed(1)
    eps, nbeta, gamma = 1e-3, 11.0, 3.0
    w = w_star + 0.01 * torch.randn(2, w_star.numel(), generator=gen, dtype=w_star.dtype)
    w_next = w + 0.03 * torch.randn(w.shape, generator=gen, dtype=w.dtype)
    idx = torch.randint(0, 50, (2, 7), generator=gen)
    got = mala_acceptance_probability(loss, w, w_next, x[idx], y[idx], w_star, eps, nbeta, gamma)
    for c in range(2):
        def u(v):
            return nbeta * loss(v, x[idx[c]], y[idx[c]]) + gamma / 2 * ((v - w_star) ** 2).sum()

        a, b = w[c], w_next[c]
        log_q_ab = -((a - b + eps / 2 * grad(u)(b)) ** 2).sum() / (2 * eps)  # log q(a | b)
        log_q_ba = -((b - a + eps / 2 * grad(u)(a)) ** 2).sum() / (2 * eps)
        expected = min(1.0, math.exp(float(u(a) - u(b) + log_q_ab - log_q_ba)))
        # float64 throughout; the exponent is a difference of O(1e2) terms, so ~1e-13 absolute.
        assert float(got[c]) == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert float(got.min()) < 1.0  # the perturbation is large enough for rejections to be possible
