"""The fused Linear-stack flat loss (llc.fused) against the generic functional_call route.

The reference in every test is written here: ``functional_call`` of the module on
the flat vector's views, vmapped over chains, which is what flat_loss_for_module
returned before the fused path existed.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from llc import fused_grad
from llc.estimate import estimate_llc, flat_loss_for_module
from llc.fused import FusedFlatLoss, batched_or_vmap, linear_stack
from models.chaos_nets import CNN
from models.chaos_nets import MLP as ChaosMLP
from models.dln import DeepLinearNetwork
from models.relu_mlp import ReLUMLP

CPU = torch.device("cpu")
C, B = 3, 6  # chains, batch

# Tolerances. The fused and generic routes add the same products in possibly different
# orders (bmm vs addmm kernels), so they differ by rounding only: a few ulps per op,
# times the fan-in (<= 12 here) and depth (<= 4): float64 1e-10 relative leaves > 1e3
# headroom over 12·4·2.2e-16; float32 1e-4 likewise over 12·4·1.2e-7 ≈ 6e-6. atol is the
# same relative bound times the tensor's own scale, for entries near zero.
RTOL = {torch.float64: 1e-10, torch.float32: 1e-4}


def mse_lambda(out, y):  # an arbitrary loss: not recognised, so vmapped on the outputs
    return ((out - y) ** 2).mean()


def _sequential_mixed():
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 4, bias=False), nn.Identity(),
                         nn.Sigmoid(), nn.Linear(4, 6), nn.GELU(), nn.Linear(6, 3))


# (name, model factory, input shape after B, target kind, loss)
CASES = [
    ("dln", lambda: DeepLinearNetwork(7, [9, 6, 8]), (7,), "reg", F.mse_loss),
    ("dln-lambda-loss", lambda: DeepLinearNetwork(4, [5, 3]), (4,), "reg", mse_lambda),
    ("dln-MSELoss", lambda: DeepLinearNetwork(4, [5, 3]), (4,), "reg", nn.MSELoss()),
    ("relu-mlp-ce", lambda: ReLUMLP([6, 8, 5, 4]), (6,), "cls", F.cross_entropy),
    ("relu-mlp-mse", lambda: ReLUMLP([6, 8, 3]), (6,), "reg", F.mse_loss),
    ("relu-mlp-CELoss", lambda: ReLUMLP([6, 8, 4]), (6,), "cls", nn.CrossEntropyLoss()),
    ("chaos-mlp-relu", lambda: ChaosMLP(1 * 3 * 3, 10, 4, "relu"), (1, 3, 3), "cls", F.cross_entropy),
    ("chaos-mlp-tanh", lambda: ChaosMLP(2 * 2 * 2, 5, 3, "tanh"), (2, 2, 2), "cls", F.cross_entropy),
    ("chaos-mlp-elu", lambda: ChaosMLP(2 * 2 * 2, 5, 3, "elu"), (2, 2, 2), "cls", F.cross_entropy),
    ("sequential-mixed", _sequential_mixed, (5,), "reg", F.mse_loss),
    ("sequential-leaky-ce", lambda: nn.Sequential(nn.Linear(5, 6), nn.LeakyReLU(0.1), nn.Linear(6, 6), nn.Sigmoid(),
                                                  nn.Linear(6, 4)), (5,), "cls", F.cross_entropy),
    ("sequential-soft-ce", lambda: nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 3)), (5,), "soft",
     F.cross_entropy),
]


def _reference(model, loss_fn):
    """Generic flat loss: functional_call on views of w, in named_parameters order."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    sizes = [math.prod(s) for s in shapes]

    def loss(w, x, y):
        params = {n: c.view(s) for n, c, s in zip(names, torch.split(w, sizes), shapes)}
        return loss_fn(functional_call(model, params, (x,)), y)

    return loss


def _data(in_shape, out_dim, kind, dtype, gen):
    x = torch.randn(C, B, *in_shape, generator=gen, dtype=dtype)
    if kind == "reg":
        y = torch.randn(C, B, out_dim, generator=gen, dtype=dtype)
    elif kind == "cls":
        y = torch.randint(0, out_dim, (C, B), generator=gen)
    else:
        y = torch.softmax(torch.randn(C, B, out_dim, generator=gen, dtype=dtype), -1)
    return x, y


