"""expt_sgd_regimes through Sacred, its sweep generator and its figures (tiny sizes, CPU)."""
import json
import subprocess
import sys
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from sacred.utils import ConfigAddedError

from gen_commands import expt_sgd_regimes as gen
from gen_commands.commands import config_overrides
from tests.conftest import REPO, experiment_fixture, forbid_compute, run_experiment
from tests.datasets import allow_tiny_cifar, write_cifar10, write_mnist
from tracking.figures_regimes import (
    curves,
    plot_ntk_change_vs_alpha,
    plot_test_error_vs_temperature,
    plot_weight_change_vs_temperature,
    regime_table,
)
from tracking.load import load_metrics, load_runs

PERCEPTRON = dict(arch="linear", dataset="depleted_sign", d=4, ptr=40, pte=30, alpha=2.0, bs=8, max_wall=60.0,
                  device="cpu", dtype="f64")


expt = experiment_fixture("expt_sgd_regimes")


def run(expt, tmp_path=None, **updates):
    return run_experiment(expt, updates, tmp_path)


def test_perceptron_run_records_result_metrics_and_info(expt, tmp_path):
    r = run(expt, tmp_path, **PERCEPTRON, temp=0.5, seed=1, ckpt_grad_stats=10, ckpt_kernels=True, data_chi=2.0)
    res = r.result
    assert res["stop_reason"] == "zero_loss" and not res["diverged"]
    assert res["T"] == 0.5 and res["step_size"] == 0.5 * 8 * 1 and res["batch_size"] == 8  # h = 1 for linear
    assert res["final"]["train"]["loss"] == 0.0 and res["final"]["train"]["margin_min"] >= 1.0
    assert res["init"]["test"]["err"] == 1.0 and res["model_dim"] == 4
    assert res["ntk"]["train"]["rel_change"] == pytest.approx(0.0, abs=1e-12)  # the perceptron is linear
    assert set(res["seeds"]) == {"init", "batch", "trainset", "testset"} and res["seeds"]["testset"] == 0
    run_dir = tmp_path / "1"
    assert json.loads((run_dir / "run.json").read_text())["status"] == "COMPLETED"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {"train/loss", "train/err", "train/margin_min", "train/unfit", "train/grad_norm", "test/err", "time/t",
            "time/wall", "weights/norm", "weights/delta", "weights/delta/readout.weight", "ntk/train/rel_change",
            "ntk/test/yKinvy", "ntk/train/alignment", "ntk/train/eig_0"} <= set(metrics)
    steps = metrics["train/loss"]["steps"]
    assert steps[0] == 0 and steps[-1] == res["steps"] and steps == sorted(steps)
    info = json.loads((run_dir / "info.json").read_text())
    assert len(info["checkpoints"]) == res["num_checkpoints"] and info["checkpoints"][-1]["trigger"] == "stop"
    with np.load(run_dir / "ntk_kernels.npz") as kernels:
        assert kernels["train"].shape[1:] == (10, 10) and kernels["steps"][0] == 0
    with np.load(run_dir / "predictions.npz") as preds:  # the stop's, always saved as in the original
        assert preds["steps"].tolist() == [res["steps"]] and preds["train_pred"].shape == (1, PERCEPTRON["ptr"])
        margins = PERCEPTRON["alpha"] * preds["train_pred"][0] * preds["train_label"][0]
        assert margins.min() == pytest.approx(res["final"]["train"]["margin_min"], rel=1e-12) and margins.min() >= 1.0
    assert res["linear"]["w_para"] > 0 and "mean_x1_unfit" in res["linear"]  # arch linear: linear observables


