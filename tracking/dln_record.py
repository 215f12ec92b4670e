"""What an ``expt_dln`` run records about w*, and its diagnostics at w* and at the trained parameter.

The Hessian trace (Hutchinson or Hutch++) and the functional rank on the test points, and
the teacher's singular values (docs/llc.md#the-dln-experiment). Every function takes the
Sacred run object explicitly and reads only the config keys it names.
"""
from __future__ import annotations

import torch
from torch import Tensor

from core import checks
from core.types import FlatLoss
from dynamics.hessian import batched_hvp, hutchinson_trace
from dynamics.jacobian import functional_rank
from dynamics.spectral import hutchpp_trace_sem

HESSIAN_TRACE_METHODS = ("hutchinson", "hutchpp")


def validate_hessian_trace(config: dict) -> None:
    """hessian_trace_probes (>= 1; Hutch++ needs >= 3) and hessian_trace_method, before any compute."""
    probes = checks.integer("hessian_trace_probes", config["hessian_trace_probes"])
    method = checks.one_of("hessian_trace_method", config["hessian_trace_method"], HESSIAN_TRACE_METHODS)
    if method == "hutchpp" and probes < 3:
        raise ValueError(f"hessian_trace_probes must be >= 3 with hessian_trace_method='hutchpp' "
                         f"(a third sketch, a third projection, the rest Hutchinson); got {probes}")


def hessian_trace(loss: FlatLoss, w: Tensor, x: Tensor, y: Tensor, method: str, num_probes: int,
                  gen: torch.Generator) -> tuple[float, float]:
    """tr ∇²L(w) of the mean loss on (x, y) from ``num_probes`` Hessian-vector products; (estimate, sem).

    ``hutchinson``: mean of vᵀHv over Rademacher v, sem over the probes (dynamics.hessian).
    ``hutchpp``: Hutch++ with the same number of products, exact once rank H <= num_probes / 3;
    sem of its Hutchinson part given the sketch (dynamics.spectral).
    """
    if method == "hutchinson":
        return hutchinson_trace(loss, w, x, y, num_probes, gen)
    return hutchpp_trace_sem(lambda vs: batched_hvp(loss, w, vs, x, y), w.numel(), num_probes, gen,
                             dtype=w.dtype, device=w.device)


def diagnostics(_run, prefix: str, loss: FlatLoss, f_flat, w: Tensor, x: Tensor, y: Tensor, config: dict,
                gen: torch.Generator) -> dict:
    """Optional Hessian trace and functional rank at w on the test points (x, y); singular values go to info.

    Returns the result entries: hessian_trace, hessian_trace_sem and hessian_trace_method
    (do_hessian_trace), functional_rank (do_functional_rank).
    """
    out = {}
    if config["do_hessian_trace"]:
        method = config["hessian_trace_method"]
        est, sem = hessian_trace(loss, w, x, y, method, config["hessian_trace_probes"], gen)
        out.update(hessian_trace=est, hessian_trace_sem=sem, hessian_trace_method=method)
    if config["do_functional_rank"]:
        rank, sv = functional_rank(f_flat, w, x)
        out["functional_rank"] = rank
        _run.info[f"{prefix}functional_rank_singular_values"] = sv.tolist()
    return out


def record_true_param(_run, pb: dict, config: dict) -> None:
    """w*'s singular values (per layer, end to end), rank-truncation gaps and, with save_true_param, w* itself."""
    w_star, prod_sv = pb["w_star"], pb["prod_sv"]
    _run.info["true_param_singular_values"] = {k: torch.linalg.svdvals(v).tolist() for k, v in w_star.items()}
    _run.info["true_end_to_end_singular_values"] = prod_sv.tolist()
    if config["save_true_param"]:
        _run.info["true_param"] = {k: v.tolist() for k, v in w_star.items()}
    if config["verbose"]:
        print(f"true rank {pb['true_rank']}, λ = {pb['true_lambda']}, multiplicity {pb['true_mult']}, "
              f"σ(W_L...W_1) in [{float(prod_sv[-1]):.3g}, {float(prod_sv[0]):.3g}]")
    _run.info["true_rank_truncation_gaps"] = pb["rank_gaps"].tolist()


def true_param_summary(pb: dict) -> dict:
    """The result's entries on w*: exact λ, its multiplicity, the rank, the teacher map's scale and rank gap."""
    prod_sv, true_rank = pb["prod_sv"], pb["true_rank"]
    return {
        "true_lambda": pb["true_lambda"],
        "true_multiplicity": pb["true_mult"],
        "true_rank": true_rank,
        "true_end_to_end_sigma_max": float(prod_sv[0]),  # σ_max(W_L...W_1): the teacher map's scale
        "true_end_to_end_sigma_min": float(prod_sv[-1]),  # smallest of its min(H_0, H_L) singular values
        "true_rank_gap": float(pb["rank_gaps"][-1]) if true_rank > 0 else None,  # nβ L_n(rank r-1 truncation)
    }
