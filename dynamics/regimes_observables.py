"""Observables of the SGD-regimes engine, as the original's ``edm/observable.py`` and ``edm/train.py`` define them.

All are pure functions of tensors that return floats (or small dicts of floats); none touches
``.grad``. Sums and means run in float64.

* ``prediction_stats``: pred_bias = mean(α·pred·y), pred_var = mean((α·pred)²) and
  mean_relative_distance = Σ_{i≠j} (pred_i − pred_j)² / (n² − n) of the raw predictions
  (the fields of the same names in the original's train/test records).
* ``gradient_stats``: over n points with per-sample Jacobian j_i = ∂f(w, x_i)/∂w and
  ℓ'_i = ∂ℓ_α/∂pred at pred_i, the means ḡ_f = mean_i j_i, ḡ_ℓ = mean_i ℓ'_i j_i (the gradient
  of the mean loss) and the variances mean_i |j_i − ḡ_f|², mean_i |ℓ'_i j_i − ḡ_ℓ|²
  (``mean_var_grad``). The original records |ḡ|² as ``grad_f_norm`` / ``grad_l_norm``;
  ``gradient_overlaps`` gives its train–test overlaps ḡ_tr·ḡ_te.
* ``weight_norms``: |w_k|² and |w_k − w0_k|² per parameter tensor (``weights_norm``,
  ``delta_weights_norm``).
* ``linear_observables`` (arch linear) and ``diagonal_observables`` (arch
  simple_diagonal_linear): the weights split along the teacher t (e₁, or the ``random_sign``
  teacher), w∥ = w·t and w⊥ = w − w∥ t.

Two of the original's perceptron formulas look like slips; both values are returned, the
corrected one under the original's name:

* ampli_factor: the original's linear_observables writes ``w∥**2 / sum(w⊥**2) / (d-1)``,
  i.e. w∥² / ((d − 1)|w⊥|²), ≈ 1/(d − 1)² at a N(0, I) init; its diagonal_ampli_factor (and
  its docstring, "weights in the teacher direction / weights on the other dimensions") has
  (d − 1) w∥² / |w⊥|², ≈ 1 at init. ``ampli_factor`` is the latter; the former is
  ``ampli_factor_original``.
* mean_x1_unfit: the original selects the unfit points by α·(x·Δw)·y < 1, without the
  1/sqrt(d) of f(w, x) = w·x/sqrt(d), so it counts the points with α·pred·y < 1/sqrt(d) rather
  than those its ``nd`` counts (α·pred·y < 1). ``mean_x1_unfit`` uses α·pred·y < 1;
  the original's selection is ``mean_x1_unfit_original``.
"""
from __future__ import annotations

import math
from typing import Callable, Mapping

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev, vmap


def mean_relative_distance(pred: Tensor) -> float:
    """Σ_{i≠j} |p_i − p_j|² / (n² − n) of (n,) or (n, k) predictions; NaN for n = 1 (0/0, as the original).

    Σ_{i≠j} |p_i − p_j|² = 2n Σ_i |p_i − p̄|², so it is 2/(n − 1)·Σ_i |p_i − p̄|² (no n² pairs).
    """
    p = pred.double().reshape(pred.shape[0], -1)  # (n, k)
    n = p.shape[0]
    if n < 2:
        return math.nan
    return 2.0 / (n - 1) * float(((p - p.mean(0)) ** 2).sum())


