"""expt_abc_params through Sacred (main and coord_check): records, batches, validation, named configs."""
import json
import math

import numpy as np
import pytest
import torch
from sacred.utils import ConfigAddedError

from tests._expt_abc_params_cases import N_TEST, N_TRAIN, N_VAL, run, tiny
from tests.conftest import data_fixture, experiment_fixture
from tests.datasets import allow_tiny_cifar, write_cifar10, write_mnist
from tracking import figures_abc
from tracking.load import load_info

expt = experiment_fixture("expt_abc_params")
# MNIST-format blobs; the train and test splits share their class centres.
data_root = data_fixture(lambda root: write_mnist(root, n_train=N_TRAIN, n_test=N_TEST, seed=0), "mnist")


def test_smoke_records_result_metrics_and_info(expt, data_root, tmp_path):
    r = run(expt, tiny(data_root, parameterization="ipllr", activation="gelu", n_warmup_steps=2), tmp_path)
    res = r.result
    for split in ("val", "test"):
        for what in ("loss", "accuracy", "likelihood"):
            key = f"{split}_{what}"
            assert len(res[f"{key}_per_trial"]) == 2
            assert res[key] == pytest.approx(np.mean(res[f"{key}_per_trial"]))
            assert res[f"{key}_std"] == pytest.approx(np.std(res[f"{key}_per_trial"], ddof=1))
    betas = np.array(res["warmup_base_lrs_per_trial"])
    assert betas.shape == (2, 3) and np.isfinite(betas).all() and (betas <= 500).all()
    assert res["num_params"] == 784 * 32 + 32 + 32 * 32 + 32 * 10  # the input layer's bias is always there
    assert betas[:, 0].tolist() == [0.01, 0.01]  # the original: the input layer's warm-up base lr is base_lr
    run_dir = tmp_path / "1"
    assert json.loads((run_dir / "run.json").read_text())["status"] == "COMPLETED"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for name in ("train/loss", "train/accuracy", "train/likelihood", "train/pred_proba", "train/output_abs_mean",
                 "lr/layer0", "lr/layer2", "coord/h0", "coord/h1"):
        for k in (0, 1):
            assert metrics[f"{name}/trial{k}"]["steps"] == list(range(12)), name
    assert metrics["test/accuracy"]["steps"] == [0, 1]
    lr1 = metrics["lr/layer1/trial0"]["values"]  # warm-up: β_1 m^((L+2)/2) for 2 steps, then base_lr m^2
    assert lr1[0] == lr1[1] == pytest.approx(betas[0, 1] * 32 ** 2) and lr1[2:] == [pytest.approx(0.01 * 32 ** 2)] * 10
    for k in (0, 1):  # the likelihood of the label never exceeds that of the predicted (most probable) class
        lik, pred = (np.array(metrics[f"train/{n}/trial{k}"]["values"]) for n in ("likelihood", "pred_proba"))
        assert np.all((0 < lik) & (lik <= pred + 1e-7) & (pred <= 1)) and np.all(pred >= 0.1 - 1e-7)  # k = 10 classes
    info = json.loads((run_dir / "info.json").read_text())
    assert info["split_sizes"] == {"train": N_TRAIN - N_VAL, "val": N_VAL, "test": N_TEST}
    assert info["exponents"]["warmup_c"] == [-1.5, -2.0, -1.5]


def test_first_step_batch_calibration_takes_step_0_on_the_mock_steps_batch(expt, data_root, monkeypatch):
    seen = {}
    real_calib, real_train = expt.calibration_batches, expt.train_abc

    def calib(*a):
        seen["mock"] = real_calib(*a)
        return seen["mock"]

    def train(net, x, y, n_steps, batch_size, base_lr, generator, betas, callback, every, first, batch_list, **resume):
        seen["first"] = first
        assert batch_list is None  # batch_order fresh (default)
        return real_train(net, x, y, n_steps, batch_size, base_lr, generator, betas, callback, every, first, **resume)

    monkeypatch.setattr(expt, "calibration_batches", calib)
    monkeypatch.setattr(expt, "train_abc", train)
    losses = {}
    for mode in ("fresh", "calibration"):
        r = run(expt, tiny(data_root, parameterization="ipllr", n_trials=1, n_steps=3, first_step_batch=mode))
        losses[mode] = r.result["final_train_loss"]
        if mode == "fresh":
            assert seen["first"] is None
        else:
            assert seen["first"][0] is seen["mock"][0] and seen["first"][1] is seen["mock"][1]
    assert losses["fresh"] != losses["calibration"]


