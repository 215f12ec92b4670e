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
from sacred.observers import FileStorageObserver

from tests.conftest import REPO
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
        dict(seed=3, layer_widths=[4, 3], do_training=True, training_config=dict(num_steps=50, batch_size=20)),
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
    np.testing.assert_array_equal(_points(trained.axes[0]).get_offsets(), [[row["true_lambda"], row["trained.lambdahat"]]])


def _venv_kernel(tmp_path):
    """A kernel manager running ipykernel on this interpreter, whatever kernels the user has installed."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    spec_dir = tmp_path / "kernels" / "dlt-venv"
    spec_dir.mkdir(parents=True)
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "dltheory venv", "language": "python"}
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    return KernelManager(kernel_name="dlt-venv", kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(spec_dir.parent)]))


def test_plots_final_notebook_runs_headless(store, tmp_path, monkeypatch):
    from nbclient import NotebookClient

    nb = nbformat.read(REPO / "plots_final.ipynb", as_version=4)
    first = nb.cells[0]
    assert first.metadata.get("tags") == ["parameters"] and "directory_paths" in first.source
    assert all(not cell.outputs for cell in nb.cells if cell.cell_type == "code"), "commit the notebook with outputs cleared"
    figures = tmp_path / "figures"
    first.source = f"directory_paths = [{str(store)!r}]\nmongo_url = None\ndb = None\nfigures_dir = {str(figures)!r}"
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))  # no user profile or startup files
    workdir = tmp_path / "cwd"  # not the repo: the project must import as an installed package
    workdir.mkdir()
    NotebookClient(nb, km=_venv_kernel(tmp_path), timeout=300, resources={"metadata": {"path": str(workdir)}}).execute()

    for name in ["dln_lambdahat_vs_lambda.png", "dln_relative_error.png", "dln_trained_lambdahat_vs_lambda.png"]:
        png = figures / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000, name
    printed = "".join(o.get("text", "") for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs)
    assert "3 completed dln_lambdahat runs" in printed
    images = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs if "image/png" in o.get("data", {})]
    assert len(images) == 3
