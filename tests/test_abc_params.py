"""models.abc and dynamics.abc_train: exponent tables against the original's (wide-networks), width scales,
the input-layer convention and the first SGD step by hand, biases, forward pass against a float64
reference, muP = SP at the base width, the IPLLR switch and its calibration."""
import copy
import math

import numpy as np
import pytest
import torch

from dynamics.abc_train import (
    CALIBRATION_CAP,
    CoordCheckConfig,
    batch_indices,
    calibrate_warmup_lrs,
    coordinate_check,
    evaluate,
    fixed_batch_list,
    likelihoods,
    make_optimizer,
    sgd_step,
    train_abc,
    warmup_base_lrs,
)
from models.abc import (
    ACTIVATIONS,
    INIT_VARIANCE,
    ABCNet,
    ABCNetSpec,
    Parameterization,
    abc_forward,
    make_parameterization,
)

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


def spec(name="mup", L=3, width=64, d=12, k=5, activation="relu", n_warmup_steps=1, **kw):
    if name == "ipllr_bias":
        kw = dict(dict(bias=True, scale_bias=False), **kw)
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
    # By hand, the original's calibrate_base_lr: one torch.optim SGD step at lr m^(-c_l) (biases with their
    # layer), then β_0 = base_lr; β_1 = 1 / mean|μ_1 ΔW_1 z_0| with z_0 = φ(h_0 + β_0 μ_0 (ΔW_0 x + Δb_0)).
    copy = ABCNet(s, torch.Generator().manual_seed(0)).double()
    lrs = s.param_learning_rates(1.0, 0)
    opt = torch.optim.SGD([{"params": [v], "lr": lrs[n]} for n, v in copy.named_parameters()])
    init = {n: v.detach().clone() for n, v in copy.named_parameters()}
    torch.nn.functional.cross_entropy(copy(x[:64].double()), y[:64]).backward()
    opt.step()
    mu, xp = s.multipliers(), x[64:].double()
    d0 = mu[0] * (xp @ (copy.W0.detach() - init["W0"]).T + (copy.b0.detach() - init["b0"]))
    z0 = torch.nn.functional.gelu(mu[0] * (xp @ init["W0"].T + init["b0"]) + 0.01 * d0)
    d1 = mu[1] * (z0 @ (copy.W1.detach() - init["W1"]).T)
    assert betas[0] == 0.01  # base_lr, not calibrated
    # rtol: the mock step ran in float32 here, float64 in the reference.
    np.testing.assert_allclose(betas[1], min(1.0 / d1.abs().mean().item(), CALIBRATION_CAP), rtol=1e-3)
    today = calibrate_warmup_lrs(net, x[:64], y[:64], x[64:], mode="all_layers")
    np.testing.assert_allclose(today[0], 1.0 / d0.abs().mean().item(), rtol=1e-3)  # today's: input calibrated too
    assert warmup_base_lrs(net, "default", 0.01, x, y, x) == (1.0,) * 4
    assert warmup_base_lrs(net, "none", 0.01, x, y, x) is None
    # No gradient reaches the hidden layers when the output weights are zero: every hidden β is the cap.
    with torch.no_grad():
        net.W3.zero_()
    capped = calibrate_warmup_lrs(net, x[:64], y[:64], x[64:])
    assert capped[1:3] == (CALIBRATION_CAP,) * 2 and capped[0] == 0.01 and math.isfinite(capped[3])
    with pytest.raises(ValueError, match="warm-up"):
        calibrate_warmup_lrs(ABCNet(spec("mup")), x[:8], y[:8], x[8:16])


