"""expt_rescaling_invariance with the momentum samplers sgnht and sghmc (llc.sghmc) in ``samplers``.

They run at every α like plain sgld, from sgld_config with their own keys in it
(diffusion_factor, thermostat_init; friction), and, being unpreconditioned, their λ̂
moves with α where the notebook's psgld_fixed does not. The default (psgld_fixed only)
gives the numbers it gave before they were added.
"""
import json

import pytest
import torch
from sacred.observers import FileStorageObserver

from tests.conftest import load_experiment
from tests.test_preempt_experiments import assert_resumed_equals_uninterrupted, interrupted_then_resumed
from tracking.figures_llc import plot_rescaling, rescaling_table
from tracking.load import load_runs

TINY = dict(
    device="cpu", layer_sizes=[3, 4, 2], num_training_data=100, alphas=[0.01, 1.0, 100.0],
    samplers=["psgld_fixed", "sgnht", "sghmc"], degenerate_units=[2], mala_acceptance_every=10,
    psgld_config=dict(num_steps=30, batch_size=20, num_chains=2, num_burnin_steps=15),
    sgld_config=dict(epsilon=1e-4, num_steps=30, batch_size=20, num_chains=2, num_burnin_steps=15),
)
ROW_KEYS = {"lambdahat", "lambdahat_std", "rhat", "status", "reason", "mala_acceptance", "compile_mode",
            "num_failed", "lambdahat_mean", "relative_spread"}


@pytest.fixture(scope="module")
def expt():
    return load_experiment("expt_rescaling_invariance")


def run(expt, tmp_path=None, **updates):
    expt.ex.observers[:] = [FileStorageObserver(str(tmp_path))] if tmp_path is not None else []
    try:
        return expt.ex.run(config_updates={**TINY, **updates})
    finally:
        expt.ex.observers[:] = []


def test_momentum_samplers_run_at_every_alpha_and_are_recorded_by_name(expt, tmp_path):
    torch.set_num_threads(1)  # tiny tensors: one thread is as fast, and immune to oversubscribed CPUs
    # ε = 1e-5 and α within 10^±1: no chain diverges (at ε = 1e-4, α = 100 they do, as plain sgld's)
    res = run(expt, tmp_path, seed=1, alphas=[0.1, 1.0, 10.0],
              sgld_config=dict(TINY["sgld_config"], epsilon=1e-5)).result
    assert res["samplers"] == ["psgld_fixed", "sgnht", "sghmc"] and res["sampler"] == "psgld_fixed"
    for name in ("sgnht", "sghmc"):
        row = res[name]
        assert set(row) == ROW_KEYS  # the fields plain sgld's row has
        assert row["status"] == ["ok"] * 3 and row["num_failed"] == 0
        assert all(isinstance(v, float) for v in row["lambdahat"] + row["lambdahat_std"])
        # the MALA acceptance diagnostic is of a Langevin proposal: psgld_fixed and sgld only
        assert row["mala_acceptance"] == [None] * 3 and row["compile_mode"] == ["eager"] * 3
    assert all(0 <= a <= 1 for a in res["psgld_fixed"]["mala_acceptance"])
    # one chain seed per α, shared by the samplers: distinct samplers give distinct chains
    assert res["sgnht"]["lambdahat"] != res["sghmc"]["lambdahat"]
    metrics = json.loads((tmp_path / "1" / "metrics.json").read_text())
    for name in ("sgnht", "sghmc"):
        assert metrics[f"{name}/lambdahat"]["steps"] == [0, 1, 2]
        assert metrics[f"{name}/lambdahat"]["values"] == pytest.approx(res[name]["lambdahat"], rel=1e-12)
    runs = load_runs(tmp_path, experiment="rescaling_invariance")
    table = rescaling_table(runs)
    assert set(table["sampler"]) == {"psgld_fixed", "sgnht", "sghmc"} and len(table) == 9
    labels = plot_rescaling(runs).axes[0].get_legend_handles_labels()[1]
    assert any(label.startswith("sgnht [3, 4, 2]") for label in labels)
    assert any(label.startswith("sghmc [3, 4, 2]") for label in labels)


