"""expt_chaos through Sacred on tiny USPS/FashionMNIST files: smoke, recording, validation, CGD, eigenthings
round trip and perturbations, the command line; the CNN against the original's layers."""
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from sacred.observers import FileStorageObserver
from sacred.utils import ConfigAddedError

from tests._chaos_cases import metrics_of, run, tiny, write_chaos_data
from tests.conftest import REPO, data_fixture, experiment_fixture

data_root = data_fixture(write_chaos_data, "chaos_data")
expt = experiment_fixture("expt_chaos")


def test_smoke_records_hessian_chaos_and_lyapunov(expt, data_root, tmp_path):
    r = run(expt, tiny(data_root, logging=dict(log_subsim=True, signal_noise_window=2, plot_eigs_every=2,
                                               plot_mats_every=4)), tmp_path)
    res = r.result
    assert res["model_dim"] == 256 * 4 + 4 + 4 * 10 + 10 and res["num_steps"] == 5
    assert 0 <= res["final_test_accuracy"] <= 1 and res["lyapunov"]["k"] == 8
    m = metrics_of(tmp_path)
    expected = {"train/batch_loss", "train/batch_accuracy", "hessian/max_eig", "hessian/min_eig", "hessian/mean_eig",
                "hessian/num_pos",
                "hessian/num_neg", "hessian/num_zero", "chaos/num_neg", "chaos/num_large", "chaos/num_chaotic",
                "grad/cos_max_eig", "grad/cos_min_eig", "lyapunov/max", "lyapunov/min", "lyapunov/num_pos",
                "epoch/test_accuracy", "subsim/hessian_chaotic", "subsim/hessian_chaotic_baseline", "grad/snr"}
    assert expected <= set(m)
    assert m["hessian/num_pos"]["steps"] == [0, 1, 2, 3, 4]
    for step in range(5):
        assert sum(m[f"hessian/num_{k}"]["values"][step] for k in ("pos", "neg", "zero")) == res["model_dim"]
    assert all(0 <= v <= 1 for v in m["grad/cos_max_eig"]["values"])
    run_dir = tmp_path / "1"
    spectra = np.load(run_dir / "hessian_spectra.npz")
    assert spectra["steps"].tolist() == [0, 2, 4] and spectra["eigenvalues"].shape == (3, res["model_dim"])
    assert np.load(run_dir / "hessian_matrices.npz")["abs_hessian"].shape == (2, 256, 256)
    assert np.load(run_dir / "lyapunov_final.npz")["exponents"].shape == (8,)


def test_grad_snr_closed_form():
    from tracking.chaos_record import grad_snr

    # g = (1, 0), (3, 0): ‖mean g‖² = 4 over mean ‖g − mean g‖² = 1; exact in float64.
    g1, g3 = torch.tensor([1.0, 0.0], dtype=torch.float64), torch.tensor([3.0, 0.0], dtype=torch.float64)
    assert grad_snr([g1, g3]) == 4.0
    assert grad_snr([torch.ones(3, dtype=torch.float64)] * 2) is None  # no noise: undefined, not logged


def test_log_freq_thins_metrics_and_same_seed_reproduces(expt, data_root):
    a = run(expt, tiny(data_root, logging=dict(log_freq=2)))
    b = run(expt, tiny(data_root, logging=dict(log_freq=2)))
    assert a.result == b.result
    assert run(expt, tiny(data_root, seed=2)).result["final_train_loss"] != a.result["final_train_loss"]


def test_cnn_fmnist_momentum_and_cgd_neg(expt, data_root, tmp_path):
    # Generic path (dense vmapped Hessian) on a 660-parameter CNN, momentum (tangent state (δw, δv)).
    r = run(expt, tiny(data_root, dataset="fmnist", max_steps=3, model=dict(name="cnn", base_channels=1),
                       optim=dict(name="cgd", prune_set="neg", k=3, prune_start=1, momentum=0.9)), tmp_path)
    # The original's CNN at c = 1: conv1 1->1, tail convs 1->1, 1->2, 2->2, Linear(2, 10).
    assert r.result["num_params"] == r.result["model_dim"] == 10 + 10 + 20 + 38 + 30
    m = metrics_of(tmp_path)
    assert m["cgd/num_pruned"]["steps"] == [1, 2] and max(m["cgd/num_pruned"]["values"]) <= 3
    assert all(0 <= v <= 1 for v in m["cgd/pruned_grad_frac"]["values"])


