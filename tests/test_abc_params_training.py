"""dynamics.abc_train: IPLLR switch and calibration vs the original, training, batches, evaluation, coord check."""
import copy
import math

import numpy as np
import pytest
import torch

from dynamics.abc_train import (
    CALIBRATION_CAP,
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
from models.abc import ABCNet, abc_forward
from tests._abc_cases import data, spec


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
