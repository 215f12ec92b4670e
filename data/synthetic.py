"""Synthetic regression data for the DLN experiments.

Inputs are drawn from a seeded generator; targets are the noiseless teacher
output y = f(w*, x), so w* is a true parameter (L_n(w*) = 0).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from core import checks

INPUT_DISTRIBUTIONS = ("uniform", "unit_ball")


def sample_inputs(
    n: int, dim: int, distribution: str, gen: torch.Generator, dtype=torch.float64
) -> Tensor:
    """(n, dim) inputs: ``uniform`` is U(-10, 10)^dim, ``unit_ball`` is uniform in the unit ball."""
    checks.one_of("input_distribution", distribution, INPUT_DISTRIBUTIONS)
    checks.integer("n", n, lo=1)
    checks.integer("dim", dim, lo=1)
    if distribution == "uniform":
        return (torch.rand(n, dim, generator=gen, dtype=dtype) * 2 - 1) * 10.0
    # Uniform in the ball: Gaussian direction, radius U^(1/d).
    z = torch.randn(n, dim, generator=gen, dtype=dtype)
    z = z / z.norm(dim=1, keepdim=True)
    radius = torch.rand(n, 1, generator=gen, dtype=dtype) ** (1.0 / dim)
    return z * radius


@torch.no_grad()
def teacher_dataset(
    f: Callable[[dict[str, Tensor], Tensor], Tensor],
    w_star: dict[str, Tensor],
    n: int,
    dim: int,
    distribution: str,
    gen: torch.Generator,
) -> tuple[Tensor, Tensor]:
    """(x, y) with x ~ ``distribution`` and y = f(w*, x), in w*'s dtype. Shapes (n, dim), (n, out)."""
    dtype = next(iter(w_star.values())).dtype
    x = sample_inputs(n, dim, distribution, gen, dtype=dtype)
    return x, f(w_star, x)