def test_diagonal_linear_run_records_diag_lin_of_the_final_weights(tmp_path, expt):
    """arch simple_diagonal_linear: f = x·w^L/√d from w = 1; the recorded diag_lin at the stop is that of the
    saved final weights, recomputed here from its definition (β = w^L split along the teacher e₁)."""
    L, d = 2, 4
    r = run(expt, tmp_path, **{**PERCEPTRON, "arch": "simple_diagonal_linear", "L": L}, dt=0.5, seed=2,
            ckpt_save_parameters=True, max_step=200)
    res, run_dir = r.result, tmp_path / "1"
    assert res["linear"] is None and res["model_dim"] == d
    w = torch.load(run_dir / "parameters.pt", weights_only=True)[-1]["params"]
    w = next(iter(w.values())).double()  # (d,)
    beta = w ** L
    assert res["diag_lin"]["w_para"] == pytest.approx(float(beta[0]), rel=1e-12, abs=1e-12)  # float64 rounding only
    assert res["diag_lin"]["w_perp"] == pytest.approx(float(beta[1:].norm()), rel=1e-12, abs=1e-12)
    assert res["diag_lin"]["dw_para"] == pytest.approx(float(w[0] - 1.0) ** 2, rel=1e-12, abs=1e-12)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {"diag_lin/ampli_factor", "diag_lin/w_para", "diag_lin/dw_perp"} <= set(metrics)


def test_dt_and_temp_are_two_spellings_of_one_step(expt):
    a = run(expt, **PERCEPTRON, temp=0.25, seed=3, max_step=30).result
    b = run(expt, **PERCEPTRON, dt=2.0, seed=3, max_step=30).result
    assert a["step_size"] == b["step_size"] == 2.0 and b["T"] == 0.25
    assert a["final"] == b["final"]
    c = run(expt, **PERCEPTRON, dt=2.0, seed=4, max_step=30).result
    assert c["final"] != a["final"]  # another seed, another init and batches


def test_mnist_parity_mlp_with_ntk(expt, tmp_path):
    write_mnist(tmp_path, n_train=40, n_test=20)
    res = run(expt, data_root=str(tmp_path), ptr=30, pte=20, h=6, L=2, act="gelu", dt=0.5, bs=10, max_step=15,
              ckpt_grad_stats=-1, device="cpu", seed=2).result
    assert res["stop_reason"] == "max_step" and res["steps"] == 15 and res["T"] == pytest.approx(0.5 / (10 * 6))
    assert res["ntk"]["train"]["rel_change"] > 0 and np.isfinite(res["final"]["test"]["err"])
    assert res["model_dim"] == 784 * 6 + 6 * 6 + 6


@pytest.mark.parametrize("arch", ["simple_cnn", "vgg11"])
def test_cifar_animal_convnets(expt, tmp_path, monkeypatch, arch):
    allow_tiny_cifar(monkeypatch)
    write_cifar10(tmp_path, n_train=20, n_test=10)
    grad_stats = 4 if arch == "simple_cnn" else 0  # the generic (vmap) NTK path; vgg11 would only be slower
    res = run(expt, data_root=str(tmp_path), dataset="cifar_animal", arch=arch, h=1, ptr=16, pte=8, alpha=0.5,
              dynamics="gd_sde", bs=4, temp=0.05, max_step=3, ckpt_grad_stats=grad_stats, device="cpu", seed=0).result
    assert res["steps"] == 3 and np.isfinite(res["final"]["test"]["loss"])
    assert (res["ntk"] is None) == (grad_stats == 0)


@pytest.mark.parametrize("dynamics", ["sgd_only_unfit", "gd_sde", "gd_sde_only_unfit", "gd"])
def test_other_dynamics_run(expt, dynamics):
    res = run(expt, **{**PERCEPTRON, "bs": None if dynamics == "gd" else 8}, dynamics=dynamics, dt=1.0,
              max_step=50, seed=0).result
    assert res["final"]["train"]["loss"] < res["init"]["train"]["loss"]


def test_divergence_is_recorded_not_failed(expt, tmp_path):
    r = run(expt, tmp_path, arch="mlp", L=1, h=8, dataset="sign", d=3, ptr=20, pte=10, loss="mse", dynamics="gd",
            dt=1e8, device="cpu", dtype="f64", max_step=200, seed=0)
    assert r.result["diverged"] and r.result["stop_reason"] == "diverged"
    assert json.loads((tmp_path / "1" / "run.json").read_text())["status"] == "COMPLETED"


