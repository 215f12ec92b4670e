"""expt_dln_saddle_dynamics: setup, records, failures, validation, generator, figure.

The slow test is the acceptance check: at width 10 the rank of W_L...W_1 climbs
0, 1, 2, 3, 4, 5 with the loss falling in steps, and the final λ̂ is within 20% of
Aoyagi's λ for the final rank.
"""
import json

import numpy as np
import pytest
import torch
from sacred.utils import ConfigAddedError

from gen_commands import expt_dln_saddle_dynamics as gen
from gen_commands import sweep
from gen_commands.commands import config_overrides
from models.dln import DeepLinearNetwork
from tests.conftest import experiment_fixture, forbid_compute, run_experiment
from tracking.figures_llc import plot_saddle_dynamics
from tracking.load import load_metrics

TINY = dict(
    device="cpu", width=3, num_training_data=200, logging_period=20,
    training_config=dict(num_steps=40, batch_size=20, learning_rate=1e-3),
    sgld_config=dict(num_steps=10, batch_size=20, num_chains=2),
)


expt = experiment_fixture("expt_dln_saddle_dynamics")


def run(expt, tmp_path=None, **updates):
    return run_experiment(expt, {**TINY, **updates}, tmp_path)


def test_teacher_data_and_small_init(expt):
    teacher, x, y = expt.teacher_data(5, 2000, torch.Generator().manual_seed(0))
    torch.testing.assert_close(teacher, 10.0 * torch.diag(torch.arange(1, 6, dtype=torch.float64)))
    torch.testing.assert_close(y, x @ teacher.T)
    assert abs(float(x.std()) - 1.0) < 0.05
    net = DeepLinearNetwork(5, [100, 100, 5]).double()
    expt.small_init(net, 100, 1.5, torch.Generator().manual_seed(0))
    variance = float(net.layers[1].weight.detach().var())
    assert variance == pytest.approx(100 ** -1.5, rel=0.05)  # N(0, width^-exponent): variance, not std


def test_smoke_records_checkpoints_metrics_and_result_and_the_figure_reads_it(expt, tmp_path):
    r = run(expt, tmp_path, seed=1)
    res = r.result
    checkpoints = r.info["checkpoints"]
    assert [c["t"] for c in checkpoints] == [0, 20, 40]
    for c in checkpoints:
        assert c["status"] == "ok" and len(c["singular_values"]) == 5
        assert {"lambdahat", "lambdahat_std", "lambdahat_per_chain", "rank", "numerical_rank", "true_lambda",
                "true_multiplicity", "train_loss"} <= set(c)
    assert res["num_checkpoints"] == 3 and res["num_failed_checkpoints"] == 0
    assert res["model_dim"] == 5 * 3 + 3 * 3 * 3 + 3 * 5 and res["rank_sequence"][0] == checkpoints[0]["rank"]
    assert res["final_true_lambda"] == checkpoints[-1]["true_lambda"]
    metrics = json.loads((tmp_path / "1" / "metrics.json").read_text())
    assert {"train/loss", "train/batch_loss", "llc/lambdahat", "dln/rank", "aoyagi/lambda",
            "aoyagi/multiplicity"} <= set(metrics)
    assert metrics["llc/lambdahat"]["steps"] == [0, 20, 40]

    fig = plot_saddle_dynamics(load_metrics(tmp_path, experiment="dln_saddle_dynamics"), title="tiny")
    ax_loss, ax_l = fig.axes[:2]
    assert ax_loss.get_yscale() == "log"
    labels = ax_l.get_legend_handles_labels()[1]
    assert "Aoyagi λ at current rank" in labels and "rank change" in labels
    assert [t.get_text() for t in ax_loss.texts][0] == f"r={checkpoints[0]['rank']}"


def test_loss_traces_itemp_and_plot(expt, tmp_path):
    r = run(expt, tmp_path, seed=1, itemp=0.5, do_plot=True)
    checkpoints = r.info["checkpoints"]
    traces = np.load(tmp_path / "1" / "saddle_traces.npz")
    assert traces["loss_trace"].shape == (3, 2, 10) and traces["t"].tolist() == [0, 20, 40]
    for k, c in enumerate(checkpoints):
        assert c["nbeta"] == pytest.approx(0.5 * 200)  # nβ = n·itemp
        np.testing.assert_array_equal(np.array(c["loss_trace"]), traces["loss_trace"][k])  # same numbers, two places
        # λ̂ = nβ (mean of the kept draws - L_0), recomputed from the stored trace; float64 rounding only.
        kept = np.array(c["loss_trace"])[:, 9:].mean(1)
        np.testing.assert_allclose(c["lambdahat_per_chain"], c["nbeta"] * (kept - c["init_loss"]), rtol=1e-9, atol=1e-9)
    assert (tmp_path / "1" / "saddle_dynamics.png").read_bytes()[:4] == b"\x89PNG"


def test_divergent_checkpoints_are_recorded_and_training_goes_on(expt, tmp_path):
    r = run(expt, tmp_path, sgld_config=dict(num_steps=200, batch_size=20, num_chains=2, epsilon=10.0, gamma=0.0))
    checkpoints = r.info["checkpoints"]
    assert len(checkpoints) == 3 and all(c["status"] == "failed" for c in checkpoints)
    assert all("diverged" in c["reason"] for c in checkpoints)
    assert r.result["num_failed_checkpoints"] == 3 and r.result["final_lambdahat"] is None
    assert json.loads((tmp_path / "1" / "run.json").read_text())["status"] == "COMPLETED"


