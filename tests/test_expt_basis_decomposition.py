"""expt_basis_decomposition through Sacred on tiny MNIST/CIFAR in torchvision's formats (no downloads): runs,
recordings, validation, the rerun analyses and the command line."""
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from sacred.utils import ConfigAddedError

from tests._basis_decomposition_cases import npz, run
from tests.conftest import REPO, data_fixture, experiment_fixture
from tests.datasets import allow_tiny_cifar, write_cifar10, write_cifar100, write_mnist

expt = experiment_fixture("expt_basis_decomposition")
mnist_root = data_fixture(lambda root: write_mnist(root, n_train=64, n_test=32), "mnist")


# --- runs -------------------------------------------------------------------------------------

def test_smoke_records_metrics_artifact_and_an_exact_final_decomposition(expt, mnist_root, tmp_path):
    r = run(expt, mnist_root, tmp_path, seed=1)
    res = r.result
    run_dir = tmp_path / "1"
    assert json.loads((run_dir / "run.json").read_text())["status"] == "COMPLETED"
    assert res["steps"] == 8 and res["steps_per_epoch"] == 4 and res["feature_dim"] == 9
    assert res["num_basis_functions"] == 9  # k = min(C = 10, rank Φ <= p = 9)
    assert res["final_relative_residual"] < 1e-5  # F_T = Σ_i s_i φ_i
    for key in ("final_test_accuracy", "final_train_loss", "nonneg_increment_fraction",
                "rising_nonneg_increment_fraction",
                "saturation_times", "saturation_in_order", "small_init_max_abs", "singular_values", "beta_initial"):
        assert key in res, key
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {"eval/loss", "eval/accuracy", "train/loss", "train/accuracy", "train/grad_norm", "train/lr",
            "basis/beta_1", "basis/beta_3", "basis/residual"} <= set(metrics)
    assert "basis/beta_4" not in metrics
    a = npz(run_dir / "basis.npz")
    # recordings: t = 0, 3 log-spaced in [1, 4] (1, 2, 4), and the epoch ends 4 and 8
    np.testing.assert_array_equal(a["times"], [0, 1, 2, 4, 8])
    np.testing.assert_array_equal(metrics["basis/beta_1"]["steps"], a["times"])
    assert a["beta"].shape == (5, 9) and a["small_init"].shape == (9, 9)
    np.testing.assert_allclose(a["beta"][-1], a["s"], rtol=1e-4, atol=1e-6)  # β_i(θ_T) = s_i
    np.testing.assert_allclose(a["small_init"].diagonal(), np.abs(a["beta"][0]), rtol=1e-9)
    assert np.all(np.diff(a["s"]) <= 0)
    # the LR of each epoch's last step is the closed form, warm-up applied once: epoch 0 -> lr_warm, epoch 1 -> lr_max
    np.testing.assert_allclose(metrics["train/lr"]["values"], [0.01, 0.05])
    info = json.loads((run_dir / "info.json").read_text())
    assert len(info["singular_values"]) == 9 and len(info["small_init_diagonal"]) == 3