@pytest.mark.parametrize("updates, key", [
    (dict(arch="resnet"), "arch must be one of"),
    (dict(act="elu"), "act must be one of"),
    (dict(arch="mlp", L=None), r"L \(number of hidden layers\) must be set for arch='mlp'"),
    (dict(arch="linear", L=3), "L applies to arch in"),
    (dict(bs=41), r"bs must be <= ptr \(40\)"),
    (dict(dt=0.1, temp=0.1), "give exactly one of dt and temp"),
    (dict(dt=None, temp=None), "give exactly one of dt and temp"),
    (dict(dt=-1.0), "dt must be a finite number > 0"),
    (dict(d=None), r"d \(input dimension\) must be set for dataset='depleted_sign'"),
    (dict(dataset="mnist_parity"), "d applies to the synthetic datasets only"),
    (dict(arch="vgg11"), "needs an image dataset"),
    (dict(dataset="moons"), "dataset must be one of"),
    (dict(loss="logistic"), "loss must be one of"),
    (dict(dynamics="adam"), "dynamics must be one of"),
    (dict(dynamics="gd", bs=8), "dynamics='gd' is full batch"),
    (dict(alpha=0), "alpha must be a finite number > 0"),
    (dict(data_chi=-1.5), "data_chi must be a number > -1"),
    (dict(dtype="f16"), "dtype must be one of"),
    (dict(device="tpu"), "device must be one of"),
    (dict(ckpt_grad_stats=-2), "ckpt_grad_stats must be an integer >= -1"),
    (dict(seed_init=-1), "seed_init must be None or an integer >= 0"),
    (dict(max_step=0), "max_step must be None or an integer >= 1"),
    (dict(mind_stop="x"), "mind_stop must be None or a finite number"),
    (dict(ckpt_modulo=0), "ckpt_modulo must be an integer >= 1"),
    (dict(ntk_method="loop"), "ntk_method must be one of"),
    (dict(ckpt_kernels=2), r"ckpt_kernels must be 0 or 1 \(or False / True\)"),
    (dict(ckpt_drift=0.5), "ckpt_drift must be 0 or 1"),
    (dict(ckpt_save_pred="yes"), "ckpt_save_pred must be 0 or 1"),
    (dict(ckpt_save_gradoverlap=1), "ckpt_save_gradoverlap needs ckpt_grad_stats > 0"),
    (dict(ckpt_drift_n0=-1), "ckpt_drift_n0 must be an integer >= 0"),
    (dict(sde_noise="exact"), "sde_noise must be one of"),
    (dict(regularizer="l3"), "regularizer must be one of"),
    (dict(regu_scale=-1.0), "regu_scale must be a finite number >= 0"),
    (dict(gf_tol=0.0), "gf_tol must be a finite number > 0"),
    (dict(gf_mindt=2.0), "gf_mindt must be <= gf_maxdt"),
    (dict(gf_first_stage="flipped"), "gf_first_stage must be one of"),
    (dict(act_beta=2.0), "act_beta must be 1.0"),
])
def test_bad_config_fails_before_compute(expt, monkeypatch, updates, key):
    forbid_compute(monkeypatch, expt, "build_dataset", "train_regimes")
    config = {**PERCEPTRON, "dt": 0.1, **updates}
    with pytest.raises(ValueError, match=key):
        run(expt, **config)


def test_unknown_key_is_rejected_by_sacred(expt):
    with pytest.raises(ConfigAddedError):
        run(expt, **PERCEPTRON, dt=0.1, learning_rate=0.1)