def test_save_eigenthings_then_perturb_and_prune_global(expt, data_root, tmp_path):
    small = dict(model=dict(inter_dim=1), lyapunov=dict(k=None), max_steps=4)  # P = 277, full frame
    first = run(expt, tiny(data_root, logging=dict(save_eigenthings=True, save_lyapunov_at=0), **small), tmp_path)
    run_dir = tmp_path / "1"
    saved = np.load(run_dir / "eigenthings.npz")
    assert saved["vectors"].shape == (277, 277) and int(saved["num_params"]) == 277
    assert np.all(np.diff(saved["exponents"]) <= 0)
    info = json.loads((run_dir / "info.json").read_text())
    assert len(info["lyapunov_spectrum_epoch0"]) == 277
    epoch0 = np.load(run_dir / "eigenthings_epoch0.npz")  # vectors too, in the eigenthings format
    assert epoch0["vectors"].shape == (277, 277) and int(epoch0["steps"]) == 4
    assert first.result["lyapunov"]["k"] == 277

    # By run id from the store: every strategy, one copy each, distances logged and fitted.
    second = run(expt, tiny(data_root, perturb_strat="all", parallel=5, perturb_eps=[1e-2],
                            eigenthings_run=dict(source=str(tmp_path), run_id=1),
                            logging=dict(log_eigenthings=False, log_lyapunov=False, plot_trajectories=True), **small),
                 tmp_path)
    fits = second.result["perturb"]
    assert [fits[f"copy{i}"]["strategy"] for i in range(1, 6)] == ["max_chaos", "randn_chaos", "max_convergence",
                                                                   "randn_convergence", "randn"]
    m = metrics_of(tmp_path, 2)
    for i in range(1, 6):
        d = m[f"perturb/distance/copy{i}"]["values"]
        # The initial shift, w + eps·v rounded to float32 (|w| ≲ 0.1, 277 entries): ~1e-8 in ‖·‖, 1e-6 relative.
        assert d[0] == pytest.approx(1e-2, rel=1e-3)
        assert fits[f"copy{i}"]["d0"] == 1e-2 and fits[f"copy{i}"]["d0_fixed"]  # the original fixes d0 = eps
    dist = np.load(tmp_path / "2" / "distances.npz")
    assert dist["distances"].shape == (5, 4)
    assert np.load(tmp_path / "2" / "trajectories.npz")["projections"].shape == (6, 4, 2)

    # By path, pruning the stored expanding directions.
    third = run(expt, tiny(data_root, eigenthings_path=str(run_dir / "eigenthings.npz"),
                           optim=dict(name="cgd", prune_global=True, prune_set="chaotic", k=2), **small), tmp_path)
    assert third.result["num_steps"] == 4
    assert metrics_of(tmp_path, 3)["cgd/num_pruned"]["values"] == [2, 2, 2, 2]
    # The original's tangent map P_kept H P_kept: the same pruning and weights, other exponents (the stored
    # directions are not eigenvectors of H_t, so the two maps differ; tests/test_cgd.py checks both by hand).
    proj = run(expt, tiny(data_root, eigenthings_path=str(run_dir / "eigenthings.npz"), cgd=dict(tangent="projected"),
                          optim=dict(name="cgd", prune_global=True, prune_set="chaotic", k=2), **small), tmp_path)
    assert proj.result["final_train_loss"] == third.result["final_train_loss"]
    assert proj.result["lyapunov"]["max"] != third.result["lyapunov"]["max"]

    # The original's global rule: the Hessian sets on the stored σ² = e^{2tχ} (t = 4 steps). pos prunes every σ²
    # above float resolution of the largest (σ² <= P·eps·max σ² is a numerical zero, kept); neg prunes none.
    chi = saved["exponents"].astype(np.float64)
    s2 = np.exp(2 * int(saved["steps"]) * chi)  # t·χ is O(1) here: no overflow
    expected = int((s2 > 277 * np.finfo(np.float64).eps * s2.max()).sum())
    for prune_set, count in (("pos", expected), ("neg", 0)):
        r = run(expt, tiny(data_root, eigenthings_path=str(run_dir / "eigenthings.npz"),
                           cgd=dict(global_rule="hessian"),
                           optim=dict(name="cgd", prune_global=True, prune_set=prune_set), **small), tmp_path)
        assert metrics_of(tmp_path, r._id)["cgd/num_pruned"]["values"] == [count] * 4
    # Its save_lyapunov_at file held (σ²)^{1/t} = e^{2χ}: chaotic needs e^{2χ} > 2/lr = 2000, i.e. χ > 3.8.
    r = run(expt, tiny(data_root, eigenthings_path=str(run_dir / "eigenthings_epoch0.npz"),
                       cgd=dict(global_rule="hessian"), optim=dict(name="cgd", prune_global=True), **small), tmp_path)
    num_chaotic = int((np.exp(2 * epoch0["exponents"]) > 2e3).sum())
    assert metrics_of(tmp_path, r._id)["cgd/num_pruned"]["values"] == [num_chaotic] * 4


