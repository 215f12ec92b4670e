"""Thumbnails for README's table of experiments: one tiny real run per row, drawn by tracking.figures*.

Each study function below runs its experiment at toy size on the CPU (fixed seeds;
synthetic data, or tiny MNIST / USPS / CIFAR-10 files written in torchvision's on-disk format
by tests/datasets.py, so nothing is downloaded) into a file store under a temporary
folder, loads the runs back with ``tracking.load`` and draws the study's figure with the
same function plots_final.ipynb uses. ``main`` saves each figure about 320 px wide as
``docs/img/<name>.png``. The figures show what each experiment records, not the papers'
results: the runs are far too small for that (docs/index.md lists the studies).

    PYTHONPATH=. OMP_NUM_THREADS=1 python docs/make_thumbnails.py [--out docs/img] [name ...]

The whole set takes about 30 s of CPU time (a minute of wall time on a busy 2-core
machine). A rerun writes byte-identical files, except llc_mala.png: its right panel
is the samplers' measured wall time.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable
from unittest import mock

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from anywhere: the project's packages import

import matplotlib  # noqa: E402

matplotlib.use("Agg")
from matplotlib.figure import Figure  # noqa: E402

from tests.datasets import write_cifar10, write_mnist, write_usps  # noqa: E402
from tracking import figures_abc, figures_basis, figures_chaos, figures_llc, figures_regimes  # noqa: E402
from tracking.figures import plot_lambdahat_vs_true, save_figure  # noqa: E402
from tracking.load import load_info, load_metrics, load_runs  # noqa: E402

WIDTH_PX = 320  # thumbnail width; README shows it at 240 px, sharp on high-density screens
MAX_BYTES = 60_000  # cap on each PNG, checked by tests/test_thumbnails.py
MAX_WIDTH_IN = 7.0  # side-by-side panels (10 in wide) are narrowed to this first, so their text stays legible


# ----------------------------------------------------------------------------- running

def _load_experiment(name: str):
    """A fresh copy of experiments/<name>.py, so the observers added here stay in this copy."""
    spec = importlib.util.spec_from_file_location(f"thumb_{name}", ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_into(store: Path, module: str, configs: list[dict], command: str = "main") -> Path:
    """Run experiments/<module>.py once per config, recorded by a FileStorageObserver at ``store``."""
    from sacred.observers import FileStorageObserver

    ex = _load_experiment(module).ex
    ex.observers[:] = [FileStorageObserver(str(store))]
    for config in configs:
        with contextlib.redirect_stdout(io.StringIO()):  # sgd_regimes prints a line per checkpoint
            ex.run(command_name=command, config_updates=config, options={"--loglevel": "ERROR"})
    return store


@contextlib.contextmanager
def tiny_cifar_allowed():
    """torchvision checks CIFAR files against the official archive's md5; the tiny files need that off."""
    import torchvision.datasets.cifar as cifar

    with mock.patch.object(cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath)):
        yield


def _completed(store: Path, experiment: str):
    runs = load_runs(store, experiment=experiment, status="COMPLETED")
    if runs.empty:
        raise RuntimeError(f"no completed {experiment} runs in {store}")
    return runs


# ----------------------------------------------------------------------------- studies
# Each takes (tmp, data): a scratch folder for the store and a folder of tiny datasets.

def llc_dln(tmp: Path, data: Path) -> Figure:
    """λ̂ at w* against Aoyagi's λ for six small deep linear networks (docs/llc.md#the-dln-experiment)."""
    base = dict(input_dim=3, num_training_data=500, device="cpu", true_param_config=dict(method="rand_rank"),
                sgld_config=dict(num_steps=300, batch_size=50, num_chains=4, epsilon=1e-4, gamma=10.0))
    widths = [[3, 2], [4, 3], [5, 4, 3], [6, 5], [6, 6, 4], [8, 6, 5]]
    store = run_into(tmp / "dln_lambdahat", "expt_dln",
                     [dict(base, layer_widths=w, seed=seed) for seed, w in enumerate(widths, start=1)])
    return plot_lambdahat_vs_true(_completed(store, "dln_lambdahat"), hue="model_dim", title="DLN: λ̂ vs λ")