def test_named_configs_and_derived_defaults(expt):
    tutorial = expt.ex.run("print_config", named_configs=["tutorial"], options={"--loglevel": "ERROR"}).config
    assert (tutorial["dt"], tutorial["bs"], tutorial["act"], tutorial["L"], tutorial["h"]) == (0.1, 64, "gelu", 8, 64)
    perceptron = expt.ex.run("print_config", named_configs=["perceptron"], options={"--loglevel": "ERROR"}).config
    assert perceptron["h"] == 1 and perceptron["L"] is None and perceptron["alpha"] == 32768.0  # derived in the scope
    assert (perceptron["sde_noise"], perceptron["gf_tol"], perceptron["ckpt_drift_n0"]) == ("original", 1e-5, 16)


def test_command_line_like_the_original(tmp_path):
    """The issue's command form, at tiny size, recorded in ./runs/sgd_regimes by default."""
    cmd = [sys.executable, str(REPO / "experiments" / "expt_sgd_regimes.py"), "with", "dataset=sign", "d=3",
           "ptr=32", "pte=16", "arch=mlp", "act=gelu", "h=4", "L=2", "dynamics=sgd", "alpha=1", "dt=0.1", "bs=8",
           "max_wall=120", "max_step=20", "device=cpu", "seed=5"]
    out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    config = json.loads((tmp_path / "runs" / "sgd_regimes" / "1" / "config.json").read_text())
    assert config["act"] == "gelu" and config["dt"] == 0.1 and config["temp"] is None


# --- generator --------------------------------------------------------------------------------

def generate(tmp_path, *args, name="cmds.txt"):
    out = tmp_path / name
    assert gen.main([str(out), *args]) == 0
    return out.read_text().splitlines()


def test_generator_tutorial_preset_is_the_original_grid_sweep(tmp_path):
    lines = generate(tmp_path, "--preset", "tutorial")
    overrides = [config_overrides(line) for line in lines]
    assert [o["dt"] for o in overrides] == [0.125, 0.25, 0.5, 1]
    assert all(o["act"] == "gelu" and o["L"] == 8 and o["bs"] == 64 and o["expt_name"] == "tutorial" for o in overrides)
    assert len({o["seed"] for o in overrides}) == 1 and len({o["run_key"] for o in overrides}) == 4
    assert lines == generate(tmp_path, "--preset", "tutorial", name="again.txt")  # deterministic
    assert all(" -F runs/sgd_regimes with " in line for line in lines)


def test_generator_set_grid_and_seeds(tmp_path):
    lines = generate(tmp_path, "--set", "arch=linear", "dataset=depleted_sign", "d=8", "ptr=64", "act='tanh'",
                     "--grid", "bs=[2**i for i in range(3)]", "--grid", "temp=[0.5, 1.0]", "--seeds", "1", "2",
                     "-F", "somewhere")
    overrides = [config_overrides(line) for line in lines]
    assert len(lines) == 12
    assert [(o["bs"], o["temp"], o["seed"]) for o in overrides[:5]] == [(1, 0.5, 1), (1, 0.5, 2), (1, 1.0, 1),
                                                                        (1, 1.0, 2), (2, 0.5, 1)]
    assert overrides[0]["arch"] == "linear" and overrides[0]["act"] == "tanh" and "-F somewhere" in lines[0]
    over = generate(tmp_path, "--preset", "tutorial", "--grid", "temp=[1.0]", "--set", "bs=32", name="o.txt")
    assert "dt" not in config_overrides(over[0]) and config_overrides(over[0])["bs"] == 32  # --grid temp replaces dt


@pytest.mark.parametrize("args, message", [
    (["--grid", "dtt=[1]", "--set", "dt=1"], "unknown config keys"),
    (["--set", "arch=mlp"], "give exactly one of dt and temp"),
    (["--set", "dt=1", "temp=1"], "give exactly one of dt and temp"),
    (["--grid", "dt=[__import__('os')]"], "--grid dt"),
    (["--set", "dt=1", "run_key=x"], "run_key is computed"),
])
def test_generator_refuses_bad_sweeps(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit):
        gen.main([str(tmp_path / "x.txt"), *args])
    assert message in capsys.readouterr().err


