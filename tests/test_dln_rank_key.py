"""true_param_config.rank_key: rand_rank reductions independent per matrix, or shared as in the original.

The original's expt_dln.initialise_expt calls utils.rand_reduce_matrix_rank(rngkey, x) with the
same PRNG key for every selected matrix, so k = randint(key, 0, rank) is equal for equal ranks.
"""
import numpy as np
import pytest
import torch

from models.dln import make_true_params, numerical_rank
from tests.conftest import load_experiment

SQUARE = (6, [6, 6, 6, 6])  # four 6x6 matrices: full rank 6, so k ∈ {0..5} and rank 6 - k


def _ranks(rank_key, seed, input_dim=SQUARE[0], widths=SQUARE[1], prop=1.0):
    gen = torch.Generator().manual_seed(seed)
    params = make_true_params(input_dim, widths, "rand_rank", gen, prop_rank_reduce=prop, rank_key=rank_key)
    return [numerical_rank(w)[0] for w in params.values()]


def test_shared_key_gives_equal_shaped_matrices_the_same_reduction():
    teachers = [_ranks("shared", seed) for seed in range(60)]
    assert all(len(set(r)) == 1 for r in teachers), teachers
    # The shared k is still U{0..5} across teachers: 60 teachers see all six ranks (miss < 6·(5/6)^60 ≈ 1e-4).
    assert {r[0] for r in teachers} == {1, 2, 3, 4, 5, 6}


def test_independent_keys_give_equal_shaped_matrices_different_reductions():
    teachers = [_ranks("independent", seed) for seed in range(60)]
    # All four equal has probability 6^-3 per teacher; most of the 60 teachers must differ.
    assert sum(len(set(r)) > 1 for r in teachers) >= 50, teachers
    assert {x for r in teachers for x in r} == {1, 2, 3, 4, 5, 6}


def test_shared_reduction_is_one_quantile_across_ranks():
    """Shared draw u: k = floor(u·rank) for every matrix, so k/rank agree to within 1/rank."""
    for seed in range(30):
        ranks = _ranks("shared", seed, input_dim=4, widths=[4, 9, 9, 4])  # ranks before reduction 4, 4, 9, 4
        k = np.array([4, 4, 9, 4]) - np.array(ranks)
        assert k[0] == k[1] == k[3]
        lo, hi = k[0] / 4, (k[0] + 1) / 4  # u ∈ [k/4, (k+1)/4) from the rank-4 matrices
        assert lo * 9 - 1 < k[2] <= hi * 9  # floor(9u) for u in that interval


def test_only_selected_matrices_are_reduced_with_a_shared_key():
    """prop_rank_reduce still selects each matrix independently: with 0.5, some teachers mix full and reduced."""
    teachers = [_ranks("shared", seed, prop=0.5) for seed in range(40)]
    mixed = [r for r in teachers if len(set(r)) > 1]
    assert mixed and all(len(set(r) - {6}) <= 1 for r in teachers)  # one reduced rank per teacher, at most


def test_make_true_params_rejects_an_unknown_rank_key():
    with pytest.raises(ValueError, match="rank_key"):
        make_true_params(3, [3], "rand_rank", torch.Generator(), rank_key="per_layer")


@pytest.fixture(scope="module")
def expt():
    return load_experiment("expt_dln")


TINY = dict(input_dim=6, layer_widths=[6, 6, 6], num_training_data=200, device="cpu", save_true_param=True,
            sgld_config=dict(num_steps=5, batch_size=20, num_chains=2), mala_acceptance_every=0)


def test_expt_dln_passes_rank_key_to_the_teacher(expt):
    def ranks(rank_key, seed):
        run = expt.ex.run(config_updates={**TINY, "seed": seed, "true_param_config": dict(
            method="rand_rank", prop_rank_reduce=1.0, rank_key=rank_key)})
        mats = run.info["true_param"]
        return [int(np.linalg.matrix_rank(np.array(mats[f"layers.{i}.weight"]))) for i in range(3)]

    assert all(len(set(ranks("shared", s))) == 1 for s in range(4))
    # Independent: all three equal has probability 1/36 per seed; 6 seeds all equal, 36^-6.
    assert any(len(set(ranks("independent", s))) > 1 for s in range(6))


def test_expt_dln_rejects_a_bad_rank_key_before_compute(expt, monkeypatch):
    def no_compute(*a, **k):
        raise AssertionError("teacher drawn before validation")

    monkeypatch.setattr(expt, "make_true_params", no_compute)
    with pytest.raises(ValueError, match=r"true_param_config\.rank_key.*independent.*shared"):
        expt.ex.run(config_updates={**TINY, "true_param_config": dict(method="rand_rank", rank_key="x")})
