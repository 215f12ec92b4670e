"""dynamics.ntk: every method against explicit per-sample gradients in float64, closed forms, observables."""
import math

import pytest
import torch
from torch import nn
from torch.func import functional_call

import dynamics.ntk as ntk
from dynamics.ntk import NotStructuredError, empirical_ntk, kernel_observables, structured_applies
from models.regimes import build_model

F64 = torch.float64


def per_sample_gram(model, params, x1, x2=None) -> torch.Tensor:
    """Reference: one autograd.grad per sample and output, J (N, O, P), then J Jᵀ -> (N, M, O, O)."""
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}

    def jac(x):
        rows = []
        for i in range(x.shape[0]):
            out = functional_call(model, leaves, (x[i:i + 1],)).reshape(-1)
            rows.append(torch.stack([
                torch.cat([g.reshape(-1)
                           for g in torch.autograd.grad(out[o], list(leaves.values()), retain_graph=True)])
                for o in range(out.numel())
            ]))
        return torch.stack(rows)

    J1 = jac(x1)
    J2 = J1 if x2 is None else jac(x2)
    return torch.einsum("iap,jbp->ijab", J1, J2)


def tiny(arch, seed=0, h=3):
    gen = torch.Generator().manual_seed(seed)
    conv = arch in ("simple_cnn", "vgg11")
    shape, h = ((1, 6, 6), 1) if conv else ((5,), h)
    model = build_model(arch, shape, h, "gelu", 2 if arch.startswith("mlp") else None, gen).to(F64)
    x1 = torch.randn(6, *shape, generator=gen, dtype=F64)
    x2 = torch.randn(4, *shape, generator=gen, dtype=F64)
    return model, dict(model.named_parameters()), x1, x2


class MultiOutput(nn.Module):
    """Two dense layers, 3 outputs: the (N, M, O, O) case."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 6)
        self.b = nn.Linear(6, 3, bias=False)

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)))


class SharedLayer(nn.Module):
    """One nn.Linear applied twice: per-sample gradients are sums of outer products, not one."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        return self.lin(torch.tanh(self.lin(x))).sum(dim=1)


@pytest.mark.parametrize("arch", ["mlp", "mlp_bias", "linear", "simple_cnn"])
@pytest.mark.parametrize("method", ["auto", "structured", "jacobian", "ntvp"])
@pytest.mark.parametrize("cross", [False, True])
def test_every_method_matches_per_sample_gradients(arch, method, cross):
    model, params, x1, x2 = tiny(arch)
    x2 = x2 if cross else None
    ref = per_sample_gram(model, params, x1, x2)[:, :, 0, 0]
    if method == "structured" and arch == "simple_cnn":
        with pytest.raises(NotStructuredError, match="does not belong to an nn.Linear"):
            empirical_ntk(model, params, x1, x2, method=method)
        return
    K = empirical_ntk(model, params, x1, x2, method=method, chunk_size=4)
    assert K.shape == ref.shape and K.dtype == F64
    torch.testing.assert_close(K, ref, rtol=1e-12, atol=1e-13 * ref.abs().max().item())


@pytest.mark.parametrize("method", ["auto", "structured", "jacobian", "ntvp"])
def test_multi_output_blocks(method):
    torch.manual_seed(0)
    model = MultiOutput().to(F64)
    params = dict(model.named_parameters())
    x1, x2 = torch.randn(5, 4, dtype=F64), torch.randn(3, 4, dtype=F64)
    ref = per_sample_gram(model, params, x1, x2)
    K = empirical_ntk(model, params, x1, x2, method=method, chunk_size=2)
    assert K.shape == (5, 3, 3, 3)
    torch.testing.assert_close(K, ref, rtol=1e-12, atol=1e-14)


def test_perceptron_kernel_is_x_xT_over_d():
    model, params, x1, x2 = tiny("linear")
    torch.testing.assert_close(empirical_ntk(model, params, x1, x2), x1 @ x2.T / 5, rtol=1e-13, atol=1e-14)


