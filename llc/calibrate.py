"""Step-size calibration: short vectorised SGLD runs over a grid of ε (and nβ, γ).

For each setting it reports λ̂, both R-hats, bulk/tail ESS, the divergence rate
and the share of the step taken by the injected noise, and it recommends, per
(nβ, γ), the largest stable ε. The noise share uses E‖Δw‖² = E‖drift‖² + εP
(the noise √ε ξ is independent of w_t and of the minibatch, so the cross term
has mean zero): noise_fraction = εP / mean_t ‖w_{t+1} − w_t‖², recorded after
burn-in. Near 1 the sampler is noise-dominated (ε small relative to the
curvature); far below 1 the drift dominates and discretisation bias grows.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from core.runtime import resolve_device, resolve_dtype
from llc.diagnostics import RHAT_MAX
from llc.estimate import flat_loss_for_module, result_from_trace
from llc.sgld import SGLDConfig, SGLDDivergenceError, full_data_loss, run_sgld


@dataclass
class CalibrationRow:
    """One setting's outcome; λ̂ and the diagnostics are NaN when it diverged."""

    epsilon: float
    nbeta: float
    gamma: float
    lambdahat: float
    lambdahat_std: float
    rhat: float
    rhat_rank: float
    ess_bulk: float
    ess_tail: float
    divergence_rate: float
    noise_fraction: float
    converged: bool
    stable: bool


@dataclass
class Calibration:
    """All rows of a sweep and, per (nβ, γ), the largest stable ε (None if none was stable)."""

    rows: list[CalibrationRow]
    recommended: dict[tuple[float, float], float | None]

    def table(self):
        """The rows as a pandas DataFrame."""
        import pandas as pd

        return pd.DataFrame([asdict(r) for r in self.rows])


def _check_grid(name: str, values, lo: float, allow_none: bool, strict: bool) -> list:
    vals = [values] if values is None or isinstance(values, numbers.Real) else list(values)
    if not vals:
        raise ValueError(f"{name} must not be empty")
    def ok(v) -> bool:
        if v is None:
            return allow_none
        number = isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)
        return number and (v > lo if strict else v >= lo)

    bad = [v for v in vals if not ok(v)]
    if bad:
        op = ">" if strict else ">="
        raise ValueError(f"{name} must hold finite numbers {op} {lo:g}{' or None' if allow_none else ''}; bad: {bad}")
    return vals


