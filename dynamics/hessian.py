"""Hessian-vector products, exact Hessians and Hessian traces with torch.func.

Every routine takes a loss over a flat parameter vector, loss(w (P,), x, y) -> (),
a *mean* over the batch, so H = ∇²L_B(w) is the Hessian of the mean loss on the
batch given. Losses that are differentiated twice must be written out (e.g.
``((out - y) ** 2).mean()``): ``F.mse_loss``'s backward breaks forward-over-reverse
("ZeroTensors are immutable").

Two exact-Hessian routes:

* :func:`dense_hessian`: any model; H e_p for every basis vector, vmapped.
* :func:`mlp_hessian` / :func:`mlp_hessian_eigh`: the layer-structured computation
  for MLPs with piecewise-linear activations (ReLU, linear), see ``dynamics.mlp_hessian``
  for the equations. ``mlp_hessian_eigh`` gives the exact eigendecomposition without
  forming the P x P matrix: at batch N the first layer only acts on the N-dimensional
  span of the inputs, so a Hessian of P' = P − d_1 (d_0 − N) parameters suffices.

Top-k eigenpairs (Lanczos, power iteration) live in ``dynamics.lanczos``; Hutch++ and
spectral densities (SLQ) in ``dynamics.spectral``.
"""
from __future__ import annotations

import warnings
import weakref

import torch
from torch import Tensor, nn
from torch.func import grad, jvp, vjp, vmap

from core.types import FlatLoss
from dynamics.mlp_hessian import MLP_ACTIVATIONS, STRUCTURED_LOSSES, mlp_hessian, mlp_hessian_eigh  # noqa: F401
from dynamics.symeig import EPS_EIGH_MODES, SymEig, dense_eigh  # noqa: F401

# Losses whose forward-over-reverse HVP PyTorch cannot take: F.mse_loss with reduction="mean"
# (also through the fused Linear-stack loss) raises "ZeroTensors are immutable" in its double
# backward (pytorch/pytorch#123996, open in 2.14). They take reverse-over-reverse instead.
_REVERSE_OVER_REVERSE: weakref.WeakSet = weakref.WeakSet()


def _known_reverse_only(loss_fn) -> bool:
    try:
        return loss_fn in _REVERSE_OVER_REVERSE
    except TypeError:  # unhashable
        return False


