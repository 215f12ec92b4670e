"""expt_dln's Hessian trace at w*: Hutchinson (the default) and Hutch++ against the dense Hessian's exact trace."""
import math

import pytest
import torch

from dynamics.hessian import hutchinson_trace
from llc.estimate import flat_model_for_module
from tests.conftest import load_experiment

# 3 -> 3 -> 2 bias-free DLN: P = 15 parameters. With noiseless teacher data the Hessian at w* is the
# Gauss-Newton (2 / (N·O)) JᵀJ, of rank dim{rank-2 2x3 matrices} = 6, plus residual terms of w*'s rounding to
# float32 when the network is built (eigenvalues ~1e-6, next to ~1e1 for the six; checked below).
TINY = dict(
    layer_widths=[3, 2], input_dim=3, num_training_data=200, num_test_data=50, device="cpu", dtype="float64",
    sgld_config=dict(num_steps=20, batch_size=20, num_chains=2, epsilon=1e-5, gamma=10.0), seed=3,
    do_hessian_trace=True, hessian_trace_probes=30, mala_acceptance_every=0,
)


@pytest.fixture(scope="module")
def expt():
    return load_experiment("expt_dln")


def run(expt, **updates):
    expt.ex.observers[:] = []
    return expt.ex.run(config_updates={**TINY, **updates})


def run_with_problem(expt, monkeypatch, **updates):
    """The run, and the problem (w*, test points, network at w*) its main function built."""
    built, build = [], expt.build_problem

    def spy(config, seed, checked):  # the main function's _seed is drawn by Sacred from the run's seed
        built.append(build(config, seed, checked))
        return built[-1]

    monkeypatch.setattr(expt, "build_problem", spy)
    r = run(expt, **updates)
    return r, built[-1]


def exact_hessian_at_w_star(expt, pb):
    """The dense Hessian (torch.func.hessian) of the test-point loss at w*, (P, P), with that loss and w*."""
    f_flat, w = flat_model_for_module(pb["net"], torch.float64, torch.device("cpu"))

    def loss(v, x, y):
        return expt._mse(f_flat(v, x), y)

    return torch.func.hessian(loss)(w, pb["x_test"], pb["y_test"]), loss, w


def test_both_methods_match_the_dense_trace_hutchpp_exactly(expt, monkeypatch):
    r, pb = run_with_problem(expt, monkeypatch)
    hutch, hpp = r.result, run(expt, hessian_trace_method="hutchpp").result
    assert hutch["hessian_trace_method"] == "hutchinson" and hpp["hessian_trace_method"] == "hutchpp"
    h, _, _ = exact_hessian_at_w_star(expt, pb)
    exact, eig = float(torch.trace(h)), torch.linalg.eigvalsh(h)  # eigenvalues ascending, (P,)
    p, m = h.shape[0], TINY["hessian_trace_probes"]
    rank = int((eig > 1e-4 * eig[-1]).sum())
    tail = float(eig[:-rank].abs().max())
    assert rank == 6 and tail < 1e-6 * float(eig[-1])
    # Rademacher Hutchinson: Var(vᵀHv) = 2 Σ_{i≠j} H_ij², so the mean of m probes has this exact SD.
    sd = math.sqrt(2 * float((h ** 2).sum() - (torch.diagonal(h) ** 2).sum()) / m)
    assert abs(hutch["hessian_trace"] - exact) <= 4 * sd  # 4σ: one fixed seed, a two-sided normal tail of 6e-5
    assert 0.4 * sd < hutch["hessian_trace_sem"] < 2.5 * sd  # the sample SD of 30 probes, not its exact value
    # Hutch++ with m // 3 = 10 >= rank 6 sketch vectors: Q contains the dominant eigenspace, so with
    # Π = I − QQᵀ only tr(ΠHΠ) is estimated, and |error| <= |tr ΠHΠ| + max_g |gᵀΠHΠg| <= 2·P·‖ΠHΠ‖₂ ≈ 2·P·tail
    # (‖g‖² = P for Rademacher g); the Hutchinson part's spread is bounded the same way.
    assert abs(hpp["hessian_trace"] - exact) <= 2 * p * tail
    assert hpp["hessian_trace_sem"] <= 2 * p * tail
    assert abs(hpp["hessian_trace"] - exact) < 1e-3 * sd  # much tighter than Hutchinson's spread


def test_default_is_the_previous_hutchinson_estimate(expt, monkeypatch):
    seeds = []
    monkeypatch.setattr(expt, "seed_everything", seeds.append)  # _main seeds every RNG from its _seed first
    r, pb = run_with_problem(expt, monkeypatch)
    _, loss, w = exact_hessian_at_w_star(expt, pb)
    gen = torch.Generator().manual_seed(expt.derived_seed(seeds[0], expt.Stream.DIAG_W_STAR))
    est, sem = hutchinson_trace(loss, w, pb["x_test"], pb["y_test"], TINY["hessian_trace_probes"], gen)
    assert r.config["hessian_trace_method"] == "hutchinson"
    assert (r.result["hessian_trace"], r.result["hessian_trace_sem"]) == (est, sem)  # same draws, same arithmetic


def test_no_trace_keys_without_do_hessian_trace(expt):
    res = run(expt, do_hessian_trace=False).result
    assert not {"hessian_trace", "hessian_trace_sem", "hessian_trace_method"} & set(res)


@pytest.mark.parametrize("updates, match", [
    (dict(hessian_trace_method="lanczos"), "hessian_trace_method"),
    (dict(hessian_trace_method="hutchpp", hessian_trace_probes=2), "hessian_trace_probes must be >= 3"),
    (dict(hessian_trace_probes=0), "hessian_trace_probes"),
])
def test_bad_trace_keys_fail_before_compute(expt, monkeypatch, updates, match):
    def no_compute(*a, **k):
        raise AssertionError("compute started before validation")

    monkeypatch.setattr(expt, "make_true_params", no_compute)
    with pytest.raises(ValueError, match=match):
        run(expt, **updates)