def _close(a, b, dtype):
    scale = float(b.abs().max()) + 1e-30
    torch.testing.assert_close(a, b, rtol=RTOL[dtype], atol=RTOL[dtype] * scale)


def _loss_and_grad(fn, w, x, y):
    w = w.detach().requires_grad_(True)
    loss = fn(w, x, y)
    (g,) = torch.autograd.grad(loss.sum(), w)
    return loss.detach(), g


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name,make,in_shape,kind,loss_fn", CASES, ids=[c[0] for c in CASES])
def test_fused_equals_generic(name, make, in_shape, kind, loss_fn, dtype):
    torch.manual_seed(0)
    model = make().to(dtype)
    fused, w0 = flat_loss_for_module(model, loss_fn, dtype, CPU)
    assert fused.path == "fused" and isinstance(fused, FusedFlatLoss)
    gen = torch.Generator().manual_seed(1)
    out_dim = [m for m in model.modules() if isinstance(m, nn.Linear)][-1].out_features
    x, y = _data(in_shape, out_dim, kind, dtype, gen)
    w = w0 + 0.3 * torch.randn(C, w0.numel(), generator=gen, dtype=dtype)  # (C, P): distinct chains
    ref_loss, ref_grad = _loss_and_grad(vmap(_reference(model, loss_fn)), w, x, y)
    assert ref_grad.abs().max() > 0

    for fn in (vmap(fused), fused.batched, batched_or_vmap(fused)):
        loss, g = _loss_and_grad(fn, w, x, y)
        assert loss.shape == (C,) and loss.dtype == dtype
        _close(loss, ref_loss, dtype)
        _close(g, ref_grad, dtype)
    # All chains' loss and gradient at once: hand-written backward where covered, else autograd.
    loss, g = fused.value_and_grad(w, x, y)
    assert loss.shape == (C,) and g.shape == w.shape and not g.requires_grad
    _close(loss, ref_loss, dtype)
    _close(g, ref_grad, dtype)
    # The hand-written backward is set up for MSE / cross-entropy stacks without GELU (soft
    # labels fall back to autograd at call time); the others use autograd throughout.
    assert (fused._kind is not None) == (name not in ("dln-lambda-loss", "sequential-mixed"))
    # One chain, unvmapped (the driver's single-chain call).
    loss1, g1 = _loss_and_grad(lambda w_, x_, y_: fused(w_[0], x_[0], y_[0]).reshape(1), w[:1], x, y)
    _close(loss1, ref_loss[:1], dtype)
    _close(g1, ref_grad[:1], dtype)


def test_shared_linear_accumulates_both_uses():
    lin = nn.Linear(4, 4)
    model = nn.Sequential(lin, nn.ReLU(), lin).double()
    fused, w0 = flat_loss_for_module(model, F.mse_loss, torch.float64, CPU)
    assert fused.path == "fused" and w0.numel() == 20  # one weight and bias, counted once
    gen = torch.Generator().manual_seed(2)
    x, y = _data((4,), 4, "reg", torch.float64, gen)
    w = w0 + 0.1 * torch.randn(C, 20, generator=gen, dtype=torch.float64)
    ref = _loss_and_grad(vmap(_reference(model, F.mse_loss)), w, x, y)
    for got in (_loss_and_grad(fused.batched, w, x, y), fused.value_and_grad(w, x, y)):
        _close(got[0], ref[0], torch.float64)
        _close(got[1], ref[1], torch.float64)


def test_cross_entropy_ignore_index_matches_mean_over_kept_rows():
    model = ReLUMLP([3, 4, 5]).double()
    fused, w0 = flat_loss_for_module(model, F.cross_entropy, torch.float64, CPU)
    gen = torch.Generator().manual_seed(3)
    x, y = _data((3,), 5, "cls", torch.float64, gen)
    y[0, :2] = -100  # ignored rows: reduction="mean" divides by the B - 2 kept rows of chain 0
    w = w0 + 0.1 * torch.randn(C, w0.numel(), generator=gen, dtype=torch.float64)
    ref = _loss_and_grad(vmap(_reference(model, F.cross_entropy)), w, x, y)
    _close(fused.batched(w, x, y), ref[0], torch.float64)
    loss, g = fused.value_and_grad(w, x, y)  # hand-written backward, ignored rows masked
    _close(loss, ref[0], torch.float64)
    _close(g, ref[1], torch.float64)


