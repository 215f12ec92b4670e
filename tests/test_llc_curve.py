"""models.resnet and expt_llc_curve on a tiny CIFAR-10 in torchvision's real on-disk format.

No downloads: tests.datasets writes the pickled batches into a temp dir.
"""
import io
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from sacred.utils import ConfigAddedError
from torch.func import vmap

from data.vision import load_vision_dataset
from gen_commands import expt_llc_curve as gen
from gen_commands import sweep
from gen_commands.commands import config_overrides
from llc.estimate import flat_model_for_module
from models.resnet import build_resnet, stage_widths
from tests.conftest import experiment_fixture, forbid_compute, run_experiment
from tests.datasets import allow_tiny_cifar, write_cifar10
from tracking.figures_llc import checkpoints_frame, llc_curve_table, plot_llc_curve, plot_llc_curves
from tracking.load import load_artifact, load_metrics, load_runs
from tracking.sacred_utils import run_cli

# --------------------------------------------------------------- models.resnet


def test_resnet18_is_torchvisions_at_width_one():
    ours, theirs = build_resnet("resnet18", num_classes=10), torchvision.models.resnet18(num_classes=10)
    ours.load_state_dict(theirs.state_dict())  # same names and shapes
    ours.eval(), theirs.eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(ours(x), theirs(x))


def test_cifar_stem_and_channel_count():
    net = build_resnet("resnet18_cifar", num_classes=10, base_channels=4)
    assert stage_widths(4) == [4, 8, 16, 32] and stage_widths(64) == [64, 128, 256, 512]  # the original's k, 2k, 4k, 8k
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1) and isinstance(net.maxpool, torch.nn.Identity)
    assert net.layer1[0].conv1.out_channels == 4 and net.fc.in_features == 32
    feats = net.layer1(net.relu(net.bn1(net.conv1(torch.randn(1, 3, 32, 32)))))
    assert feats.shape == (1, 4, 32, 32)  # no downsampling before layer1
    imagenet = build_resnet("resnet18", base_channels=4)
    assert imagenet.maxpool(imagenet.conv1(torch.randn(1, 3, 32, 32))).shape[-1] == 8
    with pytest.raises(ValueError, match="model_name"):
        build_resnet("resnet50")
    for bad in (0, 0.5, True):
        with pytest.raises(ValueError, match="base_channels"):
            stage_widths(bad)