def test_each_momentum_key_reaches_its_own_sampler_only(expt):
    """friction moves sghmc's λ̂ and not sgnht's; diffusion_factor the reverse (same seed, one α)."""
    torch.set_num_threads(1)
    base = dict(seed=5, alphas=[1.0], samplers=["sgnht", "sghmc"])
    ref = run(expt, **base).result
    sgld = dict(TINY["sgld_config"])
    fric = run(expt, **base, sgld_config=dict(sgld, friction=0.5)).result
    diff = run(expt, **base, sgld_config=dict(sgld, diffusion_factor=0.1)).result
    assert fric["sgnht"]["lambdahat"] == ref["sgnht"]["lambdahat"]  # the same chain, bit for bit
    assert diff["sghmc"]["lambdahat"] == ref["sghmc"]["lambdahat"]
    # a changed friction or diffusion changes every step of the chain: λ̂ moves far beyond rounding
    assert abs(fric["sghmc"]["lambdahat"][0] - ref["sghmc"]["lambdahat"][0]) > 1e-6
    assert abs(diff["sgnht"]["lambdahat"][0] - ref["sgnht"]["lambdahat"][0]) > 1e-6


def test_momentum_samplers_are_not_invariant_but_the_notebook_sampler_is(expt):
    """The criterion of tests/test_rescaling.py's plain-SGLD test, on its configuration.

    At α = 0.1 layer 0's weights are 10× smaller while the step stays ε, so the momentum
    samplers' discretisation bias raises λ̂ there, as SGLD's does. Thresholds from
    measurement over seeds 0-4: the sgnht spread was 0.97-1.98 with λ̂(0.1) / λ̂(1) >= 2.4,
    the sghmc spread 0.43-2.65 with the ratio >= 1.45, the psgld_fixed spread 0.10-0.18; this
    seed gives 1.07, 0.82 and 0.18.
    """
    torch.set_num_threads(1)
    r = run(expt, seed=0, layer_sizes=[4, 6, 3], num_training_data=500, alphas=[0.1, 1.0, 10.0],
            degenerate_units=[1, 2], mala_acceptance_every=None,
            sgld_config=dict(epsilon=1e-5, num_steps=1000, batch_size=100, num_chains=4, num_burnin_steps=250))
    fixed = r.result["psgld_fixed"]
    print("psgld_fixed", fixed["lambdahat"], fixed["relative_spread"])
    assert fixed["status"] == ["ok"] * 3
    for name in ("sgnht", "sghmc"):
        plain = r.result[name]
        print(name, plain["lambdahat"], plain["relative_spread"])
        assert plain["status"] == ["ok"] * 3
        assert plain["relative_spread"] > 0.35 and plain["relative_spread"] > 2 * fixed["relative_spread"]
        assert plain["lambdahat"][0] > 1.2 * plain["lambdahat"][1]  # the larger effective step biases λ̂ up


# Computed with this very configuration (seed 3) on the code before sgnht and sghmc were added
# (commit 73fc6e2, CPU, float64).
BEFORE = {
    "psgld_fixed": dict(lambdahat=[2.0326079201017295, 1.9001307015097257, 2.42718076972483],
                        mala_acceptance=[0.9964881292371581, 0.9857440078301819, 0.9834207442388067]),
    "psgld": dict(lambdahat=[0.055824746924644626, 0.12255448371842556, 0.08126495186310168]),
    "sgld": dict(lambdahat=[None, 1.9001307015097257, None], status=["failed", "ok", "failed"]),
}
BEFORE_PLAIN_SGLD = [3.163642882567312, 0.4283087492354999, 2.5021725578700154]  # mala_acceptance_every=None


def test_default_and_existing_samplers_give_the_numbers_from_before(expt):
    """Same seeds, same numbers. rel 1e-9: the same float64 arithmetic; only a different BLAS's
    summation order (another machine) could move the last digits, by ~1e-15 per step over 30 steps."""
    torch.set_num_threads(1)
    config = expt.ex.run(command_name="print_config").config
    assert config["samplers"] == ["psgld_fixed"]
    default = run(expt, seed=3, samplers=["psgld_fixed"]).result
    assert default["lambdahat_per_alpha"] == pytest.approx(BEFORE["psgld_fixed"]["lambdahat"], rel=1e-9)
    assert default["psgld_fixed"]["mala_acceptance"] == pytest.approx(BEFORE["psgld_fixed"]["mala_acceptance"],
                                                                      rel=1e-9)
    three = run(expt, seed=3, samplers=["psgld_fixed", "psgld", "sgld"]).result
    assert three["psgld"]["lambdahat"] == pytest.approx(BEFORE["psgld"]["lambdahat"], rel=1e-9)
    assert three["sgld"]["status"] == BEFORE["sgld"]["status"]
    assert three["sgld"]["lambdahat"][1] == pytest.approx(BEFORE["sgld"]["lambdahat"][1], rel=1e-9)
    plain = run(expt, seed=3, samplers=["sgld"], alphas=[0.1, 1.0, 10.0], mala_acceptance_every=None,
                sgld_config=dict(TINY["sgld_config"], epsilon=1e-5)).result
    assert plain["sgld"]["lambdahat"] == pytest.approx(BEFORE_PLAIN_SGLD, rel=1e-9)


