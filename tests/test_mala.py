"""llc.mala (full-batch MALA): dense reference, chain independence, adaptation, closed form.

The slow test checks that MALA's λ̂ equals the closed form of a Gaussian posterior.
The experiment expt_mala_vs_sgld is tested in tests/test_mala_vs_sgld.py.
"""
import math

import numpy as np
import pytest
import torch

from llc.mala import MALAConfig, estimate_llc_mala, full_data_value_and_grad, run_mala
from llc.sgld import chain_generators


def linear_case(n=200, d=3, seed=0, dtype=torch.float64):
    """Linear regression y = x·w* (noiseless): L(w) = mean (x·w - y)², a quadratic with H = 2 xᵀx / n."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen, dtype=dtype)
    w_star = torch.randn(d, generator=gen, dtype=dtype)
    y = x @ w_star

    def loss(w, xb, yb):
        return ((xb @ w - yb) ** 2).mean()

    return loss, w_star, x, y


def reference_mala(loss, w_star, x, y, cfg: MALAConfig, seed):
    """Dense float64 MALA, one chain at a time, drawing as run_mala does (fixed ε)."""
    n, P = x.shape[0], w_star.numel()
    nbeta = cfg.resolve_nbeta(n)

    def U(w):
        w = w.detach().requires_grad_(True)
        u = nbeta * loss(w, x, y) + 0.5 * cfg.gamma * ((w - w_star) ** 2).sum()
        (g,) = torch.autograd.grad(u, w)
        return u.detach(), g, loss(w.detach(), x, y)

    traces, finals = [], []
    for gen in chain_generators(seed, cfg.num_chains, torch.device("cpu")):
        w = w_star.clone()
        u, g, L = U(w)
        trace, eps = [], cfg.epsilon
        block = max(1, min(128, (1 << 20) // P, cfg.num_steps))
        for t0 in range(0, cfg.num_steps, block):
            k = min(block, cfg.num_steps - t0)
            xi = torch.randn(k, P, generator=gen, dtype=torch.float64)
            logu = torch.rand(k, generator=gen, dtype=torch.float64).log()
            for j in range(k):
                trace.append(float(L))
                prop = w - 0.5 * eps * g + math.sqrt(eps) * xi[j]
                up, gp, Lp = U(prop)
                fwd = -((prop - w + 0.5 * eps * g) ** 2).sum() / (2 * eps)
                bwd = -((w - prop + 0.5 * eps * gp) ** 2).sum() / (2 * eps)
                if logu[j] < u - up + bwd - fwd:
                    w, u, g, L = prop, up, gp, Lp
        traces.append(trace)
        finals.append(w)
    return np.array(traces), torch.stack(finals)


def test_mala_matches_dense_reference():
    loss, w_star, x, y = linear_case()
    cfg = MALAConfig(epsilon=2e-3, gamma=1.0, num_steps=25, num_chains=2, adapt_step_size=False)
    trace = run_mala(loss, w_star, x, y, cfg, seed=3)
    ref_trace, ref_w = reference_mala(loss, w_star, x, y, cfg, seed=3)
    np.testing.assert_allclose(trace.loss.numpy(), ref_trace, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(trace.final_w, ref_w, rtol=1e-10, atol=1e-12)
    assert 0 < trace.acceptance_rate.min() and trace.acceptance_rate.max() <= 1
    np.testing.assert_allclose(trace.epsilon, [2e-3, 2e-3], rtol=1e-12)  # no adaptation


def test_full_data_value_and_grad_is_chunk_independent():
    loss, w_star, x, y = linear_case(n=103)
    w = w_star + 0.1 * torch.randn(3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    v1, g1 = full_data_value_and_grad(loss, w, x, y, eval_batch_size=1000)
    v2, g2 = full_data_value_and_grad(loss, w, x, y, eval_batch_size=10)
    torch.testing.assert_close(v1, v2)
    torch.testing.assert_close(g1, g2)
    expected = torch.stack([((x @ wi - y) ** 2).mean() for wi in w])
    torch.testing.assert_close(v1, expected)


def test_chains_independent_of_chain_count_and_seeded():
    loss, w_star, x, y = linear_case()
    cfg = dict(epsilon=1e-3, gamma=1.0, num_steps=30, adapt_step_size=True, num_burnin_steps=10)
    two = run_mala(loss, w_star, x, y, MALAConfig(num_chains=2, **cfg), seed=5)
    three = run_mala(loss, w_star, x, y, MALAConfig(num_chains=3, **cfg), seed=5)
    torch.testing.assert_close(two.loss, three.loss[:2])
    assert not torch.equal(run_mala(loss, w_star, x, y, MALAConfig(num_chains=2, **cfg), seed=6).loss, two.loss)


def test_step_size_adaptation_moves_towards_target():
    loss, w_star, x, y = linear_case()
    # ε far too large: almost every proposal is rejected until the adaptation shrinks it.
    res = run_mala(loss, w_star, x, y, MALAConfig(epsilon=1.0, gamma=1.0, num_steps=400, num_chains=2,
                                                  num_burnin_steps=300), seed=0)
    assert (res.epsilon < 0.1).all()
    assert (res.acceptance_rate > 0.2).all()


@pytest.mark.parametrize("kwargs, match", [
    (dict(epsilon=0.0), "epsilon"), (dict(gamma=-1.0), "gamma"), (dict(num_steps=0), "num_steps"),
    (dict(num_chains=0), "num_chains"), (dict(num_burnin_steps=10, num_steps=10), "num_burnin_steps"),
    (dict(target_acceptance=1.0), "target_acceptance"), (dict(adapt_step_size=1), "adapt_step_size"),
])
def test_config_validation_names_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MALAConfig(**kwargs)


# --------------------------------------------------------------- acceptance (slow)

@pytest.mark.slow
def test_mala_lambdahat_matches_gaussian_closed_form():
    """Quadratic L: the posterior is Gaussian and E[nβ (L - L*)] = ½ tr(nβH (nβH + γ)⁻¹) exactly."""
    torch.set_num_threads(1)  # tiny tensors: one thread is as fast, and immune to oversubscribed CPUs
    loss, w_star, x, y = linear_case(n=500, d=4)
    n = x.shape[0]
    nbeta = n / math.log(n)
    hess = 2 * x.T @ x / n
    a = nbeta * hess
    expected = 0.5 * float(torch.trace(a @ torch.linalg.inv(a + 1.0 * torch.eye(4, dtype=torch.float64))))
    res = estimate_llc_mala(loss, w_star, x, y, MALAConfig(epsilon=0.5 / nbeta, gamma=1.0, num_steps=6000,
                                                           num_chains=8, num_burnin_steps=1000), seed=0)
    sem = res.llc.lambdahat_std / math.sqrt(8)
    assert abs(res.llc.lambdahat - expected) < 3.5 * sem + 0.02 * expected, (res.llc.lambdahat, expected, sem)
    assert (res.acceptance_rate > 0.3).all()
