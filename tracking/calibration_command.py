"""The experiments' ``calibrate`` command: llc.calibrate.calibrate_epsilon on the run's own model and data.

Each LLC experiment declares a ``calibration`` config dict (keys below), checks
it with :func:`validate_calibration` before any compute, builds its model, data
and w* with its own set-up functions, and hands them to :func:`run_calibration`,
which sweeps the grid, saves the figure ``calibration.png`` as an artifact,
writes the table to ``info['calibration']`` and returns the recommendation.
"""
from __future__ import annotations

import copy
import dataclasses
import os
import tempfile

from sacred.randomness import get_seed

from core import checks
from llc.calibrate import _check_grid, calibrate_epsilon
from llc.samplers import sampler_kwargs
from llc.sgld import SGLDConfig
from tracking.sacred_utils import json_ready

CALIBRATION_KEYS = ("epsilons", "nbetas", "gammas", "num_steps", "num_chains", "batch_size", "num_burnin_steps",
                    "min_noise_fraction")


def main_seed(ex) -> int:
    """The ``_seed`` the experiment's main function gets in a run of this config.

    Sacred draws one seed per captured function from the run's seed, in
    registration order; reading it from a copy of the main function's generator
    gives a command the main run's random streams without drawing from them.
    Call it inside a command of ``ex`` (after Sacred has set the generators up).
    """
    return get_seed(copy.deepcopy(ex.commands[ex.default_command].rnd))


def validate_calibration(calibration: dict, sgld: SGLDConfig, n: int | None = None) -> dict:
    """The grid and run settings of ``calibration``, with None filled from the run's ``sgld``.

    nbetas / gammas None -> the run's nβ / γ; num_steps, num_chains, batch_size
    None -> the run's; num_burnin_steps None -> half of num_steps (calibrate_epsilon's
    default). The sampler is the run's (``sgld_config.sampler``, with its options: an
    SGNHTConfig calibrates SGNHT). Every (ε, nβ, γ) setting is built as the run's config
    class here, so a bad value fails before any compute, naming ``calibration.<key>``.
    """
    checks.known_entries("calibration", calibration, CALIBRATION_KEYS)
    cal = {**dict.fromkeys(CALIBRATION_KEYS), **calibration}

    def grid(key, default, lo, allow_none, strict):
        values = default if cal[key] is None else cal[key]
        try:
            return _check_grid(f"calibration.{key}", values, lo, allow_none=allow_none, strict=strict)
        except TypeError as err:  # e.g. a string
            raise ValueError(f"calibration.{key} must be a number or a list of numbers; got {values!r}") from err

    if cal["epsilons"] is None:
        raise ValueError("calibration.epsilons must be a list of step sizes > 0; got None")
    out = {
        "epsilons": grid("epsilons", None, 0.0, False, True),  # ε <= 0 is refused here
        "nbetas": grid("nbetas", [sgld.nbeta], 0.0, True, True),
        "gammas": grid("gammas", [sgld.gamma], 0.0, False, False),
    }
    for key in ("num_steps", "num_chains", "batch_size"):
        value = checks.integer(f"calibration.{key}", cal[key], none_ok=True)
        out[key] = getattr(sgld, key) if value is None else value
    burnin = cal["num_burnin_steps"]
    out["num_burnin_steps"] = out["num_steps"] // 2 if burnin is None else burnin
    mnf = checks.number("calibration.min_noise_fraction", cal["min_noise_fraction"], lo=0, hi=1, none_ok=True)
    out["min_noise_fraction"] = 0.9 if mnf is None else mnf
    if n is not None:
        checks.at_most("calibration.batch_size", out["batch_size"], "the number of training data", n)
    out.update(sampler_kwargs(sgld))  # sampler, sampler_options: the run's own
    for nb in out["nbetas"]:
        for g in out["gammas"]:
            for e in out["epsilons"]:
                try:
                    type(sgld)(epsilon=float(e), gamma=float(g), nbeta=None if nb is None else float(nb),
                               num_steps=out["num_steps"], batch_size=out["batch_size"], num_chains=out["num_chains"],
                               num_burnin_steps=out["num_burnin_steps"], **(out["sampler_options"] or {}))
                except ValueError as err:
                    raise ValueError(f"calibration: {err}") from err
    return out


def run_calibration(_run, model, loss_fn, data, settings: dict, seed: int, device: str, title: str = "") -> dict:
    """Sweep ``settings`` (from :func:`validate_calibration`) at the model's weights; log and return the outcome.

    Returns {'recommended_epsilon': the largest stable ε when the grid has one
    (nβ, γ) (None if none was stable), 'recommended': [{nbeta, gamma, epsilon}, ...]}.
    """
    from tracking.figures import save_figure
    from tracking.traceplot import plot_calibration

    cal = calibrate_epsilon(
        model, loss_fn, data, settings["epsilons"], nbetas=settings["nbetas"], gammas=settings["gammas"],
        num_steps=settings["num_steps"], batch_size=settings["batch_size"], num_chains=settings["num_chains"],
        num_burnin_steps=settings["num_burnin_steps"], seed=seed, device=device,
        min_noise_fraction=settings["min_noise_fraction"], sampler=settings.get("sampler", "sgld"),
        sampler_options=settings.get("sampler_options"),
    )
    recommended = [{"nbeta": nb, "gamma": g, "epsilon": e} for (nb, g), e in cal.recommended.items()]
    _run.info["calibration"] = json_ready({"rows": [dataclasses.asdict(r) for r in cal.rows],
                                           "recommended": recommended, "sampler": cal.sampler})
    with tempfile.TemporaryDirectory() as tmp:
        fig = plot_calibration(cal)
        if title:
            fig.suptitle(title, fontsize=9)
        _run.add_artifact(str(save_figure(fig, os.path.join(tmp, "calibration.png"))))
    for r in cal.rows:
        print(f"ε={r.epsilon:.3g} nβ={r.nbeta:.4g} γ={r.gamma:.3g}: λ̂={r.lambdahat:.4g} rank R-hat={r.rhat_rank:.3f} "
              f"noise share={r.noise_fraction:.3f} divergence rate={r.divergence_rate:.2f} "
              f"{'stable' if r.stable else 'unstable'}")
    best = recommended[0]["epsilon"] if len(recommended) == 1 else None
    return json_ready({"recommended_epsilon": best, "recommended": recommended})
