"""Output-parameter Jacobians and the functional rank of a model."""
from __future__ import annotations

import torch
from torch import Tensor
from torch.func import jacrev

from core.types import FlatModel


def output_jacobian(f: FlatModel, w: Tensor, x: Tensor) -> Tensor:
    """J[i, p] = ∂ vec(f(w, x))_i / ∂w_p, shape (N*O, P)."""
    return jacrev(lambda u: f(u, x).reshape(-1))(w)


def functional_rank(f: FlatModel, w: Tensor, x: Tensor, rtol: float | None = None) -> tuple[int, Tensor]:
    """Numerical rank of the output-parameter Jacobian on inputs x.

    Counts singular values above rtol * s_max; rtol defaults to max(J.shape) * eps
    of the working dtype (numpy's matrix_rank rule).

    Returns:
        (rank, singular values of J in descending order, on CPU in float64).
    """
    jac = output_jacobian(f, w, x)  # (N*O, P)
    sv = torch.linalg.svdvals(jac).double().cpu()
    if rtol is None:
        rtol = max(jac.shape) * torch.finfo(jac.dtype).eps
    if sv.numel() == 0 or sv[0] == 0:
        return 0, sv
    return int((sv > rtol * sv[0]).sum()), sv