def hvp(loss_fn: FlatLoss, w: Tensor, v: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """H v by forward-over-reverse (the JVP of ∇L along v); shapes (P,) -> (P,).

    Where PyTorch's forward mode fails on the loss (F.mse_loss, see above), the VJP of ∇L
    with v, which is the same H v because H is symmetric; the loss is remembered, so the
    failing attempt is paid once.
    """
    gradient = grad(loss_fn)
    if not _known_reverse_only(loss_fn):
        try:
            return jvp(lambda u: gradient(u, x, y), (w,), (v,))[1]
        except RuntimeError as err:
            if "ZeroTensors are immutable" not in str(err):
                raise
            try:
                _REVERSE_OVER_REVERSE.add(loss_fn)
            except TypeError:  # not weakly referenceable: retried on every call, still correct
                pass
    _, pullback = vjp(lambda u: gradient(u, x, y), w)
    return pullback(v)[0]


def batched_hvp(
    loss_fn: FlatLoss, w: Tensor, vs: Tensor, x: Tensor, y: Tensor, eval_batch_size: int = 4096
) -> Tensor:
    """H v_k for a stack of directions, vmapped: (K, P) -> (K, P).

    The data are processed in chunks; chunk HVPs are weighted by chunk size, which
    is exact for a mean loss.
    """
    n = x.shape[0]
    many = vmap(hvp, in_dims=(None, None, 0, None, None))
    out = torch.zeros_like(vs)
    for start in range(0, n, eval_batch_size):
        xb, yb = x[start:start + eval_batch_size], y[start:start + eval_batch_size]
        out += many(loss_fn, w, vs, xb, yb) * (xb.shape[0] / n)
    return out


def hutchinson_trace(
    loss_fn: FlatLoss,
    w: Tensor,
    x: Tensor,
    y: Tensor,
    num_probes: int,
    gen: torch.Generator,
    probes_per_batch: int = 16,
    eval_batch_size: int = 4096,
) -> tuple[float, float]:
    """Hutchinson's estimate tr(H) ≈ mean_k v_kᵀ H v_k with Rademacher v_k.

    Returns (estimate, standard error of the mean over probes).
    """
    if num_probes < 1:
        raise ValueError(f"num_probes must be >= 1; got {num_probes}")
    quad = []
    for start in range(0, num_probes, probes_per_batch):
        k = min(probes_per_batch, num_probes - start)
        vs = torch.randint(0, 2, (k, w.numel()), generator=gen, device=w.device).to(w.dtype) * 2 - 1  # (k, P)
        quad.append((vs * batched_hvp(loss_fn, w, vs, x, y, eval_batch_size)).sum(dim=1))
    q = torch.cat(quad).double()
    sem = float(q.std(unbiased=True) / num_probes**0.5) if num_probes > 1 else float("nan")
    return float(q.mean()), sem


# ----------------------------------------------------------------------------- dense Hessian

def hessian_nbytes(num_params: int, dtype: torch.dtype = torch.float64) -> int:
    """Bytes of one dense P x P matrix in ``dtype``."""
    return num_params * num_params * torch.finfo(dtype).bits // 8


def check_dense_hessian_size(num_params: int, dtype: torch.dtype, max_bytes: float, key: str = "model") -> None:
    """Refuse a dense Hessian that would not fit, naming P and the memory it needs.

    An eigendecomposition needs about three P x P matrices (matrix, eigenvectors, workspace).

    Raises:
        ValueError: 3 * P² * itemsize > max_bytes.
    """
    need = 3 * hessian_nbytes(num_params, dtype)
    if need > max_bytes:
        raise ValueError(
            f"{key}: the exact Hessian of {num_params:,} parameters needs about {need / 2**30:.1f} GiB "
            f"({num_params:,}² {dtype} entries, x3 for the eigendecomposition); the limit is "
            f"{max_bytes / 2**30:.1f} GiB. Use a smaller model, or Lanczos/HVP-based routines."
        )


def dense_hessian(
    loss_fn: FlatLoss, w: Tensor, x: Tensor, y: Tensor, chunk_size: int | None = 256
) -> Tensor:
    """The exact Hessian H = ∇²L_B(w), (P, P), as H e_p for all basis vectors e_p.

    The HVPs are vmapped over ``chunk_size`` basis vectors at a time (None: all at
    once), so memory is about chunk_size times one HVP's. The result is symmetrised,
    (H + Hᵀ) / 2, which only removes rounding.
    """
    p = w.numel()
    eye = torch.eye(p, dtype=w.dtype, device=w.device)
    many = vmap(hvp, in_dims=(None, None, 0, None, None))
    step = p if chunk_size is None else chunk_size
    rows = [many(loss_fn, w, eye[s:s + step], x, y) for s in range(0, p, step)]
    h = torch.cat(rows)  # (P, P); row p = H e_p
    return 0.5 * (h + h.T)


def warn_if_stochastic_layers(model: nn.Module) -> None:
    """Warn when BatchNorm or dropout would make the curvature batch- or draw-dependent.

    Curvature routines evaluate a fixed function of w: BatchNorm in train mode
    normalises with the batch's own statistics (so H couples the samples and changes
    with the batch) and dropout draws a new mask per call. Put the model in eval mode.
    """
    for name, module in model.named_modules():
        if module.training and isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.Dropout)):
            warnings.warn(
                f"{name or type(module).__name__} ({type(module).__name__}) is in train mode during a curvature "
                "computation; call model.eval() for BatchNorm running statistics and no dropout",
                stacklevel=2,
            )