def test_eval_mode_batchnorm_vmaps_over_chains_with_fixed_running_stats():
    net = build_resnet("resnet18_cifar", num_classes=10, base_channels=2)
    net.train()
    net(torch.randn(8, 3, 32, 32))  # move the running statistics away from their init
    net.eval()
    stats = {k: v.clone() for k, v in net.named_buffers()}
    f, w = flat_model_for_module(net, torch.float32, torch.device("cpu"))
    ws = torch.stack([w, w + 0.01 * torch.randn_like(w)])  # (2, P)
    x = torch.randn(3, 3, 32, 32)
    out = vmap(f, in_dims=(0, None))(ws, x)  # (2, 3, 10)
    torch.testing.assert_close(out[0], net(x), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(out[0], out[1])
    assert all(torch.equal(stats[k], v) for k, v in net.named_buffers())


# --------------------------------------------------------------- the experiment

def tiny(root, **updates):
    cfg = dict(
        data_root=str(root), device="cpu", logging_period=2,
        model_data_config=dict(model_name="resnet18", layer_width_factor=2),
        training_config=dict(num_steps=4, batch_size=8, learning_rate=1e-2),
        sgld_config=dict(num_steps=6, batch_size=8, num_chains=2, epsilon=1e-5),
    )
    cfg.update(updates)
    return cfg


expt = experiment_fixture("expt_llc_curve")


def run(expt, tmp_path=None, **config):
    return run_experiment(expt, config, tmp_path)


def test_smoke_records_every_checkpoint_and_the_figures_read_it(expt, cifar, tmp_path):
    store = tmp_path / "runs"
    r = run(expt, store, **tiny(cifar, seed=3, do_plot=True))
    checkpoints = r.info["checkpoints"]
    assert [c["t"] for c in checkpoints] == [0, 2, 4]
    for c in checkpoints:
        assert c["status"] == "ok"
        assert {"train_loss", "train_accuracy", "test_loss", "test_accuracy", "lambdahat", "lambdahat_std",
                "lambdahat_per_chain", "rhat", "init_loss", "trace_mean_per_chain"} <= set(c)
        assert len(c["lambdahat_per_chain"]) == 2 and 0 <= c["test_accuracy"] <= 1
    assert checkpoints[0]["batch_loss"] is None and checkpoints[1]["batch_loss"] > 0
    assert checkpoints[0]["init_loss"] == pytest.approx(checkpoints[0]["train_loss"], rel=1e-4)
    res = r.result
    assert res["num_checkpoints"] == 3 and res["num_failed_checkpoints"] == 0 and res["num_training_data"] == 40
    metrics = json.loads((store / "1" / "metrics.json").read_text())
    assert {"llc/lambdahat", "llc/lambdahat_std", "train/loss", "train/batch_loss", "train/accuracy",
            "test/loss", "test/accuracy"} <= set(metrics)
    assert metrics["llc/lambdahat"]["steps"] == [0, 2, 4]
    traces = np.load(io.BytesIO(load_artifact(store, 1, "llc_traces.npz")))
    assert traces["loss_trace"].shape == (3, 2, 6) and traces["t"].tolist() == [0, 2, 4]
    assert (store / "1" / "llc_curve.png").read_bytes()[:4] == b"\x89PNG"

    fig = plot_llc_curve(checkpoints_frame(checkpoints))
    assert fig.axes[0].get_ylabel() == "λ̂"
    runs, long = load_runs(store, experiment="llc_curve"), load_metrics(store, experiment="llc_curve")
    table = llc_curve_table(runs, long, "training_config.learning_rate")
    assert len(table) == 3 and set(table["hue"]) == {0.01}
    fig = plot_llc_curves(runs, long, hue="training_config.momentum")
    (line,) = fig.axes[0].get_lines()
    assert line.get_label() == "momentum=None" and list(line.get_xdata()) == [0, 2, 4]


def test_force_realisable_and_label_noise(expt, cifar):
    r = run(expt, **tiny(cifar, force_realisable=True, model_data_config=dict(
        model_name="resnet18_cifar", layer_width_factor=2, label_noise_level=0.5)))
    first = r.info["checkpoints"][0]
    # Targets are the model's own predictive distribution: L_n(w_t) is its mean entropy, not the CE against labels.
    assert first["status"] == "ok" and first["init_loss"] != pytest.approx(first["train_loss"], rel=1e-3)
    assert 0 < first["init_loss"] <= np.log(10) + 1e-4
    y = torch.arange(10).repeat(100)
    noisy = expt.noisy_labels(y, 0.5, 10, torch.Generator().manual_seed(0))
    assert 0.4 < float((noisy != y).float().mean()) < 0.5  # half replaced, a tenth of those by the same class


def test_divergent_checkpoint_is_recorded_and_training_goes_on(expt, cifar, tmp_path):
    r = run(expt, tmp_path, **tiny(cifar, sgld_config=dict(num_steps=4, batch_size=8, num_chains=2, epsilon=1e30,
                                                           gamma=0.0)))
    checkpoints = r.info["checkpoints"]
    assert len(checkpoints) == 3 and all(c["status"] == "failed" and "diverged" in c["reason"] for c in checkpoints)
    assert r.result["num_failed_checkpoints"] == 3 and r.result["final_lambdahat"] is None
    assert json.loads((tmp_path / "1" / "run.json").read_text())["status"] == "COMPLETED"


@pytest.mark.parametrize("updates, key", [
    (dict(model_data_config=dict(model_name="vgg11")), "model_data_config.model_name"),
    (dict(model_data_config=dict(data_name="mnist")), "model_data_config.data_name"),
    (dict(model_data_config=dict(label_noise_level=1.5)), "model_data_config.label_noise_level"),
    (dict(model_data_config=dict(layer_width_factor=0)), "model_data_config.layer_width_factor"),
    (dict(logging_period=0), "logging_period"),
    (dict(logging_period=-5), "logging_period"),
    (dict(sgld_config=dict(batch_size=41, num_steps=6)), "sgld_config.batch_size"),
    (dict(training_config=dict(batch_size=41, num_steps=4)), "training_config.batch_size"),
    (dict(training_config=dict(l2_regularization=-1.0, num_steps=4, batch_size=8)),
     "training_config.l2_regularization"),
    (dict(training_config=dict(optim="lbfgs", num_steps=4, batch_size=8)), "training_config.optim"),
    (dict(force_realisable="yes"), "force_realisable"),
])
def test_bad_config_fails_before_compute_naming_the_key(expt, cifar, updates, key, monkeypatch):
    forbid_compute(monkeypatch, expt, "train", "estimate_llc_flat", "build_resnet")
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        run(expt, **tiny(cifar, **updates))


def test_unknown_key_is_rejected_by_sacred(expt, cifar):
    with pytest.raises(ConfigAddedError):
        run(expt, **tiny(cifar, training_config=dict(weight_decay=0.1)))


def test_command_line_with_comment_and_the_readme_keys(expt, cifar, tmp_path):
    readme = ["sgld_config.epsilon=2e-07", "sgld_config.gamma=1.0", "sgld_config.num_steps=6",
              "sgld_config.batch_size=8", "loss_trace_minibatch=True", "training_config.optim=sgd",
              "training_config.momentum=None", "training_config.num_steps=2", "training_config.learning_rate=0.005",
              "training_config.batch_size=8", "training_config.l2_regularization=None", "force_realisable=False",
              "logging_period=2", "do_plot=False", "verbose=False", "seed=0"]
    argv = ["expt_llc_curve.py", "--comment", "a note", "-F", str(tmp_path), "with", "expt_name=readme",
            f"data_root={cifar}", "device=cpu", "sgld_config.num_chains=2",
            "model_data_config.layer_width_factor=2", *readme]
    r = run_cli(expt.ex, argv)
    expt.ex.observers[:] = []
    record = json.loads((tmp_path / "1" / "run.json").read_text())
    assert record["status"] == "COMPLETED" and record["meta"]["comment"] == "a note"
    assert r.config["training_config"]["momentum"] is None and r.config["expt_name"] == "readme"


def test_generator_crosses_the_list_options_and_sacred_accepts_the_keys(tmp_path, expt, cifar):
    out = tmp_path / "cmds.txt"
    assert gen.main([str(out), "--lr", "1e-3", "5e-3", "--batch", "128", "--momentum", "None", "0.9",
                     "--l2", "None", "0.01", "--seeds", "0", "1"]) == 0
    ovs = [config_overrides(line) for line in out.read_text().splitlines()]
    assert len(ovs) == 2 * 2 * 2 * 2
    assert [(o["training_config.learning_rate"], o["training_config.momentum"], o["training_config.l2_regularization"],
             o["seed"]) for o in ovs[:4]] == [(1e-3, None, None, 0), (1e-3, None, None, 1),
                                             (1e-3, None, 0.01, 0), (1e-3, None, 0.01, 1)]
    for ov in ovs:
        key = ov.pop("run_key")
        assert key == sweep.run_key(gen.EXPERIMENT, ov)
        expt.ex.run("print_config", config_updates={**ov, "data_root": str(cifar)})  # keys exist, else ConfigAddedError
    for preset, axis, values in [("paper_lr", "training_config.learning_rate", [0.005, 0.01, 0.05, 0.1, 0.2]),
                                 ("paper_momentum", "training_config.momentum", [None, 0.1, 0.3, 0.5, 0.7, 0.9])]:
        path = tmp_path / f"{preset}.txt"
        assert gen.main([str(path), "--preset", preset]) == 0
        ovs = [config_overrides(line) for line in path.read_text().splitlines()]
        assert sorted({o[axis] for o in ovs}, key=lambda v: -1 if v is None else v) == values
        assert {o["seed"] for o in ovs} == {0, 1, 2, 3, 4} and all(o["expt_name"] == preset for o in ovs)
    (tmp_path / "r.txt").write_text("")  # an existing file is only overwritten with --force
    with pytest.raises(SystemExit):
        gen.main([str(tmp_path / "r.txt"), "--preset", "readme"])
    assert gen.main([str(tmp_path / "r.txt"), "--preset", "readme", "--force"]) == 0
    (line,) = (tmp_path / "r.txt").read_text().splitlines()
    ov = config_overrides(line)
    assert (ov["training_config.num_steps"], ov["training_config.learning_rate"], ov["sgld_config.batch_size"],
            ov["logging_period"]) == (30001, 0.005, 2048, 1000)
    with pytest.raises(SystemExit):
        gen.main([str(tmp_path / "bad.txt"), "--momentum", "1.5"])


@pytest.mark.slow
def test_longer_run_learns_and_every_estimate_is_finite(expt, tmp_path, monkeypatch):
    """A few hundred SGD steps on a learnable tiny CIFAR-10: the loss falls and λ̂ is finite throughout."""
    torch.set_num_threads(1)  # tiny tensors: one thread is as fast, and immune to oversubscribed CPUs
    root = tmp_path / "data"
    write_cifar10(root, n_train=300, n_test=100)
    allow_tiny_cifar(monkeypatch)
    r = run(expt, **tiny(root, seed=0, logging_period=50,
                         model_data_config=dict(model_name="resnet18", layer_width_factor=4),
                         training_config=dict(num_steps=150, batch_size=32, learning_rate=0.05, momentum=0.9),
                         sgld_config=dict(num_steps=60, batch_size=64, num_chains=2, epsilon=1e-5, gamma=1.0)))
    checkpoints = r.info["checkpoints"]
    print([(c["t"], round(c["train_loss"], 3), round(c["test_accuracy"], 2), round(c["lambdahat"], 2))
           for c in checkpoints])
    assert [c["t"] for c in checkpoints] == [0, 50, 100, 150]
    assert all(c["status"] == "ok" and np.isfinite(c["lambdahat"]) for c in checkpoints)
    assert checkpoints[-1]["train_loss"] < 0.5 * checkpoints[0]["train_loss"]
    assert checkpoints[-1]["test_accuracy"] > 0.3


# --------------------------------------------------------------- parity with the original expt_llc_curve

def test_l2_regularization_adds_c_sum_p_squared_to_the_loss():
    """One SGD step on L + c Σ p²: the gradient gains 2c p and the returned loss includes c Σ p²."""
    from dynamics.train import TrainingConfig, train

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2).double()
    x, y = torch.randn(5, 3, dtype=torch.float64), torch.randint(0, 2, (5,))
    before = [p.detach().clone() for p in model.parameters()]
    c, lr = 0.3, 0.1
    cfg = TrainingConfig(optim="sgd", learning_rate=lr, momentum=None, batch_size=5, num_steps=1, l2_regularization=c)
    gen = torch.Generator().manual_seed(1)
    idx = torch.randint(0, 5, (5,), generator=torch.Generator().manual_seed(1))  # the batch train() will draw
    ref = torch.nn.Linear(3, 2).double()
    ref.load_state_dict(model.state_dict())
    ce = F.cross_entropy(ref(x[idx]), y[idx])
    grads = torch.autograd.grad(ce, list(ref.parameters()))
    losses = train(model, F.cross_entropy, x, y, cfg, gen)
    penalty = c * sum(float((p ** 2).sum()) for p in before)
    assert losses[0] == pytest.approx(float(ce.detach()) + penalty, rel=1e-12)
    for p, p0, g in zip(model.parameters(), before, grads):
        # float64, one step: agreement to rounding of O(1) numbers.
        torch.testing.assert_close(p.detach(), p0 - lr * (g + 2 * c * p0), rtol=1e-12, atol=1e-14)


