"""Step-size calibration: short vectorised runs of any sampler over a grid of ε (and nβ, γ).

For each setting it reports λ̂, both R-hats, bulk/tail ESS, the divergence rate
and the share of the step taken by the injected noise, and it recommends, per
(nβ, γ), the largest stable ε. The noise share uses E‖Δw‖² = E‖drift‖² + εP
(the noise √ε ξ is independent of w_t and of the minibatch, so the cross term
has mean zero): noise_fraction = εP / mean_t ‖w_{t+1} − w_t‖², recorded after
burn-in. Near 1 the sampler is noise-dominated (ε small relative to the
curvature); far below 1 the drift dominates and discretisation bias grows.

The other samplers (llc.samplers) use the same ratio with their own noise energy:
pSGLD's noise is √(εD) ξ, so εP becomes ε Σ_p D_p (the frozen D of each chain);
SGNHT and SGHMC move w by the momentum v, whose stationary law is N(0, εI) (llc.sghmc),
so εP is E‖v‖² at equilibrium and the share measures how far discretisation inflates
it; MALA's rejected proposals do not move, so its mean runs over the accepted moves
only, and MALA runs at a fixed ε here (``adapt_step_size`` False: an adapted ε is not
the ε being calibrated). MALA rejects a non-finite proposal rather than diverging, so a
too-large ε shows as no accepted move (noise share NaN, not stable), not as divergence.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from core import checks
from core.runtime import resolve_device, resolve_dtype
from llc.chain import ChainDivergenceError
from llc.diagnostics import RHAT_MAX
from llc.estimate import flat_loss_for_module, result_from_trace
from llc.mala import run_mala
from llc.samplers import check_sampler, run_sampler, sampler_configs
from llc.sgld import SGLDConfig, full_data_loss


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
    sampler: str = "sgld"

    def table(self):
        """The rows as a pandas DataFrame."""
        import pandas as pd

        return pd.DataFrame([asdict(r) for r in self.rows])


def _check_grid(name: str, values, lo: float, allow_none: bool, strict: bool) -> list:
    """``values`` (a number, None or a non-empty list of them) as a list; ValueError listing the bad entries."""
    vals = [values] if values is None or isinstance(values, numbers.Real) else list(values)
    if not vals:
        raise ValueError(f"{name} must not be empty")

    def ok(v) -> bool:
        try:
            real = isinstance(v, numbers.Real) and not isinstance(v, bool)  # numpy scalars too, as before
            checks.number(name, float(v) if real else v, lo=lo, strict=strict, none_ok=allow_none)
        except checks.CheckError:
            return False
        return True

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
    sampler: str = "sgld",
    sampler_options: dict | None = None,
) -> Calibration:
    """Sweep ε × nβ × γ with short runs of ``num_chains`` vectorised chains at the model's weights.

    ``sampler`` ("sgld", "psgld", "mala", "sgnht" or "sghmc") and ``sampler_options`` are
    estimate_llc's (llc.samplers); the noise share follows each sampler's noise (module docstring).

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
            min_noise_fraction outside [0, 1], an unknown sampler or option, MALA with
            ``adapt_step_size`` True, or any invalid sampler setting.
    """
    options = _calibration_options(sampler, sampler_options)
    checks.number("min_noise_fraction", min_noise_fraction, lo=0, hi=1)
    eps_grid = sorted(_check_grid("epsilons", epsilons, 0.0, allow_none=False, strict=True))
    nb_grid = _check_grid("nbetas", nbetas, 0.0, allow_none=True, strict=True)
    g_grid = _check_grid("gammas", gammas, 0.0, allow_none=False, strict=False)
    burnin = num_steps // 2 if num_burnin_steps is None else num_burnin_steps
    x, y = data
    dev = resolve_device(device)
    dt = next(model.parameters()).dtype if dtype is None else resolve_dtype(dtype)
    settings = [
        sampler_configs(sampler, SGLDConfig(
            epsilon=float(e), gamma=float(g), nbeta=None if nb is None else float(nb), num_steps=num_steps,
            batch_size=batch_size, num_chains=num_chains, num_burnin_steps=burnin), options)
        for nb in nb_grid for g in g_grid for e in eps_grid
    ]  # built first: every invalid setting fails before any compute
    segments = [p.numel() for p in model.parameters()]  # pSGLD's tensors, as estimate_llc passes them
    was_training = model.training
    model.eval()
    try:
        loss, w_star = flat_loss_for_module(model, loss_fn, dt, dev)
        x = x.to(device=dev, dtype=dt if x.is_floating_point() else x.dtype)
        n = x.shape[0]
        y = y.to(device=dev, dtype=dt if y.is_floating_point() else y.dtype)
        with torch.no_grad():
            init_loss = float(full_data_loss(loss, w_star[None], x, y)[0])
        run = _runner(sampler, loss, w_star, x, y, segments)
        rows = [_run_setting(run, configs, w_star, n, seed, init_loss, rhat_max, min_noise_fraction)
                for configs in settings]
    finally:
        model.train(was_training)
    recommended: dict[tuple[float, float], float | None] = {}
    for r in rows:
        key = (r.nbeta, r.gamma)
        best = recommended.get(key)
        recommended[key] = r.epsilon if r.stable and (best is None or r.epsilon > best) else best
    return Calibration(rows=rows, recommended=recommended, sampler=sampler)


def _calibration_options(sampler: str, options: dict | None) -> dict:
    """The sampler's options for a calibration: MALA at a fixed ε unless told otherwise (then a ValueError)."""
    options = check_sampler(sampler, options)  # names ``sampler`` or the unknown option
    if sampler == "mala":
        options = {"adapt_step_size": False, **options}
        if options["adapt_step_size"] is not False:
            raise ValueError("sampler_options.adapt_step_size: calibrating ε runs MALA at each fixed ε of the grid "
                             f"(an adapted ε is not the one calibrated); must be False; got "
                             f"{options['adapt_step_size']!r}")
    return options


