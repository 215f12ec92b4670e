"""Restricted λ̂ (param_mask) and λ̂ per layer, on a two-layer deep linear network.

Sub-problem: with every layer but W_k held at w*, the DLN x -> W_2 W_1 x is the
linear model x -> A W_k B x (A = the layers above, B = those below, both fixed).
On noiseless data y = A W_k* B x, L_n(W_k) = mean ||A (W_k − W_k*) B x||² / d_out
is a quadratic whose Hessian is the Kronecker map W -> A W B (times the input
covariance, full rank): its rank is rank(A) · rank(B), and the LLC of a quadratic
of rank r is r / 2. For widths 3 -> 4 -> 2 both layers give 2 · 3 / 2 = 3, while
their parameter counts would say 6 (W_1, 12 entries) and 4 (W_2, 8 entries).
"""
import math

import pytest
import torch
from torch.func import grad, hessian

from llc.estimate import estimate_llc, flat_loss_for_module
from llc.restricted import estimate_llc_per_layer, flat_param_mask, layer_groups, restrict_loss

mse = torch.nn.functional.mse_loss


def _dln():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4, bias=False), torch.nn.Linear(4, 2, bias=False)).double()
    x = torch.randn(1000, 3, dtype=torch.float64)
    return net, x, net(x).detach()


def _gaussian_lambda(net, x, y, name, nbeta, gamma, eps):
    """Exact E[λ̂] of SGLD on the quadratic restricted loss (full-batch OU process).

    Per Hessian eigenvalue h, a = nβ h + γ; the discretised OU chain has stationary
    variance 1 / (a (1 − ε a / 4)), so E[nβ L] = Σ nβ h / (2 a (1 − ε a / 4)).
    """
    loss, w = flat_loss_for_module(net, mse, torch.float64, torch.device("cpu"))
    lv, v = restrict_loss(loss, w, flat_param_mask(net, [name]))
    h = torch.linalg.eigvalsh(hessian(lambda u: lv(u, x, y))(v)).clamp(min=0)
    a = nbeta * h + gamma
    return float((nbeta * h / (2 * a * (1 - eps * a / 4))).sum())


@pytest.mark.parametrize("name", ["0.weight", "1.weight"])
def test_one_layer_lambdahat_is_half_the_rank_of_its_sub_problem(name):
    net, x, y = _dln()
    w1, w2 = net[0].weight.detach(), net[1].weight.detach()
    a, b = (w2, torch.eye(3)) if name == "0.weight" else (torch.eye(2), w1)
    known = torch.linalg.matrix_rank(a) * torch.linalg.matrix_rank(b) / 2
    assert known == 3
    n, eps, gamma = 1000, 2e-3, 1.0
    nbeta = n / math.log(n)
    reference = _gaussian_lambda(net, x, y, name, nbeta, gamma, eps)
    assert reference == pytest.approx(3.0, rel=0.03)  # γ and ε corrections of this n, γ, ε are < 3%
    res = estimate_llc(net, mse, (x, y), epsilon=eps, gamma=gamma, num_steps=4000, batch_size=100,
                       num_chains=4, num_burnin_steps=1000, seed=0, param_mask=[name])
    # Per-chain λ̂ spread ≈ 0.09 here, so the 4-chain mean has MC error ≈ 0.045; 0.25 is > 5σ and also
    # covers the minibatch-noise variance the OU formula leaves out (≈ 2% in a longer run). The naive
    # counts (6 and 4) are > 20σ away.
    assert abs(res.lambdahat - reference) < 0.25, res.lambdahat_per_chain
    assert abs(res.lambdahat - float(known)) < 0.3


def test_restricted_loss_keeps_the_rest_at_w_star_and_has_the_masked_gradient():
    net, x, y = _dln()
    loss, w = flat_loss_for_module(net, mse, torch.float64, torch.device("cpu"))
    sel = torch.zeros(2, 4, dtype=torch.bool)
    sel[0, 1] = sel[1, 3] = True
    mask = flat_param_mask(net, {"0.weight": True, "1.weight": sel})
    assert mask.sum() == 12 + 2 and mask[12 + 1] and mask[12 + 4 + 3] and not mask[12]  # row-major flatten
    lv, v = restrict_loss(loss, w, mask)
    assert torch.equal(v, w[mask])
    assert lv(v, x, y) == loss(w, x, y)
    v2 = v + 0.1 * torch.randn_like(v)
    w2 = w.clone()
    w2[mask] = v2
    torch.testing.assert_close(grad(lv)(v2, x, y), grad(loss)(w2, x, y)[mask], rtol=1e-12, atol=1e-14)


def test_bad_masks_fail_naming_param_mask():
    net, x, y = _dln()
    with pytest.raises(ValueError, match=r"does not have: \['2.weight'\].*\['0.weight', '1.weight'\]"):
        estimate_llc(net, mse, (x, y), num_steps=10, param_mask=["2.weight"])
    with pytest.raises(ValueError, match="selects every coordinate"):
        estimate_llc(net, mse, (x, y), num_steps=10, param_mask=["0.weight", "1.weight"])
    with pytest.raises(ValueError, match="selects no coordinate"):
        estimate_llc(net, mse, (x, y), num_steps=10, param_mask={"0.weight": torch.zeros(4, 3, dtype=torch.bool)})
    with pytest.raises(ValueError, match="selects no coordinate"):
        estimate_llc(net, mse, (x, y), num_steps=10, param_mask=[])
    with pytest.raises(ValueError, match=r"param_mask\['1.weight'\] must be .* shape \(2, 4\)"):
        estimate_llc(net, mse, (x, y), num_steps=10, param_mask={"1.weight": torch.ones(4, 2, dtype=torch.bool)})
    with pytest.raises(ValueError, match="param_mask must be None"):
        estimate_llc(net, mse, (x, y), num_steps=10, param_mask="0.weight")


def test_per_layer_helper_equals_one_restricted_estimate_per_module():
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1)).double()
    x = torch.randn(200, 3, dtype=torch.float64)
    y = net(x).detach()
    assert layer_groups(net) == {"0": ["0.weight", "0.bias"], "2": ["2.weight", "2.bias"]}
    assert list(layer_groups(net, by="parameter")) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    kw = dict(epsilon=1e-3, num_steps=50, batch_size=20, num_chains=2, seed=3)
    per_layer = estimate_llc_per_layer(net, mse, (x, y), **kw)
    direct = estimate_llc(net, mse, (x, y), param_mask=["2.weight", "2.bias"], **kw)
    assert list(per_layer) == ["0", "2"]
    assert (per_layer["2"].lambdahat_per_chain == direct.lambdahat_per_chain).all()  # same seed, same draws
    with pytest.raises(ValueError, match="by must be"):
        layer_groups(net, by="layer")
