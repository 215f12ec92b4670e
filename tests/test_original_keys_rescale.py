"""Every setting of the original rescaling_invariance.ipynb (edmundlth/validating_lambdahat),
under its notebook name and with the notebook's value, is accepted by print_config, and the
renamed ones (deprecated aliases) land on the keys here with a FutureWarning."""
import math

import pytest

from tests.conftest import assert_print_config_takes, experiment_fixture

N = 10000
# The notebook's variables for its first network (10 -> 20 -> 10, data/llc_rescaling_results.json).
ORIGINAL = dict(
    input_dim=10, layer_widths=[20, 10], num_training_data=N,
    degen_directions=[1, 2, 3, 4, 5, 8],
    scaling_factors=[10.0 ** (-4 + k / 2) for k in range(17)],  # jnp.linspace(-4, 4, 17)
    sgld_config=dict(epsilon=1e-5, gamma=0.0, num_steps=10000),  # its SGLDConfig fields
    batch_size=500, num_runs=5, itemp=1 / math.log(N),
    seed=0,  # jax.random.PRNGKey(0); the data's np.random.seed(0) is one of the run seed's streams
)


expt = experiment_fixture("expt_rescaling_invariance")


def test_print_config_takes_every_notebook_key(expt, capsys):
    assert_print_config_takes(expt, ORIGINAL, capsys)


def test_notebook_names_map_onto_the_keys_here(expt):
    config = expt.ex.run(command_name="print_config", config_updates=ORIGINAL).config
    with pytest.warns(FutureWarning, match="deprecated") as record:
        resolved = expt.resolve_original_keys(config)
    renamed = {"input_dim", "layer_widths", "degen_directions", "scaling_factors", "batch_size", "num_runs"}
    assert renamed <= {str(w.message).split("'")[1] for w in record}  # one note per renamed key
    assert resolved["layer_sizes"] == [10, 20, 10]
    assert resolved["degenerate_units"] == [1, 2, 3, 4, 5, 8]
    assert resolved["alphas"] == ORIGINAL["scaling_factors"]
    sgld = resolved["sgld_config"]
    assert (sgld["epsilon"], sgld["gamma"], sgld["num_steps"]) == (1e-5, 0.0, 10000)
    assert (sgld["batch_size"], sgld["num_chains"]) == (500, 5)
    assert sgld["nbeta"] == pytest.approx(N / math.log(N), rel=1e-12)  # n · itemp, the notebook's n / log n
    # the config itself is left as Sacred gave it
    assert config["layer_sizes"] == [10, 20, 10] and config["sgld_config"]["nbeta"] is None


def test_notebook_defaults_where_kept(expt):
    """The notebook's values this project keeps as defaults (the docs/llc.md#rescaling table lists the rest)."""
    config = expt.ex.run(command_name="print_config").config
    sgld = config["sgld_config"]
    assert (sgld["epsilon"], sgld["gamma"], sgld["num_steps"], sgld["batch_size"], sgld["num_chains"]) == \
        (1e-5, 0.0, 10000, 500, 5)
    assert sgld["nbeta"] is None and sgld["num_burnin_steps"] == 0  # None -> n / log n; every draw averaged
    assert config["num_training_data"] == N and config["degenerate_units"] == [1, 2, 3, 4, 5, 8]
    assert config["samplers"] == ["psgld_fixed"] and config["teacher_init"] == "haiku"
    assert config["alphas"] == pytest.approx(ORIGINAL["scaling_factors"], rel=1e-12)
    assert config["loss_trace_minibatch"] is False and config["mala_acceptance_every"] == 20


@pytest.mark.parametrize("updates, match", [
    (dict(itemp=-1.0), "itemp"),
    (dict(itemp=0.1, sgld_config=dict(nbeta=5.0)), "itemp or sgld_config.nbeta"),
])
def test_bad_itemp_is_named(expt, updates, match):
    config = expt.ex.run(command_name="print_config", config_updates=updates).config
    with pytest.raises(ValueError, match=match):
        expt.resolve_original_keys(config)