def _runner(sampler: str, loss, w_star: Tensor, x: Tensor, y: Tensor, segments: list[int]):
    """run(configs, seed, callback) -> the sampler's trace; MALA directly (llc.samplers refuses its callbacks)."""
    def run(configs, seed: int, callback=None):
        if sampler == "mala":
            return run_mala(loss, w_star, x, y, configs, seed, callback=callback)
        return run_sampler(sampler, configs, loss, w_star, x, y, seed, callback=callback, segments=segments)

    return run


def _one_chain(configs):
    """The same setting with num_chains=1 (pSGLD's configs are a (SGLDConfig, PSGLDConfig) pair)."""
    if isinstance(configs, tuple):
        return (dataclasses.replace(configs[0], num_chains=1), configs[1])
    return dataclasses.replace(configs, num_chains=1)


def _run_setting(run, configs, w_star: Tensor, n: int, seed: int, init_loss: float, rhat_max: float,
                 min_noise: float) -> CalibrationRow:
    cfg = configs[0] if isinstance(configs, tuple) else configs  # ε, γ, steps, chains, nβ, burn-in
    P = w_star.numel()
    nbeta = cfg.resolve_nbeta(n)
    sq_steps: list[Tensor] = []

    def record(t, w_t, w_next, idx):
        if t >= cfg.burnin():
            sq_steps.append(((w_next - w_t) ** 2).sum(dim=1).double())  # (C,)

    nan = float("nan")
    try:
        trace = run(configs, seed, record)
    except ChainDivergenceError:
        failed = 0
        for c in range(cfg.num_chains):
            try:
                run(_one_chain(configs), seed + 1 + c)
            except ChainDivergenceError:
                failed += 1
        rate = max(failed, 1) / cfg.num_chains
        return CalibrationRow(cfg.epsilon, nbeta, cfg.gamma, nan, nan, nan, nan, nan, nan, rate, nan, False, False)
    res = result_from_trace(trace, init_loss, cfg)
    moves = torch.stack(sq_steps) if sq_steps else torch.zeros(0, dtype=torch.float64)  # (T - burn-in, C)
    moves = moves[moves > 0]  # MALA's rejections do not move; every other sampler's step does
    mean_sq = float(moves.mean()) if moves.numel() else nan
    noise = P if getattr(trace, "preconditioner", None) is None else float(trace.preconditioner.double().sum(1).mean())
    noise_fraction = cfg.epsilon * noise / mean_sq if mean_sq > 0 else nan
    converged = bool(math.isnan(res.rhat_rank) or res.rhat_rank <= rhat_max)
    stable = bool(math.isfinite(res.lambdahat) and res.lambdahat >= 0 and noise_fraction >= min_noise)
    return CalibrationRow(cfg.epsilon, nbeta, cfg.gamma, res.lambdahat, res.lambdahat_std, res.rhat, res.rhat_rank,
                          res.ess_bulk, res.ess_tail, 0.0, noise_fraction, converged, stable)
