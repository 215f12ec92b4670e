"""Tiny real Sacred runs for the tracking and notebook tests."""
from __future__ import annotations

from pathlib import Path

from sacred import Experiment

from tests.conftest import load_experiment

# ~2 s per run on one CPU core.
TINY_DLN = dict(
    layer_widths=[3, 2], input_dim=3, num_training_data=200, device="cpu",
    sgld_config=dict(num_steps=50, batch_size=20, num_chains=2, epsilon=1e-5, gamma=10.0),
)
# Diverges within a few steps: the run ends FAILED.
DIVERGENT_SGLD = dict(num_steps=400, batch_size=20, num_chains=2, epsilon=50.0, gamma=0.0)


def dln_runs(observer, updates: list[dict]) -> list:
    """Run expt_dln once per entry of ``updates`` (merged over TINY_DLN), recorded by ``observer``.

    A fresh module is loaded so the observer never leaks into other tests' ``ex.observers``.

    Returns:
        The Sacred Run of each entry; None where the run raised (it is recorded as FAILED).
    """
    expt = load_experiment("expt_dln")
    expt.ex.observers.append(observer)
    runs = []
    for update in updates:
        try:
            runs.append(expt.ex.run(config_updates={**TINY_DLN, **update}))
        except FloatingPointError:
            runs.append(None)
    return runs


def toy_run(observer, value: float = 42.0):
    """A second experiment, 'toy', whose result is a plain number and which logs 'toy/x'."""
    ex = Experiment("toy", save_git_info=False)
    ex.observers.append(observer)

    @ex.config
    def cfg():
        scale = 2.0  # multiplies the logged series  # noqa: F841 (a Sacred config key: Sacred reads it)

    @ex.main
    def main(_run, scale):
        for step in range(3):
            _run.log_scalar("toy/x", scale * step, step)
        return value

    return ex.run()


# --------------------------------------------------------------- one store of every experiment

def _run_into(root, experiment: str, configs: list[dict], command: str = "main") -> None:
    """Run experiments/expt_<experiment>.py once per config into the file store root/<experiment>."""
    expt = load_experiment(f"expt_{experiment}")
    expt.ex.observers[:] = [_file_observer(root / experiment)]
    try:
        for config in configs:
            expt.ex.run(command_name=command, config_updates=config, options={"--loglevel": "ERROR"})
    finally:
        expt.ex.observers[:] = []


def every_experiment_runs(root, data_root) -> None:
    """Tiny completed runs of every experiment under ``root/<experiment>/``, for the notebook test.

    ``data_root`` must hold tiny CIFAR-10, MNIST and USPS files (tests.datasets) and the
    CIFAR md5 check must be off (tests.datasets.allow_tiny_cifar). Each run takes a few
    seconds on one core; the configurations are the smoke tests' ones.
    """
    root, data = Path(root), str(data_root)
    dln_runs(_file_observer(root / "dln_lambdahat"), [
        dict(seed=1),
        dict(seed=2, layer_widths=[3, 3, 2], true_param_config=dict(method="rand_rank")),
        dict(seed=3, layer_widths=[4, 3], do_training=True,  # Haiku init: 400 steps at lr 3e-3 to get near w*
             training_config=dict(num_steps=400, batch_size=20, learning_rate=3e-3)),
    ])
    _run_into(root, "llc_curve", [dict(
        data_root=data, device="cpu", logging_period=2, seed=seed,
        model_data_config=dict(model_name="resnet18", layer_width_factor=2),
        training_config=dict(num_steps=4, batch_size=8, learning_rate=lr),
        sgld_config=dict(num_steps=6, batch_size=8, num_chains=2, epsilon=1e-5),
    ) for seed, lr in ((1, 1e-2), (2, 5e-2))])
    _run_into(root, "dln_saddle_dynamics", [dict(
        device="cpu", width=3, num_training_data=200, logging_period=20, seed=1,
        training_config=dict(num_steps=40, batch_size=20, learning_rate=1e-3),
        sgld_config=dict(num_steps=10, batch_size=20, num_chains=2),
    )])
    _run_into(root, "rescaling_invariance", [dict(
        device="cpu", layer_sizes=[3, 4, 2], num_training_data=100, alphas=[0.01, 1.0, 100.0], seed=1,
        samplers=["psgld_fixed", "psgld", "sgld"], degenerate_units=[2],
        psgld_config=dict(num_steps=30, batch_size=20, num_chains=2, num_burnin_steps=15),
        sgld_config=dict(epsilon=1e-4, num_steps=30, batch_size=20, num_chains=2, num_burnin_steps=15),
    )])
    _run_into(root, "mala_vs_sgld", [dict(
        device="cpu", input_dim=3, layer_widths=[4, 2], num_training_data=[50, 100], seed=2,
        epsilon=1e-3, num_steps=40, num_chains=2, sgld_config=dict(batch_size=20), mala_acceptance_every=10,
    )])
    regimes = dict(arch="mlp", act="gelu", h=6, L=2, dataset="depleted_sign", d=4, ptr=40, pte=30, bs=8,
                   max_step=40, ckpt_grad_stats=10, device="cpu", dtype="f64")
    bs_sweep = dict(arch="linear", dataset="depleted_sign", d=4, ptr=40, pte=30, alpha=2.0, temp=0.5, data_chi=1.0,
                    max_wall=60.0, device="cpu", dtype="f64", expt_name="bs_sweep", seed=1)
    _run_into(root, "sgd_regimes", [dict(regimes, alpha=alpha, temp=temp, seed=seed) for seed, (alpha, temp)
                                      in enumerate([(1.0, 0.05), (1.0, 0.2), (4.0, 0.05), (4.0, 0.2)])]
              + [dict(bs_sweep, bs=bs) for bs in (2, 4, 8, 16, 32)])
    chaos = dict(data_root=data, max_steps=12, max_epochs=2, batch_size=8, device="cpu", model=dict(inter_dim=4),
                 lyapunov=dict(k=8), seed=1)
    small = dict(chaos, max_steps=6, model=dict(inter_dim=1), lyapunov=dict(k=None))  # every tangent direction
    _run_into(root, "chaos", [
        chaos,
        dict(chaos, optim=dict(name="cgd", prune_set="neg")),
        dict(small, logging=dict(save_eigenthings=True)),
        dict(small, perturb_strat="all", parallel=5, eigenthings_path=str(root / "chaos" / "3" / "eigenthings.npz"),
             logging=dict(log_subsim=True)),
    ])
    abc = dict(data_root=data, dataset="mnist", n_val=16, L=2, width=32, batch_size=16, n_steps=4, n_trials=1,
               device="cpu")
    _run_into(root, "abc_params", [dict(abc, parameterization=p, activation=a, seed=i) for i, (p, a) in
                                    enumerate([("mup", "relu"), ("ipllr", "gelu"), ("standard_ip", "gelu")])])
    _run_into(root, "abc_params", [dict(abc, parameterization="mup", seed=5,
                                         coord_check_config=dict(widths=[16, 32], n_steps=2, n_seeds=1))],
              command="coord_check")
    _run_into(root, "basis_decomposition", [dict(
        data_root=data, data="mnist", model="cnn3", width=2, batch_size=16, num_epoch=2, optimizer="sgd",
        lr_setting=[0.05, 1, 0.01], decay_stepsize=1, early_points=3, n_basis=3, device="cpu", eval_batch_size=13,
        grad_indep=True, beta_domin=True, rerun_config=dict(iterations=4, every=2, num_basis=3), seed=1,
    )])


def _file_observer(store):
    from sacred.observers import FileStorageObserver

    return FileStorageObserver(str(store))
