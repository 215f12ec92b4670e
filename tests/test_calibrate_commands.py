"""The ``calibrate`` command of expt_dln and expt_llc_curve (tracking.calibration_command)."""
import json

import pytest
from sacred.observers import FileStorageObserver
from sacred.utils import ConfigAddedError

from tests.conftest import load_experiment
from tests.datasets import allow_tiny_cifar, write_cifar10


@pytest.fixture(scope="module")
def dln():
    return load_experiment("expt_dln")


@pytest.fixture(scope="module")
def curve():
    return load_experiment("expt_llc_curve")


def run_command(expt, command, store=None, **config):
    expt.ex.observers[:] = [FileStorageObserver(str(store))] if store is not None else []
    try:
        return expt.ex.run(command, config_updates=config)
    finally:
        expt.ex.observers[:] = []


DLN_TINY = dict(input_dim=3, layer_widths=[3, 2], num_training_data=200, device="cpu", seed=4,
                sgld_config=dict(num_steps=60, batch_size=20, num_chains=2, epsilon=1e-5),
                calibration=dict(epsilons=[1e-2, 1e-6, 1e-5], gammas=[1.0, 10.0], num_steps=60))


def test_dln_calibrate_table_figure_and_recommendation(dln, tmp_path):
    r = run_command(dln, "calibrate", tmp_path, **DLN_TINY)
    table = r.info["calibration"]
    assert len(table["rows"]) == 3 * 2  # one row per (ε, γ) setting
    assert {(row["epsilon"], row["gamma"]) for row in table["rows"]} == {
        (e, g) for e in (1e-2, 1e-6, 1e-5) for g in (1.0, 10.0)}
    # One nβ from the run's config (None -> n / log n) on every row.
    assert len({row["nbeta"] for row in table["rows"]}) == 1
    rec = r.result["recommended"]
    assert {(d["gamma"]) for d in rec} == {1.0, 10.0}
    for d in rec:
        assert d["epsilon"] in (1e-2, 1e-6, 1e-5)  # one of the grid
        stable = [row["epsilon"] for row in table["rows"] if row["gamma"] == d["gamma"] and row["stable"]]
        assert d["epsilon"] == max(stable)  # the largest stable ε
    # Two (nβ, γ) curves: no single recommendation.
    assert r.result["recommended_epsilon"] is None
    assert (tmp_path / "1" / "calibration.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "1" / "run.json").read_text())["command"] == "calibrate"


def test_dln_calibrate_at_the_runs_settings_reproduces_the_main_runs_lambdahat(dln):
    # Same model, data, w*, seed, steps, chains and burn-in: the calibration row is the main run's λ̂.
    sgld = dict(num_steps=40, batch_size=20, num_chains=2, epsilon=1e-5, num_burnin_steps=20)
    base = dict(DLN_TINY, sgld_config=sgld, mala_acceptance_every=0)
    main = dln.ex.run(config_updates=base).result
    cal = run_command(dln, "calibrate", **dict(base, calibration=dict(epsilons=[1e-5], num_steps=None,
                                                                      num_burnin_steps=20)))
    (row,) = cal.info["calibration"]["rows"]
    # Both evaluate the same float32 MSE at the same draws; the flat losses are built by two
    # helpers (flat_model_for_module vs flat_loss_for_module), so allow float32 rounding.
    assert row["lambdahat"] == pytest.approx(main["lambdahat"], rel=1e-4)
    assert cal.result["recommended_epsilon"] in (1e-5, None)


@pytest.mark.parametrize("sampler, options", [("sghmc", dict(friction=0.3)), ("sgnht", {})])
def test_dln_calibrate_follows_the_runs_sampler(dln, sampler, options):
    # The calibration row at the run's own settings is the main run's λ̂ with the same sampler and options.
    sgld = dict(num_steps=40, batch_size=20, num_chains=2, epsilon=1e-5, num_burnin_steps=20, sampler=sampler,
                **options)
    base = dict(DLN_TINY, sgld_config=sgld, mala_acceptance_every=0)
    main = dln.ex.run(config_updates=base).result
    cal = run_command(dln, "calibrate", **dict(base, calibration=dict(epsilons=[1e-5], num_steps=None,
                                                                      num_burnin_steps=20)))
    assert cal.info["calibration"]["sampler"] == sampler
    (row,) = cal.info["calibration"]["rows"]
    # As for SGLD above: the same draws through two flat-loss helpers, so float32 rounding only.
    assert row["lambdahat"] == pytest.approx(main["lambdahat"], rel=1e-4)


@pytest.mark.parametrize("calibration, key", [
    (dict(epsilons=[1e-5, 0.0]), "calibration.epsilons"),
    (dict(epsilons=[-1e-5]), "calibration.epsilons"),
    (dict(epsilons=[]), "calibration.epsilons"),
    (dict(epsilons=None), "calibration.epsilons"),
    (dict(epsilons="1e-5"), "calibration.epsilons"),
    (dict(epsilons=[1e-5], gammas=[-1.0]), "calibration.gammas"),
    (dict(epsilons=[1e-5], nbetas=[0.0]), "calibration.nbetas"),
    (dict(epsilons=[1e-5], num_steps=0), "calibration.num_steps"),
    (dict(epsilons=[1e-5], batch_size=10_000), "calibration.batch_size"),
    (dict(epsilons=[1e-5], min_noise_fraction=1.5), "calibration.min_noise_fraction"),
])
def test_bad_calibration_grid_fails_before_compute_naming_the_key(dln, curve, calibration, key, monkeypatch):
    def no_compute(*a, **k):
        raise AssertionError("compute started before validation")

    for module, names in ((dln, ("build_problem", "run_calibration")), (curve, ("build_problem", "run_calibration"))):
        for name in names:
            monkeypatch.setattr(module, name, no_compute)
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        run_command(dln, "calibrate", **dict(DLN_TINY, calibration=calibration))
    if key == "calibration.batch_size":
        return  # expt_llc_curve knows n only once the data are loaded (as for sgld_config.batch_size)
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        run_command(curve, "calibrate", device="cpu", sgld_config=dict(num_steps=6, batch_size=8, num_chains=2),
                    calibration=calibration)


def test_unknown_calibration_key_is_refused_by_sacred(dln):
    with pytest.raises(ConfigAddedError, match="calibration.steps"):
        run_command(dln, "calibrate", **dict(DLN_TINY, calibration=dict(epsilons=[1e-5], steps=10)))


def test_print_config_shows_the_calibration_keys_with_comments(dln, curve, capsys):
    for expt in (dln, curve):
        expt.ex.run("print_config")
        out = capsys.readouterr().out
        line = next(l for l in out.splitlines() if l.lstrip().startswith("calibration:"))
        assert "ε grid (each > 0) x nbetas x gammas" in line  # Sacred shows the comment above a dict entry
        assert "epsilons = [" in out and "min_noise_fraction = 0.9" in out
    line = next(l for l in out.splitlines() if l.lstrip().startswith("llc_per_layer"))
    assert "llc_per_layer = None" in line and "not in the original" in line


def test_llc_curve_calibrate_on_tiny_cifar(curve, tmp_path, monkeypatch):
    root = tmp_path / "data"
    write_cifar10(root, n_train=40, n_test=20)
    allow_tiny_cifar(monkeypatch)
    r = run_command(curve, "calibrate", tmp_path / "runs", data_root=str(root), device="cpu",
                    model_data_config=dict(model_name="resnet18", layer_width_factor=2),
                    training_config=dict(num_steps=4, batch_size=8),
                    sgld_config=dict(num_steps=6, batch_size=8, num_chains=2),
                    calibration=dict(epsilons=[1e30, 1e-6], num_steps=6))
    rows = r.info["calibration"]["rows"]
    assert [row["epsilon"] for row in rows] == [1e-6, 1e30]  # one row per ε, sorted
    assert rows[1]["divergence_rate"] > 0 and not rows[1]["stable"]  # ε = 1e30 blows up at once
    assert r.result["recommended_epsilon"] in (1e-6, None)  # never the diverged one
    assert (tmp_path / "runs" / "1" / "calibration.png").read_bytes()[:4] == b"\x89PNG"