@pytest.mark.parametrize("updates, key", [
    (dict(logging_period=0), "logging_period"),
    (dict(width=0), "width"),
    (dict(initialisation_exponent="big"), "initialisation_exponent"),
    (dict(rank_threshold=0.0), "rank_threshold"),
    (dict(sgld_config=dict(TINY["sgld_config"], batch_size=201)), "sgld_config.batch_size"),
    (dict(training_config=dict(TINY["training_config"], batch_size=201)), "training_config.batch_size"),
    (dict(training_config=dict(TINY["training_config"], optim="lbfgs")), "training_config.optim"),
    (dict(dtype="float16"), "dtype"),
])
def test_bad_config_fails_before_compute_naming_the_key(expt, updates, key, monkeypatch):
    forbid_compute(monkeypatch, expt, "train", "estimate_llc_flat")
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        run(expt, **updates)


def test_unknown_key_is_rejected_by_sacred(expt):
    with pytest.raises(ConfigAddedError):
        run(expt, widht=3)


def test_generator_presets_order_and_keys_sacred_accepts(tmp_path, expt):
    out = tmp_path / "cmds.txt"
    assert gen.main([str(out), "--preset", "widths"]) == 0
    ovs = [config_overrides(line) for line in out.read_text().splitlines()]
    assert [(o["width"], o["seed"]) for o in ovs[:4]] == [(10, 0), (10, 1), (10, 2), (50, 0)] and len(ovs) == 12
    for ov in ovs:
        key = ov.pop("run_key")
        assert key == sweep.run_key(gen.EXPERIMENT, ov) and ov["expt_name"] == "widths"
        expt.ex.run("print_config", config_updates=ov)  # every key exists (else ConfigAddedError)
    assert gen.main([str(tmp_path / "p.txt"), "--preset", "paper", "-m", "localhost:27017:saddle"]) == 0
    (line,) = (tmp_path / "p.txt").read_text().splitlines()
    ov = config_overrides(line)
    assert " -m localhost:27017:saddle with " in line
    assert (ov["width"], ov["training_config.num_steps"], ov["logging_period"]) == (500, 50000, 100)
    with pytest.raises(SystemExit):
        gen.main([str(tmp_path / "bad.txt"), "--lr", "0"])


@pytest.mark.slow
def test_acceptance_rank_climbs_through_plateaus_and_final_lambdahat_matches_aoyagi(expt, tmp_path):
    torch.set_num_threads(1)  # tiny tensors: one thread is as fast, and immune to oversubscribed CPUs
    # lr 6e-4 (the paper: 1e-4) runs the same dynamics 6x faster. Plateau lengths depend on the initial
    # weights: with seed 2 the ranks change at t ≈ 100, 350, 650, 1550, 2175, all > 50 steps apart.
    # SGLD ε = 3e-7 rather than the paper's 1e-6, whose step-size bias alone is ~+14% at the trained
    # network (1e-6: 14.2, 3e-7: 13.2, 1e-7: 12.7 with long chains; λ = 12.5).
    r = run(expt, tmp_path, seed=2, width=10, num_training_data=10000, logging_period=50,
            training_config=dict(optim="sgd", learning_rate=6e-4, momentum=None, batch_size=128, num_steps=3500),
            sgld_config=dict(epsilon=3e-7, gamma=1.0, num_steps=200, batch_size=128, num_chains=4))
    res = r.result
    checkpoints = r.info["checkpoints"]
    ranks = [c["rank"] for c in checkpoints]
    losses = np.array([c["train_loss"] for c in checkpoints])
    lam = [c.get("lambdahat") for c in checkpoints]
    print("rank sequence", res["rank_sequence"])
    print("t, rank, loss, lambdahat:",
          [(c["t"], c["rank"], round(c["train_loss"], 3), round(c.get("lambdahat") or 0, 2)) for c in checkpoints])
    assert res["rank_sequence"] == [0, 1, 2, 3, 4, 5]
    assert all(a <= b for a, b in zip(ranks, ranks[1:]))
    # The loss falls in steps: on each plateau between rank changes it barely moves, across a change it drops.
    for r_ in range(1, 5):
        plateau = losses[[i for i, q in enumerate(ranks) if q == r_]]
        after = losses[[i for i, q in enumerate(ranks) if q == r_ + 1]]
        assert after.min() < 0.9 * plateau.min(), (r_, plateau, after)
    assert losses[-1] < 1e-3 * losses[0]
    # Final plateau (rank 5, loss ~ 0): λ̂ against Aoyagi's λ, averaged over its checkpoints.
    final = [v for v, q in zip(lam, ranks) if q == 5 and v is not None]
    true_lambda = checkpoints[-1]["true_lambda"]
    print("final λ̂", res["final_lambdahat"], "mean over the final plateau", np.mean(final), "Aoyagi λ", true_lambda)
    assert abs(np.mean(final) - true_lambda) < 0.2 * true_lambda
    assert abs(res["final_lambdahat"] - true_lambda) < 0.2 * true_lambda
    assert res["num_failed_checkpoints"] == 0
