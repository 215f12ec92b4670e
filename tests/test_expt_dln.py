"""expt_dln through Sacred: smoke, recording, validation, reproducibility, failures."""
import json
import subprocess
import sys

import numpy as np
import pytest
from sacred.utils import ConfigAddedError

from tests.conftest import REPO, experiment_fixture, forbid_compute, run_experiment
from tracking.sacred_utils import default_observer_needed

TINY = dict(
    layer_widths=[3, 2], input_dim=3, num_training_data=200, device="cpu",
    sgld_config=dict(num_steps=60, batch_size=20, num_chains=2, epsilon=1e-5, gamma=10.0),
)


expt = experiment_fixture("expt_dln")


def run(expt, tmp_path=None, **updates):
    return run_experiment(expt, {**TINY, **updates}, tmp_path)


def test_smoke_records_result_metrics_and_artifact(expt, tmp_path):
    # lr 1e-3: at the Haiku init scale, inputs in U(-10, 10)^3 and batch 20, lr 1e-2 with momentum 0.9 can diverge.
    r = run(expt, tmp_path, seed=1, do_training=True,
            training_config=dict(num_steps=50, batch_size=20, learning_rate=1e-3),
            do_hessian_trace=True, hessian_trace_probes=4, do_functional_rank=True)
    res = r.result
    for key in ["lambdahat", "lambdahat_std", "lambdahat_per_chain", "true_lambda", "true_multiplicity",
                "true_rank", "model_dim", "init_loss", "rhat", "hessian_trace", "functional_rank"]:
        assert key in res, key
    assert res["model_dim"] == 3 * 3 + 3 * 2
    assert res["true_rank"] == 2 and res["true_lambda"] == 3.0  # as regular as the 3 -> 2 map: 3·2/2
    assert len(res["lambdahat_per_chain"]) == 2
    assert set(res["trained"]) >= {"lambdahat", "lambdahat_std", "lambdahat_per_chain", "rhat", "final_train_loss"}
    run_dir = tmp_path / "1"
    assert json.loads((run_dir / "run.json").read_text())["status"] == "COMPLETED"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {"llc/loss_trace/chain0", "llc/loss_trace/chain1", "train/loss",
            "trained/llc/loss_trace/chain0"} <= set(metrics)
    assert len(metrics["llc/loss_trace/chain0"]["values"]) == 60
    assert (run_dir / "llc_trace.npz").exists()
    assert "true_end_to_end_singular_values" in json.loads((run_dir / "info.json").read_text())


def test_trace_metrics_are_thinned(expt):
    r = run(expt, log_max_points=25)
    # log_series thins to <= 25 points per chain
    assert len([m for m in r._metrics.get_last_metrics() if m.name == "llc/loss_trace/chain0"]) <= 25


def test_same_seed_identical_lambdahat(expt):
    a, b = run(expt, seed=7).result, run(expt, seed=7).result
    assert a["lambdahat_per_chain"] == b["lambdahat_per_chain"]
    assert run(expt, seed=8).result["lambdahat_per_chain"] != a["lambdahat_per_chain"]


@pytest.mark.parametrize(
    "updates,key",
    [
        (dict(true_param_config=dict(method="nope")), "true_param_config.method"),
        (dict(sgld_config=dict(epsilon=-1e-5)), "sgld_config.epsilon"),
        (dict(sgld_config=dict(num_steps=0)), "sgld_config.num_steps"),
        (dict(sgld_config=dict(batch_size=0)), "sgld_config.batch_size"),
        (dict(sgld_config=dict(batch_size=1000)), "sgld_config.batch_size"),
        (dict(layer_widths=[]), "layer_widths"),
        (dict(layer_widths=[3, 2.5]), "layer_widths"),
        (dict(layer_widths="3,2"), "layer_widths"),
        (dict(input_dim=0), "input_dim"),
        (dict(do_training=True, training_config=dict(optim="lbfgs")), "training_config.optim"),
        (dict(do_training=True, training_config=dict(batch_size=10_000)), "training_config.batch_size"),
        (dict(dtype="float16"), "dtype"),
        (dict(device="tpu"), "device"),
        (dict(input_distribution="gaussian"), "input_distribution"),
        (dict(true_param_config=dict(init="xavier")), "true_param_config.init"),
        (dict(do_training=True, training_config=dict(init="xavier")), "training_config.init"),
        (dict(itemp=-1.0), "itemp"),
        (dict(itemp=0.2, sgld_config=dict(nbeta=10.0)), "itemp"),
        (dict(num_test_data=0), "num_test_data"),
        (dict(param_init="x"), "param_init"),
        (dict(mala_acceptance_every=-1), "mala_acceptance_every"),
        (dict(verbose="yes"), "verbose"),
    ],
)
def test_bad_config_fails_before_compute_naming_the_key(expt, updates, key, monkeypatch):
    import llc.sgld

    no_compute = forbid_compute(monkeypatch, expt, "run_sgld")
    merged = {**updates}
    if "sgld_config" in updates:
        merged["sgld_config"] = {**TINY["sgld_config"], **updates["sgld_config"]}
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        run(expt, **merged)
    assert llc.sgld.run_sgld is not no_compute


def test_unknown_key_is_rejected_by_sacred(expt):
    with pytest.raises(ConfigAddedError):
        run(expt, sgld_config=dict(TINY["sgld_config"], epsilonn=1.0))


