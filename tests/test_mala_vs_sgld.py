"""expt_mala_vs_sgld: the notebook's set-up, equal work for both samplers, ε scaling, validation,
the generator, and (slow) the acceptance check that SGLD's λ̂ agrees with MALA's within 5%."""
import json
import math

import numpy as np
import pytest
import torch
from sacred.utils import ConfigAddedError

from gen_commands import expt_mala_vs_sgld as gen
from gen_commands import sweep
from gen_commands.commands import config_overrides
from llc.mala import mala_log_ratio
from tests.conftest import experiment_fixture, forbid_compute, run_experiment
from tracking.figures_llc import mala_table, plot_mala_vs_sgld
from tracking.load import load_runs

TINY = dict(device="cpu", input_dim=3, layer_widths=[4, 2], num_training_data=[50, 100], epsilon=1e-3,
            num_steps=40, num_chains=2, sgld_config=dict(batch_size=20), mala_acceptance_every=10)


expt = experiment_fixture("expt_mala_vs_sgld")


def run(expt, tmp_path=None, **updates):
    return run_experiment(expt, {**TINY, **updates}, tmp_path)


def test_defaults_are_the_notebooks_setup(expt):
    cfg = expt.ex.run("print_config").config
    assert cfg["input_dim"] == 10 and cfg["layer_widths"] == [20, 20, 10]
    assert cfg["num_training_data"] == [round(10 ** (2 + 0.5 * k)) for k in range(7)]  # np.round(10**linspace(2,5,7))
    assert (cfg["epsilon"], cfg["epsilon_scaling"], cfg["gamma"]) == (1e-5, "fixed", 1.0)
    assert (cfg["num_steps"], cfg["num_chains"], cfg["num_burnin_steps"]) == (10000, 5, 0)
    assert cfg["sgld_config"]["batch_size"] == 32 and cfg["mala_config"]["adapt_step_size"] is False
    assert (cfg["teacher_init"], cfg["hidden_bias_std"], cfg["input_distribution"]) == ("haiku", 1.0, "uniform")
    paper = expt.ex.run("print_config", named_configs=["paper"]).config
    drop = {"__doc__", "seed"}  # Sacred adds the named config's docstring; the seed is random
    assert {k: v for k, v in paper.items() if k not in drop} == {k: v for k, v in cfg.items() if k not in drop}


def test_experiment_records_both_samplers_per_n_and_the_figure_reads_it(expt, tmp_path):
    res = run(expt, tmp_path, seed=2).result
    assert res["n"] == [50, 100] and res["model_dim"] == 3 * 4 + 4 + 4 * 2 + 2
    for name in ("sgld", "mala"):
        row = res[name]
        assert row["status"] == ["ok", "ok"]
        assert all(len(per_chain) == 2 for per_chain in row["lambdahat_per_chain"])  # equal chains
        assert all(0 <= a <= 1 for a in row["acceptance_rate"])
        assert all(t > 0 for t in row["time_s"])
        # 40 draws x 2 chains for both samplers: the per-draw time is the total over 80
        assert row["time_per_chain_step_s"] == pytest.approx([t / 80 for t in row["time_s"]], rel=1e-12)
    assert res["mala"]["diagnostic_time_s"] == [0.0, 0.0] and all(t > 0 for t in res["sgld"]["diagnostic_time_s"])
    assert res["time_ratio"] == pytest.approx([m / s for m, s in zip(res["mala"]["time_s"], res["sgld"]["time_s"])],
                                              rel=1e-12)
    assert res["epsilon"] == [1e-3, 1e-3]  # fixed across n
    assert res["published"] == {"sgld": [None, None], "mala": [None, None]}  # not the notebook's network
    metrics = json.loads((tmp_path / "1" / "metrics.json").read_text())
    assert {"sgld/lambdahat", "mala/lambdahat", "mala/acceptance_rate", "sgld/acceptance_rate", "sgld/time_s",
            "mala/time_s", "compare/time_ratio", "compare/relative_difference"} <= set(metrics)
    assert metrics["mala/lambdahat"]["steps"] == [50, 100]

    runs = load_runs(tmp_path, experiment="mala_vs_sgld")
    table = mala_table(runs)
    assert len(table) == 4 and set(table["sampler"]) == {"sgld", "mala"}
    ax_l, ax_t = plot_mala_vs_sgld(runs).axes
    assert {line.get_label() for line in ax_t.get_lines()} >= {"sgld", "mala"} and ax_t.get_xscale() == "log"


def test_published_values_are_attached_at_the_notebooks_n(expt):
    res = run(expt, input_dim=10, layer_widths=[20, 20, 10], num_training_data=[100, 316], num_steps=3,
              mala_acceptance_every=None).result
    assert res["model_dim"] == 10 * 20 + 20 + 20 * 20 + 20 + 20 * 10 + 10
    assert res["published"] == {"sgld": [54.9, 86.7], "mala": [54.3, 86.4]}
    assert res["sgld"]["acceptance_rate"] == [None, None]  # diagnostic off


