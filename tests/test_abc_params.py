"""models.abc: exponent tables against reference.md §4, width scales, forward pass against a float64
reference, muP = SP at the base width, the IPLLR switch and its calibration."""
import math

import numpy as np
import pytest
import torch

from models.abc import (
    ACTIVATIONS, CALIBRATION_CAP, INIT_VARIANCE, ABCNet, ABCNetSpec, CoordCheckConfig, Parameterization,
    abc_forward, batch_indices, calibrate_warmup_lrs, coordinate_check, evaluate, make_parameterization, train_abc,
)

@pytest.fixture(autouse=True)
def _one_thread():
    """These matrices are tiny: one intra-op thread skips thread hand-offs, which cost ~30x on a busy 2-core box."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# reference.md §4, written out per layer (input, hidden, output) for L hidden layers.
REFERENCE = {
    "ntk": dict(a=(0, 0.5, 0.5), b=(0, 0, 0), c=(0, 0, 0)),
    "mup": dict(a=(-0.5, 0, 0.5), b=(0.5, 0.5, 0.5), c=(0, 0, 0)),
    "ip": dict(a=(0, 1, 1), b=(0, 0, 0), c=(0, 0, 0)),  # c user-set: ip_c = 0 by default
    "standard_ip": dict(a=(0, 1, 1), b=(0, 0, 0), c=(-1, -2, -1)),
    "ipllr": dict(a=(0, 1, 1), b=(0, 0, 0), c=(-1, -2, -1)),
    "sp": dict(a=(0, 0, 0), b=(0, 0.5, 0.5), c=(0, 0, 0)),
}


def per_layer(first, hidden, last, L):
    return (first,) + (hidden,) * (L - 1) + (last,)


def spec(name="mup", L=3, width=64, d=12, k=5, activation="relu", n_warmup_steps=1, **kw):
    return ABCNetSpec(make_parameterization(name, L, n_warmup_steps=n_warmup_steps), d, width, k, activation, **kw)


def data(n=64, d=12, k=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randint(0, k, (n,), generator=g)


@pytest.mark.parametrize("L", [1, 3, 6])
@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_exponents_match_reference_table(name, L):
    p = make_parameterization(name, L)
    for key in "abc":
        assert getattr(p, key) == per_layer(*REFERENCE[name][key], L), key
    if name == "ipllr":
        assert p.warmup_c == per_layer(-(L + 1) / 2, -(L + 2) / 2, -(L + 1) / 2, L) and p.n_warmup_steps == 1
    else:
        assert p.warmup_c is None


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_multipliers_init_and_lrs_are_powers_of_width(name):
    L, m, d, base_lr = 4, 256, 12, 0.01
    s = spec(name, L=L, width=m, d=d)
    p = s.parameterization
    mu = s.multipliers()
    np.testing.assert_allclose(mu[0], m ** -p.a[0] / math.sqrt(d + 1))  # input layer over fan-in d + 1
    np.testing.assert_allclose(mu[1:], [m ** -a for a in p.a[1:]])
    np.testing.assert_allclose(s.init_scales(), [m ** -b for b in p.b])
    np.testing.assert_allclose(s.learning_rates(base_lr, step=10), [base_lr * m ** -c for c in p.c])
    if name == "ipllr":  # step 0 is the warm-up: base_lr · m^((L+1)/2) etc.
        np.testing.assert_allclose(s.learning_rates(base_lr, step=0), [base_lr * m ** -c for c in p.warmup_c])


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_init_is_width_power_times_width_independent_gaussian(activation):
    s = spec("mup", L=2, width=512, d=300, activation=activation)
    net = ABCNet(s, torch.Generator().manual_seed(0))
    sigma = math.sqrt(INIT_VARIANCE[activation])
    for l, (scale, std) in enumerate(zip(s.init_scales(), [sigma, sigma, 1.0])):
        W = getattr(net, f"W{l}")
        assert abs(W.std().item() / (scale * std) - 1) < 0.03, (l, W.std().item(), scale * std)
    assert tuple(net.W0.shape) == (512, 300) and tuple(net.W2.shape) == (5, 512)


@pytest.mark.parametrize("scale_bias", [True, False])
def test_forward_matches_float64_reference(scale_bias):
    s = spec("standard_ip", L=3, width=16, d=7, activation="tanh", bias=True, scale_bias=scale_bias)
    net = ABCNet(s, torch.Generator().manual_seed(1)).double()
    with torch.no_grad():  # non-zero biases in both cases, so their placement matters
        for l in range(4):
            getattr(net, f"b{l}").copy_(torch.linspace(-1, 1, getattr(net, f"b{l}").numel()))
    x = torch.randn(9, 7, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    f, hs = abc_forward(dict(net.named_parameters()), x, s)
    W = [getattr(net, f"W{l}").detach().numpy() for l in range(4)]
    b = [getattr(net, f"b{l}").detach().numpy() for l in range(4)]
    mu = [1 / math.sqrt(8), 16.0 ** -1, 16.0 ** -1, 16.0 ** -1]
    z, ref = x.numpy(), []
    for l in range(4):
        h = mu[l] * (z @ W[l].T + b[l]) if scale_bias else mu[l] * (z @ W[l].T) + b[l]
        ref.append(h)
        z = np.tanh(h)
    # atol: a pre-activation near 0 (cancellation) carries float64 rounding of its O(1) terms.
    np.testing.assert_allclose(f.detach().numpy(), ref[-1], rtol=1e-12, atol=1e-15)
    for h, r in zip(hs, ref[:-1]):
        np.testing.assert_allclose(h.detach().numpy(), r, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(net(x).detach().numpy(), ref[-1], rtol=1e-12, atol=1e-15)


def test_mup_at_base_width_equals_sp_and_differs_elsewhere():
    x, y = data()
    m0 = 64

    def trained(name, width, base_width):
        s = spec(name, L=3, width=width, base_width=base_width)
        net = ABCNet(s, torch.Generator().manual_seed(3))
        init = {k: v.detach().clone() for k, v in net.named_parameters()}
        train_abc(net, x, y, n_steps=5, batch_size=16, base_lr=0.5, generator=torch.Generator().manual_seed(4))
        return s, init, net

    s_mup, init_mup, mup = trained("mup", m0, m0)
    s_sp, init_sp, sp = trained("sp", m0, m0)
    assert s_mup.multipliers() == s_sp.multipliers() and s_mup.init_scales() == s_sp.init_scales()
    assert s_mup.learning_rates(0.5, 0) == s_sp.learning_rates(0.5, 0)
    for k in init_sp:
        torch.testing.assert_close(init_mup[k], init_sp[k], rtol=0, atol=0)
        torch.testing.assert_close(getattr(mup, k), getattr(sp, k), rtol=0, atol=0)
    assert not torch.equal(init_sp["W0"], mup.W0)  # and training did move the weights
    # At twice the base width muP is no longer SP. In terms of the effective weights μ_l W_l: init
    # ratio μ·m^-b, and SGD moves them with effective lr μ²η: input x2, output init / sqrt(2), lr / 2.
    s_mup2, s_sp2 = spec("mup", width=2 * m0, base_width=m0), spec("sp", width=2 * m0, base_width=m0)
    mu, mu_sp = np.array(s_mup2.multipliers()), np.array(s_sp2.multipliers())
    np.testing.assert_allclose(mu * s_mup2.init_scales() / (mu_sp * s_sp2.init_scales()), [1, 1, 1, 2 ** -0.5])
    np.testing.assert_allclose(mu ** 2 * s_mup2.learning_rates(1.0, 0) / (mu_sp ** 2 * s_sp2.learning_rates(1.0, 0)),
                               [2, 1, 1, 0.5])
    # sp does not depend on the base width; muP with m_0 = 1 is the paper's m^-a.
    assert spec("sp", width=128, base_width=1).multipliers() == spec("sp", width=128, base_width=32).multipliers()
    np.testing.assert_allclose(spec("mup", width=128, base_width=1).multipliers()[1:], [1, 1, 128 ** -0.5])


@pytest.mark.parametrize("n_warmup_steps", [0, 1, 3])
def test_ipllr_switches_to_standard_ip_exactly_at_n_warmup_steps(n_warmup_steps):
    L, m = 3, 32
    s = spec("ipllr", L=L, width=m, n_warmup_steps=n_warmup_steps)
    p = s.parameterization
    warm = [m ** -c for c in p.warmup_c]
    betas = (7.0, 8.0, 9.0, 10.0)
    for step in range(6):
        expected = [b * w for b, w in zip(betas, warm)] if step < n_warmup_steps else [0.01 * m ** -c for c in p.c]
        np.testing.assert_allclose(s.learning_rates(0.01, step, betas), expected)
        assert p.in_warmup(step) == (step < n_warmup_steps)
    # The training loop applies them: recorded lrs switch at the same step.
    x, y = data()
    records = []
    train_abc(ABCNet(s, torch.Generator().manual_seed(0)), x, y, 6, 16, 1e-6, torch.Generator().manual_seed(1),
              warmup_base_lrs=betas, callback=records.append)
    switched = [r.lrs != records[0].lrs for r in records]
    assert switched == [n_warmup_steps > 0 and t >= n_warmup_steps for t in range(6)]
    assert [r.step for r in records] == list(range(6))


def test_calibration_is_finite_capped_and_follows_its_formula():
    x, y = data(n=128, d=12)
    s = spec("ipllr", L=3, width=64, activation="gelu")
    net = ABCNet(s, torch.Generator().manual_seed(0))
    before = {k: v.detach().clone() for k, v in net.named_parameters()}
    betas = calibrate_warmup_lrs(net, x[:64], y[:64], x[64:])
    assert len(betas) == 4 and all(math.isfinite(b) and 0 < b <= CALIBRATION_CAP for b in betas)
    for k, v in net.named_parameters():  # the mock step ran on a copy
        assert torch.equal(v, before[k])
    # First layer by hand: one SGD step with torch.optim at lr m^(-c_0), then 1 / mean |μ_0 ΔW_0 x_probe|.
    copy = ABCNet(s, torch.Generator().manual_seed(0)).double()
    opt = torch.optim.SGD([{"params": [getattr(copy, f"W{l}")], "lr": lr} for l, lr in enumerate(s.learning_rates(1.0, 0))])
    torch.nn.functional.cross_entropy(copy(x[:64].double()), y[:64]).backward()
    W0 = copy.W0.detach().clone()
    opt.step()
    update = s.multipliers()[0] * (x[64:].double() @ (copy.W0.detach() - W0).T)
    np.testing.assert_allclose(betas[0], 1.0 / update.abs().mean().item(), rtol=1e-3)
    # No gradient reaches the hidden layers when the output weights are zero: every hidden β is the cap.
    with torch.no_grad():
        net.W3.zero_()
    capped = calibrate_warmup_lrs(net, x[:64], y[:64], x[64:])
    assert capped[:3] == (CALIBRATION_CAP,) * 3 and math.isfinite(capped[3])
    with pytest.raises(ValueError, match="warm-up"):
        calibrate_warmup_lrs(ABCNet(spec("mup")), x[:8], y[:8], x[8:16])


def test_deep_ip_vanishes_at_init_and_ipllr_first_step_restores_order_one_features():
    """IP's h_l shrinks like m^(-l/2) at init (a stationary point); one calibrated IPLLR step brings Θ(1)."""
    x, y = data(n=256, d=12, k=5)
    m = 512
    s = spec("ipllr", L=4, width=m)
    net = ABCNet(s, torch.Generator().manual_seed(0))
    _, hs = abc_forward(dict(net.named_parameters()), x, s)
    sizes = [h.abs().mean().item() for h in hs]
    assert sizes[0] > 0.3 and all(sizes[l + 1] < sizes[l] * 3 / math.sqrt(m) for l in range(1, 3))
    betas = calibrate_warmup_lrs(net, x[:128], y[:128], x[128:])
    train_abc(net, x, y, 1, 128, 0.01, torch.Generator().manual_seed(1), warmup_base_lrs=betas)
    _, hs = abc_forward(dict(net.named_parameters()), x, s)
    assert all(0.2 < h.abs().mean().item() < 5 for h in hs)