def test_subset_of_parameters():
    """Only the parameters passed are differentiated: the readout alone gives φ(x) φ(x')ᵀ / h²."""
    model, params, x1, _ = tiny("mlp")
    sub = {"readout.weight": params["readout.weight"]}
    ref = per_sample_gram(model, sub, x1)[:, :, 0, 0]
    torch.testing.assert_close(empirical_ntk(model, sub, x1, method="structured"), ref, rtol=1e-12, atol=1e-15)


def test_shared_layer_is_not_structured_and_auto_falls_back():
    torch.manual_seed(1)
    model = SharedLayer().to(F64)
    params = dict(model.named_parameters())
    x = torch.randn(5, 4, dtype=F64)
    assert structured_applies(model, params)  # the names look structured ...
    with pytest.raises(NotStructuredError, match="more than once"):  # ... the forward is not
        empirical_ntk(model, params, x, method="structured")
    torch.testing.assert_close(empirical_ntk(model, params, x), per_sample_gram(model, params, x)[:, :, 0, 0],
                               rtol=1e-12, atol=1e-14)


def test_auto_picks_structured_then_jacobian_then_ntvp(monkeypatch):
    calls = []
    for name in ("_ntk_structured", "_ntk_jacobian", "_ntk_ntvp"):
        real = getattr(ntk, name)
        monkeypatch.setattr(ntk, name, lambda *a, _n=name, _r=real: calls.append(_n) or _r(*a))
    model, params, x1, _ = tiny("mlp")
    empirical_ntk(model, params, x1)
    cnn, cparams, cx, _ = tiny("simple_cnn")
    empirical_ntk(cnn, cparams, cx)
    empirical_ntk(cnn, cparams, cx, memory_budget=0)
    assert calls == ["_ntk_structured", "_ntk_jacobian", "_ntk_ntvp"]


def test_bad_arguments():
    model, params, x1, _ = tiny("mlp")
    with pytest.raises(ValueError, match="method must be one of"):
        empirical_ntk(model, params, x1, method="vmap")
    with pytest.raises(ValueError, match="chunk_size must be an integer >= 1"):
        empirical_ntk(model, params, x1, chunk_size=0)
    with pytest.raises(ValueError, match=r"K must be \(n, n\)"):
        kernel_observables(torch.ones(3, 2), torch.ones(3))


def test_observables_closed_forms():
    n = 4
    y = torch.tensor([1.0, -1.0, 1.0, 1.0], dtype=F64)
    obs = kernel_observables(2 * torch.eye(n, dtype=F64), y, K0=torch.eye(n, dtype=F64), top_k=2)
    assert obs["yKy"] == pytest.approx(2 * n)
    assert obs["yKinvy"] == pytest.approx((n / 2) / n**2)  # yᵀ (2I)⁻¹ y / n²
    assert obs["alignment"] == pytest.approx(2 * n / (2 * math.sqrt(n) * n))
    assert obs["norm"] == pytest.approx(4 / n)  # mean(K²)
    assert obs["change"] == pytest.approx(1 / n) and obs["rel_change"] == pytest.approx(1.0)
    assert obs["eigenvalues"] == pytest.approx([2.0, 2.0]) and obs["trace"] == pytest.approx(2 * n)


def test_rank_deficient_kernel_uses_the_pseudo_inverse():
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(6, 2, generator=gen, dtype=F64)
    K = X @ X.T  # rank 2
    y = torch.sign(torch.randn(6, generator=gen, dtype=F64))
    obs = kernel_observables(K, y, K0=K)
    expected = (y / 6) @ torch.linalg.pinv(K, hermitian=True) @ (y / 6)
    assert math.isfinite(obs["yKinvy"]) and obs["yKinvy"] == pytest.approx(float(expected), rel=1e-9)
    assert obs["rel_change"] == 0.0
