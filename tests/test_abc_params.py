"""models.abc: exponent tables against the original's (wide-networks), width scales, the input-layer
convention and the first SGD step by hand, biases, forward pass against a float64 reference, muP = SP at the
base width, custom tables and input errors."""
import math

import numpy as np
import pytest
import torch

from dynamics.abc_train import CoordCheckConfig, make_optimizer, sgd_step, train_abc
from models.abc import (
    ACTIVATIONS,
    INIT_VARIANCE,
    ABCNet,
    ABCNetSpec,
    Parameterization,
    abc_forward,
    make_parameterization,
)
from tests._abc_cases import data, spec

# docs/notes/width_parameterizations.md#exponents, written out per layer (input, hidden, output) for L hidden layers.
REFERENCE = {
    "ntk": dict(a=(0, 0.5, 0.5), b=(0, 0, 0), c=(0, 0, 0)),
    "mup": dict(a=(-0.5, 0, 0.5), b=(0.5, 0.5, 0.5), c=(0, 0, 0)),
    "ip": dict(a=(0, 1, 1), b=(0, 0, 0), c=(0, 0, 0)),  # c user-set: ip_c = 0 by default
    "standard_ip": dict(a=(0, 1, 1), b=(0, 0, 0), c=(-1, -2, -1)),
    "standard_ip_calibrated": dict(a=(0, 1, 1), b=(0, 0, 0), c=(-1, -2, -1)),
    "ipllr": dict(a=(0, 1, 1), b=(0, 0, 0), c=(-1, -2, -1)),
    "sp": dict(a=(0, 0, 0), b=(0, 0.5, 0.5), c=(0, 0, 0)),
    "ipllr_bias": dict(a=(0, 1, 1), b=(0, 0, 0), c=(-1, -2, -1)),
}


def per_layer(first, hidden, last, L):
    return (first,) + (hidden,) * (L - 1) + (last,)


@pytest.mark.parametrize("L", [1, 3, 6])
@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_exponents_match_reference_table(name, L):
    p = make_parameterization(name, L)
    for key in "abc":
        assert getattr(p, key) == per_layer(*REFERENCE[name][key], L), key
    if name == "ipllr":
        assert p.warmup_c == per_layer(-(L + 1) / 2, -(L + 2) / 2, -(L + 1) / 2, L) and p.n_warmup_steps == 1
    elif name == "ipllr_bias":
        assert p.warmup_c[0] == -(L + 1) / 2 and p.warmup_c[-1] == -1
    elif name == "standard_ip_calibrated":  # non_centered/training.py: initial_lrs = warm_lrs = lr_scales
        assert p.warmup_c == per_layer(-1, -2, -1, L) and p.n_warmup_steps == 1
    else:
        assert p.warmup_c is None


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_multipliers_init_and_lrs_are_powers_of_width(name):
    L, m, d, base_lr = 4, 256, 12, 0.01
    s = spec(name, L=L, width=m, d=d)
    p = s.parameterization
    mu = s.multipliers()
    np.testing.assert_allclose(mu, [m ** -a for a in p.a])  # the original: no input multiplier
    assert s.input_std_factor() == 1 / math.sqrt(d + 1)  # 1/sqrt(d+1) sits in U_0's std
    if name != "sp":
        renorm = spec(name, L=L, width=m, d=d, input_scaling="multiplier")
        np.testing.assert_allclose(renorm.multipliers()[0], m ** -p.a[0] / math.sqrt(d + 1))
        assert renorm.input_std_factor() == 1.0
    np.testing.assert_allclose(s.init_scales(), [m ** -b for b in p.b])
    np.testing.assert_allclose(s.learning_rates(base_lr, step=10), [base_lr * m ** -c for c in p.c])
    if name == "ipllr":  # step 0 is the warm-up: base_lr · m^((L+1)/2) etc.
        np.testing.assert_allclose(s.learning_rates(base_lr, step=0), [base_lr * m ** -c for c in p.warmup_c])


