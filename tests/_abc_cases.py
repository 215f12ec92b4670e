"""Shared abc-parameterization cases: a network spec and a random classification batch."""
import torch

from models.abc import ABCNetSpec, make_parameterization


def spec(name="mup", L=3, width=64, d=12, k=5, activation="relu", n_warmup_steps=1, **kw):
    if name == "ipllr_bias":
        kw = dict(dict(bias=True, scale_bias=False), **kw)
    return ABCNetSpec(make_parameterization(name, L, n_warmup_steps=n_warmup_steps), d, width, k, activation, **kw)


def data(n=64, d=12, k=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randint(0, k, (n,), generator=g)
