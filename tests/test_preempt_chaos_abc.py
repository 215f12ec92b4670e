"""Interrupt expt_chaos (and expt_abc_params) once mid-run, resume, compare with an uninterrupted run.

The pattern of tests/test_preempt_experiments.py: DLT_PREEMPT_TEST_SIGNAL makes the run send
itself a signal at one step boundary; the rerun of the same config (same run_key) resumes from
the checkpoint. Result, metrics, info and artifacts are compared exactly (CPU, deterministic).
"""
from __future__ import annotations

import pytest
import torch

from tests.datasets import write_usps
from tests.test_preempt_experiments import resumes_bit_for_bit


@pytest.fixture(scope="module")
def usps_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("chaos_preempt_data")
    write_usps(root, n_train=24, n_test=12)
    return str(root)


def chaos_config(root, variant):
    """Every piece of loop state in use between the two variants: three epochs of three batches,
    momentum buffers, the Lyapunov frame with initial vectors (subspace similarity fixed at t0 = 2),
    the previous chaotic Hessian subspace, the gradient window, spectra and |H| records and the epoch-0
    eigenthings artifact; ``cgd``: CGD with random directions and noise (its generator); ``copies``:
    two perturbed copies (CGD excludes them) with their distances and trajectories."""
    base = dict(
        data_root=root, batch_size=8, max_epochs=3, device="cpu", seed=4, run_key=f"chaos-test-{variant}",
        model=dict(inter_dim=1), lyapunov=dict(k=None),  # P = 277; full frame (the initial vectors need it)
        logging=dict(log_subsim=True, log_lyapunov_subsim=True, t_lya_subsim=[2], plot_eigs_every=2, plot_mats_every=3,
                     signal_noise_window=2, save_lyapunov_at=0, save_eigenthings=True),
    )
    if variant == "cgd":
        base["optim"] = dict(name="cgd", lr=1e-2, momentum=0.5, k=3, prune_set="pos", prune_k="rand", noise=True)
    else:
        base.update(parallel=2, perturb_strat="randn", perturb_eps=[1e-2], optim=dict(lr=1e-2, momentum=0.5))
        base["logging"]["plot_trajectories"] = True
    return base


# 4: mid-epoch; 3: an epoch's first batch
@pytest.mark.filterwarnings("ignore:tracking 554 Lyapunov directions on the CPU")  # the full frame is needed, and tiny
@pytest.mark.parametrize("variant,step,signame", [("cgd", 4, "SIGTERM"), ("copies", 3, "SIGUSR1")])
def test_chaos_resumes_bit_for_bit(tmp_path, monkeypatch, usps_root, variant, step, signame):
    config = chaos_config(usps_root, variant)
    full, cut = resumes_bit_for_bit("expt_chaos", tmp_path, monkeypatch, config, step, signame)
    assert full["run"]["result"]["num_steps"] == 9
    cut_steps, full_steps = cut["metrics"]["train/batch_loss"]["steps"], full["metrics"]["train/batch_loss"]["steps"]
    assert 0 < len(cut_steps) == step < len(full_steps)
    used = {"cgd": ("cgd/pruned_grad_frac",), "copies": ("perturb/distance/copy2",)}[variant]
    for name in ("subsim/lyapunov/t2", "subsim/hessian_chaotic", "grad/snr", "lyapunov/max") + used:
        assert name in full["metrics"], name  # the state the test means to exercise was in use
    files = {"eigenthings.npz", "eigenthings_epoch0.npz", "hessian_spectra.npz", "hessian_matrices.npz"}
    files |= {"trajectories.npz", "distances.npz"} if variant == "copies" else set()
    assert files <= set(full["arrays"])


@pytest.fixture(scope="module")
def mnist_root(tmp_path_factory):
    from tests.datasets import write_mnist

    return str(write_mnist(tmp_path_factory.mktemp("abc_preempt_mnist"), n_train=60, n_test=20, seed=0))


