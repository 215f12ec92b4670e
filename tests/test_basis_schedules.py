"""dynamics.schedules: LR schedules against torch's own schedulers, the losses, the optimizers, LARS written out."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dynamics.schedules import (
    LRSchedule,
    decay_groups,
    km_mse_loss,
    make_loss,
    make_optimizer,
    one_cycle_lr,
    set_lr,
    warmup_step_lr,
)
from models.basis_nets import InputShape, build_model

D = torch.float64


# --- learning-rate schedules -----------------------------------------------------------------

def _torch_warmup_step(lr_max, warm, lr_warm, rate, size, epochs):
    """The schedule train.py meant, built from torch schedulers with the warm-up applied once."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr_max)
    warmup = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: (lr_warm + (lr_max - lr_warm) * e / warm) / lr_max)
    decay = torch.optim.lr_scheduler.StepLR(opt, step_size=size, gamma=rate)
    sched = torch.optim.lr_scheduler.SequentialLR(opt, [warmup, decay], milestones=[warm])
    lrs = []
    for _ in range(epochs):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def test_warmup_step_schedule_matches_torch_schedulers_at_every_epoch():
    lr_max, warm, lr_warm, rate, size = 0.1, 5, 0.01, 0.33, 7
    ref = _torch_warmup_step(lr_max, warm, lr_warm, rate, size, 40)
    s = LRSchedule(lr_max, warm, lr_warm, rate, size)
    ours = [s.lr(e * 3, steps_per_epoch=3, total_steps=120) for e in range(40)]
    np.testing.assert_allclose(ours, ref, rtol=1e-12)
    closed = [lr_warm + (lr_max - lr_warm) * e / warm if e < warm else lr_max * rate ** ((e - warm) // size)
              for e in range(40)]
    np.testing.assert_allclose(ours, closed, rtol=1e-12)


def test_warmup_is_applied_once():
    s = LRSchedule(lr_max=2.0, epoch_warm=4, lr_warm=0.05, decay_rate=0.5, decay_stepsize=10)
    assert s.lr(0, 10, 1000) == 0.05  # train.py's LambdaLR gave lr_warm · lr_max = 0.1 here
    assert s.lr(19, 10, 1000) == 0.05 + (2.0 - 0.05) / 4  # constant within epoch 1
    assert s.lr(40, 10, 1000) == 2.0  # warm-up over: lr_max, not lr_max²
    assert s.lr(139, 10, 1000) == 2.0 and s.lr(140, 10, 1000) == 1.0


def test_no_warmup_and_iteration_unit_match_a_per_iteration_steplr():
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=2.0)
    steplr = torch.optim.lr_scheduler.StepLR(opt, step_size=50, gamma=0.33)
    s = LRSchedule(2.0, 0, 2.0, 0.33, 50, unit="iteration")
    for t in range(300):
        assert s.lr(t, steps_per_epoch=118, total_steps=1180) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12)
        opt.step()
        steplr.step()


def test_onecycle_matches_torch_per_iteration():
    total = 97
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0, momentum=0.9)
    ref = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.003, total_steps=total)
    s = LRSchedule(0.003, 0, 0.003, 0.33, 50, scheduler="onecycle")
    for t in range(total):
        assert s.lr(t, 10, total) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-10)
        assert one_cycle_lr(t, total, 0.003) == s.lr(t, 10, total)
        opt.step()
        ref.step()


@pytest.mark.parametrize("kwargs, match", [
    (dict(lr_max=0.0), r"lr_setting\[0\]"),
    (dict(epoch_warm=-1), r"lr_setting\[1\]"),
    (dict(epoch_warm=2.5), r"lr_setting\[1\]"),
    (dict(lr_warm=-0.1), r"lr_setting\[2\]"),
    (dict(decay_rate=0.0), "decay_rate"),
    (dict(decay_stepsize=0), "decay_stepsize"),
    (dict(scheduler="cosine"), "scheduler must be one of"),
    (dict(unit="batch"), "schedule_unit must be one of"),
])
def test_schedule_validation_names_the_key(kwargs, match):
    base = dict(lr_max=0.1, epoch_warm=5, lr_warm=0.01, decay_rate=0.33, decay_stepsize=50)
    with pytest.raises(ValueError, match=match):
        LRSchedule(**{**base, **kwargs})


