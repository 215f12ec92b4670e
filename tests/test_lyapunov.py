"""Lyapunov exponents by QR against closed forms and explicit products; perturbation and subspace tools."""
import math

import numpy as np
import pytest
import torch

from dynamics.lyapunov import (
    expanding_subspace,
    exponents,
    init_lyapunov,
    initial_vectors,
    local_chaos_counts,
    max_steps_between_qr,
    propagate,
    quadratic_exponents,
    sgd_tangent_map,
)
from dynamics.perturb import (
    STRATEGIES,
    exponential_bounds,
    fit_distance,
    load_eigenthings,
    perturbation_direction,
    perturbed_copies,
    random_subspace_baseline,
    save_eigenthings,
    subspace_similarity,
)

F64 = torch.float64


def run_quadratic(h, lr, steps, momentum=0.0, k=None, qr_every=1, gen=None, track_initial=False):
    p = h.shape[0]
    dim = p if momentum == 0 else 2 * p
    state = init_lyapunov(dim, k, gen=gen, track_initial=track_initial)
    tangent = sgd_tangent_map(lambda y: h @ y, lr, momentum, num_params=p)
    for _ in range(steps):
        state = propagate(state, tangent, qr_every)
    return state


def rotated(lam, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(lam.numel(), lam.numel(), dtype=F64, generator=gen))
    return q @ torch.diag(lam) @ q.T


LAM = torch.tensor([-3.0, 25.0, 0.5, 12.0, 0.0, 2.0], dtype=F64)  # lr 0.1: 2/lr = 20 -> λ = 25 and -3 expand
LR = 0.1


def test_quadratic_exponents_are_exact_in_the_eigenbasis():
    # Diagonal H ordered by |1 − lr λ|: QR of a diagonal product is trivial, so χ = log|1 − lr λ| to rounding.
    lam = LAM[torch.argsort((1 - LR * LAM).abs(), descending=True)]
    state = run_quadratic(torch.diag(lam), LR, 50)
    # Mean of 50 float64 logs, each of a product exact to an ulp: ~1e-16; χ = 0 for λ = 0 (hence atol).
    torch.testing.assert_close(exponents(state), torch.log((1 - LR * lam).abs()), rtol=0, atol=1e-12)


def test_quadratic_exponents_from_an_unaligned_frame_converge():
    state = run_quadratic(rotated(LAM), LR, 2000)
    got = torch.sort(exponents(state), descending=True).values
    # Benettin converges as O(1/t): the gaps here are >= 0.05, so 2000 steps leave < 1e-3.
    torch.testing.assert_close(got, quadratic_exponents(LAM, LR), atol=2e-3, rtol=0)
    counts = local_chaos_counts(LAM, LR)
    assert counts == {"num_neg": 1, "num_large": 1, "num_chaotic": 2}
    assert int((got > 1e-3).sum()) == counts["num_chaotic"]


def test_momentum_exponents_match_the_companion_roots():
    lam = torch.tensor([-1.0, 4.0, 30.0], dtype=F64)
    mu = 0.5
    state = run_quadratic(rotated(lam, 1), LR, 3000, momentum=mu)
    got = torch.sort(exponents(state), descending=True).values
    # Benettin's O(1/t) transient at t = 3000 (the companion matrices are not normal): ~1e-3; one χ is 0.
    torch.testing.assert_close(got, quadratic_exponents(lam, LR, mu), atol=5e-3, rtol=0)
    # λ = 30 sits on the boundary lr λ = 2(1 + μ) (a root at −1, χ = 0): not counted; λ = −1 is.
    assert local_chaos_counts(lam, LR, mu) == {"num_neg": 1, "num_large": 0, "num_chaotic": 1}


def test_partial_frame_gives_the_top_exponents():
    state = run_quadratic(rotated(LAM), LR, 2000, k=3, gen=torch.Generator().manual_seed(0))
    got = torch.sort(exponents(state), descending=True).values
    # A random 3-frame: the same O(1/t) convergence as the full frame, with a larger transient.
    torch.testing.assert_close(got, quadratic_exponents(LAM, LR)[:3], atol=5e-3, rtol=0)


def random_maps(dim=5, steps=8, seed=0):
    # Short horizon: the explicit product (condition number ~1e8 here) is still accurate in float64.
    gen = torch.Generator().manual_seed(seed)
    base = torch.diag(torch.tensor([2.0, 1.3, 1.0, 0.6, 0.2], dtype=F64)[:dim])
    return [base + 0.15 * torch.randn(dim, dim, dtype=F64, generator=gen) for _ in range(steps)]