def test_divergence_marks_run_failed_with_reason(expt, tmp_path):
    with pytest.raises(FloatingPointError, match="diverged"):
        run(expt, tmp_path, sgld_config=dict(num_steps=400, batch_size=20, num_chains=2, epsilon=50.0, gamma=0.0))
    record = json.loads((tmp_path / "1" / "run.json").read_text())
    assert record["status"] == "FAILED"
    assert "diverged" in "".join(record["fail_trace"])
    assert record.get("result") is None


def test_default_observer_only_without_observer_flags():
    assert default_observer_needed(["expt_dln.py", "with", "seed=1"])
    assert default_observer_needed(["expt_dln.py"])
    assert not default_observer_needed(["expt_dln.py", "-F", "x", "with", "seed=1"])
    assert not default_observer_needed(["expt_dln.py", "-m", "localhost:27017:db"])
    assert not default_observer_needed(["expt_dln.py", "-u", "with", "seed=1"])
    assert not default_observer_needed(["expt_dln.py", "--file_storage=x"])
    assert not default_observer_needed(["expt_dln.py", "print_config", "with", "seed=1"])


def test_command_line_defaults_to_runs_dir_and_dotted_overrides(tmp_path):
    cmd = [sys.executable, str(REPO / "experiments" / "expt_dln.py"), "with", "layer_widths=[3, 2]", "input_dim=3",
           "num_training_data=200", "sgld_config.num_steps=30", "sgld_config.batch_size=20",
           "sgld_config.epsilon=2e-07", "true_param_config.method='rand_rank'", "sgld_config.num_chains=2",
           "device=cpu", "seed=3"]
    out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    config = json.loads((tmp_path / "runs" / "dln_lambdahat" / "1" / "config.json").read_text())
    assert config["sgld_config"]["epsilon"] == 2e-07 and config["true_param_config"]["method"] == "rand_rank"
    printed = subprocess.run([sys.executable, str(REPO / "experiments" / "expt_dln.py"), "print_config"],
                             cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert printed.returncode == 0 and "sgld_config" in printed.stdout
    assert not (tmp_path / "runs" / "dln_lambdahat" / "2").exists()


def test_haiku_init_is_truncated_normal_with_std_one_over_sqrt_fan_in():
    """hk.Linear's default: N(0, 1) truncated to [-2, 2], times 1/sqrt(fan_in) (no truncation re-scaling)."""
    import torch
    from scipy.stats import truncnorm

    from models.dln import init_weight

    fan_in = 400
    w = init_weight((500, fan_in), torch.Generator().manual_seed(0), "haiku") * fan_in ** 0.5  # 2e5 draws
    assert float(w.abs().max()) <= 2.0
    # truncnorm(-2, 2).std() = 0.8796; the sample std of 2e5 draws has standard error ~0.0014.
    assert float(w.std()) == pytest.approx(truncnorm(-2, 2).std(), abs=5 * 0.0014)
    u = init_weight((500, fan_in), torch.Generator().manual_seed(0), "torch") * fan_in ** 0.5
    assert float(u.abs().max()) <= 1.0 and float(u.std()) == pytest.approx(3 ** -0.5, abs=5 * 0.0013)


def test_rand_rank_sv_ranks_are_drawn_from_0_to_m_minus_1():
    """The original draws a reduced matrix's rank r ~ U{0, ..., min(shape) - 1}."""
    import torch

    from models.dln import make_true_params, numerical_rank

    gen = torch.Generator().manual_seed(0)
    ranks = [numerical_rank(w)[0] for _ in range(60)
             for w in make_true_params(4, [4], "rand_rank_sv", gen, prop_rank_reduce=1.0).values()]
    assert set(ranks) == {0, 1, 2, 3}


def test_original_records_distance_acceptance_itemp_true_param(expt, tmp_path):
    r = run(expt, tmp_path, seed=2, itemp=0.25, do_compute_distance=True, save_true_param=True)
    res, run_dir = r.result, tmp_path / "1"
    assert res["nbeta"] == pytest.approx(0.25 * 200)  # nβ = n·itemp
    info = json.loads((run_dir / "info.json").read_text())
    acc = info["llc_mala_acceptance_probs"]
    assert acc["t"] == list(range(0, 60, 20))  # every 20 steps, as the original
    probs = np.array(acc["probs"])  # (3 records, 2 chains)
    assert probs.shape == (3, 2) and ((probs >= 0) & (probs <= 1)).all()
    assert res["mala_acceptance_mean"] == pytest.approx(probs.mean())
    arrays = np.load(run_dir / "llc_trace.npz")
    assert arrays["distance"].shape == (2, 60)
    assert (arrays["distance"][:, 0] == 0).all()  # ||w_0 - w*|| with w_0 = w*: exactly 0
    assert (arrays["distance"][:, 1:] > 0).all()
    w = [np.array(info["true_param"][f"layers.{i}.weight"]) for i in range(2)]
    sv = np.linalg.svd(w[1] @ w[0], compute_uv=False)
    # float64 SVD of the same product twice (here and in the run): agreement to ~1e-15 relative.
    assert res["true_end_to_end_sigma_max"] == pytest.approx(sv[0], rel=1e-10)
    assert res["true_end_to_end_sigma_min"] == pytest.approx(sv[-1], rel=1e-10)


def test_input_dist_is_a_deprecated_alias(expt):
    with pytest.warns(FutureWarning, match="input_dist"):
        old = run(expt, seed=3, input_dist="unit_ball").result
    new = run(expt, seed=3, input_distribution="unit_ball").result
    assert old["lambdahat_per_chain"] == new["lambdahat_per_chain"]