def test_warmup_step_lr_is_the_closed_form():
    assert warmup_step_lr(0, 1.0, 0, 0.5, 0.1, 2) == 1.0  # no warm-up
    assert warmup_step_lr(3, 1.0, 0, 0.5, 0.1, 2) == pytest.approx(0.1)


# --- losses ---------------------------------------------------------------------------------

def test_km_mse_matches_its_formula():
    gen = torch.Generator().manual_seed(0)
    out, labels = torch.randn(6, 5, dtype=D, generator=gen), torch.tensor([0, 4, 2, 2, 1, 3])
    k, M = 5.0, 3.0
    total = 0.0
    for n in range(6):
        for c in range(5):
            hot = float(labels[n] == c)
            total += (k * hot + 1) * (float(out[n, c]) - M * hot) ** 2
    assert float(km_mse_loss(out, labels, k, M)) == pytest.approx(total / 30, rel=1e-12)
    assert float(make_loss("mse_loss", (k, M))(out, labels)) == pytest.approx(total / 30, rel=1e-12)
    torch.testing.assert_close(make_loss("mse_loss")(out, labels), F.mse_loss(out, F.one_hot(labels, 5).to(D)))
    torch.testing.assert_close(make_loss("ce_loss")(out, labels), F.cross_entropy(out, labels))


def test_loss_errors():
    with pytest.raises(ValueError, match="loss_fn must be one of"):
        make_loss("l1_loss")
    with pytest.raises(ValueError, match="k_M applies to mse_loss"):
        make_loss("ce_loss", (5.0, 5.0))


# --- optimizers -----------------------------------------------------------------------------

def test_optimizers_are_train_py_settings_lars_ours_and_timm_lamb():
    from timm.optim import Lamb

    from dynamics.lars import LARS

    p = [torch.nn.Parameter(torch.ones(3))]
    sgd = make_optimizer("sgd", p, 0.1)
    assert isinstance(sgd, torch.optim.SGD)
    assert sgd.defaults["momentum"] == 0.9 and sgd.defaults["weight_decay"] == 1e-4
    lars = make_optimizer("lars", p, 2.0)
    assert isinstance(lars, LARS) and lars.defaults["momentum"] == 0.9 and lars.defaults["weight_decay"] == 1e-4
    assert lars.defaults["trust_coefficient"] == 1e-3  # flash's default, used by every original script
    lamb = make_optimizer("lamb", p, 0.01)
    assert isinstance(lamb, Lamb) and lamb.defaults["weight_decay"] == 0.0
    assert lamb.defaults["always_adapt"] and lamb.defaults["max_grad_norm"] is None
    adamw = make_optimizer("adamw", p, 1e-3)
    assert isinstance(adamw, torch.optim.AdamW) and adamw.defaults["weight_decay"] == 0.01
    assert make_optimizer("adamw", p, 1e-3, weight_decay=0.0).defaults["weight_decay"] == 0.0
    set_lr(sgd, 0.5)
    assert sgd.param_groups[0]["lr"] == 0.5
    with pytest.raises(ValueError, match="optimizer must be one of"):
        make_optimizer("adam", p, 0.1)


# --- LARS ------------------------------------------------------------------------------------

def _lars_reference(w, grads, lr, momentum, wd, eta=1e-3, eps=1e-8):
    """The LARS update written out per step (flash's formula with the ratio at every λ), float64 lists."""
    w, v, out = w.clone(), None, []
    for g in grads:
        wn, gn = float(w.norm()), float(g.norm())
        d = eta * wn / (gn + wd * wn + eps) * (g + wd * w) if wn > 0 and gn > 0 else g.clone()
        v = d.clone() if v is None else momentum * v + d
        w = w - lr * v
        out.append(w.clone())
    return out