@pytest.mark.parametrize("qr_every", [1, 4])
def test_qr_matches_the_explicit_product_over_a_short_horizon(qr_every):
    maps = random_maps()
    it = iter(maps)
    state = init_lyapunov(5, track_initial=True)
    for _ in maps:
        a = next(it)
        state = propagate(state, lambda y, a=a: a @ y, qr_every)
    prod = torch.eye(5, dtype=F64)
    for a in maps:
        prod = a @ prod
    t = len(maps)
    # Exactly: the accumulated diagonal is that of the product's own QR, and sums to log|det|.
    # The explicit product has condition ~1e8: its smallest R entries carry ~1e8·eps ≈ 1e-8 relative error,
    # i.e. ~1e-8 in their logs; 1e-7 leaves a margin of 10.
    r = torch.linalg.qr(prod).R
    torch.testing.assert_close(exponents(state) * t, torch.diagonal(r).abs().log(), rtol=0, atol=1e-7)
    sv = torch.linalg.svdvals(prod)
    assert float(exponents(state).sum() * t) == pytest.approx(float(sv.log().sum()), abs=1e-7)  # as above
    # Approximately: per-direction rates are the singular values' (O(1/t) apart).
    torch.testing.assert_close(torch.sort(exponents(state), descending=True).values, sv.log() / t, atol=0.05, rtol=0)
    # The graded R product gives the right singular vectors (the initial directions).
    rates, vecs = initial_vectors(state)
    _, _, vh = torch.linalg.svd(prod)
    cos = (vecs.T @ vh.T).abs().diagonal()
    assert float(cos[:3].min()) > 0.99
    torch.testing.assert_close(rates, sv.log() / t, atol=1e-8, rtol=0)  # exact SVD branch (moderate spread)


def test_graded_initial_vectors_on_a_long_horizon():
    # 400 steps: log scales spread by ~900, far beyond one float64 SVD; the graded Gram–Schmidt
    # directions equal the eigenvectors of a fixed symmetric map (its right singular vectors).
    lam = torch.tensor([1.5, 1.2, 0.9, 0.5, 0.1], dtype=F64)
    a = rotated(lam, 3)
    state = init_lyapunov(5, track_initial=True)
    for _ in range(400):
        state = propagate(state, lambda y: a @ y)
    rates, vecs = initial_vectors(state)
    # O(1/t) at t = 400 times the O(1) log-distortion of the rotated start (log of a condition ~e^3): < 1e-2.
    torch.testing.assert_close(rates, lam.log(), atol=2e-2, rtol=0)
    _, u = torch.linalg.eigh(a)
    cos = (vecs.T @ u.flip(1)).abs().diagonal()
    assert float(cos.min()) > 1 - 1e-9


def test_expanding_subspace_is_the_unstable_eigenspace_off_the_axes():
    # Fixed H = U diag(λ) Uᵀ, U a random rotation: the tangent product (I − lr H)^t has right singular
    # vectors U at every t, and the expanding ones are U[:, λ < 0] (|1 − lr λ| > 1 at lr 0.01).
    # At t = 10 and lr 0.01 the Benettin frame is still close to the identity, so its first columns
    # span roughly the first coordinate axes, far from this subspace (similarity near n_pos / P).
    lam = torch.tensor([-2.0, -1.0, 0.5, 1.0, 2.0, 3.0], dtype=F64)
    u, _ = torch.linalg.qr(torch.randn(6, 6, dtype=F64, generator=torch.Generator().manual_seed(4)))
    h = u @ torch.diag(lam) @ u.T
    unstable = u[:, :2]
    for steps in (10, 60):
        state = run_quadratic(h, 0.01, steps, track_initial=True)
        sub = expanding_subspace(state)
        assert sub.shape == (6, 2)
        # Exact SVD branch in float64: the similarity is 1 to rounding (~1e-15 per entry).
        assert subspace_similarity(sub, unstable) == pytest.approx(1.0, abs=1e-9)
        if steps == 10:  # the frame at time t is not it (it only turns towards it as t grows)
            frame = state.q[:, :int((exponents(state) > 0).sum())]  # what logging.log_lyapunov_subsim used
            assert frame.shape[1] != 2 or subspace_similarity(frame, unstable) < 0.99


