"""models.relu_mlp rescaling and llc.psgld (preconditioned SGLD).

The slow test is an acceptance check: the preconditioned sampler with the absolute localiser agrees with
exact MALA on plain SGLD's target.
"""
import math

import numpy as np
import pytest
import torch
from torch.func import functional_call

from llc.estimate import flat_loss_for_module
from llc.mala import MALAConfig, estimate_llc_mala
from llc.psgld import PSGLDConfig, estimate_llc_psgld, run_psgld, segment_ids, tensor_scale
from llc.sgld import SGLDConfig, chain_generators
from models.relu_mlp import ReLUMLP, default_init, rescale_params
from tests.cases import dln_case, mse


def relu_case(sizes=(3, 4, 2), n=100, seed=0, alpha=1.0):
    """A ReLU teacher rescaled by α: (flat loss, w*_α flat, x, y, segment sizes), float64."""
    gen = torch.Generator().manual_seed(seed)
    net = ReLUMLP(list(sizes)).double()
    params = default_init(list(sizes), gen)
    x = torch.randn(n, sizes[0], generator=gen, dtype=torch.float64)
    with torch.no_grad():
        y = functional_call(net, params, (x,))
    net.load_state_dict(rescale_params(params, 0, alpha))
    loss, w = flat_loss_for_module(net, mse, torch.float64, torch.device("cpu"))
    return loss, w, x, y, [p.numel() for p in net.parameters()]


# --------------------------------------------------------------- models.relu_mlp

def test_rescaling_keeps_the_function_and_the_input_dict():
    sizes = [3, 5, 4, 2]
    net = ReLUMLP(sizes).double()
    params = default_init(sizes, torch.Generator().manual_seed(1))
    before = {k: v.clone() for k, v in params.items()}
    x = torch.randn(50, 3, dtype=torch.float64)
    out = functional_call(net, params, (x,))
    for layer in (0, 1):
        for alpha in (1e-4, 0.3, 1e4):
            scaled = rescale_params(params, layer, alpha)
            torch.testing.assert_close(functional_call(net, scaled, (x,)), out, rtol=1e-10, atol=1e-12)
            assert not torch.allclose(scaled["layers.0.weight" if layer == 0 else "layers.2.weight"],
                                      params["layers.0.weight" if layer == 0 else "layers.2.weight"])
    assert all(torch.equal(before[k], params[k]) for k in params)
    with pytest.raises(ValueError, match="alpha must be a finite number > 0"):
        rescale_params(params, 0, -1.0)
    with pytest.raises(ValueError, match="lacks"):
        rescale_params(params, 2, 2.0)
    with pytest.raises(ValueError, match="layer_sizes"):
        ReLUMLP([3])


def test_default_init_matches_pytorch_bounds():
    params = default_init([400, 3], torch.Generator().manual_seed(0))
    assert params["layers.0.weight"].abs().max() <= 1 / 20 and params["layers.0.weight"].abs().max() > 0.9 / 20
    assert params["layers.0.bias"].shape == (3,)


# --------------------------------------------------------------- llc.psgld