def test_gradient_checkpoints_and_reinitialised_analyses(expt, mnist_root, tmp_path):
    r = run(expt, mnist_root, tmp_path, gradient=True, grad_indep=True, beta_domin=True, log="detail",
            rerun_config=dict(iterations=5, every=2, num_basis=3), checkpoint_dir=str(tmp_path / "ckpt"), seed=2)
    res = r.result
    assert 0 <= res["grad_indep_max_abs_cos"] <= 1 and len(res["beta_domin_corr"]) == 3
    metrics = json.loads((tmp_path / "1" / "metrics.json").read_text())
    assert {"basis/grad_norm_1", "basis/grad_max_abs_cos", "grad_indep/max_abs_cos", "beta_domin/log_abs_beta_3",
            "beta_domin/log_grad_norm_1", "train/batch_loss"} <= set(metrics)
    assert metrics["grad_indep/max_abs_cos"]["steps"] == [0, 2, 4]
    a = npz(tmp_path / "1" / "basis.npz")
    assert a["grad_norms"].shape == (5, 3) and a["grad_max_abs_cos"].shape == (5,)
    assert a["coefficient_matrix"].shape == (5, 9, 9)
    np.testing.assert_allclose(np.diagonal(a["coefficient_matrix"], axis1=1, axis2=2), a["beta"], atol=1e-12)
    rr = npz(tmp_path / "1" / "rerun.npz")
    assert rr["beta"].shape == (3, 3) and rr["cosines"].shape == (3, 3, 3) and rr["max_abs_cos"].shape == (3,)
    np.testing.assert_allclose(np.diagonal(rr["cosines"], axis1=1, axis2=2), 1.0, rtol=1e-5)
    # files only: the run's resume checkpoints (tracking.preempt) live in ckpt/basis_decomposition/,
    # removed on completion
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir() if p.is_file()) == [
        f"ckpt_{t:09d}.pt" for t in (0, 1, 2, 4, 8)]
    assert not any((tmp_path / "ckpt").rglob("ckpt-*.pt"))


def test_cifar10_resnet_with_augmentation_adamw_onecycle_and_cross_entropy(expt, tmp_path, monkeypatch):
    allow_tiny_cifar(monkeypatch)
    root = str(write_cifar10(tmp_path / "data", n_train=40, n_test=12))
    r = run(expt, root, tmp_path / "runs", data="cifar10", model="resnet18", width=1, batch_size=10, num_epoch=1,
            loss_fn="ce_loss", optimizer="adamw", scheduler="onecycle", lr_setting=[0.01, 0, 0.01], n_basis=2)
    assert r.config["augment"] is True and r.config["k_M"] is None
    assert r.result["steps"] == 4 and r.result["final_relative_residual"] < 1e-5


def test_cifar100_vit_defaults_to_the_k_M_loss(expt, tmp_path, monkeypatch):
    allow_tiny_cifar(monkeypatch)
    root = str(write_cifar100(tmp_path / "data", n_train=20, n_test=12))
    r = run(expt, root, data="cifar100", model="vit", width=1, batch_size=10, num_epoch=1, optimizer="lamb",
            lr_setting=[0.01, 0, 0.01], n_basis=2, early_points=0)
    assert r.config["k_M"] == [5.0, 5.0]
    assert r.result["num_basis_functions"] == 8  # min(C = 100, p = 8 heads · max(1, width / 2))
    r = run(expt, root, data="cifar100", model="vit_timm", width=1, batch_size=10, num_epoch=1, optimizer="adamw",
            lr_setting=[0.01, 0, 0.01], n_basis=2, early_points=0)
    assert r.result["num_basis_functions"] == 6  # min(C = 100, p = 6 heads · width)


def test_crop_flip_moves_whole_images_only():
    from dynamics.basis_training import crop_flip

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 2, 5, 5, generator=gen)
    pad = torch.tensor([-1.0, -2.0])
    out = crop_flip(x, pad, gen)
    padded = torch.cat([pad.view(1, 2, 1, 1).expand(6, 2, 13, 13)], 0).clone()
    padded[:, :, 4:9, 4:9] = x
    for b in range(6):
        windows = [padded[b, :, i:i + 5, j:j + 5] for i in range(9) for j in range(9)]
        assert any(torch.equal(out[b], w) or torch.equal(out[b], w.flip(-1)) for w in windows)


def test_recording_times(expt):
    np.testing.assert_array_equal(expt.recording_times(100, 3, 4), [0, 1, 5, 22, 100, 200, 300])
    np.testing.assert_array_equal(expt.recording_times(4, 2, 0, every=3), [0, 3, 4, 6, 8])
    np.testing.assert_array_equal(expt.recording_times(4, 3, 0, every=3, until=7), [0, 3, 4, 6])
    # mnist.py's loop: F at t = 0, and after the step of every iteration `it` with it % 20 == 0 and it < 2001,
    # stored under it + 1; 60000 images in batches of 256 are 235 steps an epoch (last batch partial), 20 epochs
    want = [0] + [it + 1 for it in range(235 * 20) if it % 20 == 0 and it < 2001]
    got = expt.recording_times(235, 20, 0, every=20, first=1, until=2001, epoch_ends=False)
    np.testing.assert_array_equal(got, want)
    assert got[-1] == 2001 and len(got) == 102


