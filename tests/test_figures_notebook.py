"""tracking.figures on synthetic and real runs, and plots_final.ipynb executed headless."""
import json
import sys

import nbformat
import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import LineCollection, PathCollection
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from nbclient import NotebookClient
from sacred.observers import FileStorageObserver

from tests.conftest import REPO
from tests.datasets import allow_tiny_cifar
from tests.runs_factory import dln_runs
from tracking.figures import plot_lambdahat_vs_true, plot_relative_error_hist, save_figure
from tracking.load import load_runs

SYNTH = pd.DataFrame({
    "true_lambda": [1.5, 3.0, 10.0, 50.0],
    "lambdahat": [1.4, 3.3, 9.0, 55.0],
    "lambdahat_std": [0.1, 0.2, 0.5, 2.0],
    "model_dim": [6, 15, 60, 300],
})


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Three tiny expt_dln runs of different depths; the last one also trained."""
    store = tmp_path_factory.mktemp("runs") / "dln_lambdahat"
    dln_runs(FileStorageObserver(str(store)), [
        dict(seed=1),
        dict(seed=2, layer_widths=[3, 3, 2], true_param_config=dict(method="rand_rank")),
        dict(seed=3, layer_widths=[4, 3], do_training=True,  # Haiku init: 400 steps at lr 3e-3 to get near w*
             training_config=dict(num_steps=400, batch_size=20, learning_rate=3e-3)),
    ])
    return store


def _points(ax):
    (points,) = [c for c in ax.collections if isinstance(c, PathCollection)]
    return points


def _diagonal(ax):
    (line,) = [line for line in ax.get_lines() if line.get_label() == "λ̂ = λ"]
    return line


def test_lambdahat_vs_true_plots_the_table(tmp_path):
    fig = plot_lambdahat_vs_true(SYNTH)
    ax, colorbar = fig.axes
    points = _points(ax)
    np.testing.assert_array_equal(points.get_offsets(), SYNTH[["true_lambda", "lambdahat"]].to_numpy())
    np.testing.assert_array_equal(points.get_array(), SYNTH["model_dim"])
    assert isinstance(points.norm, LogNorm) and colorbar.get_ylabel() == "model_dim"
    (bars,) = [c for c in ax.collections if isinstance(c, LineCollection)]
    segments = np.array(bars.get_segments())  # (runs, 2 ends, xy)
    np.testing.assert_allclose(segments[:, 0, 1], SYNTH["lambdahat"] - SYNTH["lambdahat_std"])
    np.testing.assert_allclose(segments[:, 1, 1], SYNTH["lambdahat"] + SYNTH["lambdahat_std"])
    np.testing.assert_allclose(segments[:, 0, 0], SYNTH["true_lambda"])
    diagonal = _diagonal(ax)
    np.testing.assert_array_equal(diagonal.get_xdata(), diagonal.get_ydata())
    assert diagonal.get_xdata()[0] < 1.4 and diagonal.get_xdata()[1] > 55.0
    assert ax.get_xscale() == ax.get_yscale() == "log"


def test_lambdahat_vs_true_prefix_missing_values_and_given_axes():
    df = SYNTH.assign(**{"trained.lambdahat": [1.6, 2.9, 11.0, np.nan], "trained.lambdahat_std": 0.3})
    with pytest.warns(UserWarning, match="left out 1 of 4 runs"):
        fig = plot_lambdahat_vs_true(df, prefix="trained.", hue=None)
    assert len(fig.axes) == 1  # no colour bar without a hue
    np.testing.assert_array_equal(_points(fig.axes[0]).get_offsets(), [[1.5, 1.6], [3.0, 2.9], [10.0, 11.0]])
    assert "trained" in fig.axes[0].get_ylabel()
    ax = Figure().subplots()
    assert plot_lambdahat_vs_true(SYNTH, ax=ax, hue="true_lambda") is ax.figure
    with pytest.raises(ValueError, match=r"lacks columns \['trained.lambdahat'"):
        plot_lambdahat_vs_true(SYNTH, prefix="trained.")
    with pytest.raises(ValueError, match="hue column 'width' is not in df"):
        plot_lambdahat_vs_true(SYNTH, hue="width")
    with pytest.raises(ValueError, match="no run with lambdahat > 0"):
        plot_lambdahat_vs_true(SYNTH.assign(lambdahat=-1.0))


def test_relative_error_hist_counts_and_median():
    rel = (SYNTH["lambdahat"] - SYNTH["true_lambda"]) / SYNTH["true_lambda"]
    fig = plot_relative_error_hist(SYNTH, bins=5)
    ax = fig.axes[0]
    assert sum(p.get_height() for p in ax.patches) == len(SYNTH)
    (median,) = [line for line in ax.get_lines() if line.get_label().startswith("median")]
    assert median.get_xdata()[0] == pytest.approx(np.median(rel))
    with pytest.raises(ValueError, match="bins must be >= 1"):
        plot_relative_error_hist(SYNTH, bins=0)


def test_save_figure_creates_folders(tmp_path):
    path = save_figure(plot_relative_error_hist(SYNTH), tmp_path / "a" / "b" / "hist.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
    with pytest.raises(ValueError, match="path must end in a format suffix"):
        save_figure(Figure(), tmp_path / "hist")


def test_figures_from_real_runs(store):
    df = load_runs(store, status="COMPLETED")
    assert len(df) == 3 and (df["lambdahat"] > 0).all()
    fig = plot_lambdahat_vs_true(df)
    np.testing.assert_array_equal(_points(fig.axes[0]).get_offsets(), df[["true_lambda", "lambdahat"]].to_numpy())
    np.testing.assert_array_equal(_points(fig.axes[0]).get_array(), df["model_dim"])
    assert sum(p.get_height() for p in plot_relative_error_hist(df).axes[0].patches) == len(df)
    with pytest.warns(UserWarning, match="left out 2 of 3"):  # only run 3 trained
        trained = plot_lambdahat_vs_true(df, prefix="trained.")
    row = df[df["seed"] == 3].iloc[0]
    np.testing.assert_array_equal(_points(trained.axes[0]).get_offsets(),
                                  [[row["true_lambda"], row["trained.lambdahat"]]])


def _venv_kernel(tmp_path):
    """A kernel manager running ipykernel on this interpreter, whatever kernels the user has installed."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    spec_dir = tmp_path / "kernels" / "dlt-venv"
    spec_dir.mkdir(parents=True)
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "dltheory venv", "language": "python"}
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    return KernelManager(kernel_name="dlt-venv",
                         kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(spec_dir.parent)]))


