"""Gradient flow by adaptive Dormand–Prince 5(4), and the original's drift observable.

``gradient_flow`` integrates dw/dt = −∇L(w) over a time span, with the step-size control of
the original's ``edm/gradientflow_loss.py`` (``gf_tol``, ``gf_mindt``, ``gf_maxdt``): a step of
size dt is accepted when its error ratio

    r = max( max_i |δf_i| / net_tol,  max_i |δf_i · ℓ'_i| / loss_tol ),   δf = J(w) δw

(δw the embedded 4th/5th-order error estimate, J the Jacobian of the outputs at the step's
start) is <= 1, and forced through at dt = gf_mindt. The next dt is dt·min(10, max(0.9 r^(−1/5),
0.2 if r > 1 else 1)), then clipped to [gf_mindt, gf_maxdt] and to the time left.

``first_stage``: Dormand–Prince reuses the derivative at the end of an accepted step as the
first stage of the next (FSAL). The original hands on +∇L there instead of −∇L, so from the
second accepted step on its first stage has the wrong sign. ``"fixed"`` (default) hands on −∇L;
``"original"`` reproduces the sign flip. They agree when the span takes one step.

``drifts`` is the original's ``edm/observable.py:drifts``: the displacement over time 2·dt of
gradient flow (dw_gf), of two GD steps (dw_gd), and of one SGD step on a batch of ``bs`` then one
GD step, averaged over ``n0`` disjoint batches (dw_sgd); it returns the squared distances
|dw_a − dw_b|² per parameter tensor for gd_gf, sgd_gf and gd_sgd.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor
from torch.func import jvp

from dynamics.regimes_steps import flatten, loss_and_grad

GF_FIRST_STAGES = ("fixed", "original")

# Dormand–Prince 5(4) tableau (stages 0..5 feed the solution; stage 6 is the FSAL derivative)
_A = [
    [],
    [1 / 5],
    [3 / 40, 9 / 40],
    [44 / 45, -56 / 15, 32 / 9],
    [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729],
    [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656],
]
_B = [35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0]
# the embedded 4th-order weights the original's error estimate uses (those of jax.experimental.ode)
_B4 = [1951 / 21600, 0.0, 22642 / 50085, 451 / 720, -12231 / 42400, 649 / 6300, 1 / 60]
_E = [b - b4 for b, b4 in zip(_B, _B4)]


def next_step_size(dt: float, ratio: float, safety=0.9, ifactor=10.0, dfactor=0.2, order=5.0) -> float:
    """The original's proposal for the next dt after a step of error ratio ``ratio``."""
    if ratio == 0:
        return dt * ifactor
    low = 1.0 if ratio < 1 else dfactor
    return dt * min(ifactor, max(safety * (ratio + 1e-8) ** (-1.0 / order), low))


def dopri5_step(grad: Callable[[Tensor], Tensor], w: Tensor, k0: Tensor, dt: float) -> tuple[Tensor, Tensor, Tensor]:
    """One Dormand–Prince step of dw/dt = −grad(w) from w (n,) with first stage k0 = −grad(w).

    Returns (w₁, grad(w₁), error estimate δw).
    """
    k = [k0]
    for row in _A[1:]:
        k.append(-grad(w + dt * sum(a * kj for a, kj in zip(row, k))))
    w1 = w + dt * sum(b * kj for b, kj in zip(_B, k))
    g1 = grad(w1)
    k.append(-g1)
    return w1, g1, dt * sum(e * kj for e, kj in zip(_E, k))


