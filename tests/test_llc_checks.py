"""llc/ config checks go through core.checks: CheckError naming key, what was expected and what arrived."""
import numpy as np
import pytest

from core.checks import CheckError
from llc.chain import ChainConfig
from llc.mala import MALAConfig
from llc.psgld import PSGLDConfig
from llc.restricted import layer_groups
from llc.samplers import check_sampler, split_sampler
from llc.sghmc import SGHMCConfig, SGNHTConfig
from llc.sgld import SGLDConfig


@pytest.mark.parametrize("build, message", [
    (lambda: SGLDConfig(epsilon=0.0), "epsilon must be a finite number > 0; got 0.0"),
    (lambda: SGLDConfig(gamma=float("nan")), "gamma must be a finite number >= 0; got nan"),
    (lambda: SGLDConfig(num_steps=True), "num_steps must be an integer >= 1; got True"),
    (lambda: SGLDConfig(batch_size=0), "batch_size must be an integer >= 1; got 0"),
    (lambda: SGLDConfig(num_chains=2.0), "num_chains must be an integer >= 1; got 2.0"),
    (lambda: SGLDConfig(nbeta=-1.0), "nbeta must be None or a number > 0; got -1.0"),
    (lambda: SGLDConfig(num_burnin_steps=-1), "num_burnin_steps must be None or an integer >= 0; got -1"),
    (lambda: SGLDConfig(loss_trace_minibatch=1), "loss_trace_minibatch must be True or False; got 1"),
    (lambda: PSGLDConfig(rho=1.0), "rho must be a number in [0, 1); got 1.0"),
    (lambda: PSGLDConfig(rho=-0.1), "rho must be a number in [0, 1); got -0.1"),
    (lambda: PSGLDConfig(kappa=0), "kappa must be a finite number > 0; got 0"),
    (lambda: PSGLDConfig(adapt_steps=-2), "adapt_steps must be None or an integer >= 0; got -2"),
    (lambda: PSGLDConfig(localisation="rel"), "localisation must be one of ('relative', 'absolute'); got 'rel'"),
    (lambda: MALAConfig(target_acceptance=1.0), "target_acceptance must be a number in (0, 1); got 1.0"),
    (lambda: MALAConfig(adapt_step_size="yes"), "adapt_step_size must be True or False; got 'yes'"),
    (lambda: SGHMCConfig(friction=1.5), "friction must be a number in (0, 1]; got 1.5"),
    (lambda: SGNHTConfig(thermostat_init=float("inf")), "thermostat_init must be None or a finite number; got inf"),
    (lambda: layer_groups(None, by="layer"), "by must be one of ('module', 'parameter'); got 'layer'"),
    (lambda: check_sampler("hmc", None), "sampler must be one of ('sgld', 'psgld', 'mala', 'sgnht', 'sghmc')"),
    (lambda: split_sampler({"sampler": "mala"}), "sgld_config.sampler must be one of ('sgld', 'sgnht', 'sghmc')"),
])
def test_bad_values_raise_check_errors_naming_key_expected_and_got(build, message):
    with pytest.raises(CheckError) as err:
        build()
    assert str(err.value).startswith(message)


def test_numpy_scalars_and_an_infinite_nbeta_pass_as_before():
    cfg = ChainConfig(num_steps=np.int64(10), num_chains=np.int32(2), epsilon=np.float32(1e-3), nbeta=float("inf"),
                      num_burnin_steps=np.int64(5))
    assert cfg.burnin() == 5
    assert PSGLDConfig(adapt_steps=np.int64(3)).adapt_steps == 3
    with pytest.raises(ValueError, match=r"num_burnin_steps must be < num_steps \(10\); got 10"):
        ChainConfig(num_steps=10, num_burnin_steps=10)