def test_epsilon_nbeta_scaling_holds_eps_times_nbeta_fixed(expt):
    res = run(expt, epsilon_scaling="nbeta", epsilon_nbeta=0.02, num_steps=3).result
    for n, eps in zip(res["n"], res["epsilon"]):
        assert eps == pytest.approx(0.02 * math.log(n) / n, rel=1e-12)  # nβ = n / log n
    assert res["epsilon"][0] != res["epsilon"][1]


def test_same_seed_same_estimates(expt):
    a, b = run(expt, seed=4).result, run(expt, seed=4).result
    assert a["mala"]["lambdahat"] == b["mala"]["lambdahat"] and a["sgld"]["lambdahat"] == b["sgld"]["lambdahat"]


@pytest.mark.parametrize("updates, key", [
    (dict(sgld_config=dict(batch_size=60)), "sgld_config.batch_size"),
    (dict(epsilon=-1.0), "epsilon"),
    (dict(epsilon_nbeta=0.1), "epsilon_nbeta"),  # set while epsilon_scaling='fixed'
    (dict(epsilon_scaling="nbeta"), "epsilon_nbeta"),  # required there
    (dict(epsilon_scaling="sqrt"), "epsilon_scaling"),
    (dict(gamma=-1.0), "gamma"),
    (dict(num_steps=0), "num_steps"),
    (dict(num_chains=0), "num_chains"),
    (dict(num_burnin_steps=40), "num_burnin_steps"),
    (dict(mala_config=dict(target_acceptance=2.0)), "mala_config.target_acceptance"),
    (dict(mala_acceptance_every=0), "mala_acceptance_every"),
    (dict(num_training_data=[1, 100]), "num_training_data"),
    (dict(num_training_data=100), "num_training_data"),
    (dict(teacher_init="xavier"), "teacher_init"),
    (dict(hidden_bias_std=-1.0), "hidden_bias_std"),
    (dict(layer_widths=[3]), "layer_widths"),
    (dict(input_distribution="normal"), "input_distribution"),
    (dict(dtype="float16"), "dtype"),
    (dict(sgld_trace="after"), "sgld_trace"),
    (dict(sgld_trace="post_step", sgld_config=dict(batch_size=20, loss_trace_minibatch=False)), "sgld_trace"),
])
def test_bad_config_fails_before_compute_naming_the_key(expt, updates, key, monkeypatch):
    forbid_compute(monkeypatch, expt, "estimate_llc_mala", "run_sgld")
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        run(expt, **updates)


@pytest.mark.parametrize("updates", [
    dict(mala_config=dict(adapt_step_sizee=True)),
    dict(sgld_config=dict(batch_size=20, num_chains=3)),  # chains, draws and ε are shared: top-level keys only
    dict(mala_config=dict(epsilon=1.0)),
])
def test_unknown_key_is_rejected_by_sacred(expt, updates):
    with pytest.raises(ConfigAddedError):
        run(expt, **updates)


def test_one_leapfrog_hmc_is_mala_with_eps_the_square_of_its_step():
    """The notebook's MALA is numpyro HMC with one leapfrog step h = sqrt(step_size): same proposal, same ratio."""
    gen_ = torch.Generator().manual_seed(0)
    a = torch.randn(6, 6, generator=gen_, dtype=torch.float64)
    hess = a @ a.T + torch.eye(6, dtype=torch.float64)

    def u_and_grad(w):  # a quartic U, so the two formulas cannot agree by a quadratic coincidence
        u = 0.5 * w @ hess @ w + 0.1 * (w ** 4).sum()
        return u, hess @ w + 0.4 * w ** 3

    w = torch.randn(6, generator=gen_, dtype=torch.float64)
    p = torch.randn(6, generator=gen_, dtype=torch.float64)  # momentum = MALA's ξ
    h = 0.3
    u0, g0 = u_and_grad(w)
    p_half = p - 0.5 * h * g0  # leapfrog
    w1 = w + h * p_half
    u1, g1 = u_and_grad(w1)
    p1 = p_half - 0.5 * h * g1
    log_r_hmc = (u0 + 0.5 * p @ p) - (u1 + 0.5 * p1 @ p1)
    eps = h * h
    prop = w - 0.5 * eps * g0 + math.sqrt(eps) * p  # llc.mala's proposal
    log_r_mala = mala_log_ratio(w[None], prop[None], u0[None], u1[None], g0[None], g1[None], eps)
    # the same numbers in a different order: float64 rounding of O(10) terms, ~1e-14
    torch.testing.assert_close(prop, w1, rtol=0, atol=1e-13)
    torch.testing.assert_close(log_r_mala[0], log_r_hmc, rtol=0, atol=1e-11)


