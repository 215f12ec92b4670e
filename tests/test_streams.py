"""Random-stream ids: each experiment's ``Stream`` IntEnum keeps the values its ``range(N)`` tuple had,
so every derived seed (and so every recorded run) is unchanged by the switch."""
import numpy as np
import pytest

from core.runtime import derived_seed, stream_generator
from tests.conftest import load_experiment

# The former `A, B, ... = range(N)` tuples, in their order (values 0..N-1).
FORMER_TUPLES = {
    "expt_abc_params": ("SPLIT", "INIT", "BATCHES", "CALIBRATION", "COORD"),
    "expt_basis_decomposition": ("INIT", "BATCHES", "AUGMENT", "REINIT", "REBATCHES", "REAUGMENT"),
    "expt_chaos": ("INIT", "BATCHES", "PERTURB", "CGD", "LYAP", "PROJ"),
    "expt_dln": ("TRUE_PARAM", "DATA", "SGLD_W_STAR", "DIAG_W_STAR", "INIT", "BATCHES", "SGLD_TRAINED",
                 "DIAG_TRAINED", "TEST_DATA"),
    "expt_dln_saddle_dynamics": ("DATA", "INIT", "BATCHES", "SGLD"),
    "expt_llc_curve": ("INIT", "BATCHES", "LABEL_NOISE", "SGLD"),
    "expt_mala_vs_sgld": ("TRUE_PARAM", "DATA", "SGLD_CHAINS", "MALA_CHAINS"),
    "expt_rescaling_invariance": ("TEACHER", "DATA", "SAMPLING"),
    # expt_sgd_regimes derived seed_* from enumerate(SEED_KEYS)
    "expt_sgd_regimes": ("SEED_INIT", "SEED_BATCH", "SEED_TRAINSET", "SEED_TESTSET"),
}

# derived_seed(12345, k) for k = 0..8, printed by the code before the IntEnum switch.
GOLDEN_12345 = (4505821689789807193, 1541481317522987174, 7286201058102926136, 4737044581125315645,
                4615804025548699355, 4582546162348245978, 3133367653209316635, 4008720786225166622,
                1485078567839771561)


def _seed_sequence(seed: int, *key: int) -> int:
    """derived_seed written independently: the first uint64 word of SeedSequence, top bit cleared."""
    word = np.random.SeedSequence(seed, spawn_key=key).generate_state(1, dtype=np.uint64)[0]
    return int(word) % 2**63


def test_derived_seed_golden_and_closed_form():
    assert tuple(derived_seed(12345, k) for k in range(9)) == GOLDEN_12345
    assert derived_seed(12345, 2, 7) == 6273552028518563300  # two-level key, as the chain/checkpoint seeds use
    for key in [(0,), (3, 1), (8, 0, 2)]:
        assert derived_seed(7, *key) == _seed_sequence(7, *key)


def test_stream_generator_is_a_generator_seeded_from_derived_seed():
    import torch

    gen = stream_generator(12345, 2, 7)
    assert gen.initial_seed() == 6273552028518563300 and gen.device == torch.device("cpu")
    expected = torch.Generator().manual_seed(derived_seed(12345, 3))
    assert torch.equal(torch.randn(5, generator=stream_generator(12345, 3)), torch.randn(5, generator=expected))

def test_derived_seed_rejects_float_keys():
    with pytest.raises(TypeError):
        derived_seed(0, 1.0)


@pytest.mark.parametrize("name", sorted(FORMER_TUPLES))
def test_stream_values_unchanged(name):
    stream = load_experiment(name).Stream
    former = [(n, i) for i, n in enumerate(FORMER_TUPLES[name])]
    assert [(m.name, m.value) for m in stream][:len(former)] == former  # streams added since take new values
    assert len({m.value for m in stream}) == len(stream)
    for m in list(stream)[:len(former)]:
        assert derived_seed(12345, m) == GOLDEN_12345[m.value]
        assert derived_seed(12345, m, 3) == _seed_sequence(12345, m.value, 3)


def test_sgd_regimes_seed_keys_order():
    module = load_experiment("expt_sgd_regimes")
    assert module.SEED_KEYS == ("seed_init", "seed_batch", "seed_trainset", "seed_testset")


def test_regimes_data_streams_unchanged():
    from data.regimes import _Stream

    names = ("TRAIN_INPUTS", "TEST_INPUTS", "TEACHER", "TEST_PICK", "TRAIN_PICK")
    assert [(m.name, m.value) for m in _Stream] == [(n, i) for i, n in enumerate(names)]


def test_sgd_regimes_derived_seeds_unchanged(capsys):
    """seed_* keys left None get derived_seed(run seed, k) with k their former enumerate() position."""
    expt = load_experiment("expt_sgd_regimes")
    config = dict(expt.ex.run("print_config", options={"--loglevel": "ERROR"}).config)
    capsys.readouterr()
    config.update(seed_init=None, seed_batch=None, seed_trainset=None, seed_testset=7, dt=None, temp=0.01)
    seeds = expt.validate(config, 42)["seeds"]
    assert seeds == {"seed_init": GOLDEN_42[0], "seed_batch": GOLDEN_42[1], "seed_trainset": GOLDEN_42[2],
                     "seed_testset": 7}


# derived_seed(42, k) for k = 0, 1, 2, printed by the code before the IntEnum switch.
GOLDEN_42 = (6914975401685141156, 134183728835869882, 2378473973028931053)