def test_expanding_subspace_matches_the_eigh_of_the_explicit_product():
    # The original's formula written out: eigenvectors of YᵀY (Y the explicit tangent product) whose
    # eigenvalues, raised to 1/t, exceed 1. Non-symmetric, time-varying maps: left ≠ right vectors.
    maps = random_maps(steps=6, seed=2)
    state = init_lyapunov(5, track_initial=True)
    y = torch.eye(5, dtype=F64)
    for a in maps:
        state = propagate(state, lambda v, a=a: a @ v)
        y = a @ y
    w, v = torch.linalg.eigh(y.T @ y)
    rates = w.log() / (2 * len(maps))
    assert float(rates.abs().min()) > 1e-3  # no rate near the threshold: the count is unambiguous
    ref = v[:, w ** (1 / len(maps)) > 1]
    sub = expanding_subspace(state)
    assert sub.shape[1] == ref.shape[1] >= 1
    assert subspace_similarity(sub, ref) == pytest.approx(1.0, abs=1e-9)  # float64 SVD vs eigh, well separated
    assert subspace_similarity(state.q[:, :ref.shape[1]], ref) < 0.99  # the frame spans M Q0, not this


def test_long_horizon_does_not_overflow_and_too_rare_qr_raises():
    h = torch.diag(torch.tensor([-100.0, 1.0, 300.0], dtype=F64))  # growth 11x and 29x per step at lr 0.1
    state = run_quadratic(h, LR, 5000)
    assert torch.isfinite(exponents(state)).all()
    # Diagonal maps on the identity frame: 5000 float64 logs, each exact to an ulp, averaged: ~1e-13.
    torch.testing.assert_close(torch.sort(exponents(state), descending=True).values,
                               quadratic_exponents(torch.diag(h), LR), atol=1e-10, rtol=0)
    assert max_steps_between_qr(29.0) == 206  # floor(log(1.8e308 / 1e6) / log 29)
    with pytest.raises(FloatingPointError, match="step"):
        run_quadratic(h, LR, 400, qr_every=400)


def test_initial_vectors_need_tracking():
    state = run_quadratic(torch.eye(2, dtype=F64), LR, 3)
    with pytest.raises(ValueError, match="track_initial"):
        initial_vectors(state)
    with pytest.raises(ValueError, match="k must be"):
        init_lyapunov(3, 4)


# ----------------------------------------------------------------------------- perturbation tools

def test_perturbation_directions():
    gen = torch.Generator().manual_seed(0)
    ex = torch.tensor([0.3, 0.1, -0.2, -0.5], dtype=F64)
    vecs, _ = torch.linalg.qr(torch.randn(10, 4, dtype=F64, generator=gen))
    for s in STRATEGIES:
        v = perturbation_direction(s, 10, gen, ex, vecs)
        assert v.shape == (10,) and float(v.norm()) == pytest.approx(1.0, rel=1e-12)  # float64 normalisation
    # A unit column copied (and renormalised): components exact to a few ulps, some of them near 0.
    torch.testing.assert_close(perturbation_direction("max_chaos", 10, gen, ex, vecs), vecs[:, 0], atol=1e-14, rtol=0)
    torch.testing.assert_close(perturbation_direction("max_convergence", 10, gen, ex, vecs), vecs[:, 3],
                               atol=1e-14, rtol=0)
    chaos = perturbation_direction("randn_chaos", 10, gen, ex, vecs)
    assert float((vecs[:, :2].T @ chaos).norm()) == pytest.approx(1.0, rel=1e-12)  # inside span(V_pos): ulps
    # Momentum: vectors live in (δw, δv); the weight part is used.
    both = torch.cat([vecs, vecs])
    torch.testing.assert_close(perturbation_direction("max_chaos", 10, gen, ex, both), vecs[:, 0], atol=1e-14, rtol=0)
    with pytest.raises(ValueError, match="perturb_strat"):
        perturbation_direction("sideways", 10, gen)
    with pytest.raises(ValueError, match="eigenthings"):
        perturbation_direction("max_chaos", 10, gen)
    with pytest.raises(ValueError, match="positive"):
        perturbation_direction("randn_chaos", 10, gen, -ex.abs(), vecs)


def test_distance_fit_recovers_parameters():
    t = np.arange(0, 400, 5.0)
    a, b, d0 = 2e-3, 3e-6, 0.1
    d = np.sqrt(a * t + b * t**2 + d0**2)
    fit = fit_distance(t, d)
    # Noise-free data: curve_fit stops at its xtol/ftol 1.5e-8, ≲1e-7 relative in each parameter (none near 0).
    assert (fit.a, fit.b, fit.d0) == pytest.approx((a, b, d0), rel=1e-6)
    noisy = d * (1 + 0.01 * np.random.default_rng(0).standard_normal(t.size))
    fit = fit_distance(t, noisy)
    assert abs(fit.a - a) < 3.5 * fit.a_err + 1e-4 and abs(fit.b - b) < 3.5 * fit.b_err + 1e-7
    np.testing.assert_allclose(fit.predict(t), d, rtol=0.05)  # 1% noise per point; d >= d0 = 0.1 is never near 0
    lo, hi = exponential_bounds(t, d0, 0.01, -0.01)
    assert lo[-1] < d0 < hi[-1]
    with pytest.raises(ValueError, match="3 finite points"):
        fit_distance([0, 1], [1, 1])
    # d0 fixed (the original's fit_theoretical_bound): exact data give a, b exactly; a wrong d0 shifts them.
    fixed = fit_distance(t, d, d0=d0)
    assert (fixed.a, fixed.b, fixed.d0) == pytest.approx((a, b, d0), rel=1e-6)  # as above
    assert fixed.d0_err == 0.0  # d0 is given, not fitted
    assert fit_distance(t, d, d0=2 * d0).a != pytest.approx(a, rel=1e-2)
    with pytest.raises(ValueError, match="2 finite points"):
        fit_distance([0], [1], d0=1.0)