def test_cgd_zeros_pool_prunes_the_null_space_as_the_original(expt, data_root, tmp_path):
    # The structured MLP Hessian is range-only (rank <= 8·10 + … < P). Under zeros=pool the neg set is
    # λ <= 0 as in the original: every eigenvalue that is not positive, P − num_pos of them; by default
    # only the negative ones. cgd_original sets every original rule.
    base = dict(optim=dict(name="cgd", prune_set="neg"), lyapunov=dict(k=4))
    run(expt, tiny(data_root, **base), tmp_path)
    expt.ex.observers[:] = [FileStorageObserver(str(tmp_path))]
    try:
        # noise_fac=None: the original's default noise scale, mean |g_i| of each step's gradient.
        r = expt.ex.run(config_updates=tiny(data_root, optim=dict(name="cgd", prune_set="neg", noise=True),
                                            lyapunov=dict(k=4)), named_configs=["cgd_original"])
    finally:
        expt.ex.observers[:] = []
    assert r.config["cgd"] == dict(zeros="pool", rand_draws="replacement", rank="growth", band="plain",
                                   global_rule="hessian", tangent="projected")
    fixed, original = metrics_of(tmp_path, 1), metrics_of(tmp_path, 2)
    p = r.result["num_params"]
    assert fixed["cgd/num_pruned"]["values"] == fixed["hessian/num_neg"]["values"]
    assert original["cgd/num_pruned"]["values"] == [p - n for n in original["hessian/num_pos"]["values"]]
    assert all(v > 0.5 * p for v in original["cgd/num_pruned"]["values"])  # mostly null space


def test_lyapunov_subspace_similarity(expt, data_root, tmp_path):
    # lr 0.5: expanding directions show up within a few steps (at lr 1e-3 they need hundreds).
    # t0 counts tangent maps: after step index s, s + 1 maps are applied (the original's step counter).
    run(expt, tiny(data_root, max_steps=6, optim=dict(lr=0.5), model=dict(inter_dim=1), lyapunov=dict(k=None),
                   logging=dict(log_lyapunov_subsim=True, t_lya_subsim=[1, 3.0])), tmp_path)
    m = metrics_of(tmp_path)
    assert m["subsim/lyapunov/t1"]["steps"] == [1, 2, 3, 4, 5]
    assert m["subsim/lyapunov/t3"]["steps"] == [3, 4, 5]
    assert all(0 <= v <= 1 + 1e-9 for v in m["subsim/lyapunov/t1"]["values"])
    n_pos = m["subsim/lyapunov/num_pos"]["values"]
    assert all(v <= 277 for v in n_pos)


