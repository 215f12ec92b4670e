"""Hessian spectrum of the training loss at expt_llc_curve's checkpoints (its ``hessian_spectrum`` key).

At every ``every``-th λ̂ checkpoint: the top-k eigenvalues of H = ∇²L_B(w_t) by thick-restart
Lanczos (largest algebraic) or PyHessian's power iteration (largest magnitude), and a spectral
density by stochastic Lanczos quadrature (dynamics.lanczos, dynamics.spectral). L_B is the training
loss, mean cross-entropy against SGD's labels plus l2·Σ w², on a fixed batch: the first
``batch_size`` training points. The network is in eval mode, so BatchNorm uses its running
statistics and L_B is a fixed function of w (docs/notes/llc.md#llc-curve).

Cost per recorded checkpoint, in Hessian-vector products on the batch: Lanczos typically a few
times top_k (at most 100 x its basis size), power iteration at most top_k·100, SLQ
slq_probes·slq_steps.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core import checks
from core.runtime import derived_seed
from core.types import FlatLoss
from dynamics.hessian import hvp, warn_if_stochastic_layers
from dynamics.lanczos import lanczos, power_iteration
from dynamics.spectral import slq_density
from llc.estimate import flat_loss_for_module

SPECTRUM_METHODS = ("lanczos", "power")
SPECTRUM_KEYS = ("every", "top_k", "method", "tol", "slq_probes", "slq_steps", "batch_size")
POWER_MAX_ITER = 100  # PyHessian's maxIter


@dataclass(frozen=True)
class SpectrumConfig:
    """Validated ``hessian_spectrum`` (see the experiment's config comments)."""

    every: int
    top_k: int
    method: str
    tol: float
    slq_probes: int
    slq_steps: int
    batch_size: int


def validate_hessian_spectrum(value: dict) -> SpectrumConfig | None:
    """Every entry of ``hessian_spectrum``, checked before compute (also when off); None when every is None."""
    checks.known_entries("hessian_spectrum", value, SPECTRUM_KEYS)
    every = checks.integer("hessian_spectrum.every", value["every"], none_ok=True)
    cfg = SpectrumConfig(
        every=every,
        top_k=checks.integer("hessian_spectrum.top_k", value["top_k"]),
        method=checks.one_of("hessian_spectrum.method", value["method"], SPECTRUM_METHODS),
        tol=checks.number("hessian_spectrum.tol", value["tol"], lo=0, hi=1, strict=True),
        slq_probes=checks.integer("hessian_spectrum.slq_probes", value["slq_probes"], lo=0),
        slq_steps=checks.integer("hessian_spectrum.slq_steps", value["slq_steps"]),
        batch_size=checks.integer("hessian_spectrum.batch_size", value["batch_size"]),
    )
    return None if every is None else cfg


def fixed_batch(cfg: SpectrumConfig | None, x: Tensor, y: Tensor, model_dim: int) -> tuple[Tensor, Tensor] | None:
    """The evaluation batch (x[:b], y[:b]); checks b <= n and top_k <= P once the data and model exist."""
    if cfg is None:
        return None
    checks.at_most("hessian_spectrum.batch_size", cfg.batch_size, "the number of training data", x.shape[0])
    checks.at_most("hessian_spectrum.top_k", cfg.top_k, "the number of parameters", model_dim)
    return x[:cfg.batch_size], y[:cfg.batch_size]


def hessian_spectrum(loss: FlatLoss, w: Tensor, x: Tensor, y: Tensor, cfg: SpectrumConfig,
                     gen: torch.Generator) -> dict:
    """Top-k eigenvalues of H = ∇²loss(w; x, y) and its SLQ density, from HVPs in w's dtype (basis in float64).

    Args:
        loss: mean loss over the batch, loss(w (P,), x, y) -> ().
        gen: generator on w's device for the start vectors and probes.

    Raises:
        FloatingPointError: a Hessian-vector product is not finite.

    Returns:
        method, eigenvalues (top_k, descending for lanczos, in the order found for power), converged,
        num_matvecs, and with slq_probes > 0 slq_nodes / slq_weights (slq_probes, m) lists and
        slq_trace = P·Σ weights·nodes averaged over probes (≈ tr H).
    """
    p = w.numel()

    def matvec(v: Tensor) -> Tensor:  # (P,) float64 -> (P,) float64
        hv = hvp(loss, w, v.to(w.dtype), x, y).to(torch.float64)
        if not bool(torch.isfinite(hv).all()):
            raise FloatingPointError("non-finite Hessian-vector product (diverged weights?)")
        return hv

    kw = dict(dtype=torch.float64, device=w.device)
    if cfg.method == "lanczos":
        res = lanczos(matvec, p, cfg.top_k, which="LA", tol=cfg.tol, gen=gen, **kw)
    else:
        res = power_iteration(matvec, p, cfg.top_k, tol=cfg.tol, max_iter=POWER_MAX_ITER, gen=gen, **kw)
    out = {"method": cfg.method, "eigenvalues": res.eigenvalues.tolist(), "converged": res.converged,
           "num_matvecs": res.num_matvecs}
    if cfg.slq_probes > 0:
        dens = slq_density(matvec, p, cfg.slq_probes, cfg.slq_steps, gen, **kw)
        out.update(slq_nodes=dens.nodes.tolist(), slq_weights=dens.weights.tolist(), slq_trace=p * dens.moment(1))
    return out


def training_loss(model: nn.Module, l2: float | None) -> tuple[FlatLoss, Tensor]:
    """(loss, w_t): mean cross-entropy of the model as it is (eval mode: BatchNorm's running statistics) + l2·Σ w²."""
    first = next(model.parameters())
    ce, w = flat_loss_for_module(model, F.cross_entropy, first.dtype, first.device)
    if not l2:
        return ce, w
    return (lambda v, x, y: ce(v, x, y) + l2 * (v ** 2).sum()), w


def record_spectrum(_run, model: nn.Module, cfg: SpectrumConfig | None, batch, l2: float | None, t: int,
                    index: int, seed: int) -> dict:
    """The checkpoint record's ``hessian_spectrum`` entry at checkpoint ``index`` (step t), if due.

    Due when cfg is set and index % every == 0. Logs ``hessian/max_eig`` (the first eigenvalue)
    at t. The random stream is derived_seed(seed, index), so a resumed run draws what the
    uninterrupted one did. Returns {} when not due; status 'failed' with the reason (and
    nothing logged) when the curvature is not finite, so training goes on as for a failed λ̂.
    """
    if cfg is None or index % cfg.every:
        return {}
    warn_if_stochastic_layers(model)
    loss, w = training_loss(model, l2)
    gen = torch.Generator(device=w.device).manual_seed(derived_seed(seed, index))
    try:
        spec = {"status": "ok", **hessian_spectrum(loss, w, *batch, cfg, gen)}
    except FloatingPointError as err:
        return {"hessian_spectrum": {"status": "failed", "reason": str(err), "method": cfg.method}}
    _run.log_scalar("hessian/max_eig", spec["eigenvalues"][0], t)
    return {"hessian_spectrum": spec}