def test_generator_refuses_overwrite_and_never_imports_torch(tmp_path):
    generate(tmp_path, "--preset", "demo")
    with pytest.raises(SystemExit):
        gen.main([str(tmp_path / "cmds.txt"), "--preset", "demo"])
    assert len(generate(tmp_path, "--preset", "demo", "--force")) == 8
    code = "import sys, gen_commands.expt_sgd_regimes as g; g.config_keys(); assert 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True).returncode == 0
    for name in gen.PRESETS:  # every preset names only real keys and one of dt / temp
        assert generate(tmp_path, "--preset", name, name=f"{name}.txt")


@pytest.mark.slow  # two experiment processes
def test_generated_lines_run_through_the_shared_runner(tmp_path):
    cmds = tmp_path / "cmds.txt"
    store = tmp_path / "runs"
    assert gen.main([str(cmds), "--set", "arch=linear", "dataset=sign", "d=3", "ptr=16", "pte=8", "max_step=5",
                     "device=cpu", "--grid", "dt=[0.5, 1.0]", "-F", str(store),
                     "--python", sys.executable]) == 0
    from gen_commands import run as runner

    assert runner.main([str(cmds), "--jobs", "2"]) == 0
    df = load_runs(str(store), experiment="sgd_regimes")
    assert sorted(df["dt"]) == [0.5, 1.0] and (df["status"] == "COMPLETED").all()


# --- figures ----------------------------------------------------------------------------------

SYNTH = pd.DataFrame({
    "alpha": [1.0, 1.0, 1.0, 1.0, 100.0, 100.0, 100.0],
    "T": [0.1, 0.1, 1.0, 10.0, 0.1, 1.0, 10.0],
    "final.test.err": [0.10, 0.14, 0.08, 0.2, 0.3, 0.25, 0.2],
    "final.weights.delta": [1.0, 1.2, 3.0, 9.0, 0.01, 0.03, 0.1],
    "ntk.train.rel_change": [0.5, 0.6, 0.7, 0.9, 1e-3, 2e-3, 0.0],
    "diverged": [False] * 7,
})


def test_curves_take_the_median_and_range_over_runs():
    data = curves(SYNTH, "T", "final.test.err", "alpha")
    assert list(data) == [1.0, 100.0]
    first = data[1.0].loc[0.1]
    assert (first["median"], first["lo"], first["hi"], first["n"]) == pytest.approx((0.12, 0.10, 0.14, 2))


def test_figures_draw_one_curve_per_hue():
    fig = plot_test_error_vs_temperature(SYNTH)
    ax = fig.axes[0]
    lines = ax.get_lines()
    assert [line.get_label() for line in lines] == ["alpha = 1", "alpha = 100"] and ax.get_xscale() == "log"
    np.testing.assert_allclose(lines[0].get_ydata(), [0.12, 0.08, 0.2])
    fig = plot_weight_change_vs_temperature(SYNTH)
    assert fig.axes[0].get_yscale() == "log"
    with pytest.warns(UserWarning, match="left out 1 of 7 runs"):  # rel_change 0 cannot sit on a log axis
        fig = plot_ntk_change_vs_alpha(SYNTH)
    assert len(fig.axes[0].get_lines()) == 3  # one per T
    table = regime_table(SYNTH)
    assert table.loc[1.0, 0.1] == pytest.approx(0.12) and list(table.columns) == [0.1, 1.0, 10.0]
    with pytest.raises(ValueError, match=r"df lacks columns \['ntk.train.rel_change'\]"):
        plot_ntk_change_vs_alpha(SYNTH.drop(columns="ntk.train.rel_change"))


def test_figures_from_real_runs(expt, tmp_path):
    for seed, (alpha, temp) in enumerate([(1.0, 0.25), (1.0, 1.0), (4.0, 0.25), (4.0, 1.0)]):
        run(expt, tmp_path, **{**PERCEPTRON, "alpha": alpha}, temp=temp, max_step=40, seed=seed)
    df = load_runs(str(tmp_path), experiment="sgd_regimes")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig = plot_test_error_vs_temperature(df)
    assert len(fig.axes[0].get_lines()) == 2
    metrics = load_metrics(str(tmp_path), names=["test/err"])
    assert set(metrics["run_id"]) == set(df["run_id"])