@pytest.mark.parametrize("updates,key", [
    (dict(optim=dict(name="cgd", prune_set="zero")), "optim.prune_set"),
    (dict(optim=dict(name="cgd", k=10**6)), r"optim.k must be <= the number of parameters \(1078\)"),
    (dict(optim=dict(name="adam")), "optim.name"),
    (dict(model=dict(name="cnn", base_channels=64, block_cnt=1), max_memory_gb=1.0),
     r"model: the exact Hessian of 260,298 parameters needs about 1514\.4 GiB"),
    (dict(model=dict(inter_dim=5000), max_memory_gb=0.5), r"exact Hessian of 1,335,010 parameters needs about"),
    (dict(eigenthings_path="/nonexistent/eigenthings.npz"), "eigenthings_path.*does not exist"),
    (dict(perturb_strat="max_chaos"), "need Lyapunov directions"),
    (dict(perturb_strat="all", parallel=3), r"parallel must be an integer >= 5 \(one copy per strategy and eps"),
    (dict(perturb_strat="sideways"), "perturb_strat"),
    (dict(dataset="cifar7"), "dataset"),
    (dict(model=dict(name="rnn")), "model.name"),
    (dict(model=dict(activation="swish")), "model.activation"),
    (dict(logging=dict(log_freq=0)), "logging.log_freq"),
    (dict(logging=dict(log_lyapunov_subsim=True)), "t_lya_subsim"),
    (dict(lyapunov=dict(k=5000)), r"lyapunov.k must be <= the tangent dimension \(1078\)"),
    (dict(logging=dict(save_eigenthings=True)), "logging.save_eigenthings needs .* lyapunov.k must be None"),
    (dict(logging=dict(save_lyapunov_at=0)), "logging.save_lyapunov_at needs .* lyapunov.k must be None"),
    (dict(logging=dict(log_lyapunov_subsim=True, t_lya_subsim=[2])), "log_lyapunov_subsim needs .* lyapunov.k"),
    (dict(logging=dict(t_lya_subsim=[0])), "t_lya_subsim"),
    (dict(distance_fit_d0="loose"), "distance_fit_d0"),
    (dict(cgd=dict(zeros="drop")), "cgd.zeros must be one of"),
    (dict(cgd=dict(global_rule="sign")), "cgd.global_rule must be one of"),
    (dict(cgd=dict(tangent="jacobian")), "cgd.tangent must be one of"),
    (dict(eps_eigh_mode="diagonal"), "eps_eigh_mode must be one of"),
    (dict(optim=dict(name="cgd", gamma=2.0)), "gamma must be a number in"),
    (dict(optim=dict(name="cgd", noise=True, noise_fac=-1.0)), "noise_fac must be None"),
    (dict(cgd="original"), "cgd must be a dict"),
    (dict(batch_size=0), "batch_size"),
    (dict(eigenthings_run=dict(source="runs/chaos")), "exactly one of run_id and run_key"),
    (dict(dtype="float16"), "dtype"),
    (dict(model="cnn"), r"model must be a dict of options; got 'cnn' \(Hydra's `model=cnn` is `model.name=cnn` here\)"),
    (dict(optim="cgd"), r"optim must be a dict of options; got 'cgd' \(Hydra's `optim=cgd` is `optim.name=cgd`"),
])
def test_bad_config_fails_before_compute_naming_the_key(expt, data_root, updates, key, monkeypatch):
    def no_compute(*a, **k):
        raise AssertionError("compute started before validation")

    monkeypatch.setattr(expt, "load_vision_dataset", no_compute)
    with pytest.raises(ValueError, match=key):
        run(expt, tiny(data_root, **updates))


def test_config_checks_raise_check_error_naming_key_and_value(expt, data_root, monkeypatch):
    from core.checks import CheckError

    monkeypatch.setattr(expt, "load_vision_dataset", lambda *a, **k: pytest.fail("compute started"))
    for updates, key, value in ((dict(perturb_strat="sideways"), "perturb_strat", "sideways"),
                                (dict(logging=dict(t_lya_subsim=[10, 2.5])), "logging.t_lya_subsim", [10, 2.5])):
        with pytest.raises(CheckError) as info:
            run(expt, tiny(data_root, **updates))
        assert (info.value.key, info.value.value) == (key, value)


