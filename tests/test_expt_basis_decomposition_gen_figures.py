"""expt_basis_decomposition: named configs, generator, figures; the slow test checks the paper's claim (3-block CNN)."""
import io
import math
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure

from gen_commands import expt_basis_decomposition as gen
from gen_commands import sweep
from gen_commands.commands import config_overrides
from tests._basis_decomposition_cases import npz, run
from tests.conftest import data_fixture, experiment_fixture
from tests.datasets import _class_images, _idx, write_mnist
from tracking import figures_basis as figs

expt = experiment_fixture("expt_basis_decomposition")
mnist_root = data_fixture(lambda root: write_mnist(root, n_train=64, n_test=32), "mnist")


# The original scripts' settings, read off mnist.py, grad_indep.py, beta_domin.py and small-init.py.
ORIGINAL_SCRIPTS = {
    # name: (model, normalize, batch, epochs, lr, decay unit, seed)
    "mnist": ("cnn3", True, 256, 20, 0.05, "epoch", 0),
    "grad_indep": ("fig2_cnn", True, 512, 20, 0.05, "iteration", 83),
    "beta_domin": ("fig2_cnn_bn1d", False, 512, 10, 0.5, "iteration", 0),
    "small_init": ("fig2_cnn_bn1d", False, 512, 10, 2.0, "epoch", 1),
}


@pytest.mark.parametrize("name", sorted(ORIGINAL_SCRIPTS))
def test_named_configs_are_the_original_scripts(expt, name):
    cfg = expt.ex.run("print_config", named_configs=[name]).config
    model, normalize, batch, epochs, lr, unit, seed = ORIGINAL_SCRIPTS[name]
    assert (cfg["model"], cfg["normalize"], cfg["batch_size"], cfg["num_epoch"]) == (model, normalize, batch, epochs)
    assert cfg["lr_setting"] == [lr, 0, lr] and cfg["schedule_unit"] == unit and cfg["seed"] == seed
    # shared by all four: MNIST, MSE on one-hot, LARS (momentum 0.9, decay 1e-4), StepLR(50, 0.33), clip 0.1
    assert (cfg["data"], cfg["loss_fn"], cfg["optimizer"], cfg["weight_decay"]) == ("mnist", "mse_loss", "lars", None)
    assert (cfg["decay_stepsize"], cfg["decay_rate"], cfg["grad_clip"], cfg["augment"]) == (50, 0.33, 0.1, False)
    assert not cfg["drop_last"] and cfg["init_scale"] == 1.0


def test_named_config_cadences(expt):
    mnist = expt.ex.run("print_config", named_configs=["mnist"]).config
    assert (mnist["record_every"], mnist["record_first"], mnist["record_until"],
            mnist["record_epoch_ends"]) == (20, 1, 2001, False)
    assert expt.ex.run("print_config", named_configs=["mnist"], config_updates=dict(model="cnn4")).config["seed"] == 64
    assert expt.ex.run("print_config", named_configs=["mnist"], config_updates=dict(model="cnn2")).config["seed"] == 0
    gi = expt.ex.run("print_config", named_configs=["grad_indep"]).config
    assert gi["grad_indep"] and not gi["beta_domin"]
    assert gi["rerun_config"] == dict(iterations=10, every=1, num_basis=10)
    bd = expt.ex.run("print_config", named_configs=["beta_domin"]).config
    assert bd["beta_domin"] and not bd["grad_indep"]
    assert bd["rerun_config"] == dict(iterations=400, every=1, num_basis=5)
    si = expt.ex.run("print_config", named_configs=["small_init"]).config
    assert si["small_init"] and not si["record_epoch_ends"] and si["early_points"] == 0  # F at t = 0 and the end only
    default = expt.ex.run("print_config").config  # train.py's argparse defaults
    assert (default["model"], default["data"], default["loss_fn"], default["optimizer"]) == (
        "resnet18", "cifar10", "mse_loss", "sgd")
    assert default["lr_setting"] == [0.1, 5, 0.01] and default["num_epoch"] == 310 and default["record_epoch_ends"]
    assert expt.ex.run("print_config", config_updates=dict(beta_domin=True)).config["rerun_config"]["iterations"] == 400


# --- generator --------------------------------------------------------------------------------

def generate(tmp_path, *args):
    out = tmp_path / "cmds.txt"
    assert gen.main([str(out), "--force", *args]) == 0
    return out.read_text().splitlines()


@pytest.mark.parametrize("preset", sorted(gen.PRESETS))
def test_every_preset_writes_keys_the_experiment_knows(expt, tmp_path, preset):
    lines = generate(tmp_path, "--preset", preset, "--seeds", "0", "1")
    assert lines == generate(tmp_path, "--preset", preset, "--seeds", "0", "1")  # deterministic
    for line in lines:
        overrides = config_overrides(line)
        assert overrides["run_key"] == sweep.run_key(gen.EXPERIMENT, overrides)
        assert overrides["expt_name"] == preset and "lr_setting" in overrides
        # typos -> ConfigAddedError
        cfg = expt.ex.run("print_config", config_updates={k: v for k, v in overrides.items()}).config
        assert cfg["seed"] == overrides["seed"]
    assert [config_overrides(line)["seed"] for line in lines[:2]] == [0, 1]  # seeds vary fastest