def synthetic_bs_sweep(gamma=0.5, chi=1.0, step=1.0):
    """|w − w₀| = max(plateau, step·bs) with plateau = 28·(P/128)^γ: B*_intersect = plateau/step exactly."""
    rows = []
    for P in (128, 256, 512):
        plateau = 28.0 * (P / 128) ** gamma
        for seed in (0, 1):
            for bs in (2, 4, 8, 16, 32, 64, 128):
                rows.append({"data_chi": chi, "ptr": P, "seed": seed, "batch_size": bs, "T": step / 2, "h": 2,
                             "init.train.grad_norm": 1.0, "final.weights.delta": max(plateau, step * bs),
                             "stop_reason": "zero_loss"})
    return pd.DataFrame(rows)


def test_crossover_batch_size_and_its_exponent():
    from tracking.figures_regimes import crossover_exponents, crossover_table, plot_crossover_vs_P

    df = synthetic_bs_sweep()
    table = crossover_table(df)
    assert len(table) == 6 and (table["runs"] == 7).all()
    first = table.iloc[0]
    assert first["plateau"] == 28.0 and first["bstar_intersect"] == pytest.approx(28.0)
    assert first["bstar_threshold"] == pytest.approx(42.0)  # 1.5 x plateau, between bs 32 and 64 on the line bs·step
    exps = crossover_exponents(table)
    assert exps.loc[0, "gamma_intersect"] == pytest.approx(0.5) and exps.loc[0, "theory"] == 0.5
    assert exps.loc[0, "gamma_threshold"] == pytest.approx(0.5, abs=0.1)  # log interpolation near the kink
    fig = plot_crossover_vs_P(table)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "fit γ = 0.50" in labels and "1/(1+χ) = 0.50" in labels
    with pytest.warns(UserWarning, match="did not fit their training set"):
        crossover_table(df.assign(stop_reason=["max_wall"] + ["zero_loss"] * (len(df) - 1)))
    stray = df.iloc[:1].assign(T=4.0, batch_size=2)  # another sweep's run at the same χ, P and seed
    with pytest.raises(ValueError, match=r"not one batch-size sweep: they differ in \{'T'"):
        crossover_table(pd.concat([df, stray], ignore_index=True))


def test_generator_where_filter(tmp_path, capsys):
    lines = generate(tmp_path, "--set", "dt=1", "--grid", "ptr=[4, 8]", "--grid", "bs=[2, 4, 8]",
                     "--where", "bs <= ptr and bs > 2")
    assert [(config_overrides(li)["ptr"], config_overrides(li)["bs"]) for li in lines] == [(4, 4), (8, 4), (8, 8)]
    assert len(generate(tmp_path, "--preset", "bstar_chi0", name="b.txt")) == 72  # the preset's own 'bs <= ptr'
    with pytest.raises(SystemExit):
        gen.main([str(tmp_path / "w.txt"), "--set", "dt=1", "--where", "__import__('os')"])
    assert "expected comparisons joined by 'and'" in capsys.readouterr().err


def test_generator_seeds_replace_a_presets_seed_axis(tmp_path):
    preset = generate(tmp_path, "--preset", "bstar_chi1", name="a.txt")
    mine = generate(tmp_path, "--preset", "bstar_chi1", "--seeds", "7", "8", name="b.txt")
    assert {config_overrides(li)["seed"] for li in preset} == {0, 1, 2}
    assert {config_overrides(li)["seed"] for li in mine} == {7, 8} and len(mine) == len(preset) * 2 // 3
    with pytest.raises(SystemExit):
        gen.main([str(tmp_path / "c.txt"), "--set", "dt=1", "--grid", "seed=[1, 2]", "--seeds", "3"])