def _original_ipllr(layers, L, m, base_lr, xs, ys, xp, standard_warmup=False):
    """wide-networks' FcIPLLR + WarmupSwitchLR.calibrate_base_lr, written independently: nn.Linear layers with
    forward m^(-a_l) layer(z) (a = 0, 1, ..., 1); a mock SGD step at lr m^(-c_l) (warm-up c); then on the probe
    batch β_0 = base_lr, β_l = min(target / mean|m^(-a_l) ΔW_l z|, 500) (target 1, 0.1 at the output), z propagated
    with the *uncapped* value. Returns the β_l and the warm-up and later lr exponents. standard_warmup: the
    scheduler of non_centered/training.py's calibrated standard IP, whose warm-up lrs are standard IP's own."""
    c = [-1] + [-2] * (L - 1) + [-1]
    warm_c = list(c) if standard_warmup else [-(L + 1) / 2] + [-(L + 2) / 2] * (L - 1) + [-(L + 1) / 2]
    a = [0] + [1] * L
    mock = copy.deepcopy(layers)
    opt = torch.optim.SGD([{"params": lay.parameters(), "lr": m ** -cw} for lay, cw in zip(mock, warm_c)], lr=1.0)
    torch.nn.functional.cross_entropy(_original_forward(mock, a, m, xs), ys).backward()
    opt.step()
    betas, z = [], xp
    with torch.no_grad():
        for l, (new, old) in enumerate(zip(mock, layers)):
            init = m ** -a[l] * old(z)
            db = m ** -a[l] * (new.bias - old.bias) if l == 0 else None
            update = torch.nn.functional.linear(z, m ** -a[l] * (new.weight - old.weight), db)
            if l == 0:
                beta = scale = base_lr
            else:
                scale = (0.1 if l == L else 1.0) / update.abs().mean().item()
                beta = min(scale, 500.0)
            betas.append(beta)
            z = torch.nn.functional.gelu(init + scale * update)
    return betas, a, warm_c, c


def _original_forward(layers, a, m, x):
    for l, lay in enumerate(layers[:-1]):
        x = torch.nn.functional.gelu(m ** -a[l] * lay(x))
    return m ** -a[-1] * layers[-1](x)


@pytest.mark.parametrize("name,output_scale,init_mean",
                         [("ipllr", 1.0, 0.0), ("ipllr", 1e-3, 0.0), ("standard_ip_calibrated", 1.0, 1.0)])