def test_generator_axes_replace_preset_values_and_lr_follows_the_optimizer(tmp_path):
    lines = generate(tmp_path, "--preset", "optimizers", "--optimizer", "lamb", "adamw", "--init-scale", "0.5", "1.0",
                     "--grid", "num_epoch=[20]", "-F", "runs/x", "--device", "cpu")
    parsed = [config_overrides(line) for line in lines]
    assert [(p["optimizer"], p["init_scale"]) for p in parsed] == [
        ("lamb", 0.5), ("lamb", 1.0), ("adamw", 0.5), ("adamw", 1.0)]
    assert all(p["num_epoch"] == 20 and p["device"] == "cpu" and p["model"] == "resnet18" for p in parsed)
    assert parsed[0]["lr_setting"] == gen.OPTIMIZER_LR["lamb"] and parsed[2]["lr_setting"] == gen.OPTIMIZER_LR["adamw"]
    assert " -F runs/x with " in lines[0]
    mnist = [config_overrides(line) for line in generate(tmp_path, "--preset", "mnist_depth")]
    assert [p["model"] for p in mnist] == ["cnn2", "cnn3", "cnn4"] and mnist[0]["lr_setting"] == [0.05, 0, 0.05]
    bare = [config_overrides(line) for line in generate(tmp_path, "--model", "vgg11", "--seeds", "3")]
    assert bare == [{"model": "vgg11", "seed": 3, "run_key": bare[0]["run_key"]}]


@pytest.mark.parametrize("preset, named", [("mnist_depth", ["mnist"] * 3),
                                           ("fig2", ["small_init", "grad_indep", "beta_domin"])])
def test_script_presets_equal_the_named_configs(expt, tmp_path, preset, named):
    """Each generated line configures the same run as the named config of its original script (seed aside)."""
    for line, name in zip(generate(tmp_path, "--preset", preset), named, strict=True):
        overrides = {k: v for k, v in config_overrides(line).items() if k not in ("run_key", "expt_name", "seed")}
        got = expt.ex.run("print_config", config_updates=overrides).config
        want = expt.ex.run("print_config", named_configs=[name], config_updates={"model": overrides["model"]}).config
        assert {k: v for k, v in got.items() if k not in ("seed", "expt_name", "__doc__")} == \
            {k: v for k, v in want.items() if k not in ("seed", "expt_name", "__doc__")}, name


@pytest.mark.parametrize("args, message", [
    (["--grid", "seed=[1, 2]"], "use --seeds"),
    (["--init-scale", "-1"], "--init-scale values must be >= 0"),
    (["--model", "resnet101"], "invalid choice"),
])
def test_generator_errors(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit):
        gen.main([str(tmp_path / "c.txt"), *args])
    assert message in capsys.readouterr().err


# --- figures ----------------------------------------------------------------------------------