class _Subclassed(DeepLinearNetwork):
    """Same function as its parent, but a subclass may override forward: not fused."""


def _hooked():
    model = DeepLinearNetwork(3, [2])
    model.layers[0].register_forward_hook(lambda m, i, o: o * 2)
    return model


def _with_extra_parameter():
    model = DeepLinearNetwork(3, [2])
    model.scale = nn.Parameter(torch.ones(1))  # in the flat vector but outside every Linear
    return model


def test_stack_without_linear_does_not_qualify():
    assert linear_stack(nn.Sequential(nn.ReLU(), nn.Tanh())) is None


@pytest.mark.parametrize("make", [
    lambda: _Subclassed(3, [2]),
    _hooked,
    lambda: nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.1), nn.Linear(4, 2)),
    lambda: nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)),
    lambda: nn.Sequential(nn.Linear(3, 4), nn.PReLU(), nn.Linear(4, 2)),
    lambda: _with_extra_parameter(),
    lambda: CNN(1, 16, 3, base_channels=2),
], ids=["subclass", "forward-hook", "dropout", "batchnorm", "prelu", "extra-param", "cnn"])
def test_non_qualifying_models_take_the_generic_path(make):
    model = make()
    assert linear_stack(model) is None
    loss, _ = flat_loss_for_module(model, F.mse_loss, torch.float32, CPU)
    assert loss.path == "generic" and not hasattr(loss, "batched")


def test_hooked_model_keeps_its_hook():
    """The generic fallback runs the forward hook (output doubled); a fused path would drop it."""
    model = _hooked().double()
    loss, w0 = flat_loss_for_module(model, F.mse_loss, torch.float64, CPU)
    x = torch.randn(5, 3, dtype=torch.float64)
    y = torch.zeros(5, 2, dtype=torch.float64)
    expected = ((2 * x @ model.layers[0].weight.detach().T) ** 2).mean()
    torch.testing.assert_close(loss(w0, x, y), expected, rtol=1e-12, atol=1e-14)


def test_estimate_llc_fused_equals_generic_end_to_end():
    """Same seed, same chains: the fused DLN and its non-fused subclass give λ̂ equal to rounding."""
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(200, 4, generator=gen, dtype=torch.float64)
    fused_model, generic_model = DeepLinearNetwork(4, [3, 2]).double(), _Subclassed(4, [3, 2]).double()
    generic_model.load_state_dict(fused_model.state_dict())
    with torch.no_grad():
        y = fused_model(x)
    kw = dict(epsilon=1e-4, gamma=10.0, num_steps=60, batch_size=20, num_chains=3, seed=5, compile=False)
    a = estimate_llc(fused_model, F.mse_loss, (x, y), **kw)
    b = estimate_llc(generic_model, F.mse_loss, (x, y), **kw)
    # 60 float64 steps from the same draws: rounding differences stay near 1e-16 relative
    # per step (the localised SGLD map contracts), so 1e-9 has ample headroom.
    torch.testing.assert_close(torch.as_tensor(a.loss_trace), torch.as_tensor(b.loss_trace), rtol=1e-9, atol=1e-12)
    assert abs(a.lambdahat - b.lambdahat) <= 1e-6 * max(1.0, abs(b.lambdahat))
    # With 3 chains the fused run's eager step takes value_and_grad (closed-form backward,
    # no vmap), the generic one vmap + autograd: the agreement above covers the driver hook.
    assert (a.loss_path, b.loss_path) == ("fused", "generic")
    assert a.summary()["loss_path"] == "fused"


@pytest.mark.slow
def test_fused_loss_compiles_and_matches_eager():
    """The compiled step (vmap(grad_and_value(loss)) under torch.compile) accepts the fused loss."""
    from llc.sgld import SGLDConfig, run_sgld

    gen = torch.Generator().manual_seed(6)
    model = ReLUMLP([4, 6, 3]).double()
    loss, w0 = flat_loss_for_module(model, F.cross_entropy, torch.float64, CPU)
    x = torch.randn(100, 4, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (100,), generator=gen)
    cfg = dict(epsilon=1e-4, gamma=10.0, num_steps=20, batch_size=10, num_chains=2, nbeta=30.0)
    comp = run_sgld(loss, w0, x, y, SGLDConfig(**cfg, compile=True), seed=1)
    eager = run_sgld(loss, w0, x, y, SGLDConfig(**cfg, compile=False), seed=1)
    assert comp.compile_mode == "compiled"
    # Same draws; float64 steps differing in operation order only: ~1e-13 relative, 1e-9 asserted.
    torch.testing.assert_close(comp.loss, eager.loss, rtol=1e-9, atol=1e-12)