def test_post_step_trace_is_the_loss_after_the_step(expt):
    """With every data row equal, L_B = L_n for any batch.

    So the original's L_{B_t}(w_{t+1}) is the next pre-step value.
    """
    from llc.sgld import SGLDConfig, run_sgld

    x = torch.ones(30, 3, dtype=torch.float64) * torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    w_star = torch.tensor([0.3, 0.1, -0.2], dtype=torch.float64)
    y = x @ w_star

    def loss(w, xb, yb):
        return ((xb @ w - yb) ** 2).mean()

    cfg = SGLDConfig(epsilon=1e-3, gamma=1.0, num_steps=25, batch_size=5, num_chains=2, num_burnin_steps=0)
    pre = run_sgld(loss, w_star, x, y, cfg, seed=3).loss.numpy()  # (C, T): L(w_t)
    post, _, _ = expt.run_sgld_with_acceptance(loss, w_star, x, y, cfg, 3, None, post_step=True)
    # the same chain (seeded per chain); float64 sums of O(1) numbers in a different order
    np.testing.assert_allclose(post.loss_trace[:, :-1], pre[:, 1:], rtol=1e-12, atol=1e-15)
    assert not np.allclose(post.loss_trace, pre)


# --------------------------------------------------------------- generator

def test_generator_writes_one_line_per_n_that_sacred_accepts(tmp_path, expt):
    out = tmp_path / "cmds.txt"
    assert gen.main([str(out), "--preset", "paper"]) == 0
    lines = out.read_text().splitlines()
    overrides = [config_overrides(line) for line in lines]
    assert [ov["num_training_data"] for ov in overrides] == [[n] for n in expt.PAPER_NS]
    for ov in overrides:
        key = ov.pop("run_key")
        assert key == sweep.run_key(gen.EXPERIMENT, ov) and ov["seed"] == 0 and ov["expt_name"] == "paper"
        expt.ex.run("print_config", config_updates=ov)  # every key exists (else ConfigAddedError)
    assert gen.main([str(tmp_path / "b.txt"), "--n", "100", "1000", "--num-chains", "2", "--epsilon-scaling",
                     "nbeta", "--epsilon-nbeta", "0.01", "--seeds", "1", "2"]) == 0
    ovs = [config_overrides(x) for x in (tmp_path / "b.txt").read_text().splitlines()]
    assert [(o["num_training_data"], o["seed"]) for o in ovs] == [([100], 1), ([100], 2), ([1000], 1), ([1000], 2)]
    assert all(o["epsilon_scaling"] == "nbeta" and o["epsilon_nbeta"] == 0.01 and o["num_chains"] == 2 for o in ovs)
    for bad in (["--n", "1"], ["--epsilon-nbeta", "0.1"], ["--epsilon-scaling", "nbeta"], ["--num-steps", "0"]):
        with pytest.raises(SystemExit):
            gen.main([str(tmp_path / "c.txt"), *bad])


def test_generator_imports_no_torch():
    import subprocess
    import sys

    code = "import sys; import gen_commands.expt_mala_vs_sgld; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(gen.__file__).rsplit("/gen_commands/", 1)[0])


# --------------------------------------------------------------- acceptance (slow)

@pytest.mark.slow
def test_acceptance_sgld_agrees_with_mala_within_5_percent(expt):
    """The notebook's set-up and draws at n = 1000: ε = 1e-5, 5 chains × 10000 draws, no burn-in.

    The 5% bound is the issue's. It means something only if it is several standard errors of
    the difference: the test asserts 5% >= 3 SE, with SE from the measured per-chain spread
    of both samplers, so a sampler with a real 5% bias fails and chain noise alone fails it
    in < 0.3% of seeds. Fewer draws do not pass that guard: at 4 chains × 4000 draws the SE
    was 3.0% (the per-chain spread of a transient average shrinks with the draws); at 10000
    draws it is 1.4% (SGLD std 2.0, MALA std 3.8 on λ̂ ≈ 135, seed 0).
    """
    res = run(expt, device="cpu", input_dim=10, layer_widths=[20, 20, 10], num_training_data=[1000],
              epsilon=1e-5, num_steps=10000, num_chains=5, sgld_config=dict(batch_size=32),
              mala_acceptance_every=None, seed=0).result
    print("SGLD", res["sgld"]["lambdahat"], "±", res["sgld"]["lambdahat_std"], "MALA", res["mala"]["lambdahat"], "±",
          res["mala"]["lambdahat_std"], "relative difference", res["relative_difference"], "time ratio",
          res["time_ratio"], "MALA acceptance", res["mala"]["acceptance_rate"])
    s, m = res["sgld"], res["mala"]
    se = math.sqrt((s["lambdahat_std"][0] ** 2 + m["lambdahat_std"][0] ** 2) / 5) / m["lambdahat"][0]
    assert 3 * se <= 0.05, se  # the bound is not swamped by chain noise
    assert abs(res["relative_difference"][0]) < 0.05, (res["relative_difference"], se)
    assert m["acceptance_rate"][0] > 0.9  # ε = 1e-5 is a small step at n = 1000 (the notebook: 1.00)