# wide-networks base_abc_param.py _set_init_std: relu 2, gelu 4, elu / tanh 1, every other activation its default 2.
ORIGINAL_INIT_VARIANCE = {"relu": 2.0, "gelu": 4.0, "elu": 1.0, "tanh": 1.0, "sigmoid": 2.0}


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_init_is_width_power_times_width_independent_gaussian(activation):
    s = spec("mup", L=2, width=512, d=300, activation=activation)
    net = ABCNet(s, torch.Generator().manual_seed(0))
    sigma = math.sqrt(ORIGINAL_INIT_VARIANCE[activation])
    assert INIT_VARIANCE[activation] == ORIGINAL_INIT_VARIANCE[activation]
    for l, (scale, std) in enumerate(zip(s.init_scales(), [sigma / math.sqrt(301), sigma, 1.0])):
        W = getattr(net, f"W{l}")
        assert abs(W.std().item() / (scale * std) - 1) < 0.03, (l, W.std().item(), scale * std)
    assert tuple(net.W0.shape) == (512, 300) and tuple(net.W2.shape) == (5, 512)
    # The input layer always has a bias, v_0 ~ N(0, σ²) (not over sqrt(d+1)), scaled by m^-b_0 = 512^-1/2.
    assert [n for n, _ in net.named_parameters()] == ["W0", "W1", "W2", "b0"]
    assert abs(net.b0.std().item() / (sigma / math.sqrt(512)) - 1) < 0.15  # 512 draws: std error ~3%


