"""Observables of the SGD-regimes engine that the original's ``edm/observable.py`` defines.

All take tensors and return floats (or small dicts of floats); none touches ``.grad``.

* ``prediction_stats``: pred_bias = mean(α·pred·y), pred_var = mean((α·pred)²) and
  mean_relative_distance = Σ_{i≠j} (pred_i − pred_j)² / (n² − n) of the raw predictions
  (``train``'s fields of the same names in the original).
* ``gradient_stats``: over n points with per-sample Jacobian j_i = ∂f(w, x_i)/∂w and
  ℓ'_i = ∂ℓ_α/∂pred at pred_i, the means ḡ_f = mean_i j_i, ḡ_ℓ = mean_i ℓ'_i j_i (the gradient
  of the mean loss) and the variances mean_i |j_i − ḡ_f|², mean_i |ℓ'_i j_i − ḡ_ℓ|²
  (``mean_var_grad``). The original records |ḡ|² as ``grad_f_norm`` / ``grad_l_norm`` and
  the train–test overlaps ḡ_tr·ḡ_te.
* ``linear_observables``: the perceptron's weights split along the teacher t (e₁, or the
  ``random_sign`` teacher): w∥ = w·t, w⊥ = w − w∥ t (``linear_observables``).
"""
from __future__ import annotations

import math
from typing import Callable, Mapping

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev, vmap


def prediction_stats(pred: Tensor, y: Tensor, alpha: float) -> dict[str, float]:
    """pred_bias, pred_var and mean_relative_distance of predictions (N,) with labels (N,)."""
    n = pred.shape[0]
    p = pred.double()
    # Σ_{i≠j}(p_i − p_j)² = 2n Σp² − 2(Σp)², so over n² − n pairs it is 2/(n − 1)·(Σp² − n·p̄²)
    mrd = 2.0 / (n - 1) * float((p ** 2).sum() - n * p.mean() ** 2) if n > 1 else math.nan
    return {
        "pred_bias": float((alpha * p * y.double()).mean()),
        "pred_var": float(((alpha * p) ** 2).mean()),
        "mean_relative_distance": mrd,
    }


def per_sample_jacobian(model: nn.Module, params: Mapping[str, Tensor], x: Tensor) -> Tensor:
    """J[i] = ∂f(w, x_i)/∂w flattened over every parameter; (N, ...) -> (N, P)."""
    def f_single(p, xi):
        return functional_call(model, p, (xi[None],))[0]

    jac = vmap(jacrev(f_single), in_dims=(None, 0))(dict(params), x)
    return torch.cat([jac[k].reshape(x.shape[0], -1) for k in params], dim=1)  # (N, P)


def gradient_stats(model: nn.Module, params: Mapping[str, Tensor], x: Tensor, y: Tensor, out0: Tensor,
                   lossf: Callable[[Tensor, Tensor], Tensor]) -> tuple[dict[str, float], Tensor, Tensor]:
    """The original's mean_var_grad on (x, y): returns (stats, ḡ_f (P,), ḡ_ℓ (P,)).

    stats: grad_f_norm = |ḡ_f|², grad_f_var, grad_l_norm = |ḡ_ℓ|², grad_l_var.
    """
    J = per_sample_jacobian(model, params, x).detach()  # (N, P)
    with torch.enable_grad():
        pred = (functional_call(model, dict(params), (x,)) - out0).detach().requires_grad_(True)  # (N,)
        (dl,) = torch.autograd.grad(lossf(pred, y).sum(), pred)  # ℓ'_i
    LJ = dl[:, None] * J  # (N, P)
    g_f, g_l = J.mean(0), LJ.mean(0)
    stats = {
        "grad_f_norm": float((g_f.double() ** 2).sum()),
        "grad_f_var": float(((J - g_f).double() ** 2).sum(1).mean()),
        "grad_l_norm": float((g_l.double() ** 2).sum()),
        "grad_l_var": float(((LJ - g_l).double() ** 2).sum(1).mean()),
    }
    return stats, g_f, g_l


def linear_observables(w: Tensor, w0: Tensor, teacher: Tensor, x: Tensor, y: Tensor, pred: Tensor,
                       alpha: float) -> dict[str, float]:
    """The perceptron's observables; w, w0, teacher (d,) with |t| = 1; x (N, d), y, pred (N,) on the training set.

    Returns:
        w_para (w∥), w_perp (|w⊥|); ampli_factor = (d − 1) w∥² / |w⊥|² (the signal-to-noise ratio
        of the weights, as the original's diagonal_ampli_factor defines it) and
        ampli_factor_original = w∥² / (|w⊥|² (d − 1)) (``linear_observables`` as written there);
        dw_para = (Δw∥)², dw_perp = |Δw⊥|²/(d − 1), dw1 = Δw∥ with Δw = w − w₀;
        mean_x1_unfit: mean |x·t| over the points with α·pred·y < 1 (the unfitted ones, NaN if none).
    """
    w, w0, t = w.double(), w0.double(), teacher.double()
    d_perp = w.shape[0] - 1
    w_para, w0_para = w @ t, w0 @ t
    w_perp, w0_perp = w - w_para * t, w0 - w0_para * t
    perp2 = float((w_perp ** 2).sum())
    unfit = alpha * pred * y < 1
    x1 = (x.double() @ t).abs()
    return {
        "w_para": float(w_para),
        "w_perp": math.sqrt(perp2),
        "ampli_factor": d_perp * float(w_para) ** 2 / perp2 if perp2 > 0 else math.inf,
        "ampli_factor_original": float(w_para) ** 2 / perp2 / d_perp if perp2 > 0 and d_perp > 0 else math.inf,
        "dw_para": float(w_para - w0_para) ** 2,
        "dw_perp": float(((w_perp - w0_perp) ** 2).sum()) / d_perp if d_perp > 0 else math.nan,
        "dw1": float(w_para - w0_para),
        "mean_x1_unfit": float(x1[unfit].mean()) if bool(unfit.any()) else math.nan,
    }