def test_perturbed_copies_cycle_strategies_and_eps_with_the_directions_drawn_in_order():
    w0 = torch.arange(6, dtype=torch.float32)
    ex = torch.tensor([0.5, -0.2], dtype=F64)
    vecs = torch.linalg.qr(torch.randn(6, 2, dtype=F64, generator=torch.Generator().manual_seed(1))).Q
    ws, copies = perturbed_copies(w0, ["max_chaos", "randn"], [1e-1, 1e-2], 5, torch.Generator().manual_seed(3),
                                  dict(exponents=ex, vectors=vecs))
    pairs = [("max_chaos", 1e-1), ("max_chaos", 1e-2), ("randn", 1e-1), ("randn", 1e-2), ("max_chaos", 1e-1)]
    assert copies == [{"copy": i + 1, "strategy": s, "eps": e} for i, (s, e) in enumerate(pairs)]
    assert all(w.dtype == w0.dtype and w.shape == w0.shape for w in ws)
    # Each copy sits at distance ε along the direction the same generator gives, copy after copy (float32 weights).
    gen = torch.Generator().manual_seed(3)
    for w, (s, e) in zip(ws, pairs):
        v = perturbation_direction(s, 6, gen, ex, vecs)
        torch.testing.assert_close(w, w0 + e * v.float())
        # ‖w − w0‖ = ε up to float32 rounding of w0 + εv: half an ulp at |w| <= 5 (2.4e-7) per entry, √6 entries
        assert float((w.double() - w0.double()).norm()) == pytest.approx(e, abs=1e-6)


def test_subspace_similarity_and_random_baseline():
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(50, 3, dtype=F64, generator=gen)
    # Same span: ‖VᵀW‖²/3 of float64 orthonormal bases, 1 to ~1e-15.
    assert subspace_similarity(v, v @ torch.randn(3, 3, dtype=F64, generator=gen)) == pytest.approx(1.0, abs=1e-12)
    disjoint = subspace_similarity(torch.eye(50, dtype=F64)[:, :3], torch.eye(50, dtype=F64)[:, 3:10])
    assert disjoint == pytest.approx(0.0, abs=1e-15)  # disjoint axes: products of 0 and 1, exactly 0
    eye = torch.eye(50, dtype=F64)
    assert subspace_similarity(eye[:, :2], eye[:, :10]) == pytest.approx(1.0, abs=1e-12)
    sims = [subspace_similarity(torch.randn(50, 4, dtype=F64, generator=gen),
                                torch.randn(50, 8, dtype=F64, generator=gen))
            for _ in range(400)]
    base = random_subspace_baseline(4, 8, 50)
    assert base == pytest.approx(8 / 50, rel=1e-12)  # max(d_V, d_W)/n in closed form
    assert abs(np.mean(sims) - base) < 3.5 * np.std(sims) / math.sqrt(len(sims))
    with pytest.raises(ValueError, match="same R"):
        subspace_similarity(torch.zeros(5, 2), torch.zeros(6, 2))


def test_eigenthings_round_trip(tmp_path):
    ex = torch.tensor([0.2, -0.1], dtype=F64)
    vecs = torch.eye(6, 2, dtype=F64)
    path = save_eigenthings(tmp_path / "e.npz", ex, vecs, 6, steps=10)
    loaded = load_eigenthings(path, num_params=6)
    assert torch.equal(loaded["exponents"], ex)  # stored as float64: the round trip is bitwise
    assert torch.equal(loaded["vectors"], vecs.float())  # stored as float32: bitwise after the same cast
    assert int(loaded["steps"]) == 10
    assert load_eigenthings(path.read_bytes())["num_params"] == 6
    with pytest.raises(ValueError, match="does not exist"):
        load_eigenthings(tmp_path / "nope.npz")
    with pytest.raises(ValueError, match="6 parameters; this model has 7"):
        load_eigenthings(path, num_params=7)
