"""Every parameter of the original MALA_vs_SGLD.ipynb (edmundlth/validating_lambdahat), under the
notebook's variable name and with its value, is accepted by print_config; the renamed ones are
deprecated aliases that set the key they name here."""
import warnings

from tests.conftest import assert_print_config_takes, experiment_fixture

# The notebook's cells 7 and 8: network, step size, localisation, batch, draws, runs, the n sweep.
ORIGINAL = dict(input_dim=10, layer_widths=[20, 20, 10], step_size=1e-5, gamma=1.0, batch_size=32,
                num_samples=10000, num_runs=5, dataset_sizes=[100, 316, 1000, 3162, 10000, 31623, 100000])


expt = experiment_fixture("expt_mala_vs_sgld")


def test_print_config_takes_every_original_key(expt, capsys):
    assert_print_config_takes(expt, ORIGINAL, capsys)


def test_aliases_set_the_renamed_keys(expt):
    # values unlike the defaults, so each alias must be the one that set its key
    updates = dict(step_size=2e-5, num_samples=300, num_runs=3, dataset_sizes=[64, 128], batch_size=16)
    config = expt.ex.run(command_name="print_config", config_updates=updates).config
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        checked = expt.validate(config)
    assert {str(w.message).split("'")[1] for w in caught if w.category is FutureWarning} == set(updates)
    assert checked["ns"] == [64, 128] and checked["epsilon"] == {64: 2e-5, 128: 2e-5}
    for name in ("sgld", "mala"):
        assert (checked[name]["num_steps"], checked[name]["num_chains"]) == (300, 3)
    assert checked["sgld"]["batch_size"] == 16


def test_original_defaults_where_kept(expt):
    """The defaults are the notebook's values (docs/llc.md#mala-vs-sgld key table lists the renames)."""
    config = expt.ex.run(command_name="print_config").config
    checked = expt.validate(config)
    assert (config["input_dim"], config["layer_widths"], config["gamma"]) == (10, [20, 20, 10], 1.0)
    assert checked["ns"] == ORIGINAL["dataset_sizes"] and set(checked["epsilon"].values()) == {1e-5}
    sgld = checked["sgld"]
    assert (sgld["num_steps"], sgld["num_chains"], sgld["batch_size"]) == (10000, 5, 32)
    assert checked["mala"]["num_steps"] == 10000 and checked["mala"]["num_burnin_steps"] == 0
