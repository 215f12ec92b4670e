"""Shared expt_abc_params cases: the tiny MNIST-format sizes, a tiny config and a run of it."""
from sacred.observers import FileStorageObserver

N_TRAIN, N_TEST, N_VAL = 400, 100, 100


def tiny(data_root, **updates):
    base = dict(data_root=data_root, dataset="mnist", n_val=N_VAL, L=2, width=32, batch_size=50, n_steps=12,
                n_trials=2, device="cpu", seed=1)
    return {**base, **updates}


def run(expt, config, tmp_path=None, command="main"):
    expt.ex.observers[:] = [FileStorageObserver(str(tmp_path))] if tmp_path is not None else []
    try:
        return expt.ex.run(command_name=command, config_updates=config, options={"--loglevel": "ERROR"})
    finally:
        expt.ex.observers[:] = []
