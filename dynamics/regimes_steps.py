"""One update of each SGD-regimes dynamics, as pure functions of (params, batch, noise).

The network is trained on the centred prediction and an α-scaled loss:

    pred(w, x) = f(w, x) − f(w₀, x),        ℓ_α(pred, y) = ℓ(α·pred, y) / α,

with ℓ(o, y) one of (margin m = o·y)

    hinge      max(0, 1 − m)
    quadhinge  max(0, 1 − m)²
    softhinge  s(1 − m), s(u) = u·exp(−1/(2u)) for u > 0, else 0 (smooth, and exactly 0 once m ≥ 1)
    mse        (o − y)² / 2

(the original's ``edm/train.py``). ``regularizer_term`` gives the penalties of the original's
``edm/regularizer.py`` (that file returns −∇R; here R itself is added to the objective).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

LOSSES = ("hinge", "quadhinge", "softhinge", "mse")
SDE_NOISES = ("original", "minibatch")
REGULARIZERS = ("norm_grad_loss", "norm_grad_net", "l2", "l1")  # or None


def _srelu(u: Tensor) -> Tensor:
    positive = u > 0
    safe = torch.where(positive, u, torch.ones_like(u))  # keeps the unused branch finite (and its gradient)
    return torch.where(positive, u * torch.exp(-0.5 / safe), torch.zeros_like(u))


def alpha_loss(name: str, alpha: float) -> Callable[[Tensor, Tensor], Tensor]:
    """Per-sample ℓ_α(pred, y) = ℓ(α·pred, y) / α (see the module docstring); shapes (N,), (N,) -> (N,)."""
    if name not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}; got {name!r}")
    base = {
        "hinge": lambda o, y: torch.relu(1.0 - o * y),
        "quadhinge": lambda o, y: torch.relu(1.0 - o * y) ** 2,
        "softhinge": lambda o, y: _srelu(1.0 - o * y),
        "mse": lambda o, y: 0.5 * (o - y) ** 2,
    }[name]
    return lambda pred, y: base(alpha * pred, y) / alpha


def regularizer_term(name: str | None, scale: float) -> Callable | None:
    """The penalty R(leaves, pred, loss) on a batch for ``regularizer``; None for none.

    ``l2`` scale·|w|²/2, ``l1`` scale·|w|₁ (gradient scale·sign w), ``norm_grad_loss``
    scale·|∇_w L_batch|², ``norm_grad_net`` scale·|∇_w mean_batch pred|².
    """
    if name is None:
        return None
    if name not in REGULARIZERS:
        raise ValueError(f"regularizer must be None or one of {REGULARIZERS}; got {name!r}")
    if name == "l2":
        return lambda leaves, pred, loss: 0.5 * scale * sum((v ** 2).sum() for v in leaves.values())
    if name == "l1":
        return lambda leaves, pred, loss: scale * sum(v.abs().sum() for v in leaves.values())

    def grad_norm2(leaves, pred, loss):
        target = loss if name == "norm_grad_loss" else pred.mean()
        grads = torch.autograd.grad(target, list(leaves.values()), create_graph=True)
        return scale * sum((g ** 2).sum() for g in grads)

    return grad_norm2


def loss_and_grad(f, lossf, params, x, y, out0, extra=None, regu=None) -> tuple[float, dict[str, Tensor]]:
    """Mean α-loss of the centred prediction on (x, y) and the gradient of the objective in ``params``.

    ``extra(pred, per_sample_loss)`` and ``regu(leaves, pred, loss)`` are added to the objective
    (not to the returned loss). An empty batch gives loss 0 and a zero gradient.
    """
    if x.shape[0] == 0:
        return 0.0, {k: torch.zeros_like(v) for k, v in params.items()}
    leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    with torch.enable_grad():
        pred = f(leaves, x) - out0  # (B,)
        per_sample = lossf(pred, y)
        loss = per_sample.mean()
        objective = loss if extra is None else loss + extra(pred, per_sample)
        if regu is not None:
            objective = objective + regu(leaves, pred, loss)
        grads = torch.autograd.grad(objective, list(leaves.values()), allow_unused=True)
    grads = [torch.zeros_like(v) if g is None else g for g, v in zip(grads, leaves.values())]
    return float(loss.detach()), dict(zip(leaves, grads))


def unfit_first_batch(pred: Tensor, y: Tensor, alpha: float, perm: Tensor, bs: int) -> Tensor:
    """sgd_only_unfit's batch: the first ``bs`` of the permutation ``perm`` with the unfitted
    points (α·pred·y < 1) moved to the front, so fitted points only top up a short batch."""
    unfit = (alpha * pred * y < 1)[perm]
    return torch.cat([perm[unfit], perm[~unfit]])[:bs]


def gd_sde_gradient(f, lossf, params, x, y, out0, bs: int, zeta: Tensor, noise: str = "original",
                    regu=None) -> tuple[float, dict[str, Tensor]]:
    """Full-batch gradient on the n points (x, y) plus the noise of ``noise`` for given ζ (n,).

    ``original`` (the original's ``edm/dynamics.py:gd_sde``): σ ∇_w (1/n) Σ_i ζ_i f(w, x_i) with
    σ² = (1/bs − 1/n) Σ_i ℓ'_i², clamped at 0 for n < bs (where the original's σ is NaN).
    ``minibatch``: c Σ_i (ζ_i − ζ̄) ℓ'_i ∇f(w, x_i) with c² = max(0, n − bs) / (bs (n − 1) n), so
    for ζ ~ N(0, I) Cov ξ is exactly the covariance of the mean gradient over ``bs`` of the n
    points drawn without replacement. Both hold ℓ'_i fixed: one backward pass.
    """
    n = x.shape[0]
    if noise not in SDE_NOISES:
        raise ValueError(f"sde_noise must be one of {SDE_NOISES}; got {noise!r}")

    def extra(pred, per_sample):
        (dl,) = torch.autograd.grad(per_sample.sum(), pred, retain_graph=True)  # ℓ'_i, (n,)
        dl = dl.detach()
        if noise == "original":
            sigma = math.sqrt(max(0.0, 1.0 / bs - 1.0 / n) * float((dl ** 2).sum()))
            return sigma * (zeta * pred).mean()  # ∇ pred = ∇ f: f(w₀, x) is a constant
        c = math.sqrt(max(0, n - bs) / (bs * (n - 1) * n)) if n > 1 else 0.0
        return (c * (zeta - zeta.mean()) * dl * pred).sum()

    return loss_and_grad(f, lossf, params, x, y, out0, extra=extra, regu=regu)


def flatten(tree: dict[str, Tensor]) -> Tensor:
    """Concatenate a parameter dict into one vector (in the dict's order)."""
    return torch.cat([v.reshape(-1) for v in tree.values()])