def test_noisy_labels_change_exactly_floor_level_n_positions(expt):
    """The original's introduce_label_noise: int(level·n) distinct positions get a uniform class."""
    y = torch.zeros(1000, dtype=torch.long)
    out = expt.noisy_labels(y, 0.3, 10**6, torch.Generator().manual_seed(0))
    # 300 positions, each new label 0 with probability 1e-6: all 300 differ unless a draw hits 0.
    assert int((out != y).sum()) == 300 and torch.equal(y, torch.zeros_like(y))


def test_sgld_sees_clean_labels_and_unit_interval_pixels_penalty_in_losses(expt, cifar, monkeypatch):
    seen = {}
    real = expt.estimate_llc_flat

    def spy(loss, w, x, y, *a, **k):
        seen.setdefault("x", x), seen.setdefault("y", y)
        return real(loss, w, x, y, *a, **k)

    monkeypatch.setattr(expt, "estimate_llc_flat", spy)
    r = run(expt, **tiny(cifar, seed=1, training_config=dict(num_steps=2, batch_size=8, learning_rate=1e-2,
                                                              l2_regularization=1e-3),
                         model_data_config=dict(model_name="resnet18", layer_width_factor=2, label_noise_level=1.0)))
    _, clean = load_vision_dataset("cifar10", train=True, data_root=str(cifar), normalize=False)
    assert torch.equal(seen["y"], clean)  # noisy labels train SGD only
    assert float(seen["x"].min()) >= 0 and float(seen["x"].max()) <= 1  # pixels / 255, as the original
    for c in r.info["checkpoints"]:
        assert c["l2_penalty"] > 0
        # penalty in float64, CE in float32: the sum is exact to float64 rounding.
        assert c["train_loss"] == pytest.approx(c["train_loss_no_reg"] + c["l2_penalty"], rel=1e-12)
        assert c["test_loss"] == pytest.approx(c["test_loss_no_reg"] + c["l2_penalty"], rel=1e-12)
    assert r.info["checkpoints"][1]["batch_loss"] > r.info["checkpoints"][1]["l2_penalty"]  # batch loss includes it