def test_figures_from_recorded_runs(expt, mnist_root, tmp_path):
    run(expt, mnist_root, tmp_path, grad_indep=True, beta_domin=True,
        rerun_config=dict(iterations=4, every=2, num_basis=3))
    a = figs.basis_arrays(str(tmp_path), 1)
    r = figs.rerun_arrays(str(tmp_path), 1)
    fig = figs.plot_beta_trajectories(a, n=3, log_x=True, title="t")
    assert isinstance(fig, Figure) and len(fig.axes[0].lines) == 6
    assert len(figs.plot_beta_trajectories(a, n=None, x="iterations").axes[0].lines) == 2 * a["beta"].shape[1]
    fig = figs.plot_grad_indep([("seed 1", r), ("again", r)])
    assert len(fig.axes[0].lines) == 2
    fig = figs.plot_grad_indep_matrix(r)
    np.testing.assert_array_equal(fig.axes[0].images[0].get_array(), r["max_abs_cos_matrix"])
    # beta_domin.py's axes: x = log|β_i|, y = log‖∇β_i‖, β = tr(φ_iᵀ F) / N (train.py's β / √N), one axes
    fig = figs.plot_beta_domin(r, n=3)
    ax = fig.axes[0]
    assert len(ax.collections) == 3 and len(fig.axes) == 2  # three scatters and the colour bar
    shift = math.log(math.sqrt(32))
    xy = ax.collections[1].get_offsets()
    # (‖∇β‖ is float32: its log is good to ~1e-7 relative)
    np.testing.assert_allclose(xy[:, 0], np.log(np.abs(r["beta"][:, 1])) - shift, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(xy[:, 1], np.log(r["grad_norms"][:, 1].astype(float)) - shift, rtol=1e-6, atol=1e-6)
    xy = figs.plot_beta_domin(r, n=1, scale="basis").axes[0].collections[0].get_offsets()
    np.testing.assert_allclose(xy[:, 0], np.log(np.abs(r["beta"][:, 0])), rtol=1e-12, atol=1e-12)
    fig = figs.plot_small_init(a, n=5)
    ax = fig.axes[0]
    assert len(ax.patches) == 6 and ax.patches[-1].get_facecolor()[:3] == (1.0, 0.0, 0.0)  # 5 bars, red residual
    with pytest.raises(ValueError, match="n must be in"):
        figs.plot_beta_trajectories(a, n=50)
    with pytest.raises(ValueError, match="small_init"):
        figs.plot_small_init({k: v for k, v in a.items() if k != "small_init_signed"})
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    assert buf.getvalue()[:4] == b"\x89PNG"


def test_small_init_bars_are_small_init_py():
    """small-init.py: rank the k² final β_ij (signed, descending), bar |β_ij(θ_0)| there, residual of the rest."""
    rng = np.random.default_rng(0)
    k = 4
    final = np.diag([3.0, 2.0, 1.0, 0.5]) + 1e-9 * rng.standard_normal((k, k))  # diag(s) up to rounding
    init = 0.1 * rng.standard_normal((k, k))
    heights, residual, order = figs.small_init_bars(dict(small_init_signed=init, final_coefficient_matrix=final), top=6)
    spars, spars0 = final.reshape(-1), init.reshape(-1)
    top = sorted(range(len(spars)), key=lambda i: spars[i], reverse=True)[:6]  # the original's ranking
    rest = np.linalg.norm(spars0) ** 2 - sum(spars0[i] ** 2 for i in top)
    np.testing.assert_array_equal(order, top)
    np.testing.assert_allclose(heights, np.abs(spars0[top]), rtol=0, atol=0)  # the same numbers, copied
    assert residual == pytest.approx(math.sqrt(rest), rel=1e-12)
    assert list(order[:4]) == [0, 5, 10, 15]  # the diagonal first, in the order of s_i


# --- the paper's claim (slow) -------------------------------------------------------------------

def write_imbalanced_mnist(root, n_train, n_test, ratio=0.6, seed=0):
    """MNIST-format files whose train and test images share the class blobs, class c with frequency ∝ ratio^c.

    Unequal class frequencies separate the singular values s_i, so the order of learning is defined.
    """
    rng = np.random.default_rng(seed)
    p = ratio ** np.arange(10)
    labels = rng.choice(10, size=n_train + n_test, p=p / p.sum())
    images = _class_images(rng, labels, 28, 10)  # one call: one set of class centres for both splits
    raw = Path(root) / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, part in (("train", slice(0, n_train)), ("t10k", slice(n_train, None))):
        _idx(raw / f"{prefix}-images-idx3-ubyte", images[part])
        _idx(raw / f"{prefix}-labels-idx1-ubyte", labels[part])
    return str(root)


@pytest.mark.slow
def test_three_block_cnn_learns_coefficients_monotonically_in_order_of_s(expt, tmp_path):
    """beta_domin.py's recipe (CNN3 + BatchNorm1d, LARS, StepLR(50, 0.33) per iteration, clip 0.1, MSE) at
    small-init.py's lr 2 with normalised inputs, from init_scale 0.5, 320 steps on 4096 images.

    mnist.py's own recipe (lr 0.05, no decay) needs its ~4700 full-MNIST steps: in 320 steps here it reaches
    0.81 test accuracy with β_4 saturating before β_3 (docs/basis_decomposition.md#recorded).
    """
    root = write_imbalanced_mnist(tmp_path / "data", n_train=4096, n_test=512)
    r = run(expt, root, tmp_path / "runs", named_configs=["beta_domin"], beta_domin=False, width=8, init_scale=0.5,
            normalize=True, lr_setting=[2.0, 0, 2.0], batch_size=128, num_epoch=10, early_points=32, record_every=2,
            n_basis=5, optimizer="lars", decay_stepsize=50, eval_batch_size=512, seed=0)  # (TINY's sgd, 1 undone)
    res = r.result
    a = npz(tmp_path / "runs" / "1" / "basis.npz")
    beta, s = a["beta"], a["s"]
    assert res["steps"] == 320 and res["final_test_accuracy"] > 0.9
    assert np.all(np.diff(s[:5]) < 0)
    # β_1 rises close to monotonically: while it is learned (until 0.95 s_1) almost every increment is >= 0;
    # over the whole run the plateau's jitter (minibatch noise, BatchNorm running statistics) counts too.
    rising = res["rising_nonneg_increment_fraction"][0]
    overall = res["nonneg_increment_fraction"][0]
    print(f"β_1: non-negative increments {rising:.3f} while rising, {overall:.3f} over the run; "
          f"saturation times (β_i >= 0.8 s_i) {res['saturation_times']}; s = {np.round(s[:5], 3)}")
    assert rising >= 0.9
    assert beta[-1, 0] > 0.9 * s[0] and abs(beta[0, 0]) < 0.1 * s[0]
    # the top coefficients saturate in the order of s_i
    tau = res["saturation_times"]
    assert None not in tau and res["saturation_in_order"], tau
    assert all(math.isfinite(v) for v in tau)