def gradient_flow(grad: Callable[[Tensor], Tensor], error_ratio: Callable[[Tensor, Tensor], float], w: Tensor,
                  time: float, min_dt: float, max_dt: float, first_stage: str = "fixed") -> tuple[Tensor, int]:
    """Integrate dw/dt = −grad(w) from w (n,) over ``time``; returns (w(time), accepted steps).

    ``error_ratio(w_start, δw)`` is r of the module docstring. The first trial step is the whole span.
    """
    if first_stage not in GF_FIRST_STAGES:
        raise ValueError(f"gf_first_stage must be one of {GF_FIRST_STAGES}; got {first_stage!r}")
    k0, t, dt, steps = -grad(w), 0.0, float(time), 0
    while t < time and dt > 0:
        while True:  # retry until a step is accepted
            w1, g1, err = dopri5_step(grad, w, k0, dt)
            ratio = float(error_ratio(w, err))
            if dt == min_dt:
                ratio = min(1.0, ratio)
            proposal = next_step_size(dt, ratio)
            proposal = min_dt if proposal != proposal else min(max(proposal, min_dt), max_dt)  # NaN -> min_dt
            if ratio <= 1.0:
                break
            dt = proposal
        w, t, steps = w1, t + dt, steps + 1
        k0 = g1 if first_stage == "original" else -g1
        dt = min(proposal, time - t)
    return w, steps


def _unflatten(vec: Tensor, like: dict[str, Tensor]) -> dict[str, Tensor]:
    out, i = {}, 0
    for k, v in like.items():
        out[k] = vec[i:i + v.numel()].view_as(v)
        i += v.numel()
    return out


def drifts(f, lossf, params: dict[str, Tensor], x: Tensor, y: Tensor, out0: Tensor, dt: float, bs: int,
           n0: int, perm: Tensor, gf_tol: float, gf_mindt: float, gf_maxdt: float,
           first_stage: str = "fixed") -> dict[str, dict[str, float] | None]:
    """The original's drift observable at ``params`` on the training set (module docstring).

    ``perm`` (P,) picks the n0 batches (its first n0·bs entries); sgd_gf and gd_sgd are None
    when n0 = 0 or n0·bs > P, as in the original. The regularizer is not included (nor is it there).
    """
    P = x.shape[0]

    def full_grad(p):
        return loss_and_grad(f, lossf, p, x, y, out0)[1]

    def grad_flat(v):
        return flatten(full_grad(_unflatten(v, params)))

    w = flatten(params)
    with torch.no_grad():
        pred = f(params, x) - out0  # (P,)
    with torch.enable_grad():
        p = pred.detach().requires_grad_(True)
        (dl,) = torch.autograd.grad(lossf(p, y).sum(), p)  # ℓ'_i at w
    one = torch.ones((), dtype=pred.dtype, device=pred.device)
    net_tol, loss_tol = gf_tol, gf_tol * float(lossf(0 * one, one))

    def error_ratio(w_start, w_err):
        if not torch.equal(w_start, w):
            with torch.no_grad():
                p0 = f(_unflatten(w_start, params), x) - out0
            with torch.enable_grad():
                p0 = p0.detach().requires_grad_(True)
                (d0,) = torch.autograd.grad(lossf(p0, y).sum(), p0)
        else:
            d0 = dl
        _, dout = jvp(lambda v: f(_unflatten(v, params), x), (w_start,), (w_err,))  # (P,)
        return max(float(dout.abs().max()) / net_tol, float((dout * d0).abs().max()) / loss_tol)

    w_gf, _ = gradient_flow(grad_flat, error_ratio, w, 2 * dt, gf_mindt, gf_maxdt, first_stage)
    dw_gf = w_gf - w
    g1 = grad_flat(w)
    dw_gd = -dt * g1 - dt * grad_flat(w - dt * g1)
    dw_sgd = None
    if 0 < n0 and n0 * bs <= P:
        parts = []
        for b in perm[:n0 * bs].reshape(n0, bs):
            gb = flatten(loss_and_grad(f, lossf, params, x[b], y[b], out0[b])[1])
            parts.append(-dt * gb - dt * grad_flat(w - dt * gb))
        dw_sgd = torch.stack(parts).mean(0)

    def per_param(a, b):
        if a is None or b is None:
            return None
        return {k: float((v.double() ** 2).sum()) for k, v in _unflatten(a - b, params).items()}

    return {"gd_gf": per_param(dw_gd, dw_gf), "sgd_gf": per_param(dw_sgd, dw_gf), "gd_sgd": per_param(dw_gd, dw_sgd)}