def test_fixed_list_is_drawn_once_calibrates_on_its_first_two_batches_and_trains_on_it(expt, data_root, monkeypatch):
    """The server scripts: batches = list(loader) once per run, shared by every trial; calibrate_base_lr's mock step
    on batches[0], measured on batches[1]; collect_training_losses trains on batches[i % len]."""
    seen = {"lists": [], "calib": []}
    real_train, real_warmup = expt.train_abc, expt.warmup_base_lrs

    def warmup(net, calibration, base_lr, x_step, y_step, x_probe):
        seen["calib"].append((x_step, y_step, x_probe))
        return real_warmup(net, calibration, base_lr, x_step, y_step, x_probe)

    def train(net, x, y, n_steps, batch_size, base_lr, generator, betas, callback, every, first, batch_list, **resume):
        seen["lists"].append(batch_list)
        seen["x"], seen["y"] = x, y
        assert first is None
        return real_train(net, x, y, n_steps, batch_size, base_lr, generator, betas, callback, every, first,
                          batch_list, **resume)

    monkeypatch.setattr(expt, "train_abc", train)
    monkeypatch.setattr(expt, "warmup_base_lrs", warmup)
    r = run(expt, tiny(data_root, parameterization="standard_ip_calibrated", init_mean=1.0,
                       input_scaling="multiplier_lr", batch_order="fixed_list", batch_size=64))
    first, second = seen["lists"]
    assert first is second  # one list for the run
    n = N_TRAIN - N_VAL
    assert [len(b) for b in first] == [64] * (n // 64) + [n % 64]  # one epoch, partial batch kept (300 = 4·64 + 44)
    assert sorted(torch.cat(first).tolist()) == list(range(n))
    for x_step, y_step, x_probe in seen["calib"]:
        assert torch.equal(x_step, seen["x"][first[0]]) and torch.equal(y_step, seen["y"][first[0]])
        assert torch.equal(x_probe, seen["x"][first[1]])
    betas = np.array(r.result["warmup_base_lrs_per_trial"])
    assert betas.shape == (2, 3) and betas[:, 0].tolist() == [0.01 * 785] * 2  # β_0 = base_lr (d+1): renorm
    # calibrated on the same batches, the two trials differ only by their init
    assert betas[0, 1] != betas[1, 1]


def test_grey_cifar10_is_flattened_to_1024_inputs(expt, tmp_path, monkeypatch):
    allow_tiny_cifar(monkeypatch)
    root = str(write_cifar10(tmp_path, n_train=60, n_test=20))
    res = run(expt, tiny(root, dataset="cifar10", n_val=10, batch_size=10, n_steps=3, n_trials=1)).result
    assert res["num_params"] == 1024 * 32 + 32 + 32 * 32 + 32 * 10 and math.isfinite(res["test_loss"])


def test_validation_split_is_held_out_and_seeded(expt, data_root):
    from data.vision import load_vision_dataset

    config = tiny(data_root)
    a, b, c = (expt.load_splits(config, seed, "cpu") for seed in (1, 1, 2))
    x_all = load_vision_dataset("mnist", train=True, data_root=data_root, grayscale=True)[0].flatten(1)
    rows = lambda x: {tuple(r) for r in x.numpy().round(4).tolist()}  # noqa: E731
    assert rows(a.x_train).isdisjoint(rows(a.x_val))
    assert rows(a.x_train) | rows(a.x_val) == rows(x_all)
    assert a.x_val.shape == (N_VAL, 784) and a.x_test.shape == (N_TEST, 784)
    assert torch.equal(a.x_val, b.x_val) and not torch.equal(a.x_val, c.x_val)


def test_same_seed_same_result_and_trials_differ(expt, data_root):
    a, b = (run(expt, tiny(data_root, parameterization="ntk")).result for _ in range(2))
    assert a["val_loss_per_trial"] == b["val_loss_per_trial"]
    assert a["val_loss_per_trial"][0] != a["val_loss_per_trial"][1]
    other_seed = run(expt, tiny(data_root, parameterization="ntk", seed=2)).result
    assert other_seed["val_loss_per_trial"] != a["val_loss_per_trial"]


@pytest.mark.parametrize(
    "updates,key",
    [
        (dict(parameterization="mupp"), "parameterization"),
        (dict(activation="swish"), "activation"),
        (dict(width=0), "width"),
        (dict(L=0), "L"),
        (dict(n_warmup_steps=-1), "n_warmup_steps"),
        (dict(parameterization="custom", custom_exponents=dict(a=[0, 1], b=[0, 0, 0], c=[0, 0, 0])),
         "custom_exponents.a"),
        (dict(custom_exponents=dict(a=[0, 1, 1], b=None, c=None)), "custom_exponents"),
        (dict(parameterization="ip", ip_c=[0, 1]), "ip_c"),
        (dict(dataset="svhn"), "dataset"),
        (dict(base_lr=0), "base_lr"),
        (dict(batch_size=0), "batch_size"),
        (dict(n_trials=0), "n_trials"),
        (dict(calibration="yes"), "calibration"),
        (dict(parameterization="ipllr_bias", calibration="original"), "calibration"),
        (dict(parameterization="ipllr_bias", bias=False), "bias"),
        (dict(input_scaling="mu"), "input_scaling"),
        (dict(first_step_batch="mock"), "first_step_batch"),
        (dict(batch_order="epochs"), "batch_order"),
        (dict(parameterization="ipllr", batch_order="fixed_list", first_step_batch="calibration"), "first_step_batch"),
        (dict(first_step_batch="calibration"), "first_step_batch"),  # mup: no warm-up step to take on it
        (dict(parameterization="ipllr", calibration="default", first_step_batch="calibration"), "first_step_batch"),
        (dict(parameterization="sp", input_scaling="multiplier"), "input_scaling"),
        (dict(scale_bias_lr=False), "scale_bias_lr"),
        (dict(init_mean="1"), "init_mean"),
        (dict(device="tpu"), "device"),
        (dict(coord_check_config=dict(widths=[64])), "coord_check_config.widths"),
        (dict(n_val=N_TRAIN), "n_val"),
        (dict(batch_size=N_TRAIN), "batch_size"),
    ],
)
def test_bad_config_fails_before_compute_naming_the_key(expt, data_root, updates, key, monkeypatch):
    def no_compute(*a, **k):
        raise AssertionError("compute started before validation")

    for name in ("train_abc", "calibrate_warmup_lrs", "warmup_base_lrs", "coordinate_check", "ABCNet"):
        monkeypatch.setattr(expt, name, no_compute)
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        run(expt, tiny(data_root, **updates))


def test_unknown_key_is_rejected_by_sacred(expt, data_root):
    with pytest.raises(ConfigAddedError):
        run(expt, tiny(data_root, widht=64))


def test_coord_check_command_records_table_figure_and_ratios(expt, data_root, tmp_path):
    config = tiny(data_root, parameterization="mup", coord_check_config=dict(widths=[16, 64, 32], n_steps=2, n_seeds=2))
    res = run(expt, config, tmp_path, command="coord_check").result
    assert res["widths"] == [16, 32, 64] and res["diverged_widths"] == []
    assert np.array(res["h_ratio"]).shape == (3, 2) and np.array(res["dh_ratio"]).shape == (2, 2)
    assert res["max_h_ratio"] >= 1
    table = load_info(tmp_path, 1)["coord_check"]
    assert np.array(table["h_abs"]).shape == (3, 3, 2) and np.array(table["warmup_base_lrs"]).shape == (3, 2, 3)
    np.testing.assert_allclose(np.array(table["h_abs"])[-1] / np.array(table["h_abs"])[0], res["h_ratio"])
    assert (tmp_path / "1" / "coord_check.png").stat().st_size > 1000
    fig = figures_abc.plot_coord_check(table, quantity="dh_abs", steps=[1, 2])
    assert len(fig.axes) == 2 and len(fig.axes[0].get_lines()) == 3  # h_0, h_1, output


def test_named_configs_and_print_config(expt):
    for name, expected in [("mnist_ipllr_gelu", ("ipllr", "gelu", "mnist")),
                           ("cifar10_mup_relu", ("mup", "relu", "cifar10")),
                           ("vanishing_ip", ("standard_ip", "relu", "mnist")),
                           ("ip_non_centered_calibrated", ("standard_ip_calibrated", "relu", "mnist"))]:
        config = expt.ex.run("print_config", named_configs=[name], options={"--loglevel": "ERROR"}).config
        assert (config["parameterization"], config["activation"], config["dataset"]) == expected