def test_lars_step_norm_is_trust_ratio_scaled_at_zero_weight_decay():
    from dynamics.lars import LARS

    gen = torch.Generator().manual_seed(0)
    w0 = torch.randn(5, 3, dtype=D, generator=gen)
    g = 40.0 * torch.randn(5, 3, dtype=D, generator=gen)
    p = torch.nn.Parameter(w0.clone())
    opt = LARS([p], lr=0.5, momentum=0.9, weight_decay=0.0)
    p.grad = g.clone()
    opt.step()
    # first step: ‖Δw‖ = lr · η ‖w‖ / (‖g‖ + ε) · ‖g‖ = lr · η · ‖w‖ (up to ε/‖g‖ ~ 1e-10), not lr · ‖g‖
    want = 0.5 * 1e-3 * float(w0.norm()) * float(g.norm()) / (float(g.norm()) + 1e-8)
    assert math.isclose(float((p.detach() - w0).norm()), want, rel_tol=1e-12)


@pytest.mark.parametrize("wd", [0.0, 1e-4, 0.3])
def test_lars_matches_the_update_written_out_over_steps(wd):
    from dynamics.lars import LARS

    gen = torch.Generator().manual_seed(1)
    w0 = torch.randn(4, 6, dtype=D, generator=gen)
    grads = [torch.randn(4, 6, dtype=D, generator=gen) for _ in range(4)]
    p = torch.nn.Parameter(w0.clone())
    opt = LARS([p], lr=2.0, momentum=0.9, weight_decay=wd)
    for g, want in zip(grads, _lars_reference(w0, grads, 2.0, 0.9, wd)):
        p.grad = g.clone()
        opt.step()
        torch.testing.assert_close(p.detach(), want, rtol=1e-12, atol=1e-14)  # float64 round-off of O(1) entries


def test_lars_zero_weights_take_the_raw_gradient_step_and_timm_lars_differs_at_zero_decay():
    from timm.optim import Lars

    from dynamics.lars import LARS

    p = torch.nn.Parameter(torch.zeros(3, dtype=D))
    opt = LARS([p], lr=0.1, momentum=0.0, weight_decay=1e-4)
    p.grad = torch.tensor([1.0, -2.0, 0.5], dtype=D)
    opt.step()
    torch.testing.assert_close(p.detach(), -0.1 * torch.tensor([1.0, -2.0, 0.5], dtype=D), rtol=0, atol=1e-15)
    # why not timm: at weight_decay 0 its Lars is momentum SGD (no trust ratio)
    w0, g = torch.ones(3, dtype=D), torch.full((3,), 10.0, dtype=D)
    q = torch.nn.Parameter(w0.clone())
    timm_opt = Lars([q], lr=0.1, momentum=0.9, weight_decay=0.0)
    q.grad = g.clone()
    timm_opt.step()
    torch.testing.assert_close(q.detach(), w0 - 0.1 * g, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("kwargs, match", [(dict(lr=0.0), "lr must be a finite number > 0; got 0.0"),
                                           (dict(momentum=-1.0), "momentum"), (dict(weight_decay=-1.0), "weight_decay"),
                                           (dict(trust_coefficient=0.0), "trust_coefficient")])
def test_lars_rejects_bad_hyperparameters(kwargs, match):
    from dynamics.lars import LARS

    with pytest.raises(ValueError, match=match):
        LARS([torch.nn.Parameter(torch.ones(2))], **{"lr": 0.1, **kwargs})


@pytest.mark.parametrize("name, lr", [("sgd", 0.05), ("lars", 5.0), ("lamb", 0.01), ("adamw", 0.01)])
def test_each_optimizer_decreases_a_least_squares_loss(name, lr):
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 4, generator=gen), torch.randn(64, 2, generator=gen)
    lin = torch.nn.Linear(4, 2)
    opt = make_optimizer(name, lin.parameters(), lr)
    first = float(((lin(x) - y) ** 2).mean().detach())
    for _ in range(30):
        loss = ((lin(x) - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(((lin(x) - y) ** 2).mean().detach()) < first


def test_decay_groups_decay_conv_and_linear_weights_only():
    """train.py's separate_parameters: Linear / Conv2d weights decayed; biases, norms, gates, position tables not."""
    net = build_model("vit", InputShape(3, 8, 10), width=2, seed=0)
    decay, no_decay = decay_groups(net, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in net.named_parameters()}
    got = {names[id(p)] for p in decay["params"]}
    want = {n for n, m in net.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))
            for n in [f"{n}.weight"]}
    assert got == want and "head.weight" in got
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(net.parameters()))
