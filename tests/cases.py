"""Shared small test cases."""
from __future__ import annotations

import torch
from torch.func import functional_call

from data.synthetic import teacher_dataset
from llc.estimate import flat_loss_for_module
from models.dln import DeepLinearNetwork, make_true_params


def mse(out, y):
    return ((out - y) ** 2).mean()


def dln_case(input_dim=3, widths=(4, 2), n=500, method="random", seed=0, dtype=torch.float64):
    """A DLN teacher problem: returns (net, flat loss, w* flat, x, y) on CPU."""
    gen = torch.Generator().manual_seed(seed)
    w_star = make_true_params(input_dim, list(widths), method, gen)
    net = DeepLinearNetwork(input_dim, list(widths))
    x, y = teacher_dataset(lambda p, xb: functional_call(net, p, (xb,)), w_star, n, input_dim, "uniform", gen)
    net.load_state_dict(w_star)
    net.to(dtype)
    loss, w = flat_loss_for_module(net, mse, dtype, torch.device("cpu"))
    return net, loss, w, x.to(dtype), y.to(dtype)
