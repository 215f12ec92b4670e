"""Tiny real Sacred runs for the tracking and notebook tests."""
from __future__ import annotations

from sacred import Experiment

from tests.conftest import load_experiment

# ~2 s per run on one CPU core.
TINY_DLN = dict(
    layer_widths=[3, 2], input_dim=3, num_training_data=200, device="cpu",
    sgld_config=dict(num_steps=50, batch_size=20, num_chains=2, epsilon=1e-5, gamma=10.0),
)
# Diverges within a few steps: the run ends FAILED.
DIVERGENT_SGLD = dict(num_steps=400, batch_size=20, num_chains=2, epsilon=50.0, gamma=0.0)


def dln_runs(observer, updates: list[dict]) -> list:
    """Run expt_dln once per entry of ``updates`` (merged over TINY_DLN), recorded by ``observer``.

    A fresh module is loaded so the observer never leaks into other tests' ``ex.observers``.

    Returns:
        The Sacred Run of each entry; None where the run raised (it is recorded as FAILED).
    """
    expt = load_experiment("expt_dln")
    expt.ex.observers.append(observer)
    runs = []
    for update in updates:
        try:
            runs.append(expt.ex.run(config_updates={**TINY_DLN, **update}))
        except FloatingPointError:
            runs.append(None)
    return runs


def toy_run(observer, value: float = 42.0):
    """A second experiment, 'toy', whose result is a plain number and which logs 'toy/x'."""
    ex = Experiment("toy", save_git_info=False)
    ex.observers.append(observer)

    @ex.config
    def cfg():
        scale = 2.0  # multiplies the logged series

    @ex.main
    def main(_run, scale):
        for step in range(3):
            _run.log_scalar("toy/x", scale * step, step)
        return value

    return ex.run()