def _shared_linear_stack():
    lin = nn.Linear(4, 4)
    return nn.Sequential(lin, nn.Identity(), lin)


# Stacks of Linear (and Identity) layers only: with a batch wider than their input and output,
# llc.fused_grad.value_and_grad takes the collapsed form (products over the batch: two).
LINEAR_ONLY = [
    ("dln", lambda: DeepLinearNetwork(7, [9, 6, 8]), 7, "reg", F.mse_loss),
    ("biases-identity", lambda: nn.Sequential(nn.Linear(5, 7), nn.Identity(), nn.Linear(7, 4, bias=False),
                                              nn.Linear(4, 3)), 5, "reg", F.mse_loss),
    ("biases-ce", lambda: nn.Sequential(nn.Linear(5, 6), nn.Linear(6, 4)), 5, "cls", F.cross_entropy),
    ("one-layer", lambda: nn.Sequential(nn.Linear(3, 2)), 3, "reg", F.mse_loss),
    ("shared", _shared_linear_stack, 4, "reg", F.mse_loss),
]


@pytest.mark.parametrize("name,make,d_in,kind,loss_fn", LINEAR_ONLY, ids=[c[0] for c in LINEAR_ONLY])
def test_linear_only_stack_takes_the_collapsed_backward_and_matches_autograd(name, make, d_in, kind, loss_fn):
    torch.manual_seed(0)
    model = make().double()
    fused, w0 = flat_loss_for_module(model, loss_fn, torch.float64, CPU)
    wide = 40  # batch wider than every input and output here
    assert fused_grad.collapses(fused.stack, wide) and not fused_grad.collapses(fused.stack, 2)
    gen = torch.Generator().manual_seed(7)
    out_dim = [m for m in model.modules() if isinstance(m, nn.Linear)][-1].out_features
    x = torch.randn(C, wide, d_in, generator=gen, dtype=torch.float64)
    y = (torch.randn(C, wide, out_dim, generator=gen, dtype=torch.float64) if kind == "reg"
         else torch.randint(0, out_dim, (C, wide), generator=gen))
    w = w0 + 0.3 * torch.randn(C, w0.numel(), generator=gen, dtype=torch.float64)
    ref_loss, ref_grad = _loss_and_grad(vmap(_reference(model, loss_fn)), w, x, y)
    loss, g = fused.value_and_grad(w, x, y)
    # Products associated differently from autograd's layer-by-layer chain: rounding only (RTOL's note).
    _close(loss, ref_loss, torch.float64)
    _close(g, ref_grad, torch.float64)


def test_stack_with_an_activation_is_not_collapsed():
    stack = linear_stack(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)))
    assert not fused_grad.collapses(stack, 100)


def test_in_place_activations_keep_inputs_and_saved_outputs():
    """Activations overwrite only a fresh matmul output: not x (a leading ReLU), not a saved
    activation output (ReLU then Tanh), and never w; the gradient still matches autograd."""
    model = nn.Sequential(nn.ReLU(), nn.Linear(4, 5), nn.ReLU(), nn.Tanh(), nn.Linear(5, 3), nn.Sigmoid(),
                          nn.Linear(3, 3)).double()
    fused, w0 = flat_loss_for_module(model, F.mse_loss, torch.float64, CPU)
    assert fused._kind == "mse"  # the hand-written backward
    gen = torch.Generator().manual_seed(8)
    x, y = _data((4,), 3, "reg", torch.float64, gen)
    w = w0 + 0.3 * torch.randn(C, w0.numel(), generator=gen, dtype=torch.float64)
    x0, y0, w_before = x.clone(), y.clone(), w.clone()
    ref_loss, ref_grad = _loss_and_grad(vmap(_reference(model, F.mse_loss)), w, x, y)
    loss, g = fused.value_and_grad(w, x, y)
    _close(loss, ref_loss, torch.float64)
    _close(g, ref_grad, torch.float64)
    assert torch.equal(x, x0) and torch.equal(y, y0) and torch.equal(w, w_before)
