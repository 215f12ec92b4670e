"""Deep linear networks (no bias) and their true-parameter generators.

A DLN with input size H_0 and ``layer_widths`` [H_1, ..., H_L] computes
f(w, x) = W_L ... W_1 x with W_l of shape (H_l, H_{l-1}). Parameters are named
``layers.{l}.weight`` (the names ``nn.Sequential`` of ``nn.Linear`` gives), so
``torch.func.functional_call`` works on the dicts produced here.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

from core import checks

TRUE_PARAM_METHODS = ("random", "zero", "rand_rank", "rand_rank_sv")
# Weight init of `random` / `rand_rank` teachers and of training: 'haiku' is the original's
# (hk.Linear's default, the original dln.py), 'torch' is nn.Linear's default.
INIT_SCHEMES = ("haiku", "torch")
# How `rand_rank` draws each reduced matrix's reduction k: 'independent' draws k per matrix;
# 'shared' is the original's (expt_dln.initialise_expt passes one PRNG key to every
# rand_reduce_matrix_rank call), so k is one function of (shared draw, rank) for all matrices.
RANK_KEYS = ("independent", "shared")


class DeepLinearNetwork(nn.Module):
    """Bias-free stack of linear maps; the architecture only (``init_params`` draws weights)."""

    def __init__(self, input_dim: int, layer_widths: Sequence[int]):
        super().__init__()
        sizes = [input_dim, *layer_widths]
        self.input_dim = input_dim
        self.layer_widths = list(layer_widths)
        self.layers = nn.Sequential(
            *[nn.Linear(sizes[i], sizes[i + 1], bias=False) for i in range(len(layer_widths))]
        )

    def forward(self, x: Tensor) -> Tensor:  # (N, H_0) -> (N, H_L)
        return self.layers(x)


def param_names(num_layers: int) -> list[str]:
    return [f"layers.{i}.weight" for i in range(num_layers)]


def end_to_end_matrix(params: dict[str, Tensor]) -> Tensor:
    """W_L ... W_1, shape (H_L, H_0), computed in float64 for rank decisions."""
    mats = [params[k].detach().double() for k in param_names(len(params))]
    out = mats[0]
    for w in mats[1:]:
        out = w @ out
    return out


def numerical_rank(matrix: Tensor, rtol: float | None = None) -> tuple[int, Tensor]:
    """Rank of ``matrix`` with singular values above rtol * s_max (numpy's default rtol).

    Returns (rank, singular values in descending order).
    """
    sv = torch.linalg.svdvals(matrix.double())
    if sv.numel() == 0 or sv[0] == 0:
        return 0, sv
    if rtol is None:
        rtol = max(matrix.shape) * torch.finfo(torch.float64).eps
    return int((sv > rtol * sv[0]).sum()), sv


def rank_truncation_losses(matrix: Tensor, x: Tensor, rank: int) -> Tensor:
    """L_n of the teacher x -> matrix @ x truncated to rank k-1, for k = 1..rank.

    Entry k-1 is the mean (over the n points and the H_L outputs) squared error between
    ``matrix`` and its best rank-(k-1) approximation (drop σ_k, σ_{k+1}, ...) on the
    inputs x: (1/H_L) Σ_{j>=k} σ_j² mean_i (v_j·x_i)². Times nβ it says how far w* is
    from the lower-rank teachers in units of the tempered posterior's temperature, a
    diagnostic for deep teachers whose end-to-end singular values are spread out.

    Args: matrix (H_L, H_0), x (n, H_0); returns (rank,) float64, decreasing.
    """
    u, s, vh = torch.linalg.svd(matrix.double(), full_matrices=False)
    z = x.double() @ vh[:rank].T  # (n, rank): v_j·x_i
    per_sv = s[:rank] ** 2 * (z ** 2).mean(0) / matrix.shape[0]  # (rank,)
    return per_sv.flip(0).cumsum(0).flip(0)


def init_weight(shape: tuple[int, int], gen: torch.Generator, init: str = "haiku") -> Tensor:
    """One (fan_out, fan_in) weight matrix in float64.

    haiku: hk.Linear's default, TruncatedNormal(stddev=1/sqrt(fan_in)): a standard normal
        truncated to [-2, 2], times 1/sqrt(fan_in), without haiku VarianceScaling's
        re-scaling for the truncation (entry std 0.880/sqrt(fan_in)).
    torch: nn.Linear's default, U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (entry std 0.577/sqrt(fan_in)).

    The scale matters at depth: σ_max of W_L...W_1 shrinks like (std·sqrt(width))^L.
    """
    checks.one_of("init", init, INIT_SCHEMES)
    scale = 1.0 / math.sqrt(shape[1])
    if init == "haiku":
        w = torch.empty(shape, dtype=torch.float64)
        return torch.nn.init.trunc_normal_(w, mean=0.0, std=1.0, a=-2.0, b=2.0, generator=gen) * scale
    return (torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1) * scale


def init_params(input_dim: int, layer_widths: Sequence[int], gen: torch.Generator,
                init: str = "haiku") -> dict[str, Tensor]:
    """A fresh DLN parameter dict (float64 on CPU) with ``init_weight`` per layer."""
    sizes = [input_dim, *layer_widths]
    names = param_names(len(layer_widths))
    return {name: init_weight((sizes[i + 1], sizes[i]), gen, init) for i, name in enumerate(names)}


def _random_orthogonal(n: int, k: int, gen: torch.Generator) -> Tensor:
    """n x k matrix with orthonormal columns, Haar-distributed (QR with sign fix)."""
    q, r = torch.linalg.qr(torch.randn(n, k, generator=gen, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r)).where(torch.diagonal(r) != 0, torch.ones(()))


def _reduce_rank(w: Tensor, gen: torch.Generator, shared_u: float | None = None) -> Tensor:
    """Zero k ~ U{0, ..., rank-1} of the smallest singular values of ``w`` (the original's
    utils.rand_reduce_matrix_rank, for a full-rank ``w``).

    k is drawn from ``gen``, or, given ``shared_u`` in [0, 1), is floor(shared_u * rank): one
    uniform shared by every matrix of a teacher, so equal-rank matrices get the same k.
    """
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    full = s.numel()
    if shared_u is None:
        k = int(torch.randint(0, full, (1,), generator=gen))
    else:
        k = min(int(shared_u * full), full - 1)
    s = s.clone()
    if k > 0:
        s[full - k:] = 0.0
    return (u * s) @ vh


def make_true_params(
    input_dim: int,
    layer_widths: Sequence[int],
    method: str,
    gen: torch.Generator,
    prop_rank_reduce: float = 0.2,
    mean: float = 0.0,
    std: float = 5.0,
    init: str = "haiku",
    rank_key: str = "independent",
) -> dict[str, Tensor]:
    """Draw a true parameter w* (float64 on CPU) from the seeded generator ``gen``.

    Methods (the original expt_dln.initialise_expt):
        random: the ``init`` scheme (``init_weight``).
        zero: all weights zero (end-to-end rank 0).
        rand_rank: ``init`` scheme; each matrix, with probability ``prop_rank_reduce``,
            has its k ~ U{0..rank-1} smallest singular values zeroed; k independent per
            matrix (``rank_key='independent'``) or, as the original, one shared draw for all
            (``'shared'``: matrices of equal rank get equal k; see ``RANK_KEYS``).
        rand_rank_sv: each (H_out, H_in) matrix is U diag(|N(mean, std)|) V^T with Haar U, V
            of r columns: r = min(H_out, H_in), or, with probability ``prop_rank_reduce``,
            r ~ U{0, ..., min(H_out, H_in) - 1}, as the original draws it.
    """
    checks.one_of("method", method, TRUE_PARAM_METHODS)
    checks.one_of("init", init, INIT_SCHEMES)
    checks.one_of("rank_key", rank_key, RANK_KEYS)
    checks.number("prop_rank_reduce", prop_rank_reduce, lo=0, hi=1)
    sizes = [input_dim, *layer_widths]
    shared_u = None
    if method == "rand_rank" and rank_key == "shared":  # drawn first, so 'independent' keeps its stream
        shared_u = float(torch.rand((), generator=gen, dtype=torch.float64))
    params = {}
    for i, name in enumerate(param_names(len(layer_widths))):
        shape = (sizes[i + 1], sizes[i])
        if method == "zero":
            w = torch.zeros(shape, dtype=torch.float64)
        elif method in ("random", "rand_rank"):
            w = init_weight(shape, gen, init)
            if method == "rand_rank" and float(torch.rand((), generator=gen, dtype=torch.float64)) < prop_rank_reduce:
                w = _reduce_rank(w, gen, shared_u)
        else:  # rand_rank_sv
            k = min(shape)
            if float(torch.rand((), generator=gen, dtype=torch.float64)) < prop_rank_reduce:
                k = int(torch.randint(0, k, (1,), generator=gen))
            sv = (mean + std * torch.randn(k, generator=gen, dtype=torch.float64)).abs()
            u = _random_orthogonal(shape[0], k, gen)
            v = _random_orthogonal(shape[1], k, gen)
            w = (u * sv) @ v.T  # (H_out, H_in), rank k
        params[name] = w
    return params