def test_train_is_reproducible_and_evaluate_counts():
    x, y = data()
    runs = []
    for _ in range(2):
        net = ABCNet(spec("mup"), torch.Generator().manual_seed(5))
        runs.append((train_abc(net, x, y, 8, 16, 0.5, torch.Generator().manual_seed(6)), evaluate(net, x, y, batch_size=10)))
    assert runs[0] == runs[1]
    loss, acc = runs[0][1]
    assert 0 <= acc <= 1 and loss > 0 and (acc * 64) == round(acc * 64)


def test_batches_are_epochs_without_replacement():
    it = batch_indices(10, 3, torch.Generator().manual_seed(0))
    epoch = torch.cat([next(it) for _ in range(3)])
    assert len(set(epoch.tolist())) == 9  # 3 full batches from one permutation; the partial batch is dropped
    with pytest.raises(ValueError, match="batch_size"):
        next(batch_indices(10, 11, torch.Generator()))


def test_divergence_raises_with_step():
    x, y = data()
    with pytest.raises(FloatingPointError, match="at step"):
        train_abc(ABCNet(spec("sp")), x * 1e3, y, 50, 16, 1e6, torch.Generator().manual_seed(0))


def test_coordinate_check_shapes_and_blow_up_recorded():
    x, y = data(n=64)
    specs = [spec("sp", L=2, width=m) for m in (8, 16)]
    out = coordinate_check(specs, x, y, x[:16], n_steps=3, batch_size=16, base_lr=1e6, seeds=[0])
    assert out["h_abs"].shape == (2, 1, 4, 2) and out["f_abs"].shape == (2, 1, 4)
    assert out["diverged"].all() and torch.isnan(out["h_abs"][:, :, -1]).all()
    out = coordinate_check(specs, x, y, x[:16], n_steps=2, batch_size=16, base_lr=0.1, seeds=[0, 1])
    assert torch.isfinite(out["h_abs"]).all() and (out["dh_abs"][:, :, 0] == 0).all()
    assert not out["diverged"].any() and torch.isnan(out["warmup_base_lrs"]).all()


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: make_parameterization("mupp", 3), "parameterization must be one of"),
        (lambda: make_parameterization("mup", 0), "L must be an integer >= 1"),
        (lambda: make_parameterization("ip", 3, ip_c=[0, 1]), r"ip_c must have L\+1 = 4 entries"),
        (lambda: make_parameterization("custom", 2, custom_exponents=dict(a=[0, 1, 1], b=[0, 0], c=0)),
         r"custom_exponents.b must have L\+1 = 3 entries"),
        (lambda: make_parameterization("custom", 2, custom_exponents=dict(a=[0, 1, 1], b=0)), "keys a, b, c"),
        (lambda: make_parameterization("ipllr", 2, n_warmup_steps=-1), "n_warmup_steps must be an integer >= 0"),
        (lambda: spec(width=0), "width must be an integer >= 1"),
        (lambda: spec(activation="swish"), "activation must be one of"),
        (lambda: spec(base_width=0), "base_width must be an integer >= 1"),
        (lambda: Parameterization("x", (0, 1), (0,), (0, 0)), "L\\+1 >= 2 entries"),
        (lambda: CoordCheckConfig(widths=(64, 64)), "at least two distinct"),
        (lambda: abc_forward({}, torch.zeros(3, 4), spec(d=5)), r"x must have shape \(N, 5\); got \(3, 4\)"),
    ],
)
def test_bad_input_raises_clear_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_custom_table_is_used_as_given():
    p = make_parameterization("custom", 2, custom_exponents=dict(a=[0, 0.5, 1], b=0, c=[-1, 0, 1]))
    assert (p.a, p.b, p.c) == ((0.0, 0.5, 1.0), (0.0, 0.0, 0.0), (-1.0, 0.0, 1.0))
    np.testing.assert_allclose(ABCNetSpec(p, 3, 100).learning_rates(1.0, 0), [100, 1, 0.01])