def reference_psgld(loss, w_star, x, y, cfg: SGLDConfig, pc: PSGLDConfig, seed, sizes):
    """Dense float64 preconditioned SGLD, one chain at a time, straight from the module docstring."""
    n, P = x.shape[0], w_star.numel()
    nbeta = cfg.resolve_nbeta(n)
    seg = np.repeat(np.arange(len(sizes)), sizes)
    m = np.array([np.mean(w_star.numpy()[seg == s] ** 2) for s in range(len(sizes))])[seg]
    loc = cfg.gamma / m if pc.localisation == "relative" else np.full(P, cfg.gamma)
    adapt = pc.resolve_adapt_steps(cfg)
    traces = []
    for rng in chain_generators(seed, cfg.num_chains, torch.device("cpu")):
        w = w_star.clone()
        v = 1.0 / (pc.kappa * m)
        d = 1.0 / (v + pc.delta * np.array([v[seg == s].mean() for s in range(len(sizes))])[seg])
        trace = []
        block = max(1, min(128, (1 << 20) // P, cfg.num_steps))
        for t0 in range(0, cfg.num_steps, block):
            k = min(block, cfg.num_steps - t0)
            idx = torch.randint(0, n, (k, cfg.batch_size), generator=rng)
            xi = torch.randn(k, P, generator=rng, dtype=torch.float64)
            for j in range(k):
                wg = w.detach().requires_grad_(True)
                L = loss(wg, x[idx[j]], y[idx[j]])
                (g,) = torch.autograd.grad(L, wg)
                g = nbeta * g.numpy()
                trace.append(float(L.detach()))
                if t0 + j < adapt:
                    v = pc.rho * v + (1 - pc.rho) * g * g
                    d = 1.0 / (v + pc.delta * np.array([v[seg == s].mean() for s in range(len(sizes))])[seg])
                drift = g + loc * (w.numpy() - w_star.numpy())
                w = torch.from_numpy(w.numpy() - cfg.epsilon / 2 * d * drift + np.sqrt(cfg.epsilon * d) * xi[j].numpy())
        traces.append(trace)
    return np.array(traces), w


@pytest.mark.parametrize("localisation", ["relative", "absolute"])
def test_psgld_matches_dense_reference(localisation):
    loss, w, x, y, sizes = relu_case()
    cfg = SGLDConfig(epsilon=0.05, gamma=0.1, num_steps=30, batch_size=10, num_chains=2, num_burnin_steps=20)
    pc = PSGLDConfig(rho=0.9, adapt_steps=12, localisation=localisation)
    trace = run_psgld(loss, w, x, y, cfg, pc, seed=1, segments=sizes)
    ref_trace, _ = reference_psgld(loss, w, x, y, cfg, pc, 1, sizes)
    np.testing.assert_allclose(trace.loss.numpy(), ref_trace, rtol=1e-9, atol=1e-14)


def test_psgld_is_equivariant_under_layer_rescaling():
    cfg = SGLDConfig(epsilon=0.05, gamma=0.1, num_steps=60, batch_size=20, num_chains=2, num_burnin_steps=30)
    results = []
    for alpha in (1.0, 1e-3, 1e3):
        loss, w, x, y, sizes = relu_case(alpha=alpha)
        results.append(estimate_llc_psgld(loss, w, x, y, cfg, PSGLDConfig(), seed=0, segments=sizes))
    for res in results[1:]:
        np.testing.assert_allclose(res.lambdahat_per_chain, results[0].lambdahat_per_chain, rtol=1e-8)
    # The plain sampler's drift is not equivariant: with the same seed it moves differently.
    loss, w, x, y, sizes = relu_case(alpha=1.0)
    plain = run_psgld(loss, w, x, y, cfg, PSGLDConfig(adapt_steps=0, localisation="absolute", kappa=1.0), 0, sizes)
    assert np.isfinite(plain.loss.numpy()).all()


def test_psgld_chains_do_not_depend_on_chain_count():
    loss, w, x, y, sizes = relu_case()
    base = dict(epsilon=0.05, gamma=0.1, num_steps=20, batch_size=10, num_burnin_steps=10)
    two = run_psgld(loss, w, x, y, SGLDConfig(num_chains=2, **base), PSGLDConfig(), 3, sizes)
    three = run_psgld(loss, w, x, y, SGLDConfig(num_chains=3, **base), PSGLDConfig(), 3, sizes)
    torch.testing.assert_close(two.loss, three.loss[:2])
    assert two.preconditioner.shape == (2, w.numel()) and (two.preconditioner > 0).all()


def test_segments_and_tensor_scale():
    w = torch.tensor([1.0, 3.0, 0.0, 0.0, 2.0], dtype=torch.float64)
    seg = segment_ids([2, 2, 1], 5, torch.device("cpu"))
    assert seg.tolist() == [0, 0, 1, 1, 2]
    m = tensor_scale(w, seg)
    assert m.tolist() == [5.0, 5.0, 14 / 5, 14 / 5, 4.0]  # the all-zero tensor takes mean(w²) over all
    with pytest.raises(ValueError, match="sum to the parameter count 5"):
        segment_ids([2, 2], 5, torch.device("cpu"))


def test_psgld_scales_replace_tensor_scale_and_are_validated():
    loss, w, x, y, sizes = relu_case()
    cfg = SGLDConfig(epsilon=0.05, gamma=0.1, num_steps=20, batch_size=10, num_chains=2, num_burnin_steps=10)
    seg = segment_ids(sizes, w.numel(), torch.device("cpu"))
    default = run_psgld(loss, w, x, y, cfg, PSGLDConfig(), 3, sizes)
    same = run_psgld(loss, w, x, y, cfg, PSGLDConfig(), 3, sizes, scales=tensor_scale(w, seg))
    assert torch.equal(same.final_w, default.final_w)  # the same m passed in: the same float operations
    other = run_psgld(loss, w, x, y, cfg, PSGLDConfig(), 3, sizes, scales=4 * tensor_scale(w, seg))
    assert not torch.allclose(other.preconditioner, default.preconditioner)  # D_0 = κ m follows the scales
    for bad in (torch.ones(3, dtype=torch.float64), torch.zeros(w.numel(), dtype=torch.float64)):
        with pytest.raises(ValueError, match="scales"):
            run_psgld(loss, w, x, y, cfg, PSGLDConfig(), 3, sizes, scales=bad)


@pytest.mark.parametrize("kwargs, match", [
    (dict(rho=1.0), "rho"), (dict(delta=0.0), "delta"), (dict(kappa=-1.0), "kappa"),
    (dict(adapt_steps=-1), "adapt_steps"), (dict(localisation="metric"), "localisation"),
])
def test_psgld_config_validation_names_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PSGLDConfig(**kwargs)


# --------------------------------------------------------------- acceptance (slow)

@pytest.mark.slow
def test_psgld_with_absolute_localisation_agrees_with_mala():
    """Same target as plain SGLD: λ̂ from the preconditioned chain matches exact MALA on a DLN."""
    torch.set_num_threads(1)  # tiny tensors: one thread is as fast, and immune to oversubscribed CPUs
    _, loss, w, x, y = dln_case(input_dim=3, widths=(4, 2), n=1000, seed=0)
    n = x.shape[0]
    nbeta = n / math.log(n)
    mala = estimate_llc_mala(loss, w, x, y, MALAConfig(epsilon=0.01 / nbeta, gamma=10.0, num_steps=4000,
                                                       num_chains=4, num_burnin_steps=1000), seed=0)
    psgld = estimate_llc_psgld(loss, w, x, y, SGLDConfig(epsilon=0.02, gamma=10.0, num_steps=4000, batch_size=100,
                                                         num_chains=8, num_burnin_steps=1000),
                               PSGLDConfig(localisation="absolute"), seed=0, segments=[12, 8])
    print("MALA", mala.llc.lambdahat, mala.llc.lambdahat_std, "pSGLD", psgld.lambdahat, psgld.lambdahat_std)
    sem = math.hypot(mala.llc.lambdahat_std / 2, psgld.lambdahat_std / math.sqrt(8))
    assert abs(psgld.lambdahat - mala.llc.lambdahat) < 3.5 * sem + 0.05 * mala.llc.lambdahat