# Every figure the notebook saves from the store of every_experiment_runs (section by section).
NOTEBOOK_FIGURES = [
    "dln_lambdahat_vs_lambda", "dln_relative_error", "dln_trained_lambdahat_vs_lambda",
    "llc_curve_by_learning_rate", "saddle_run1", "rescaling_lambdahat_vs_alpha", "mala_vs_sgld",
    "regimes_test_error_vs_T", "regimes_weight_change_vs_T", "regimes_ntk_change_vs_alpha",
    "regimes_bstar_vs_P_bs_sweep",
    "chaos_store0_lyapunov", "chaos_store0_hessian_stats", "chaos_store0_accuracy_by_optimizer",
    "chaos_store0_distances_run4", "chaos_store0_subsim_run4",
    "abc_training_curves", "abc_test_accuracy_by_activation", "abc_ip_accuracy_vs_width",
    "abc_coord_check_store0_run4",
    "basis_beta_store0_run1", "basis_small_init_store0_run1", "basis_grad_indep_store0_run1",
    "basis_beta_domin_store0_run1",
]
EXPERIMENTS = ["dln_lambdahat", "llc_curve", "dln_saddle_dynamics", "rescaling_invariance", "mala_vs_sgld",
               "sgd_regimes", "chaos", "abc_params", "basis_decomposition"]


@pytest.fixture(scope="module")
def every_store(tmp_path_factory):
    """runs/<experiment>/ with tiny completed runs of all nine experiments."""
    from tests.datasets import write_cifar10, write_mnist, write_usps
    from tests.runs_factory import every_experiment_runs

    root = tmp_path_factory.mktemp("every")
    data = root / "data"
    write_cifar10(data, n_train=40, n_test=20)
    write_mnist(data, n_train=64, n_test=32)
    write_usps(data, n_train=48, n_test=24)
    with pytest.MonkeyPatch.context() as mp:
        allow_tiny_cifar(mp)
        every_experiment_runs(root / "runs", data)
    return root / "runs"


def _execute(nb, directory_paths, tmp_path, monkeypatch):
    figures = tmp_path / "figures"
    nb.cells[0].source = (f"directory_paths = {[str(p) for p in directory_paths]!r}\nmongo_url = None\ndb = None\n"
                          f"figures_dir = {str(figures)!r}")
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))  # no user profile or startup files
    workdir = tmp_path / "cwd"  # not the repo: the project must import as an installed package
    workdir.mkdir()
    NotebookClient(nb, km=_venv_kernel(tmp_path), timeout=300, resources={"metadata": {"path": str(workdir)}}).execute()
    printed = "".join(o.get("text", "") for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs)
    images = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs
              if "image/png" in o.get("data", {})]
    return figures, printed, images


def _notebook():
    nb = nbformat.read(REPO / "plots_final.ipynb", as_version=4)
    first = nb.cells[0]
    assert first.metadata.get("tags") == ["parameters"] and "directory_paths" in first.source
    assert all(not cell.outputs for cell in nb.cells if cell.cell_type == "code"), \
        "commit the notebook with outputs cleared"
    return nb


def test_plots_final_notebook_draws_every_section_headless(every_store, tmp_path, monkeypatch):
    figures, printed, images = _execute(_notebook(), [every_store], tmp_path, monkeypatch)
    for name in NOTEBOOK_FIGURES:
        png = figures / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000, name
    assert sorted(p.stem for p in figures.glob("*.png")) == sorted(NOTEBOOK_FIGURES)
    assert len(images) == len(NOTEBOOK_FIGURES)
    for experiment, count in zip(EXPERIMENTS, [3, 2, 1, 1, 1, 9, 4, 4, 1]):
        assert f"{count} completed {experiment} runs" in printed, experiment
    assert "B* skipped" not in printed  # the bs_sweep runs are one batch-size sweep


def test_plots_final_notebook_with_one_experiment_skips_the_other_sections(store, tmp_path, monkeypatch):
    figures, printed, images = _execute(_notebook(), [store], tmp_path, monkeypatch)
    assert sorted(p.name for p in figures.glob("*.png")) == [
        "dln_lambdahat_vs_lambda.png", "dln_relative_error.png", "dln_trained_lambdahat_vs_lambda.png"]
    assert "3 completed dln_lambdahat runs" in printed and len(images) == 3
    for section, experiment in enumerate(EXPERIMENTS[1:], start=2):
        assert f"no {experiment} runs: section {section} draws nothing" in printed, experiment
