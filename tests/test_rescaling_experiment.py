"""expt_rescaling_invariance: records, validation, generator; slow: preconditioned λ̂ flat in α within 5%."""
import json

import numpy as np
import pytest
import torch
from sacred.utils import ConfigAddedError

from gen_commands import expt_rescaling_invariance as gen
from gen_commands import sweep
from gen_commands.commands import config_overrides
from models.relu_mlp import rescale_params
from tests.conftest import experiment_fixture, forbid_compute, run_experiment
from tracking.figures_llc import plot_rescaling, rescaling_table
from tracking.load import load_runs

# --------------------------------------------------------------- the experiment

TINY = dict(
    device="cpu", layer_sizes=[3, 4, 2], num_training_data=100, alphas=[0.01, 1.0, 100.0],
    samplers=["psgld_fixed", "psgld", "sgld"], degenerate_units=[2], mala_acceptance_every=10,
    psgld_config=dict(num_steps=30, batch_size=20, num_chains=2, num_burnin_steps=15),
    sgld_config=dict(epsilon=1e-4, num_steps=30, batch_size=20, num_chains=2, num_burnin_steps=15),
)


expt = experiment_fixture("expt_rescaling_invariance")


def run(expt, tmp_path=None, **updates):
    return run_experiment(expt, {**TINY, **updates}, tmp_path)


def test_experiment_records_each_sampler_per_alpha_and_the_figure_reads_it(expt, tmp_path):
    r = run(expt, tmp_path, seed=1)
    res = r.result
    assert res["alphas"] == [0.01, 1.0, 100.0] and res["samplers"] == ["psgld_fixed", "psgld", "sgld"]
    assert res["output_max_relative_difference"] < 1e-12
    fixed = res["psgld_fixed"]
    assert fixed["status"] == ["ok"] * 3 and res["sampler"] == "psgld_fixed"
    assert res["lambdahat_per_alpha"] == fixed["lambdahat"] and res["lambdahat_std_per_alpha"] == fixed["lambdahat_std"]
    lam = np.array(fixed["lambdahat"])
    assert res["spread"] == pytest.approx((lam.max() - lam.min()) / lam.mean(), rel=1e-12)
    # every α has its own seed: the chains differ, so the spread is not zero by construction
    assert res["spread"] > 1e-6
    # 30 steps, every 10th recorded: a probability per α
    assert all(0 <= a <= 1 for a in fixed["mala_acceptance"])
    assert res["psgld"]["status"] == ["ok"] * 3 and res["psgld"]["mala_acceptance"] == [None] * 3
    assert len(res["sgld"]["status"]) == 3 and res["sgld"]["num_failed"] == res["sgld"]["status"].count("failed")
    metrics = json.loads((tmp_path / "1" / "metrics.json").read_text())
    assert metrics["psgld/lambdahat"]["steps"] == [0, 1, 2]
    assert metrics["rescaling/log10_alpha"]["values"] == pytest.approx([-2.0, 0.0, 2.0])

    runs = load_runs(tmp_path, experiment="rescaling_invariance")
    table = rescaling_table(runs)
    assert set(table["sampler"]) == {"psgld_fixed", "psgld", "sgld"} and len(table) == 9
    ax = plot_rescaling(runs).axes[0]
    assert ax.get_xscale() == "log"
    assert any(label.startswith("psgld [3, 4, 2]") for label in ax.get_legend_handles_labels()[1])