@pytest.mark.parametrize("name", ["standard_ip", "ipllr_bias"])
def test_forward_matches_float64_reference(name):
    """Biases inside the multiplier, h = μ (W z + b), except ipllr_bias: h = μ W z + b (the original's forwards)."""
    kw = dict(bias=True, scale_bias=False) if name == "ipllr_bias" else dict(bias=True)
    s = spec(name, L=3, width=16, d=7, activation="tanh", **kw)
    net = ABCNet(s, torch.Generator().manual_seed(1)).double()
    x = torch.randn(9, 7, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    f, hs = abc_forward(dict(net.named_parameters()), x, s)
    W = [getattr(net, f"W{l}").detach().numpy() for l in range(4)]
    b = [getattr(net, f"b{l}").detach().numpy() for l in range(4)]
    assert all(np.abs(v).mean() > 0.1 for v in b)  # v_l drawn (not zero) in both cases, so placement matters
    mu = [1.0, 16.0 ** -1, 16.0 ** -1, 16.0 ** -1]  # a = 0 / 1 / 1, no input multiplier
    z, ref = x.numpy(), []
    for l in range(4):
        h = mu[l] * (z @ W[l].T + b[l]) if name == "standard_ip" else mu[l] * (z @ W[l].T) + b[l]
        ref.append(h)
        z = np.tanh(h)
    # atol: a pre-activation near 0 (cancellation) carries float64 rounding of its O(1) terms.
    np.testing.assert_allclose(f.detach().numpy(), ref[-1], rtol=1e-12, atol=1e-15)
    for h, r in zip(hs, ref[:-1]):
        np.testing.assert_allclose(h.detach().numpy(), r, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(net(x).detach().numpy(), ref[-1], rtol=1e-12, atol=1e-15)


def test_bias_flags_follow_the_original():
    s = spec("mup", bias=False)
    assert s.param_names() == ("W0", "W1", "W2", "W3", "b0")  # bias=False keeps the input layer's bias
    assert spec("mup", bias=True).param_names()[4:] == ("b0", "b1", "b2", "b3")
    net = ABCNet(spec("ntk", bias=True, scale_bias=False, width=64), torch.Generator().manual_seed(0))
    assert abs(net.b1.std().item() / math.sqrt(2) - 1) < 0.3  # unscaled init: v_l itself, N(0, 2) for relu
    with pytest.raises(ValueError, match="scale_bias=False"):
        spec("ipllr_bias", bias=False)
    with pytest.raises(ValueError, match="input_scaling must be 'init' with sp"):
        spec("sp", input_scaling="multiplier")


def _manual_grads(W, b, x, y, mu):
    """Backprop by hand, float64 numpy: relu net h_l = μ_l (W_l z + b_l), mean cross-entropy."""
    zs, hs, z = [x], [], x
    for l in range(len(W)):
        h = mu[l] * (z @ W[l].T + (b[l] if b[l] is not None else 0))
        hs.append(h)
        z = np.maximum(h, 0) if l < len(W) - 1 else h
        zs.append(z)
    p = np.exp(hs[-1] - hs[-1].max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    g = (p - np.eye(p.shape[1])[y]) / len(y)  # dL/df
    gW, gb = [None] * len(W), [None] * len(W)
    for l in reversed(range(len(W))):
        gW[l], gb[l] = mu[l] * g.T @ zs[l], mu[l] * g.sum(0)
        if l:
            g = (mu[l] * g @ W[l]) * (hs[l - 1] > 0)
    return gW, gb


@pytest.mark.parametrize("name", ["mup", "ntk", "standard_ip"])
def test_first_sgd_step_of_the_input_layer_by_hand(name):
    """The original's convention: U_0 ~ N(0, σ²/(d+1)), h_0 = m^-a_0 (W_0 x + b_0), lr_0 = base_lr m^-c_0;
    the input layer's feature update μ_0 ΔW_0 x is then (d+1)x that of the multiplier convention."""
    L, m, d, k, lr = 2, 16, 6, 3, 0.1
    s = spec(name, L=L, width=m, d=d, k=k)
    net = ABCNet(s, torch.Generator().manual_seed(0)).double()
    x, y = data(n=8, d=d, k=k)
    x = x.double()
    p = s.parameterization
    W = [getattr(net, f"W{l}").detach().numpy().copy() for l in range(L + 1)]
    b = [net.b0.detach().numpy().copy(), None, None]
    mu = [m ** -a for a in p.a]
    gW, gb = _manual_grads(W, b, x.numpy(), y.numpy(), mu)
    eta0 = lr * m ** -p.c[0]
    sgd_step(net, make_optimizer(net), s.param_learning_rates(lr, 0), x, y)
    # Tolerance: float64 throughout; the weights are O(1/sqrt(d)), rounding ~1e-16 of them.
    np.testing.assert_allclose(net.W0.detach().numpy(), W[0] - eta0 * gW[0], rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(net.b0.detach().numpy(), b[0] - eta0 * gb[0], rtol=1e-10, atol=1e-13)
    # Same forward under the multiplier convention (U_0 sqrt(d+1) larger, μ_0 / sqrt(d+1)): its gradient
    # on W_0 is μ_0 times smaller, and so its update of h_0 is (d+1)x smaller.
    r = spec(name, L=L, width=m, d=d, k=k, input_scaling="multiplier")
    net_r = ABCNet(r, torch.Generator().manual_seed(0)).double()
    with torch.no_grad():  # the weights before net's step
        for l in range(1, L + 1):
            getattr(net_r, f"W{l}").copy_(torch.as_tensor(W[l]))
        net_r.W0.copy_(torch.as_tensor(W[0]) * math.sqrt(d + 1))
        net_r.b0.copy_(torch.as_tensor(b[0]) * math.sqrt(d + 1))
    before = abc_forward(dict(net_r.named_parameters()), x, r)[1][0].detach()
    np.testing.assert_allclose(before.numpy(), mu[0] * (x.numpy() @ W[0].T + b[0]), rtol=1e-10, atol=1e-13)
    sgd_step(net_r, make_optimizer(net_r), r.param_learning_rates(lr, 0), x, y)
    dh_orig = mu[0] * (x.numpy() @ (-eta0 * gW[0]).T - eta0 * gb[0])
    dh_renorm = abc_forward(dict(net_r.named_parameters()), x, r)[1][0].detach().numpy() - before.numpy()
    np.testing.assert_allclose(dh_renorm * (d + 1), dh_orig, rtol=1e-8, atol=1e-12)


def test_input_scaling_multiplier_lr_scales_the_input_lr_after_the_warmup():
    d, m = 12, 32
    s = spec("ipllr", L=3, width=m, d=d, input_scaling="multiplier_lr")
    ref = spec("ipllr", L=3, width=m, d=d)
    assert s.learning_rates(0.01, 0) == ref.learning_rates(0.01, 0)  # warm-up untouched (β_0 carries d+1)
    np.testing.assert_allclose(s.learning_rates(0.01, 1), np.array(ref.learning_rates(0.01, 1)) * [d + 1, 1, 1, 1])
    np.testing.assert_allclose(spec("mup", d=d, input_scaling="multiplier_lr").learning_rates(0.1, 0)[0],
                               (d + 1) * spec("mup", d=d).learning_rates(0.1, 0)[0])


def test_calibrated_standard_ip_lrs_follow_non_centered_training_py():
    """non_centered/training.py, renorm_scale_lr_calib: warm-up lr β_l m^(-c_l) with standard IP's c = (-1, -2, -1)
    (its scheduler set the group lrs before warm_lrs[0] *= d+1), afterwards base_lr m^(-c_l), the input's × (d+1)."""
    d, m, L, base_lr = 12, 32, 3, 0.01
    s = spec("standard_ip_calibrated", L=L, width=m, d=d, input_scaling="multiplier_lr", init_mean=1.0)
    betas = (0.01 * (d + 1), 7.0, 8.0, 9.0)
    np.testing.assert_allclose(s.learning_rates(base_lr, 0, betas), [betas[0] * m, 7.0 * m ** 2, 8.0 * m ** 2, 9.0 * m])
    for step in (1, 5):
        np.testing.assert_allclose(s.learning_rates(base_lr, step, betas),
                                   [base_lr * m * (d + 1), base_lr * m ** 2, base_lr * m ** 2, base_lr * m])
    # Without calibration it is standard IP, step for step (input_scaling init: no (d+1) anywhere).
    plain, calib = spec("standard_ip", L=L, width=m, d=d), spec("standard_ip_calibrated", L=L, width=m, d=d)
    for step in (0, 1, 4):
        assert calib.learning_rates(base_lr, step) == plain.learning_rates(base_lr, step)


def test_ipllr_bias_exponents_match_the_original():
    """wide-networks base_ipllr_bias.py at L = 4: weights warm-up [-5/2, -3, -5/2, -2, -1]; biases
    warm-up [-5/2, -2, -3/2, -1, 0], then [-1, -1, -1, -1, 0]; all 0 without scale_bias_lr."""
    p = make_parameterization("ipllr_bias", 4)
    assert p.warmup_c == (-2.5, -3.0, -2.5, -2.0, -1.0) and p.c == (-1, -2, -2, -2, -1)
    assert p.warmup_bias_c == (-2.5, -2.0, -1.5, -1.0, 0.0)
    assert p.bias_c == (-1, -1, -1, -1, 0)
    q = make_parameterization("ipllr_bias", 4, scale_bias_lr=False)
    assert q.warmup_bias_c == q.bias_c == (0,) * 5
    s = spec("ipllr_bias", L=4, width=64, bias=True, scale_bias=False)
    np.testing.assert_allclose(s.bias_learning_rates(0.01, 0, (9.0,) * 5), [0.01 * 64 ** -c for c in p.warmup_bias_c])
    np.testing.assert_allclose(s.bias_learning_rates(0.01, 3), [0.01 * 64 ** -c for c in p.bias_c])


def test_non_centred_init_shifts_hidden_and_output_weights_only():
    net = ABCNet(spec("standard_ip", L=2, width=256, init_mean=1.0), torch.Generator().manual_seed(0))
    assert abs(net.W0.mean().item()) < 0.05  # U_0 centred: mean of 256·12 N(0, 2/13) draws, std error ~0.007
    assert abs(net.W1.mean().item() - 1) < 0.05 and abs(net.W2.mean().item() - 1) < 0.1
    assert abs(net.b0.mean().item()) < 0.5  # biases centred (256 N(0, 2) draws: std error ~0.09)


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


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: make_parameterization("mupp", 3), "parameterization must be one of"),
        (lambda: make_parameterization("mup", 0), "L must be an integer >= 1"),
        (lambda: make_parameterization("ip", 3, ip_c=[0, 1]),
         r"ip_c must be a number or a list of L\+1 = 4 numbers \(one per layer, input to output\); got \[0, 1\]"),
        (lambda: make_parameterization("custom", 2, custom_exponents=dict(a=[0, 1, 1], b=[0, 0], c=0)),
         r"custom_exponents.b must be a number or a list of L\+1 = 3 numbers"),
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