def prediction_stats(pred: Tensor, y: Tensor, alpha: float) -> dict[str, float]:
    """pred_bias, pred_var and mean_relative_distance of predictions (N,) with labels (N,)."""
    p = pred.double()
    return {
        "pred_bias": float((alpha * p * y.double()).mean()),
        "pred_var": float(((alpha * p) ** 2).mean()),
        "mean_relative_distance": mean_relative_distance(p),
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

    Args:
        out0: f(w0, x) (N,); the loss is taken at pred = f(w, x) − out0.
        lossf: per-sample loss ℓ_α(pred (N,), y (N,)) -> (N,).

    stats: grad_f_norm = |ḡ_f|², grad_f_var, grad_l_norm = |ḡ_ℓ|², grad_l_var.
    """
    J = per_sample_jacobian(model, params, x).detach()  # (N, P)
    with torch.enable_grad():
        pred = (functional_call(model, dict(params), (x,)) - out0).detach().requires_grad_(True)  # (N,)
        (dl,) = torch.autograd.grad(lossf(pred, y).sum(), pred)  # ℓ'_i (N,)
    LJ = dl[:, None] * J  # (N, P)
    g_f, g_l = J.mean(0), LJ.mean(0)  # (P,)
    stats = {
        "grad_f_norm": float((g_f.double() ** 2).sum()),
        "grad_f_var": float(((J - g_f).double() ** 2).sum(1).mean()),
        "grad_l_norm": float((g_l.double() ** 2).sum()),
        "grad_l_var": float(((LJ - g_l).double() ** 2).sum(1).mean()),
    }
    return stats, g_f, g_l


def gradient_overlaps(g_f_tr: Tensor, g_l_tr: Tensor, g_f_te: Tensor, g_l_te: Tensor) -> dict[str, float]:
    """The original's train_test record: grad_f_overlap = ḡ_f,tr·ḡ_f,te and grad_l_overlap = ḡ_ℓ,tr·ḡ_ℓ,te (P,)."""
    return {
        "grad_f_overlap": float(g_f_tr.double() @ g_f_te.double()),
        "grad_l_overlap": float(g_l_tr.double() @ g_l_te.double()),
    }


def weight_norms(params: Mapping[str, Tensor], params0: Mapping[str, Tensor]) -> dict[str, list[float]]:
    """weights_norm = [|w_k|²] and delta_weights_norm = [|w_k − w0_k|²], one entry per tensor in ``params`` order."""
    return {
        "weights_norm": [float((w.double() ** 2).sum()) for w in params.values()],
        "delta_weights_norm": [float(((params[k].double() - params0[k].double()) ** 2).sum()) for k in params],
    }


def _split(w: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """w (d,) -> (w∥ = w·t scalar, w⊥ = w − w∥ t (d,)) for a unit t (d,)."""
    para = w @ t
    return para, w - para * t


def _snr(para: Tensor, perp: Tensor) -> float:
    """(d − 1) w∥² / |w⊥|²: w∥² over the mean square of the other d − 1 directions."""
    perp2 = float((perp ** 2).sum())
    return (perp.shape[0] - 1) * float(para) ** 2 / perp2 if perp2 > 0 else math.inf


def linear_observables(w: Tensor, w0: Tensor, teacher: Tensor, x: Tensor, y: Tensor, pred: Tensor,
                       alpha: float) -> dict[str, float]:
    """The perceptron's observables (the original's ``linear`` record, plus w∥ and |w⊥|).

    Args:
        w, w0: weights now and at init (d,); teacher t (d,) with |t| = 1.
        x (N, d), y (N,), pred (N,): the training set and its predictions f(w, x) − f(w0, x).

    Returns:
        w_para (w∥), w_perp (|w⊥|); ampli_factor = (d − 1) w∥² / |w⊥|² and
        ampli_factor_original = w∥² / ((d − 1)|w⊥|²) (see the module docstring);
        dw_para = (Δw∥)², dw_perp = |Δw⊥|²/(d − 1), dw1 = Δw∥ with Δw = w − w₀;
        mean_x1_unfit: mean |x·t| over the points with α·pred·y < 1, and mean_x1_unfit_original
        over those with α·(x·Δw)·y < 1 (NaN where there are none, as the original's empty mean).
    """
    w, w0, t, x = w.double(), w0.double(), teacher.double(), x.double()
    d_perp = w.shape[0] - 1
    w_para, w_perp = _split(w, t)
    dw_para, dw_perp = _split(w - w0, t)
    perp2 = float((w_perp ** 2).sum())
    x1 = (x @ t).abs()  # (N,)
    margin = alpha * pred.double() * y.double()  # (N,)
    margin_original = alpha * (x @ (w - w0)) * y.double()  # (N,), no 1/sqrt(d)

    def mean_unfit(m):
        unfit = m < 1.0
        return float(x1[unfit].mean()) if bool(unfit.any()) else math.nan

    return {
        "w_para": float(w_para),
        "w_perp": math.sqrt(perp2),
        "ampli_factor": _snr(w_para, w_perp),
        "ampli_factor_original": float(w_para) ** 2 / perp2 / d_perp if perp2 > 0 and d_perp > 0 else math.inf,
        "dw_para": float(dw_para) ** 2,
        "dw_perp": float((dw_perp ** 2).sum()) / d_perp if d_perp > 0 else math.nan,
        "dw1": float(dw_para),
        "mean_x1_unfit": mean_unfit(margin),
        "mean_x1_unfit_original": mean_unfit(margin_original),
    }


def diagonal_observables(w: Tensor, w0: Tensor, teacher: Tensor, L: int) -> dict[str, float]:
    """simple_diagonal_linear's observables (the original's ``diag_lin`` record), w, w0, teacher (d,).

    Returns:
        ampli_factor = (d − 1) β∥² / |β⊥|², w_para = β∥ and w_perp = |β⊥| of the effective
        weights β = w^L; dw_para = (Δw∥)² and dw_perp = |Δw⊥|²/(d − 1) of Δw = w − w0 itself.
    """
    w, w0, t = w.double(), w0.double(), teacher.double()
    beta_para, beta_perp = _split(w ** L, t)
    dw_para, dw_perp = _split(w - w0, t)
    d_perp = w.shape[0] - 1
    return {
        "ampli_factor": _snr(beta_para, beta_perp),
        "w_para": float(beta_para),
        "w_perp": float(beta_perp.norm()),
        "dw_para": float(dw_para) ** 2,
        "dw_perp": float((dw_perp ** 2).sum()) / d_perp if d_perp > 0 else math.nan,
    }
