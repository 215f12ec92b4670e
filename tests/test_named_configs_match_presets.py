"""The LLC-II named configs and the generator presets they mirror resolve to the same config.

``with readme`` (expt_llc_curve) and ``with paper`` / ``with cpu`` (expt_dln_saddle_dynamics)
must give the run a generated line of the same preset would get, except the run seed and
the generator's bookkeeping (run key, sweep name).
"""
import shlex

import pytest
from sacred.arg_parser import get_config_updates

from tests.conftest import load_experiment

BOOKKEEPING = {"seed", "run_key", "expt_name", "__doc__"}  # Sacred adds a named config's docstring


def resolved(expt, updates=None, named=()):
    # print_config runs no compute; the Run it returns holds the resolved config
    run = expt.ex.run("print_config", config_updates=updates or {}, named_configs=list(named),
                      options={"--loglevel": "ERROR"})
    return {k: v for k, v in run.config.items() if k not in BOOKKEEPING}


@pytest.mark.parametrize("script, generator, preset", [
    ("expt_llc_curve", "expt_llc_curve", "readme"),
    ("expt_dln_saddle_dynamics", "expt_dln_saddle_dynamics", "paper"),
    ("expt_dln_saddle_dynamics", "expt_dln_saddle_dynamics", "cpu"),
])
def test_named_config_equals_the_generator_preset(tmp_path, script, generator, preset):
    import importlib

    gen = importlib.import_module(f"gen_commands.{generator}")
    out = tmp_path / "cmds.txt"
    assert gen.main([str(out), "--preset", preset]) == 0
    (line,) = out.read_text().splitlines()
    tokens = shlex.split(line)
    updates, named = get_config_updates(tokens[tokens.index("with") + 1:])
    expt = load_experiment(script)
    assert resolved(expt, named=[preset]) == resolved(expt, updates, named)
    assert resolved(expt, named=[preset]) != resolved(expt)  # the named config changes something


@pytest.mark.parametrize("preset", ["tutorial", "perceptron", "perceptron_bs", "mnist_fc5", "mnist_alpha_dt"])
def test_sgd_regimes_named_config_is_the_presets_fixed_keys(tmp_path, preset):
    """sgd_regimes presets are grids: ``with <preset>`` plus a line's swept keys must resolve like the line."""
    from gen_commands import expt_sgd_regimes as gen

    fixed, grid, _ = gen.PRESETS[preset]
    out = tmp_path / "cmds.txt"
    assert gen.main([str(out), "--preset", preset]) == 0
    lines = out.read_text().splitlines()
    expt = load_experiment("expt_sgd_regimes")
    named_alone = resolved(expt, named=[preset])
    assert {k: named_alone[k] for k in fixed} == fixed  # the named config sets every fixed key as the preset does
    for line in (lines[0], lines[-1]):
        tokens = shlex.split(line)
        updates, named = get_config_updates(tokens[tokens.index("with") + 1:])
        swept = {k: v for k, v in updates.items() if k in grid}
        assert resolved(expt, swept, [preset]) == resolved(expt, updates, named)
