"""llc.callbacks: online λ̂ / WBIC, weight distance, gradient norm, user callbacks, every k draws."""
import math

import numpy as np
import pytest
import torch
from torch.func import grad

import llc.estimate as est
from llc.callbacks import GradientNorm, OnlineLLC, WeightDistance
from llc.estimate import estimate_llc, flat_loss_for_module

mse = torch.nn.functional.mse_loss


def _regression():
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2).double()
    x = torch.randn(400, 3, dtype=torch.float64)
    return net, x, net(x).detach() + 0.1 * torch.randn(400, 2, dtype=torch.float64)


KW = dict(epsilon=1e-3, num_steps=300, batch_size=20, num_chains=3, num_burnin_steps=100, seed=2)


class FakeRun:
    def __init__(self):
        self.logged = []

    def log_scalar(self, name, value, step):
        self.logged.append((name, value, step))


def test_online_lambdahat_every_draw_reproduces_the_result_and_wbic_identity():
    net, x, y = _regression()
    run = FakeRun()
    online = OnlineLLC(run=run)
    res = estimate_llc(net, mse, (x, y), callbacks=[online], **KW)
    assert online.steps == list(range(100, 300))
    # Same forward on the same batch at the same w_t as the trace: equal up to float64 rounding of the sums.
    np.testing.assert_allclose(online.lambdahat[-1], res.lambdahat_per_chain, rtol=1e-10)
    n = 400
    # WBIC = n · mean L; λ̂ = nβ (mean L − L_n(w*))  =>  WBIC = n (L_n(w*) + λ̂ / nβ).
    np.testing.assert_allclose(online.wbic[-1], n * (res.init_loss + res.lambdahat_per_chain / res.nbeta), rtol=1e-10)
    assert ("llc/online/lambdahat_chain2", float(online.lambdahat[-1][2]), 299) in run.logged
    assert len(run.logged) == 200 * 3 * 2


def test_every_k_draws_and_user_callbacks_see_all_chains():
    net, x, y = _regression()
    seen = []
    estimate_llc(net, mse, (x, y), callbacks=[lambda s: seen.append((s.t, tuple(s.w.shape), tuple(s.xb.shape)))],
                 callback_every=7, **KW)
    assert [t for t, _, _ in seen] == list(range(6, 300, 7))
    assert seen[0][1:] == ((3, 8), (3, 20, 3))  # P = 3·2 + 2


def test_gradient_norm_and_distance_match_an_independent_computation():
    net, x, y = _regression()
    loss, _ = flat_loss_for_module(net, mse, torch.float64, torch.device("cpu"))
    states = []
    gn, wd = GradientNorm(), WeightDistance()
    estimate_llc(net, mse, (x, y), callbacks=[gn, wd, lambda s: states.append(s)], callback_every=50, **KW)
    for s, g, d in zip(states, gn.values, wd.values):
        for c in range(3):
            expected = torch.linalg.vector_norm(grad(loss)(s.w[c], s.xb[c], s.yb[c]))  # one chain, no vmap
            assert g[c] == pytest.approx(float(expected), rel=1e-10)
            assert d[c] == pytest.approx(float(torch.linalg.vector_norm(s.w[c] - s.w_star)), rel=1e-12)


def test_weight_distance_matches_the_localisation_only_ou_process():
    # A loss with zero gradient leaves only the pull: each coordinate is a discretised OU chain with
    # stationary variance 1 / (γ (1 − εγ/4)), so E‖w − w*‖² = P / (γ (1 − εγ/4)).
    net, x, y = _regression()
    wd = WeightDistance()
    eps, gamma = 0.05, 10.0
    estimate_llc(net, lambda out, t: 0.0 * out.sum(), (x, y), callbacks=[wd], epsilon=eps, gamma=gamma,
                 num_steps=4000, batch_size=5, num_chains=4, num_burnin_steps=500, seed=0)
    sq = np.array(wd.values[500:]) ** 2  # (3500, 4)
    expected = 8 / (gamma * (1 - eps * gamma / 4))
    # AR(1) factor ρ = 1 − εγ/2 = 0.75: τ = 7, so 14 000 draws carry ~2000 independent ones of a
    # χ²_8 / 8-like quantity (relative sd 0.5): MC error ≈ 1.1%; 5% is > 4σ.
    assert sq.mean() == pytest.approx(expected, rel=0.05)


def test_no_callbacks_means_no_hook_and_bad_arguments_fail(monkeypatch):
    net, x, y = _regression()
    hooks = []
    real = est.run_sgld

    def spy(*args, callback=None, **kwargs):
        hooks.append(callback)
        return real(*args, callback=callback, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(est, "run_sgld", spy)
        estimate_llc(net, mse, (x, y), **KW)
        estimate_llc(net, mse, (x, y), callbacks=[WeightDistance()], **KW)
    assert hooks[0] is None and callable(hooks[1])  # absent: run_sgld gets no hook (no per-step copy of w)
    with pytest.raises(ValueError, match="callback_every must be an integer >= 1"):
        estimate_llc(net, mse, (x, y), callbacks=[WeightDistance()], callback_every=0, **KW)
    with pytest.raises(ValueError, match="callbacks must be callables"):
        estimate_llc(net, mse, (x, y), callbacks=[3], **KW)
    assert math.isfinite(estimate_llc(net, mse, (x, y), callbacks=[], **KW).lambdahat)


def test_callbacks_on_a_dataset_see_the_same_states_as_on_tensors():
    from torch.utils.data import TensorDataset

    net, x, y = _regression()
    runs = []
    for data in [(x, y), TensorDataset(x, y)]:
        online, dist, grads = OnlineLLC(), WeightDistance(), GradientNorm()
        estimate_llc(net, mse, data, callbacks=[online, dist, grads], callback_every=9, **KW)
        runs.append((online, dist, grads))
    (o1, d1, g1), (o2, d2, g2) = runs
    assert o1.steps == o2.steps and d1.steps == d2.steps == list(range(8, 300, 9))
    # Same draws, same batches (the streamed path is bit-identical), same arithmetic in the callbacks.
    np.testing.assert_array_equal(np.array(o1.lambdahat), np.array(o2.lambdahat))
    np.testing.assert_array_equal(np.array(d1.values), np.array(d2.values))
    np.testing.assert_array_equal(np.array(g1.values), np.array(g2.values))
    with pytest.raises(ValueError, match="callback_every must be an integer >= 1"):
        estimate_llc(net, mse, TensorDataset(x, y), callbacks=[dist], callback_every=-1, **KW)