def test_divergence_names_the_steps_completed_before_the_non_finite_loss(expt, data_root):
    """Step 0's loss is at the initialisation (finite); one update with lr = 1e30 makes step 1's logits
    overflow, so its loss is the first non-finite one: dynamics.engine's convention names step 1."""
    from dynamics.engine import TrainingDiverged
    with pytest.raises(TrainingDiverged) as info:
        run(expt, tiny(data_root, optim=dict(lr=1e30), logging=dict(log_eigenthings=False, log_lyapunov=False)))
    assert info.value.step == 1 and not math.isfinite(info.value.value)


def test_batch_larger_than_data_and_unknown_keys(expt, data_root):
    with pytest.raises(ValueError, match=r"batch_size must be <= the number of training points \(48\)"):
        run(expt, tiny(data_root, batch_size=64))
    with pytest.raises(ConfigAddedError):
        run(expt, tiny(data_root, optim=dict(prune_sett="neg")))
    with pytest.raises(ConfigAddedError):
        run(expt, tiny(data_root, logging=dict(log_eigenthing=True)))


def test_command_line_translation_of_hydra_options(data_root, tmp_path):
    # Hydra's `optim=cgd optim.k=3 model=mlp logging.log_lyapunov=True` -> dotted Sacred overrides.
    cmd = [sys.executable, str(REPO / "experiments" / "expt_chaos.py"), "-F", str(tmp_path / "store"), "with",
           "optim.name=cgd", "optim.k=3", "optim.prune_set=neg", "model.name=mlp", "model.inter_dim=2",
           "logging.log_lyapunov=True", "lyapunov.k=4", f"data_root={data_root}", "max_steps=2", "device=cpu",
           "perturb_eps=[0.1]", "seed=3"]
    out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    config = json.loads((tmp_path / "store" / "1" / "config.json").read_text())
    assert config["optim"]["name"] == "cgd" and config["optim"]["k"] == 3 and config["model"]["inter_dim"] == 2
    assert json.loads((tmp_path / "store" / "1" / "run.json").read_text())["status"] == "COMPLETED"


def test_cnn_is_the_originals_layers_and_parameter_count():
    # chaotic_neurips22 get_cnn at base_channels c, block_cnt n: conv1 (1->c), n−1 convs (c->c), then
    # pool, conv (c->c), pool, conv (c->2c), pool, conv (2c->2c), pool, Linear(2c, 10); 3x3 convs with bias.
    from models.chaos_nets import build_model, num_parameters

    def count(c, n):
        conv = lambda i, o: 9 * i * o + o  # noqa: E731
        return conv(1, c) + (n - 1) * conv(c, c) + conv(c, c) + conv(c, 2 * c) + conv(2 * c, 2 * c) + 2 * c * 10 + 10

    gen = torch.Generator().manual_seed(0)
    assert num_parameters(build_model("cnn", (1, 16, 16), 10, gen)) == count(4, 1) == 1158
    assert num_parameters(build_model("cnn", (1, 16, 16), 10, gen, base_channels=3, block_cnt=3)) == count(3, 3)
    net = build_model("cnn", (1, 16, 16), 10, gen, block_cnt=2)
    layers = [(name, type(m).__name__, getattr(m, "out_channels", None)) for name, m in net.layers.named_children()]
    assert layers == [("conv1", "Conv2d", 4), ("relu1", "ReLU", None), ("conv2", "Conv2d", 4), ("relu2", "ReLU", None),
                      ("tail_pool1", "MaxPool2d", None), ("tail_conv2", "Conv2d", 4), ("tail_fn2", "ReLU", None),
                      ("tail_pool2", "MaxPool2d", None), ("tail_conv3", "Conv2d", 8), ("tail_fn3", "ReLU", None),
                      ("tail_pool3", "MaxPool2d", None), ("tail_conv4", "Conv2d", 8), ("tail_fn4", "ReLU", None),
                      ("tail_pool4", "MaxPool2d", None), ("tail_reshape", "Flatten", None),
                      ("tail_fc1", "Linear", None)]
    assert net(torch.randn(2, 1, 16, 16, generator=gen)).shape == (2, 10)
    with pytest.raises(ValueError, match="16x16"):
        build_model("cnn", (1, 28, 28), 10, gen)
