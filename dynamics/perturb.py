"""Perturbed copies, the distance fit and subspace similarity (docs/notes/chaos.md#perturbation).

* :func:`perturbation_direction`: a unit vector along which a copy of w_0 is shifted:
  the fastest-growing (``max_chaos``) or fastest-shrinking (``max_convergence``)
  Lyapunov direction, a random combination of the growing (``randn_chaos``) or
  shrinking (``randn_convergence``) ones, or a random direction (``randn``).
* :func:`perturbed_copies`: the perturbed copies w_0 + ε v, one (strategy, ε) pair each.
* :func:`fit_distance`: least squares (scipy's ``curve_fit``) of the squared distance
  between a copy and the reference, d(t)² = a t + b t² + d0².
* :func:`subspace_similarity`: ‖VᵀW‖²_F / min(d_V, d_W) for orthonormal V, W (1 when one
  subspace contains the other, 0 when orthogonal); two random subspaces of R^n give
  max(d_V, d_W) / n on average (:func:`random_subspace_baseline`).
* :func:`load_eigenthings` / :func:`save_eigenthings`: the Lyapunov exponents and
  initial vectors of a run, as an .npz file.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from core import checks

STRATEGIES = ("max_chaos", "randn_chaos", "max_convergence", "randn_convergence", "randn")
NEEDS_LYAPUNOV = STRATEGIES[:4]


def perturbation_direction(
    strategy: str, num_params: int, gen: torch.Generator, exponents: Tensor | None = None,
    vectors: Tensor | None = None, dtype: torch.dtype = torch.float64,
) -> Tensor:
    """A unit vector in R^P for ``strategy``.

    Args:
        strategy: one of STRATEGIES.
        num_params: P.
        gen: generator for the random strategies.
        exponents: (K,) Lyapunov exponents (rates), needed except for 'randn'.
        vectors: (D, K) their directions; with momentum D = 2P and only the weight
            part (first P rows) is used, renormalised.

    Raises:
        ValueError: unknown strategy, missing vectors, or no exponent of the needed sign.
    """
    checks.one_of("perturb_strat", strategy, STRATEGIES)
    if strategy == "randn":
        v = torch.randn(num_params, generator=gen, dtype=dtype, device=gen.device)
        return v / v.norm()
    if exponents is None or vectors is None:
        raise ValueError(f"perturb_strat={strategy!r} needs Lyapunov exponents and vectors (eigenthings)")
    if vectors.shape[0] < num_params or vectors.shape[1] != exponents.numel():
        raise ValueError(f"eigenthings vectors must be (>= {num_params}, {exponents.numel()}); "
                         f"got {tuple(vectors.shape)}")
    vecs = vectors[:num_params].to(dtype)
    ex = exponents.to(dtype)
    if strategy == "max_chaos":
        v = vecs[:, int(torch.argmax(ex))]
    elif strategy == "max_convergence":
        v = vecs[:, int(torch.argmin(ex))]
    else:
        mask = ex > 0 if strategy == "randn_chaos" else ex < 0
        if not bool(mask.any()):
            sign = "positive" if strategy == "randn_chaos" else "negative"
            raise ValueError(f"perturb_strat={strategy!r}: no Lyapunov exponent is {sign}")
        coef = torch.randn(int(mask.sum()), generator=gen, dtype=dtype, device=gen.device).to(vecs.device)
        v = vecs[:, mask] @ coef
    return v / v.norm()


@dataclass(frozen=True)
class DistanceFit:
    """d(t)² = a t + b t² + d0², fitted by least squares on the squared distances.

    Attributes:
        a, b, d0: parameters (d0 >= 0).
        a_err, b_err, d0_err: one-sigma errors from the covariance (NaN if not estimable).
        rmse: root-mean-square residual of d² .
    """

    a: float
    b: float
    d0: float
    a_err: float
    b_err: float
    d0_err: float
    rmse: float

    def predict(self, t) -> np.ndarray:
        """d(t) of the fit (clipped at 0 under the root)."""
        t = np.asarray(t, dtype=float)
        return np.sqrt(np.clip(self.a * t + self.b * t**2 + self.d0**2, 0.0, None))


def perturbed_copies(w0: Tensor, strategies, eps, parallel: int, gen: torch.Generator,
                     eigenthings: dict | None = None) -> tuple[list[Tensor], list[dict]]:
    """``parallel`` copies w0 + ε v of the initial weights, cycling through strategies × eps.

    Copy i (from 1) takes the i-th (strategy, ε) pair, cyclically, and a fresh
    :func:`perturbation_direction` drawn from ``gen`` (in copy order) along the stored
    Lyapunov ``eigenthings`` (``exponents``, ``vectors``) where the strategy needs them.

    Args:
        w0: (P,) initial weights; every copy has its dtype and device.
        strategies: strategy names, each one of STRATEGIES.
        eps: perturbation sizes ε.
        parallel: number of copies.
        gen: generator for the random strategies.
        eigenthings: the stored exponents and vectors, or None.

    Returns:
        The copies' weights (P,) each, and per copy ``{"copy": i, "strategy": s, "eps": ε}``.
    """
    combos = [(s, e) for s in strategies for e in eps]
    lyap_dirs = () if eigenthings is None else (eigenthings["exponents"], eigenthings["vectors"])
    ws, copies = [], []
    for i in range(parallel):
        s, e = combos[i % len(combos)]
        v = perturbation_direction(s, w0.numel(), gen, *lyap_dirs)
        ws.append(w0 + e * v.to(device=w0.device, dtype=w0.dtype))
        copies.append({"copy": i + 1, "strategy": s, "eps": float(e)})
    return ws, copies


def _sq_model(t, a, b, d0):
    return a * t + b * t**2 + d0**2


def fit_distance(t, d, d0: float | None = None) -> DistanceFit:
    """Fit d(t)² = a t + b t² + d0² with ``scipy.optimize.curve_fit`` (least squares on d²).

    Args:
        t, d: steps and distances.
        d0: if given, d0 is held fixed and only a, b are fitted, as the original's
            ``fit_theoretical_bound`` (chaotic_neurips22, experiments/utils.py) does with
            d0 = perturb_eps; None fits d0 too.

    Raises:
        ValueError: fewer finite points than free parameters, or mismatched lengths.
    """
    from scipy.optimize import curve_fit

    t, d = np.asarray(t, dtype=float), np.asarray(d, dtype=float)
    if t.shape != d.shape:
        raise ValueError(f"t and d must have the same shape; got {t.shape} and {d.shape}")
    keep = np.isfinite(t) & np.isfinite(d)
    t, d = t[keep], d[keep]
    free = 3 if d0 is None else 2
    if t.size < free:
        raise ValueError(f"need at least {free} finite points to fit {free} parameters; got {t.size}")
    d2 = d**2
    scale_t = max(float(np.max(np.abs(t))), 1.0)
    # Fit in t / scale_t for conditioning, then scale back.
    if d0 is None:
        p0 = (0.0, 0.0, float(d[0]) if d[0] > 0 else float(np.sqrt(np.mean(d2))))
        popt, pcov = curve_fit(_sq_model, t / scale_t, d2, p0=p0, maxfev=20000)
    else:
        popt, pcov = curve_fit(lambda s, a, b: _sq_model(s, a, b, d0), t / scale_t, d2, p0=(0.0, 0.0), maxfev=20000)
        popt = np.append(popt, d0)
        pcov = np.pad(pcov, (0, 1))  # d0 is fixed: zero variance
    errs = np.sqrt(np.diag(pcov)) if np.all(np.isfinite(pcov)) else np.full(3, np.nan)
    a, b, d0 = popt[0] / scale_t, popt[1] / scale_t**2, abs(popt[2])
    rmse = float(np.sqrt(np.mean((_sq_model(t, a, b, d0) - d2) ** 2)))
    return DistanceFit(float(a), float(b), float(d0), float(errs[0] / scale_t), float(errs[1] / scale_t**2),
                       float(errs[2]), rmse)


def subspace_similarity(v: Tensor, w: Tensor) -> float:
    """‖VᵀW‖²_F / min(d_V, d_W) for bases V (n, d_V) and W (n, d_W), orthonormalised here.

    Raises:
        ValueError: different ambient dimensions or an empty basis.
    """
    if v.ndim != 2 or w.ndim != 2 or v.shape[0] != w.shape[0]:
        raise ValueError(f"v and w must be (n, d) bases of the same R^n; got {tuple(v.shape)} and {tuple(w.shape)}")
    if v.shape[1] == 0 or w.shape[1] == 0:
        raise ValueError("subspaces must have dimension >= 1")
    qv, qw = torch.linalg.qr(v.double()).Q, torch.linalg.qr(w.double()).Q
    return float((qv.T @ qw).pow(2).sum()) / min(v.shape[1], w.shape[1])


def random_subspace_baseline(d_v: int, d_w: int, n: int) -> float:
    """E ‖VᵀW‖²_F / min(d_V, d_W) for independent uniformly random subspaces = max(d_V, d_W) / n."""
    return max(d_v, d_w) / n


def save_eigenthings(path, exponents: Tensor, vectors: Tensor, num_params: int, **extra) -> Path:
    """Write exponents (K,), vectors (D, K) (float32) and P to an .npz file; returns the path."""
    path = Path(path)
    np.savez_compressed(path, exponents=exponents.double().cpu().numpy(), vectors=vectors.float().cpu().numpy(),
                        num_params=np.int64(num_params), **{k: np.asarray(v) for k, v in extra.items()})
    return path


def load_eigenthings(source, num_params: int | None = None) -> dict[str, Tensor]:
    """Read what :func:`save_eigenthings` wrote, from a path or from the file's bytes.

    Raises:
        ValueError: missing file, missing arrays, or P different from ``num_params``.
    """
    if isinstance(source, (bytes, bytearray)):
        data = np.load(io.BytesIO(source))
    else:
        path = Path(source)
        if not path.is_file():
            raise ValueError(f"eigenthings file {str(path)!r} does not exist")
        data = np.load(path)
    missing = [k for k in ("exponents", "vectors", "num_params") if k not in data.files]
    if missing:
        raise ValueError(f"eigenthings file lacks arrays {missing}; has {data.files}")
    p = int(data["num_params"])
    if num_params is not None and p != num_params:
        raise ValueError(f"eigenthings were saved for a model with {p} parameters; this model has {num_params}")
    out = {k: torch.from_numpy(np.array(data[k])) for k in data.files}
    out["num_params"] = p
    return out


def exponential_bounds(t, d0: float, chi_max: float, chi_min: float) -> tuple[np.ndarray, np.ndarray]:
    """d0·e^{χ_min t} and d0·e^{χ_max t}: the distance of an infinitesimal perturbation lies between them."""
    t = np.asarray(t, dtype=float)
    with np.errstate(over="ignore"):
        return d0 * np.exp(chi_min * t), d0 * np.exp(np.minimum(chi_max * t, math.log(np.finfo(float).max) - 1))