def llc_curve(tmp: Path, data: Path) -> Figure:
    """λ̂ and the test loss over SGD steps of a narrow ResNet18 on tiny CIFAR-10, two learning rates."""
    configs = [dict(data_root=str(data), device="cpu", logging_period=4, seed=seed,
                    model_data_config=dict(model_name="resnet18", layer_width_factor=2),
                    training_config=dict(num_steps=16, batch_size=8, learning_rate=lr),
                    sgld_config=dict(num_steps=30, batch_size=8, num_chains=2, epsilon=1e-4))
               for seed, lr in ((1, 1e-2), (2, 5e-2))]
    with tiny_cifar_allowed():
        store = run_into(tmp / "llc_curve", "expt_llc_curve", configs)
    return figures_llc.plot_llc_curves(_completed(store, "llc_curve"), load_metrics(store, experiment="llc_curve"),
                                       hue="training_config.learning_rate", title="λ̂ over training")


def llc_saddle(tmp: Path, data: Path) -> Figure:
    """Training loss, λ̂ and Aoyagi's λ at the current rank over the training of a small DLN."""
    store = run_into(tmp / "dln_saddle_dynamics", "expt_dln_saddle_dynamics", [dict(
        device="cpu", width=4, num_training_data=200, logging_period=100, seed=1,
        training_config=dict(num_steps=3000, batch_size=20, learning_rate=3e-4),
        sgld_config=dict(num_steps=40, batch_size=20, num_chains=2),
    )])
    metrics = load_metrics(store, experiment="dln_saddle_dynamics")
    return figures_llc.plot_saddle_dynamics(metrics, title="saddle-to-saddle dynamics")


def llc_rescaling(tmp: Path, data: Path) -> Figure:
    """λ̂ against the rescaling factor α for preconditioned and plain SGLD on one small network."""
    store = run_into(tmp / "rescaling_invariance", "expt_rescaling_invariance", [dict(
        device="cpu", layer_sizes=[3, 4, 2], num_training_data=100, alphas=[0.01, 0.1, 1.0, 10.0, 100.0], seed=1,
        samplers=["psgld", "sgld"], degenerate_units=[2],
        psgld_config=dict(num_steps=400, batch_size=20, num_chains=2, num_burnin_steps=200),
        sgld_config=dict(epsilon=1e-4, num_steps=400, batch_size=20, num_chains=2, num_burnin_steps=200),
    )])
    return figures_llc.plot_rescaling(_completed(store, "rescaling_invariance"), title="λ̂ under rescaling")


def llc_mala(tmp: Path, data: Path) -> Figure:
    """λ̂ from MALA and SGLD against n, and their wall times, on a small ReLU teacher."""
    store = run_into(tmp / "mala_vs_sgld", "expt_mala_vs_sgld", [dict(
        device="cpu", input_dim=3, layer_widths=[4, 2], num_training_data=[50, 100, 200], seed=2,
        epsilon=1e-3, num_steps=60, num_chains=2, sgld_config=dict(batch_size=20), mala_acceptance_every=10,
    )])
    return figures_llc.plot_mala_vs_sgld(_completed(store, "mala_vs_sgld"), title="MALA vs SGLD")


def sgd_regimes(tmp: Path, data: Path) -> Figure:
    """Final test error against the SGD temperature T, one curve per α, on a small MLP."""
    base = dict(arch="mlp", act="gelu", h=6, L=2, dataset="depleted_sign", d=4, ptr=40, pte=30, bs=8,
                max_step=60, device="cpu", dtype="f64")
    grid = [(alpha, temp) for alpha in (1.0, 4.0) for temp in (0.02, 0.1, 0.5)]
    store = run_into(tmp / "sgd_regimes", "expt_sgd_regimes",
                     [dict(base, alpha=alpha, temp=temp, seed=seed) for seed, (alpha, temp) in enumerate(grid)])
    return figures_regimes.plot_test_error_vs_temperature(_completed(store, "sgd_regimes"), title="test error vs T")


def chaos(tmp: Path, data: Path) -> Figure:
    """Maximal and minimal Lyapunov exponents over training of a small MLP on tiny USPS, SGD and CGD."""
    base = dict(data_root=str(data), max_steps=16, max_epochs=2, batch_size=8, device="cpu",
                model=dict(inter_dim=4), lyapunov=dict(k=8), seed=1)
    store = run_into(tmp / "chaos", "expt_chaos", [base, dict(base, optim=dict(name="cgd", prune_set="neg"))])
    runs = _completed(store, "chaos")
    return figures_chaos.plot_lyapunov_over_training(store, run_ids=[int(r) for r in runs["run_id"]],
                                                     title="Lyapunov exponents")