def test_partial_last_batch_is_kept_unless_drop_last(expt, mnist_root, tmp_path):
    """torch's DataLoader (every original script) keeps the last partial batch: 64 images in 24s are 3 steps."""
    r = run(expt, mnist_root, tmp_path, batch_size=24, num_epoch=1, early_points=0, seed=1)
    assert r.result["steps_per_epoch"] == 3 and r.result["steps"] == 3
    metrics = json.loads((tmp_path / "1" / "metrics.json").read_text())
    acc = metrics["train/accuracy"]["values"][0]
    assert acc * 64 == pytest.approx(round(acc * 64), abs=1e-9)  # correct / 64 images, not / (3 · 24)
    assert run(expt, mnist_root, batch_size=24, num_epoch=1, early_points=0, drop_last=True).result["steps"] == 2


def test_log_detail_saves_phi_outputs_and_head(expt, mnist_root, tmp_path):
    run(expt, mnist_root, tmp_path, log="detail", seed=1)
    d = npz(tmp_path / "1" / "detail.npz")
    a = npz(tmp_path / "1" / "basis.npz")
    assert d["phi"].shape == (32, 9) and d["W"].shape == (10, 9) and d["F"].shape == (5, 32, 10)
    np.testing.assert_array_equal(d["times"], a["times"])
    # the final outputs are Φ Wᵀ (float32 products of O(1) terms)
    np.testing.assert_allclose(d["F_final"], d["phi"] @ d["W"].T, rtol=1e-4, atol=1e-5)
    # train.py's basis from the saved tensors, with numpy: svd(Φ), B = W V S / √N; its singular values are
    # unique (unlike the vectors of a width-2 net's near-degenerate spectrum), float64 from the same float32 inputs
    U, S, Vt = np.linalg.svd(d["phi"].astype(float), full_matrices=False)
    B = d["W"].astype(float) @ Vt.T * S / math.sqrt(32)
    u, s, vt = np.linalg.svd(B)
    np.testing.assert_allclose(s[: len(a["s"])], a["s"], rtol=1e-9, atol=1e-12)
    # β_1 = u_1ᵀ F_0ᵀ U v_1 / √N (s_1 is well separated; its sign is fixed by the pair u_1, v_1)
    beta1 = u[:, 0] @ (d["F"][0].astype(float).T @ U / math.sqrt(32)) @ vt[0]
    assert beta1 == pytest.approx(float(a["beta"][0, 0]), rel=1e-6, abs=1e-9)


@pytest.mark.filterwarnings("ignore:Φ has numerical rank")  # a width-2 ReLU net may lose features
def test_same_seed_same_coefficients(expt, mnist_root, tmp_path):
    a = run(expt, mnist_root, tmp_path / "a", seed=5)
    b = run(expt, mnist_root, tmp_path / "b", seed=5)
    assert a.result["beta_initial"] == b.result["beta_initial"]
    assert a.result["singular_values"] == b.result["singular_values"]
    c = run(expt, mnist_root, seed=6)
    assert c.result["beta_initial"] != a.result["beta_initial"]