def abc_config(root, batch_order):
    """Two trials of 10 steps, epochs of 4 batches (50 training points, the last batch of 2); IPLLR with
    two calibrated warm-up steps (the per-trial betas), fresh epochs or the run's fixed batch list."""
    extra = dict(first_step_batch="calibration") if batch_order == "epochs" else dict(batch_order="fixed_list")
    return dict(data_root=root, dataset="mnist", n_val=10, L=2, width=16, batch_size=16, n_steps=10, n_trials=2,
                parameterization="ipllr", activation="gelu", n_warmup_steps=2, device="cpu", seed=1,
                run_key=f"abc-test-{batch_order}", **extra)


# checkpoint steps count k·n_steps + t: 13 is trial 1's step 3 (mid-epoch); 10 its step 0 (trial 0 finished)
@pytest.mark.parametrize("batch_order,step,signame", [("epochs", 13, "SIGTERM"), ("fixed_list", 10, "SIGUSR1")])
def test_abc_params_resumes_bit_for_bit(tmp_path, monkeypatch, mnist_root, batch_order, step, signame):
    config = abc_config(mnist_root, batch_order)
    full, cut = resumes_bit_for_bit("expt_abc_params", tmp_path, monkeypatch, config, step, signame)
    assert len(full["run"]["result"]["warmup_base_lrs_per_trial"]) == 2
    cut_steps = cut["metrics"].get("train/loss/trial1", {"steps": []})["steps"]
    assert cut_steps == list(range(step - 10)) and len(cut["metrics"]["train/loss/trial0"]["steps"]) == 10
    assert full["metrics"]["train/loss/trial1"]["steps"] == list(range(10))


class _Stop(Exception):
    pass


@pytest.mark.parametrize("fixed_list", [False, True])
def test_train_abc_resumed_from_its_captured_state_equals_uninterrupted(fixed_list):
    """The engine alone, through a torch.save / weights-only load of the captured state: the same losses
    (every step's, not only the last the experiment reports) and bit-identical weights."""
    import io

    from dynamics.abc_train import fixed_batch_list, train_abc
    from models.abc import ABCNet, ABCNetSpec, make_parameterization

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(30, 6, generator=g), torch.randint(0, 3, (30,), generator=g)
    spec = ABCNetSpec(make_parameterization("mup", 2), 6, 8, 3, "relu")
    batch_list = fixed_batch_list(30, 7, torch.Generator().manual_seed(5)) if fixed_list else None

    def train(**kw):
        net = ABCNet(spec, torch.Generator().manual_seed(1))
        losses = train_abc(net, x, y, 12, 7, 0.1, torch.Generator().manual_seed(2), batch_list=batch_list, **kw)
        return net, losses

    saved = {}

    def boundary(t, capture):
        if t == 6:  # mid-epoch: epochs of 5 batches (the last of 2)
            buf = io.BytesIO()
            torch.save(capture(), buf)
            buf.seek(0)
            saved["state"] = torch.load(buf, weights_only=True)
            raise _Stop

    full_net, full_losses = train()
    with pytest.raises(_Stop):
        train(boundary=boundary)
    net, losses = train(resume=saved["state"])
    assert losses == full_losses and len(losses) == 12
    for (name, a), b in zip(full_net.state_dict().items(), net.state_dict().values()):
        assert torch.equal(a, b), name


def test_chaos_checkpoint_from_before_the_accuracy_rename_keeps_its_epochs():
    # A checkpoint written when the record said train_acc / test_acc resumes into the
    # renamed keys, so final_*_accuracy and best_test_accuracy still cover every epoch.
    from dynamics.chaos_resume import _restore_record

    old = {"train_acc": {"kind": "plain", "items": [0.25, 0.5]},
           "test_acc": {"kind": "plain", "items": [0.125]},
           "train_loss": {"kind": "plain", "items": [1.5, 1.0]}}
    record = _restore_record(old)
    assert record["train_accuracy"] == [0.25, 0.5]
    assert record["test_accuracy"] == [0.125]
    assert record["train_loss"] == [1.5, 1.0]
    assert "train_acc" not in record and "test_acc" not in record