def test_the_rescaling_sweep_with_momentum_samplers_resumes_bit_for_bit(tmp_path, monkeypatch):
    """Cut after the 5th (α, sampler) estimate: α = 1's psgld_fixed and sgnht done, its sghmc not."""
    torch.set_num_threads(1)
    config = {**TINY, "run_key": "rescale-momentum-test", "seed": 3}
    dirs = interrupted_then_resumed(load_experiment("expt_rescaling_invariance"), tmp_path, monkeypatch, config, 5,
                                    "SIGTERM")
    assert_resumed_equals_uninterrupted(*dirs, 5, "SIGTERM")


@pytest.mark.parametrize("updates, key", [
    (dict(samplers=["sgnht", "nuts"]), "samplers"),
    (dict(samplers=["sghmc", "sghmc"]), "samplers"),
    (dict(sgld_config=dict(TINY["sgld_config"], friction=0.0)), "sgld_config.friction"),
    (dict(sgld_config=dict(TINY["sgld_config"], friction=1.5)), "sgld_config.friction"),
    (dict(sgld_config=dict(TINY["sgld_config"], diffusion_factor=-1.0)), "sgld_config.diffusion_factor"),
    # a sampler's key set while that sampler is not run: a silent no-op otherwise
    (dict(samplers=["psgld_fixed", "sgnht"], sgld_config=dict(TINY["sgld_config"], friction=0.5)),
     "sgld_config.friction"),
    (dict(samplers=["sghmc"], sgld_config=dict(TINY["sgld_config"], thermostat_init=0.2)),
     "sgld_config.thermostat_init"),
    (dict(samplers=["sgld", "sghmc"], mala_acceptance_every=None, sgld_config=dict(TINY["sgld_config"], compile=True)),
     "sgld_config.compile"),
    (dict(sgld_config=dict(TINY["sgld_config"], batch_size=101)), "sgld_config.batch_size"),
])
def test_bad_momentum_config_fails_before_compute_naming_the_key(expt, updates, key, monkeypatch):
    def no_compute(*a, **k):
        raise AssertionError("compute started before validation")

    for fn in ("estimate_llc_psgld", "estimate_llc_psgld_traced", "estimate_llc_flat"):
        monkeypatch.setattr(expt, fn, no_compute)
    with pytest.raises(ValueError, match=key.replace(".", r"\.")) as err:
        run(expt, **updates)
    if key == "samplers":  # the allowed values are named, new ones included
        assert "sgnht" in str(err.value) and "sghmc" in str(err.value)


def test_generator_accepts_the_momentum_samplers_and_their_keys(tmp_path, expt):
    from gen_commands import expt_rescaling_invariance as gen
    from gen_commands.commands import config_overrides

    assert {"sgnht", "sghmc"} <= set(gen.SAMPLERS)  # read from the experiment's SAMPLERS
    out = tmp_path / "cmds.txt"
    assert gen.main([str(out), "--layer-sizes", "[4, 5, 3]", "--samplers", "psgld_fixed", "sgnht", "sghmc",
                     "--grid", "sgld_config.friction=[0.1, 0.5]"]) == 0
    ovs = [config_overrides(line) for line in out.read_text().splitlines()]
    assert [(o["samplers"], o["sgld_config.friction"]) for o in ovs] == \
        [(["psgld_fixed", "sgnht", "sghmc"], 0.1), (["psgld_fixed", "sgnht", "sghmc"], 0.5)]
    for ov in ovs:
        ov.pop("run_key")
        expt.ex.run("print_config", config_updates=ov)  # every key exists (else ConfigAddedError)
    with pytest.raises(SystemExit):
        gen.main([str(tmp_path / "bad.txt"), "--samplers", "sgnht", "nuts"])
