"""Every config key of the original expt_dln, expt_dln_saddle_dynamics and expt_llc_curve
(edmundlth/validating_lambdahat), under its original name and with the original's default
value, is accepted by print_config. Renamed keys are accepted as deprecated aliases."""
import math

import pytest

from tests.conftest import assert_print_config_takes, load_experiment

SGLD = dict(epsilon=1e-5, gamma=10.0, num_steps=5000, num_chains=1, batch_size=100)

ORIGINAL = {
    "expt_dln": dict(
        expt_name=None, sgld_config=SGLD, loss_trace_minibatch=True, do_compute_distance=False,
        layer_widths=[10, 10], input_dim=10, input_dist="uniform",
        true_param_config=dict(method="random", prop_rank_reduce=0.2, mean=0.0, std=5.0),
        param_init=None, num_training_data=10000, itemp=1 / math.log(10000), num_test_data=100,
        training_config=dict(optim="sgd", learning_rate=0.01, momentum=0.9, batch_size=200, num_steps=5000),
        do_training=False, do_functional_rank=False, do_hessian_trace=False, seed=0, save_true_param=False,
        verbose=False,
    ),
    "expt_dln_saddle_dynamics": dict(
        expt_name=None, in_out_dim=5,
        sgld_config=dict(epsilon=1e-6, gamma=1.0, num_steps=100, num_chains=1, batch_size=128),
        loss_trace_minibatch=True, width=10, initialisation_exponent=1.5, num_hidden_layers=4,
        num_training_data=10000, itemp=1 / math.log(10000),
        training_config=dict(optim="sgd", learning_rate=1e-4, momentum=None, batch_size=128, num_steps=20000),
        seed=42, logging_period=50, verbose=False, do_plot=False,
    ),
    "expt_llc_curve": dict(
        expt_name=None, sgld_config=dict(epsilon=5e-6, gamma=1.0, num_steps=1000, num_chains=1, batch_size=1024),
        loss_trace_minibatch=True,
        model_data_config=dict(model_name="resnet18", data_name="cifar10", label_noise_level=None,
                               layer_width_factor=64),
        training_config=dict(optim="sgd", learning_rate=1e-3, momentum=None, batch_size=128, num_steps=20000,
                             l2_regularization=None),
        force_realisable=False, seed=42, logging_period=200, verbose=False, do_plot=False,
    ),
}


@pytest.mark.parametrize("name", sorted(ORIGINAL))
def test_print_config_takes_every_original_key(name, capsys):
    assert_print_config_takes(load_experiment(name), ORIGINAL[name], capsys)


def test_original_defaults_where_kept():
    """The defaults this project keeps from the original (the key tables of docs/llc.md list the rest)."""
    dln = load_experiment("expt_dln").ex.run(command_name="print_config").config
    assert dln["num_test_data"] == 100 and dln["itemp"] is None  # None -> 1 / log n, the original's value
    assert dln["true_param_config"]["init"] == "haiku" and dln["training_config"]["init"] == "haiku"
    llc = load_experiment("expt_llc_curve").ex.run(command_name="print_config").config
    assert llc["seed"] == 42 and llc["model_data_config"]["layer_width_factor"] == 64
    assert llc["input_normalisation"] == "unit_interval"
    saddle = load_experiment("expt_dln_saddle_dynamics").ex.run(command_name="print_config").config
    assert saddle["seed"] == 42 and saddle["do_plot"] is False