def calibrate_epsilon(
    model: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    data: tuple[Tensor, Tensor],
    epsilons: Sequence[float],
    *,
    nbetas: Sequence[float | None] = (None,),
    gammas: Sequence[float] = (10.0,),
    num_steps: int = 500,
    batch_size: int = 100,
    num_chains: int = 4,
    num_burnin_steps: int | None = None,
    seed: int = 0,
    device: str = "auto",
    dtype: str | None = None,
    rhat_max: float = RHAT_MAX,
    min_noise_fraction: float = 0.9,
) -> Calibration:
    """Sweep ε × nβ × γ with short runs of ``num_chains`` vectorised chains at the model's weights.

    A setting is stable when no chain diverged, λ̂ is finite and >= 0, and the
    noise share of the step is >= ``min_noise_fraction``: for a quadratic
    direction of curvature a the share is ≈ 1 − εa/4 and the discretisation
    inflates that direction's λ̂ by ≈ εa/4, so 0.9 bounds the bias near 10%.
    ``converged`` (rank R-hat <= ``rhat_max``; NaN, for one chain, passes) is
    reported apart: a stable but unconverged ε needs longer runs, not a smaller ε.
    Divergence rate: 0 when the vectorised
    run finished; otherwise the share of ``num_chains`` independent one-chain runs
    (seeds seed + 1 + c) that diverged, at least 1 / num_chains (one chain already did).
    ``num_burnin_steps`` None means half of ``num_steps`` (short runs need a longer share).

    Raises:
        ValueError: an ε <= 0 (or not finite) in ``epsilons``, an nβ <= 0, a γ < 0,
            min_noise_fraction outside [0, 1], or any invalid SGLD setting.
    """
    if not (isinstance(min_noise_fraction, (int, float)) and 0 <= min_noise_fraction <= 1):
        raise ValueError(f"min_noise_fraction must be in [0, 1]; got {min_noise_fraction!r}")
    eps_grid = sorted(_check_grid("epsilons", epsilons, 0.0, allow_none=False, strict=True))
    nb_grid = _check_grid("nbetas", nbetas, 0.0, allow_none=True, strict=True)
    g_grid = _check_grid("gammas", gammas, 0.0, allow_none=False, strict=False)
    burnin = num_steps // 2 if num_burnin_steps is None else num_burnin_steps
    x, y = data
    dev = resolve_device(device)
    dt = next(model.parameters()).dtype if dtype is None else resolve_dtype(dtype)
    configs = [
        SGLDConfig(epsilon=float(e), gamma=float(g), nbeta=None if nb is None else float(nb), num_steps=num_steps,
                   batch_size=batch_size, num_chains=num_chains, num_burnin_steps=burnin)
        for nb in nb_grid for g in g_grid for e in eps_grid
    ]  # built first: every invalid setting fails before any compute
    was_training = model.training
    model.eval()
    try:
        loss, w_star = flat_loss_for_module(model, loss_fn, dt, dev)
        x = x.to(device=dev, dtype=dt if x.is_floating_point() else x.dtype)
        y = y.to(device=dev, dtype=dt if y.is_floating_point() else y.dtype)
        with torch.no_grad():
            init_loss = float(full_data_loss(loss, w_star[None], x, y)[0])
        rows = [_run_setting(loss, w_star, x, y, cfg, seed, init_loss, rhat_max, min_noise_fraction)
                for cfg in configs]
    finally:
        model.train(was_training)
    recommended: dict[tuple[float, float], float | None] = {}
    for r in rows:
        key = (r.nbeta, r.gamma)
        best = recommended.get(key)
        recommended[key] = r.epsilon if r.stable and (best is None or r.epsilon > best) else best
    return Calibration(rows=rows, recommended=recommended)


def _run_setting(
    loss, w_star, x, y, cfg: SGLDConfig, seed: int, init_loss: float, rhat_max: float, min_noise: float
) -> CalibrationRow:
    n, P = x.shape[0], w_star.numel()
    nbeta = cfg.resolve_nbeta(n)
    sq_steps: list[Tensor] = []

    def record(t, w_t, w_next, idx):
        if t >= cfg.burnin():
            sq_steps.append(((w_next - w_t) ** 2).sum(dim=1).double())  # (C,)

    nan = float("nan")
    try:
        trace = run_sgld(loss, w_star, x, y, cfg, seed, callback=record)
    except SGLDDivergenceError:
        single = SGLDConfig(**{**asdict(cfg), "num_chains": 1})
        failed = 0
        for c in range(cfg.num_chains):
            try:
                run_sgld(loss, w_star, x, y, single, seed + 1 + c)
            except SGLDDivergenceError:
                failed += 1
        rate = max(failed, 1) / cfg.num_chains
        return CalibrationRow(cfg.epsilon, nbeta, cfg.gamma, nan, nan, nan, nan, nan, nan, rate, nan, False, False)
    res = result_from_trace(trace, init_loss, cfg)
    mean_sq = float(torch.stack(sq_steps).mean()) if sq_steps else nan
    noise_fraction = cfg.epsilon * P / mean_sq if mean_sq > 0 else nan
    converged = bool(math.isnan(res.rhat_rank) or res.rhat_rank <= rhat_max)
    stable = bool(math.isfinite(res.lambdahat) and res.lambdahat >= 0 and noise_fraction >= min_noise)
    return CalibrationRow(cfg.epsilon, nbeta, cfg.gamma, res.lambdahat, res.lambdahat_std, res.rhat, res.rhat_rank,
                          res.ess_bulk, res.ess_tail, 0.0, noise_fraction, converged, stable)