@pytest.mark.parametrize("updates, key", [
    (dict(model="resnet101"), "model must be one of"),
    (dict(data="svhn"), "data must be one of"),
    (dict(optimizer="adam"), "optimizer must be one of"),
    (dict(loss_fn="l1_loss"), "loss_fn must be one of"),
    (dict(lr_setting=[0.1, 5]), "lr_setting must be a list .* of length 3"),
    (dict(lr_setting=[0.1, 2.5, 0.01]), r"lr_setting\[1\]"),
    (dict(init_scale=-1.0), "init_scale must be a finite number >= 0"),
    (dict(n_basis=10), r"n_basis must be <= min\(number of classes 10, feature dim p = 9\) = 9; got 10"),
    (dict(n_basis=11, width=64), r"n_basis must be <= .* = 10; got 11"),
    (dict(n_basis=4, eval_points=3), r"eval_points 3\) = 3"),
    (dict(scheduler="cosine"), "scheduler must be one of"),
    (dict(schedule_unit="step"), "schedule_unit must be one of"),
    (dict(k_M=[5.0], loss_fn="mse_loss"), r"k_M must be None or a list \[k, M\]"),
    (dict(k_M=[5.0, 5.0], loss_fn="ce_loss"), "k_M applies to loss_fn='mse_loss' only"),
    (dict(log="verbose"), "log must be one of"),
    (dict(batch_size=0), "batch_size must be an integer >= 1"),
    (dict(width=0), "width must be an integer >= 1"),
    (dict(grad_clip=0.0), "grad_clip must be None or a finite number > 0"),
    (dict(saturation_level=1.5), "saturation_level must be a number in"),
    (dict(device="tpu"), "device must be one of"),
    (dict(grad_indep=True, rerun_config=dict(iterations=5, every=1, num_basis=12)),
     "rerun_config.num_basis must be <= 9"),
])
def test_bad_config_fails_before_compute_naming_the_key(expt, mnist_root, updates, key, monkeypatch):
    def no_compute(*a, **k):
        raise AssertionError("compute started before validation")

    monkeypatch.setattr(expt, "load_vision_dataset", no_compute)
    monkeypatch.setattr(expt, "build_model", no_compute)
    with pytest.raises(ValueError, match=key):
        run(expt, mnist_root, **updates)


def test_n_basis_beyond_the_loaded_evaluation_points_fails_before_training(expt, mnist_root, monkeypatch):
    monkeypatch.setattr(expt, "build_model", lambda *a, **k: (_ for _ in ()).throw(AssertionError("trained")))
    with pytest.raises(ValueError, match="batch_size must be <= the number of training images"):
        run(expt, mnist_root, batch_size=65)


def test_unknown_key_is_rejected_by_sacred(expt, mnist_root):
    with pytest.raises(ConfigAddedError):
        run(expt, mnist_root, rerun_config=dict(iterations=5, every=1, num_basis=3, everyy=2))
    with pytest.raises(ConfigAddedError):
        run(expt, mnist_root, n_bases=3)


def test_rerun_evaluates_before_each_of_the_first_steps(expt, mnist_root, tmp_path):
    """grad_indep.py: ∇β at t = 0, ..., iterations − 1, before each step of the fresh run."""
    run(expt, mnist_root, tmp_path, grad_indep=True, small_init=False,
        rerun_config=dict(iterations=4, every=1, num_basis=3))
    r = npz(tmp_path / "1" / "rerun.npz")
    np.testing.assert_array_equal(r["times"], [0, 1, 2, 3])
    np.testing.assert_allclose(r["max_abs_cos_matrix"], np.abs(r["cosines"]).max(axis=0), rtol=0, atol=0)  # a copy
    assert int(r["num_points"]) == 32


@pytest.mark.slow  # a fresh interpreter importing torch, torchvision and timm: ~20 s on a shared CPU
def test_command_line_with_named_config_records_to_the_default_runs_dir(mnist_root, tmp_path):
    cmd = [sys.executable, str(REPO / "experiments" / "expt_basis_decomposition.py"), "with", "mnist",
           f"data_root={mnist_root}", "width=2", "batch_size=32", "num_epoch=1", "n_basis=2",
           "device=cpu", "seed=3"]
    out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    run_dir = tmp_path / "runs" / "basis_decomposition" / "1"
    config = json.loads((run_dir / "config.json").read_text())
    assert config["optimizer"] == "lars" and config["lr_setting"] == [0.05, 0, 0.05] and config["width"] == 2
    assert json.loads((run_dir / "run.json").read_text())["status"] == "COMPLETED"
    assert (run_dir / "basis.npz").exists()