def width_parameterizations(tmp: Path, data: Path) -> Figure:
    """muP's coordinate check: mean |h_l| of each layer against width at init and after 3 steps, tiny MNIST."""
    store = run_into(tmp / "abc_params", "expt_abc_params", [dict(
        data_root=str(data), dataset="mnist", n_val=16, L=2, width=32, batch_size=16, n_steps=4, n_trials=1,
        device="cpu", parameterization="mup", seed=5,
        coord_check_config=dict(widths=[32, 64, 128, 256], n_steps=3, n_seeds=2),
    )], command="coord_check")
    run_id = int(_completed(store, "abc_params")["run_id"].iloc[0])
    table = load_info(store, run_id, experiment="abc_params")["coord_check"]
    return figures_abc.plot_coord_check(table, quantity="h_abs", steps=[0, 3], title="muP coordinate check")


def basis_decomposition(tmp: Path, data: Path) -> Figure:
    """β_i(θ_t) of the final conjugate-kernel basis over the training of a small CNN on tiny MNIST."""
    store = run_into(tmp / "basis_decomposition", "expt_basis_decomposition", [dict(
        data_root=str(data), data="mnist", model="cnn3", width=2, batch_size=16, num_epoch=4, optimizer="sgd",
        lr_setting=[0.05, 1, 0.01], decay_stepsize=2, early_points=3, n_basis=5, device="cpu", eval_batch_size=16,
        seed=1,
    )])
    run_id = int(_completed(store, "basis_decomposition")["run_id"].iloc[0])
    arrays = figures_basis.basis_arrays(store, run_id)
    return figures_basis.plot_beta_trajectories(arrays, n=min(5, arrays["beta"].shape[1]), title="β_i over training")


# Thumbnail name (docs/img/<name>.png) -> study function, in README's table order.
STUDIES: dict[str, Callable[[Path, Path], Figure]] = {
    "llc_dln": llc_dln,
    "llc_curve": llc_curve,
    "llc_saddle": llc_saddle,
    "llc_rescaling": llc_rescaling,
    "llc_mala": llc_mala,
    "sgd_regimes": sgd_regimes,
    "chaos": chaos,
    "width_parameterizations": width_parameterizations,
    "basis_decomposition": basis_decomposition,
}


# ----------------------------------------------------------------------------- saving

def write_datasets(data: Path) -> Path:
    """Tiny CIFAR-10, MNIST and USPS in torchvision's formats under ``data`` (fixed seeds)."""
    write_cifar10(data, n_train=40, n_test=20, seed=0)
    write_mnist(data, n_train=128, n_test=64, seed=0)
    write_usps(data, n_train=96, n_test=48, seed=0)
    return data


def save_thumbnail(fig: Figure, path: Path, width_px: int = WIDTH_PX) -> Path:
    """Save ``fig`` about ``width_px`` wide (figures wider than MAX_WIDTH_IN inches are narrowed first).

    The tight crop's width in inches depends a little on the dpi (text extents round to
    pixels), so the dpi is set from a first save at 100 dpi and the file written again.
    """
    from PIL import Image

    width_in, height_in = fig.get_size_inches()
    if width_in > MAX_WIDTH_IN:
        fig.set_size_inches(MAX_WIDTH_IN, height_in)  # constrained layout re-lays the panels out on save
    save_figure(fig, path, dpi=100)
    with Image.open(path) as img:
        measured = img.width
    return save_figure(fig, path, dpi=max(20, round(100 * width_px / measured)))


def make(names, out: Path, tmp: Path) -> list[Path]:
    """Run the named studies into ``tmp`` and write their thumbnails to ``out``; returns the paths."""
    unknown = sorted(set(names) - set(STUDIES))
    if unknown:
        raise ValueError(f"study names must be among {list(STUDIES)}; got {unknown}")
    data = write_datasets(tmp / "data")
    paths = []
    for name in names:
        start = time.perf_counter()
        path = save_thumbnail(STUDIES[name](tmp / name, data), out / f"{name}.png")
        size = path.stat().st_size
        print(f"{path}: {size / 1000:.1f} kB, {time.perf_counter() - start:.0f} s")
        if size > MAX_BYTES:
            raise RuntimeError(f"{path} is {size} bytes, over the {MAX_BYTES}-byte cap")
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", default=list(STUDIES), help=f"studies (default all): {list(STUDIES)}")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img", help="output folder (default docs/img)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="thumbnails-") as tmp:
        make(args.names, args.out, Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