def test_plain_sgld_is_not_invariant_but_the_notebook_sampler_is(expt):
    """Plain SGLD's λ̂ moves with α; the notebook's fixed preconditioner's does not beyond chain noise.

    At α = 0.1 (10) layer 0 (layer 1's weight) sees an effective step 100 ε, so SGLD's
    discretisation bias raises λ̂ there; psgld_fixed's chain at α is the α = 1 chain rescaled.
    Thresholds from measurement on this configuration over seven seeds (600-1000 steps): the sgld
    spread was 0.50-0.81 with λ̂(0.1) / λ̂(1) >= 1.33, the psgld_fixed spread 0.04-0.25 (its own
    chains' noise, a seed per α); this seed gives 0.73 and 0.18.
    """
    torch.set_num_threads(1)  # tiny tensors: one thread is as fast, and immune to oversubscribed CPUs
    r = run(expt, seed=0, layer_sizes=[4, 6, 3], num_training_data=500, alphas=[0.1, 1.0, 10.0],
            samplers=["psgld_fixed", "sgld"], degenerate_units=[1, 2], mala_acceptance_every=None,
            sgld_config=dict(epsilon=1e-5, num_steps=1000, batch_size=100, num_chains=4, num_burnin_steps=250))
    fixed, plain = r.result["psgld_fixed"], r.result["sgld"]
    print("psgld_fixed", fixed["lambdahat"], fixed["relative_spread"],
          "sgld", plain["lambdahat"], plain["relative_spread"])
    assert fixed["status"] == plain["status"] == ["ok"] * 3 and fixed["mala_acceptance"] == [None] * 3
    assert fixed["lambdahat"][1] == pytest.approx(plain["lambdahat"][1], rel=1e-12)  # α = 1: D = 1, the same chain
    assert plain["relative_spread"] > 0.35 and plain["relative_spread"] > 2 * fixed["relative_spread"]
    assert plain["lambdahat"][0] > 1.2 * plain["lambdahat"][1]  # the larger effective step biases λ̂ up


