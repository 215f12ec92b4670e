"""Shared expt_basis_decomposition cases: a tiny MNIST config, a run of it, npz loading."""
import numpy as np
from sacred.observers import FileStorageObserver

# 64 training images, batches of 16: 4 steps per epoch; fig2_cnn_bn1d at width 2 has p = 1·3·3 = 9.
TINY = dict(data="mnist", model="fig2_cnn_bn1d", width=2, batch_size=16, num_epoch=2, optimizer="sgd",
            lr_setting=[0.05, 1, 0.01], decay_stepsize=1, early_points=3, n_basis=3, device="cpu",
            eval_batch_size=13)


def run(expt, data_root, tmp_path=None, named_configs=(), **updates):
    expt.ex.observers[:] = [FileStorageObserver(str(tmp_path))] if tmp_path is not None else []
    try:
        return expt.ex.run(config_updates={**TINY, "data_root": data_root, **updates},
                           named_configs=list(named_configs))
    finally:
        expt.ex.observers[:] = []


def npz(path):
    with np.load(path) as z:
        return {k: z[k] for k in z.files}
