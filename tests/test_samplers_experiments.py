"""sgld_config.sampler in the three LLC experiments: SGNHT and SGHMC run end to end; bad values fail first."""
import math

import pytest

from tests.conftest import load_experiment
from tests.datasets import allow_tiny_cifar, write_cifar10

DLN = dict(layer_widths=[3, 2], input_dim=3, num_training_data=200, device="cpu",
           sgld_config=dict(num_steps=60, batch_size=20, num_chains=2, epsilon=1e-5, gamma=10.0))
SADDLE = dict(device="cpu", width=3, num_training_data=200, logging_period=20,
              training_config=dict(num_steps=40, batch_size=20, learning_rate=1e-3),
              sgld_config=dict(num_steps=10, batch_size=20, num_chains=2))


def _run(expt, cfg, **sgld):
    expt.ex.observers[:] = []
    return expt.ex.run(config_updates={**cfg, "sgld_config": {**cfg["sgld_config"], **sgld}})


def test_expt_dln_runs_sgnht_and_sghmc_and_default_is_sgld():
    expt = load_experiment("expt_dln")
    base = _run(expt, {**DLN, "seed": 1})
    same = _run(expt, {**DLN, "seed": 1}, sampler="sgld")
    nht = _run(expt, {**DLN, "seed": 1}, sampler="sgnht", diffusion_factor=0.02)
    hmc = _run(expt, {**DLN, "seed": 1}, sampler="sghmc", friction=0.5)
    assert same.result["lambdahat_per_chain"] == base.result["lambdahat_per_chain"]  # the default is SGLD
    for r in (nht, hmc):
        assert all(math.isfinite(v) for v in r.result["lambdahat_per_chain"])
        assert r.result["lambdahat_per_chain"] != base.result["lambdahat_per_chain"]  # another kernel ran


@pytest.mark.parametrize("sgld, match", [
    (dict(sampler="mala"), r"sgld_config.sampler must be one of \('sgld', 'sgnht', 'sghmc'\); got 'mala'"),
    (dict(sampler="sgnht", friction=0.3), r"sgld_config.friction applies to sampler='sghmc' only"),
    (dict(diffusion_factor=0.3), r"sgld_config.diffusion_factor applies to sampler='sgnht' only"),
    (dict(sampler="sghmc", friction=2.0), r"sgld_config.friction must be"),
])
def test_bad_sampler_keys_fail_before_compute_naming_the_key(sgld, match):
    expt = load_experiment("expt_dln")
    with pytest.raises(ValueError, match=match):
        _run(expt, DLN, **sgld)


def test_expt_dln_saddle_dynamics_runs_sgnht():
    expt = load_experiment("expt_dln_saddle_dynamics")
    r = _run(expt, {**SADDLE, "seed": 2}, sampler="sgnht")
    checkpoints = r.info["checkpoints"]
    assert checkpoints and all(c["status"] == "ok" and math.isfinite(c["lambdahat"]) for c in checkpoints)


def tiny_curve(tmp_path, monkeypatch) -> dict:
    """expt_llc_curve's config on a 40-image CIFAR-10 written under tmp_path (checkpoints at t = 0, 2, 4)."""
    root = tmp_path / "data"
    write_cifar10(root, n_train=40, n_test=20)
    allow_tiny_cifar(monkeypatch)
    return dict(data_root=str(root), device="cpu", logging_period=2, seed=3,
                model_data_config=dict(model_name="resnet18", layer_width_factor=2),
                training_config=dict(num_steps=4, batch_size=8, learning_rate=1e-2),
                sgld_config=dict(num_steps=6, batch_size=8, num_chains=2, epsilon=1e-5))


def test_expt_llc_curve_runs_sgnht(tmp_path, monkeypatch):
    cfg = tiny_curve(tmp_path, monkeypatch)
    r = _run(load_experiment("expt_llc_curve"), cfg, sampler="sgnht", thermostat_init=0.05)
    checkpoints = r.info["checkpoints"]
    assert [c["t"] for c in checkpoints] == [0, 2, 4]
    assert all(c["status"] == "ok" and math.isfinite(c["lambdahat"]) for c in checkpoints)