def test_ipllr_calibration_and_training_equal_the_originals_step_by_step(name, output_scale, init_mean):
    """Our IPLLR (calibration 'original' + train_abc) against the original's layers, scheduler and torch SGD
    (one group per layer, β_l m^(-c_l) for the first step, base_lr m^(-c_l) after), same init and batches.
    output_scale 1e-3 shrinks the hidden layers' gradients so that some β_l hit the cap of 500: then the next
    layer must see the uncapped value. standard_ip_calibrated with init_mean 1: non_centered/training.py's
    calibrated non-centred standard IP (its scheduler's warm-up lrs are standard IP's)."""
    L, m, d, k, base_lr, bs = 4, 48, 12, 5, 0.01, 32
    x, y = data(n=128, d=d, k=k, seed=3)
    x = x.double()
    s = spec(name, L=L, width=m, d=d, k=k, activation="gelu", init_mean=init_mean)
    net = ABCNet(s, torch.Generator().manual_seed(2)).double()
    with torch.no_grad():
        net.W4.mul_(output_scale)
    layers = [torch.nn.Linear(d, m)] + [torch.nn.Linear(m, m, bias=False) for _ in range(L - 1)] + \
             [torch.nn.Linear(m, k, bias=False)]
    layers = [lay.double() for lay in layers]
    with torch.no_grad():
        for l, lay in enumerate(layers):
            lay.weight.copy_(getattr(net, f"W{l}"))
        layers[0].bias.copy_(net.b0)
    xs, ys, xp = x[:bs], y[:bs], x[bs:2 * bs]
    expected, a, warm_c, c = _original_ipllr(layers, L, m, base_lr, xs, ys, xp, name == "standard_ip_calibrated")
    betas = calibrate_warmup_lrs(net, xs, ys, xp, base_lr=base_lr)
    # float64 on both sides, the same operations up to summation order: measured agreement 1e-13 (the capped
    # case) or better; 1e-9 leaves margin and still fails any different formula.
    np.testing.assert_allclose(betas, expected, rtol=1e-9)
    if name == "ipllr":
        assert (max(betas[1:]) == CALIBRATION_CAP) == (output_scale < 1)  # the second case does exercise the cap
    n_steps = 8
    ours = train_abc(net, x, y, n_steps, bs, base_lr, torch.Generator().manual_seed(4), warmup_base_lrs=betas)
    opt = torch.optim.SGD([{"params": lay.parameters(), "lr": b * m ** -cw}
                           for lay, b, cw in zip(layers, expected, warm_c)])
    theirs, batches = [], batch_indices(x.shape[0], bs, torch.Generator().manual_seed(4))
    for t in range(n_steps):
        idx = next(batches)
        loss = torch.nn.functional.cross_entropy(_original_forward(layers, a, m, x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        theirs.append(loss.item())
        if t == 0:  # WarmupSwitchLR.step after the first step: base_lr times the standard IP scales
            for group, cl in zip(opt.param_groups, c):
                group["lr"] = base_lr * m ** -cl
    # float64; the first step's lrs (up to ~4e8 here) amplify rounding, measured agreement still 1e-16.
    np.testing.assert_allclose(ours, theirs, rtol=1e-9)


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
        runs.append((train_abc(net, x, y, 8, 16, 0.5, torch.Generator().manual_seed(6)),
                     evaluate(net, x, y, batch_size=10)))
    assert runs[0] == runs[1]
    loss, acc = runs[0][1]
    assert 0 <= acc <= 1 and loss > 0 and (acc * 64) == round(acc * 64)


def test_likelihoods_are_softmax_probabilities_and_evaluate_reports_them():
    f = torch.tensor([[0.0, math.log(2), 0.0], [math.log(3), 0.0, 0.0]])  # softmax rows (1, 2, 1)/4 and (3, 1, 1)/5
    correct, predicted = likelihoods(f, torch.tensor([0, 2]))
    np.testing.assert_allclose(correct, [0.25, 0.2], rtol=1e-6)  # float32 softmax
    np.testing.assert_allclose(predicted, [0.5, 0.6], rtol=1e-6)
    x, y = data(k=5)
    net = ABCNet(spec("mup", k=5), torch.Generator().manual_seed(0))
    with torch.no_grad():
        net.W3.zero_()  # no output bias: f = 0, every class has probability 1/k
    loss, acc, likelihood = evaluate(net, x, y, batch_size=10, with_likelihood=True)
    assert likelihood == pytest.approx(0.2) and loss == pytest.approx(math.log(5))
    assert evaluate(net, x, y, batch_size=10) == (loss, acc)


def test_train_first_batch_replaces_step_0_only():
    x, y = data(n=64)
    s = spec("mup")
    first = (x[:5] * 2, y[:5])
    records, ref = [], []
    train_abc(ABCNet(s, torch.Generator().manual_seed(1)), x, y, 3, 16, 0.1, torch.Generator().manual_seed(2),
              callback=records.append, first_batch=first)
    # By hand: one step on `first`, then the batches the generator gives, from its first one on.
    net = ABCNet(s, torch.Generator().manual_seed(1))
    opt, batches = make_optimizer(net), batch_indices(64, 16, torch.Generator().manual_seed(2))
    for t in range(3):
        xb, yb = first if t == 0 else (x[(idx := next(batches))], y[idx])
        ref.append(sgd_step(net, opt, s.param_learning_rates(0.1, t), xb, yb)[0].item())
    assert [r.loss for r in records] == ref


def test_batches_are_epochs_without_replacement():
    it = batch_indices(10, 3, torch.Generator().manual_seed(0))
    epoch = torch.cat([next(it) for _ in range(3)])
    assert len(set(epoch.tolist())) == 9  # 3 full batches from one permutation; the partial batch is dropped
    with pytest.raises(ValueError, match="batch_size"):
        next(batch_indices(10, 11, torch.Generator()))


def test_fixed_batch_list_is_one_epoch_cycled_in_order():
    """The server scripts: batches = list(DataLoader(shuffle=True)) (one permutation, the partial last batch kept),
    step i trains on batches[i % len(batches)]."""
    batches = fixed_batch_list(10, 4, torch.Generator().manual_seed(0))
    assert [len(b) for b in batches] == [4, 4, 2] and sorted(torch.cat(batches).tolist()) == list(range(10))
    x, y = data(n=10)
    s = spec("mup")
    records = []
    train_abc(ABCNet(s, torch.Generator().manual_seed(1)), x, y, 7, 4, 0.1, torch.Generator().manual_seed(9),
              callback=records.append, batch_list=batches)
    net, ref = ABCNet(s, torch.Generator().manual_seed(1)), []
    opt = make_optimizer(net)
    for t in range(7):
        idx = batches[t % 3]
        ref.append(sgd_step(net, opt, s.param_learning_rates(0.1, t), x[idx], y[idx])[0].item())
    assert [r.loss for r in records] == ref  # the same float ops in the same order: exact
    with pytest.raises(ValueError, match="not both"):
        train_abc(ABCNet(s), x, y, 1, 4, 0.1, torch.Generator(), first_batch=(x[:2], y[:2]), batch_list=batches)


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