def test_zero_tensor_scales_follow_the_rescaling(expt):
    """A zero bias's m is its pre-activations' mean square, which scales as the bias does (α², 1)."""
    from models.relu_mlp import notebook_teacher
    w = notebook_teacher([3, 4, 2], torch.Generator().manual_seed(0), "haiku", 0.0, [])  # every bias zero
    x = torch.rand(50, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 20 - 10
    base = np.array(expt.tensor_scales(w, x))
    assert base[0] == pytest.approx(float((w["layers.0.weight"] ** 2).mean()), rel=1e-12)
    assert base[1] == pytest.approx(float(((x @ w["layers.0.weight"].T) ** 2).mean()), rel=1e-12)
    for alpha in (1e-4, 1e4):
        scaled = np.array(expt.tensor_scales(rescale_params(w, 0, alpha), x))
        np.testing.assert_allclose(scaled / base, [alpha ** 2, alpha ** 2, alpha ** -2, 1.0], rtol=1e-10)


def test_adaptive_psgld_with_zero_biases_is_equivariant_at_alpha_1e_minus_4(expt):
    """Regression: a zero hidden bias once took m = mean over all of w* (set by the 1/α layer at small α),
    and the chain at α = 1e-4 blew up on its first step (λ̂ ~ 1e10). With the same chain seed
    (first_alpha_index) the chain at α is the α = 1 chain rescaled, so λ̂ agrees to rounding
    amplified over 40 steps (rtol 1e-6; measured ~1e-12)."""
    common = dict(seed=2, samplers=["psgld"], teacher_init="torch", hidden_bias_std=0.0, degenerate_units=[],
                  first_alpha_index=0, psgld_config=dict(TINY["psgld_config"], num_steps=40, num_burnin_steps=20))
    lam = {a: run(expt, **{**TINY, **common, "alphas": [a]}).result["psgld"]["lambdahat"][0] for a in (1.0, 1e-4, 1e4)}
    assert lam[1e-4] == pytest.approx(lam[1.0], rel=1e-6) and lam[1e4] == pytest.approx(lam[1.0], rel=1e-6)


def test_mala_acceptance_uses_the_chains_own_density_and_identity_is_the_notebooks(expt):
    """With the same chain seed the psgld_fixed chain at α is the α = 1 chain rescaled, so its acceptance
    probability (the chain's density, D = α² / α⁻²) is the same; the notebook's D = 1 density is the same
    only at α = 1, where D = 1."""
    acc = {}
    for density in ("preconditioned", "identity"):
        for a in (1.0, 0.01):
            res = run(expt, **{**TINY, "alphas": [a], "samplers": ["psgld_fixed"], "mala_acceptance_every": 5},
                      seed=4, first_alpha_index=0, mala_acceptance_density=density).result
            acc[density, a] = res["psgld_fixed"]["mala_acceptance"][0]
    assert acc["preconditioned", 1.0] == pytest.approx(acc["identity", 1.0], rel=1e-12)
    assert acc["preconditioned", 0.01] == pytest.approx(acc["preconditioned", 1.0], rel=1e-6)  # rounding only
    assert abs(acc["identity", 0.01] - acc["identity", 1.0]) > 1e-3


def test_divergence_is_recorded_per_alpha_and_the_sweep_goes_on(expt, tmp_path):
    r = run(expt, tmp_path, samplers=["sgld"], sgld_config=dict(TINY["sgld_config"], epsilon=5.0, gamma=0.0))
    assert r.result["sgld"]["status"] == ["failed"] * 3
    assert all("diverged" in reason for reason in r.result["sgld"]["reason"])
    assert json.loads((tmp_path / "1" / "run.json").read_text())["status"] == "COMPLETED"


@pytest.mark.parametrize("updates, key", [
    (dict(rescale_layer=1), "rescale_layer"),
    (dict(layer_sizes=[3, 2]), "layer_sizes"),
    (dict(alphas=[1.0, -2.0]), "alphas"),
    (dict(alphas=[]), "alphas"),
    (dict(samplers=["mala"]), "samplers"),
    (dict(psgld_config=dict(TINY["psgld_config"], batch_size=101)), "psgld_config.batch_size"),
    (dict(psgld_config=dict(TINY["psgld_config"], localisation="metric")), "psgld_config.localisation"),
    (dict(sgld_config=dict(TINY["sgld_config"], epsilon=0.0)), "sgld_config.epsilon"),
    (dict(input_distribution="gaussian"), "input_distribution"),
    (dict(first_alpha_index=-1), "first_alpha_index"),
    (dict(mala_acceptance_density="metric"), "mala_acceptance_density"),
])
def test_bad_config_fails_before_compute_naming_the_key(expt, updates, key, monkeypatch):
    forbid_compute(monkeypatch, expt, "estimate_llc_psgld", "estimate_llc_flat")
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        run(expt, **updates)


def test_unknown_key_is_rejected_by_sacred(expt):
    with pytest.raises(ConfigAddedError):
        run(expt, psgld_config=dict(TINY["psgld_config"], rhoo=0.9))


# --------------------------------------------------------------- generator

def test_generator_paper_presets_and_keys_sacred_accepts(tmp_path, expt):
    out = tmp_path / "cmds.txt"
    assert gen.main([str(out), "--preset", "paper"]) == 0
    lines = out.read_text().splitlines()
    assert len(lines) == 3  # one per network, each sweeping the 17 α as the notebook's loop does
    sizes = [config_overrides(line)["layer_sizes"] for line in lines]
    assert sizes == [[10, 20, 10], [20, 30, 20], [30, 40, 30]]
    defaults = expt.ex.run("print_config").config
    assert gen.DEFAULT_ALPHAS == defaults["alphas"] and list(gen.SAMPLERS) == list(expt.SAMPLERS)
    for line in lines:
        ov = config_overrides(line)
        key = ov.pop("run_key")
        assert key == sweep.run_key(gen.EXPERIMENT, ov) and ov["samplers"] == ["psgld_fixed"] and ov["seed"] == 0
        expt.ex.run("print_config", config_updates=ov)  # every key exists (else ConfigAddedError)
    for name, size in [("paper_small", [10, 20, 10]), ("paper_medium", [20, 30, 20]), ("paper_large", [30, 40, 30])]:
        assert gen.main([str(tmp_path / f"{name}.txt"), "--preset", name]) == 0
        (line,) = (tmp_path / f"{name}.txt").read_text().splitlines()
        ov = config_overrides(line)
        named = expt.ex.run("print_config", named_configs=[name]).config  # the experiment's named config
        assert ov["layer_sizes"] == named["layer_sizes"] == size and ov["expt_name"] == name
    assert gen.main([str(tmp_path / "b.txt"), "--layer-sizes", "[4, 5, 3]", "--psgld-gamma", "0.01", "0.1",
                     "--seeds", "1", "2"]) == 0
    ovs = [config_overrides(x) for x in (tmp_path / "b.txt").read_text().splitlines()]
    assert [(o["psgld_config.gamma"], o["seed"]) for o in ovs] == [(0.01, 1), (0.01, 2), (0.1, 1), (0.1, 2)]
    with pytest.raises(SystemExit):
        gen.main([str(tmp_path / "c.txt"), "--layer-sizes", "[4, 5]"])
    with pytest.raises(SystemExit):
        gen.main([str(tmp_path / "d.txt"), "--alphas", "1", "-2"])
    with pytest.raises(SystemExit):
        gen.main([str(tmp_path / "e.txt"), "--grid", "first_alpha_index=[0, 1]"])


def test_generator_per_alpha_lines_run_the_full_sweeps_chains(tmp_path, expt):
    """--per-alpha: line k (alphas=[α_k], first_alpha_index=k) gives α_k's λ̂ of the full sweep, bit for bit."""
    assert gen.main([str(tmp_path / "p.txt"), "--preset", "paper_small", "--per-alpha"]) == 0
    ovs = [config_overrides(x) for x in (tmp_path / "p.txt").read_text().splitlines()]
    assert [o["alphas"] for o in ovs] == [[a] for a in gen.DEFAULT_ALPHAS]
    assert [o["first_alpha_index"] for o in ovs] == list(range(17)) and len({o["run_key"] for o in ovs}) == 17
    assert gen.main([str(tmp_path / "q.txt"), "--alphas", "0.01", "1", "100", "--per-alpha", "--seeds", "3"]) == 0
    lines = (tmp_path / "q.txt").read_text().splitlines()
    tiny = dict(TINY, samplers=["psgld_fixed"], mala_acceptance_every=None)
    full = run(expt, **tiny, seed=3).result["psgld_fixed"]["lambdahat"]
    for k, line in enumerate(lines):
        ov = config_overrides(line)
        assert (ov["alphas"], ov["first_alpha_index"], ov["seed"]) == ([TINY["alphas"][k]], k, 3)
        part = run(expt, **{**tiny, "alphas": ov["alphas"]}, seed=3, first_alpha_index=k).result
        assert part["psgld_fixed"]["lambdahat"] == [full[k]]  # the same chains: same seed, same float operations


# --------------------------------------------------------------- acceptance (slow)

@pytest.mark.slow
def test_acceptance_preconditioned_lambdahat_is_flat_in_alpha(expt, tmp_path):
    torch.set_num_threads(1)  # tiny tensors: one thread is as fast, and immune to oversubscribed CPUs
    # A plain torch-init teacher (zero hidden biases, no copied units): the adaptive preconditioner's
    # settings below were chosen for it; the notebook's teacher is checked by the paper_* configs.
    r = run(expt, tmp_path, seed=0, layer_sizes=[10, 20, 10], num_training_data=2000,
            teacher_init="torch", hidden_bias_std=0.0, degenerate_units=[], samplers=["psgld", "sgld"],
            # α = 1e-4 once blew up (λ̂ ~ 1.7e10): the zero hidden bias's scale m was not equivariant
            # (test_adaptive_psgld_with_zero_biases_is_equivariant_at_alpha_1e_minus_4). Measured after the
            # fix: λ̂ 160.4, 159.9, 155.9, 161.6, 161.6, spread 3.6%; plain SGLD failed at every α but 1.
            alphas=[1e-4, 1e-2, 1.0, 1e2, 1e4],
            psgld_config=dict(epsilon=0.05, gamma=0.03, num_steps=3000, batch_size=200, num_chains=4,
                              num_burnin_steps=1000),
            sgld_config=dict(epsilon=3e-6, gamma=1.0, num_steps=3000, batch_size=200, num_chains=4,
                             num_burnin_steps=1000))
    res = r.result
    print("alphas", res["alphas"])
    print("psgld", res["psgld"]["lambdahat"])
    print("sgld ", res["sgld"]["lambdahat"], res["sgld"]["status"])
    lam = np.array(res["psgld"]["lambdahat"], dtype=float)
    assert np.isfinite(lam).all() and lam.min() > 10
    assert (lam.max() - lam.min()) / lam.mean() < 0.05
    assert len(res["sgld"]["status"]) == 5  # the plain sampler's behaviour is recorded at every α
