"""CGD pruning: candidate sets, selection, projection, and its degenerate limit (plain SGD)."""
import math

import pytest
import torch

from dynamics.cgd import OptimConfig, cgd_gradient, project_gradient, sgd_step
from dynamics.cgd_select import (
    CgdRules,
    cgd_tangent_hessian,
    global_directions,
    null_basis,
    prune_candidates,
    pruned_directions,
    select_global,
    select_pruned,
)
from dynamics.hessian import SymEig

F64 = torch.float64
LAM = torch.tensor([-2.0, -0.5, 0.0, 0.3, 1.0, 30.0], dtype=F64)  # lr 0.1: 2/lr = 20


def test_candidate_sets():
    assert prune_candidates(LAM, "neg", 0.1).tolist() == [True, True, False, False, False, False]
    assert prune_candidates(LAM, "pos", 0.1).tolist() == [False, False, False, True, True, True]
    assert prune_candidates(LAM, "chaotic", 0.1).tolist() == [True, True, False, False, False, True]
    # Momentum widens the stable range to lr λ < 2(1 + μ): 2.8 (λ = 30 still expands), then 3.8.
    assert prune_candidates(LAM, "chaotic", 0.1, momentum=0.4).tolist() == [True, True, False, False, False, True]
    assert prune_candidates(LAM, "chaotic", 0.1, momentum=0.9).tolist() == [True, True, False, False, False, False]
    # Numerical zeros are not pruned as negative.
    assert prune_candidates(torch.tensor([-1e-12, 1e-12]), "neg", 0.1, zero_threshold=1e-9).tolist() == [False, False]
    assert prune_candidates(torch.tensor([0.2, -0.1, 0.0]), "chaotic", 0.1,
                            lyapunov=True).tolist() == [True, False, False]
    assert prune_candidates(torch.tensor([0.2, -0.1, 0.0]), "neg", 0.1, lyapunov=True).tolist() == [False, True, False]


def test_selection_by_k_and_rule():
    gen = torch.Generator().manual_seed(0)
    cfg = OptimConfig(name="cgd", lr=0.1, prune_set="pos", k=2)
    assert sorted(select_pruned(LAM, cfg, gen).idx.tolist()) == [4, 5]  # top |λ| among λ > 0
    assert sorted(select_pruned(LAM, OptimConfig(name="cgd", lr=0.1, prune_set="pos"), gen).idx.tolist()) == [3, 4, 5]
    rand1 = OptimConfig(name="cgd", lr=0.1, prune_set="pos", k=1, prune_k="rand")
    picks = {tuple(sorted(select_pruned(LAM, rand1, gen).idx.tolist())) for _ in range(60)}
    assert picks == {(3,), (4,), (5,)}
    assert select_pruned(LAM, OptimConfig(name="cgd", lr=0.1, prune_set="neg", k=10), gen).idx.tolist() == [0, 1]


def test_projection_removes_exactly_the_pruned_components():
    gen = torch.Generator().manual_seed(1)
    v, _ = torch.linalg.qr(torch.randn(8, 5, dtype=F64, generator=gen))
    g = torch.randn(8, dtype=F64, generator=gen)
    pruned = torch.tensor([1, 3])
    out, frac = project_gradient(g, v, pruned)
    # float64, |g| ~ 3 and 8-term inner products: every component is exact to a few ulps (~1e-15).
    torch.testing.assert_close(v[:, pruned].T @ out, torch.zeros(2, dtype=F64), atol=1e-14, rtol=0)
    kept = torch.tensor([0, 2, 4])
    torch.testing.assert_close(v[:, kept].T @ out, v[:, kept].T @ g, atol=1e-14, rtol=0)
    # The part of g outside span(V) (zero-eigenvalue directions) is kept too.
    perp = g - v @ (v.T @ g)
    torch.testing.assert_close(out - v @ (v.T @ out), perp, atol=1e-14, rtol=0)
    # A ratio of float64 sums of squares, not near 0 (two of five random components): ulps.
    assert frac == pytest.approx(float((v[:, pruned].T @ g).pow(2).sum() / g.pow(2).sum()), rel=1e-12)
    noisy, _ = project_gradient(g, v, pruned, noise_fac=0.5, gen=torch.Generator().manual_seed(2))
    xi = torch.randn(2, dtype=F64, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(v[:, pruned].T @ noisy, 0.5 * xi, atol=1e-14, rtol=0)  # as above: ulps of O(1)
    same, frac0 = project_gradient(g, v, torch.tensor([], dtype=torch.long))
    assert same is g and frac0 == 0.0


def test_sgd_step_matches_torch_optim():
    gen = torch.Generator().manual_seed(3)
    w0 = torch.randn(4, dtype=F64, generator=gen)
    grads = [torch.randn(4, dtype=F64, generator=gen) for _ in range(5)]
    for mu in (0.0, 0.9):
        p = torch.nn.Parameter(w0.clone())
        opt = torch.optim.SGD([p], lr=0.05, momentum=mu)
        w, buf = w0.clone(), None
        for g in grads:
            p.grad = g.clone()
            opt.step()
            w, buf = sgd_step(w, buf, g, 0.05, mu)
        # The same float64 operations in the same order; 5 steps of O(1) values: at most a few ulps.
        torch.testing.assert_close(w, p.detach(), atol=1e-14, rtol=0)


def test_pruning_neg_keeps_a_saddle_escape_direction_frozen():
    # L = ½ (w₁² − w₂²): SGD escapes along w₂; CGD pruning neg never moves w₂.
    h = torch.diag(torch.tensor([1.0, -1.0], dtype=F64))
    cfg = OptimConfig(name="cgd", lr=0.1, prune_set="neg")
    gen = torch.Generator().manual_seed(0)
    w_sgd = w_cgd = torch.tensor([1.0, 1e-3], dtype=F64)
    for _ in range(50):
        evals, evecs = torch.linalg.eigh(h)
        w_sgd, _ = sgd_step(w_sgd, None, h @ w_sgd, cfg.lr, 0.0)
        g, _ = project_gradient(h @ w_cgd, evecs, select_pruned(evals, cfg, gen).idx)
        w_cgd, _ = sgd_step(w_cgd, None, g, cfg.lr, 0.0)
    assert abs(float(w_sgd[1])) > 0.1
    assert float(w_cgd[1]) == 1e-3
    # Degenerate limit: an empty prune set (no negative eigenvalue) is exactly SGD.
    h_pos = torch.diag(torch.tensor([1.0, 2.0], dtype=F64))
    evals, evecs = torch.linalg.eigh(h_pos)
    w = torch.tensor([1.0, 1.0], dtype=F64)
    g, _ = project_gradient(h_pos @ w, evecs, select_pruned(evals, cfg, gen).idx)
    assert torch.equal(g, h_pos @ w)  # nothing pruned: the gradient is returned as it came (values 1 and 2)


@pytest.mark.parametrize("updates,key", [
    (dict(name="adam"), "name"),
    (dict(lr=0.0), "lr"),
    (dict(momentum=1.0), "momentum"),
    (dict(name="cgd", k=0), "k"),
    (dict(name="cgd", prune_set="zero"), "prune_set"),
    (dict(name="cgd", prune_k="bottom"), "prune_k"),
    (dict(name="cgd", prune_start=-1), "prune_start"),
    (dict(name="cgd", noise=True, noise_fac=-0.1), "noise_fac"),
    (dict(name="cgd", gamma=1.5), "gamma"),
    (dict(name="cgd", gamma=-0.1), "gamma"),
    (dict(gamma=0.5), "gamma"),
    (dict(prune_global=True), "cgd"),
])
def test_config_errors_name_the_field(updates, key):
    with pytest.raises(ValueError, match=key):
        OptimConfig(**updates)


# ----------------------------------------------------------------------------- the original's rules (cgd group)
# Each test writes the original's rule (chaotic_neurips22 optim/cgd.py: calc_update) by hand on a small
# explicit spectrum and checks that the matching key reproduces it while the default keeps the fix.

ORIGINAL = CgdRules.original()


def _original_pruned(w, lr, prune_set, k=None):
    """The original's top_abs pruned indices, written from its formulas: pools w <= 0, w >= 0,
    (1 − lr w)² > 1; k of them by topk(w, largest=False), topk(w), topk((1 − lr w)²)."""
    if prune_set == "neg":
        pool = [i for i, x in enumerate(w) if x <= 0]
        order = sorted(pool, key=lambda i: w[i])
    elif prune_set == "pos":
        pool = [i for i, x in enumerate(w) if x >= 0]
        order = sorted(pool, key=lambda i: -w[i])
    else:
        growth = [(1 - lr * x) ** 2 for x in w]
        pool = [i for i, x in enumerate(growth) if x > 1]
        order = sorted(pool, key=lambda i: -growth[i])
    return sorted(order if k is None else order[:k])


def test_zeros_pool_puts_zero_eigenvalues_in_neg_and_pos_as_the_original():
    cfg = dict(name="cgd", lr=0.1)
    lam = LAM.tolist()  # one exact zero at index 2
    for prune_set, fixed in (("neg", [0, 1]), ("pos", [3, 4, 5]), ("chaotic", [0, 1, 5])):
        gen = torch.Generator().manual_seed(0)
        conf = OptimConfig(prune_set=prune_set, **cfg)
        assert select_pruned(LAM, conf, gen, 1e-9).idx.tolist() == fixed
        assert select_pruned(LAM, conf, gen, 1e-9, ORIGINAL).idx.tolist() == _original_pruned(lam, 0.1, prune_set)
    # A numerical zero (|λ| <= threshold) counts as exactly 0: in both pools, whatever its rounding sign.
    tiny = torch.tensor([-1e-12, 1e-12, -1.0], dtype=F64)
    assert prune_candidates(tiny, "neg", 0.1, zero_threshold=1e-9, rules=ORIGINAL).tolist() == [True, True, True]
    assert prune_candidates(tiny, "pos", 0.1, zero_threshold=1e-9, rules=ORIGINAL).tolist() == [True, True, False]
    # Implicit zeros (range-only Hessian, P − r = 4 of them): the whole null space under neg/pos, never chaotic.
    gen = torch.Generator().manual_seed(0)
    sel = select_pruned(LAM, OptimConfig(prune_set="neg", **cfg), gen, 1e-9, ORIGINAL, implicit_zeros=4)
    assert sel.idx.tolist() == [0, 1, 2] and sel.null == 4
    assert select_pruned(LAM, OptimConfig(prune_set="chaotic", **cfg), gen, 1e-9, ORIGINAL, implicit_zeros=4).null == 0
    assert select_pruned(LAM, OptimConfig(prune_set="neg", **cfg), gen, 1e-9, implicit_zeros=4).null == 0
    # top_abs with k past the negatives: topk(w, k, largest=False) on [λ..., 0, 0, 0, 0] takes -2, -0.5, then zeros
    # (the explicit one first, then one implicit).
    sel = select_pruned(LAM, OptimConfig(prune_set="neg", k=4, **cfg), gen, 1e-9, ORIGINAL, implicit_zeros=4)
    assert sel.idx.tolist() == [0, 1, 2] and sel.null == 1


def test_rank_growth_orders_chaotic_by_one_minus_lr_lambda_squared():
    # lr 0.1, band 20: chaotic = {−5, −1, 22}. |λ| ranks 22 first; (1 − lr λ)² is 2.25, 1.21, 1.44: −5 first.
    lam = torch.tensor([-5.0, -1.0, 0.5, 22.0], dtype=F64)
    gen = torch.Generator().manual_seed(0)
    for k, by_abs, by_growth in ((1, [3], [0]), (2, [0, 3], [0, 3]), (3, [0, 1, 3], [0, 1, 3])):
        conf = OptimConfig(name="cgd", lr=0.1, prune_set="chaotic", k=k)
        assert sorted(select_pruned(lam, conf, gen).idx.tolist()) == by_abs
        assert sorted(select_pruned(lam, conf, gen, rules=CgdRules(rank="growth")).idx.tolist()) == by_growth
        assert by_growth == _original_pruned(lam.tolist(), 0.1, "chaotic", k)
    # On neg and pos the original's topk by value is the |λ| order: the key changes nothing there.
    for prune_set in ("neg", "pos"):
        conf = OptimConfig(name="cgd", lr=0.1, prune_set=prune_set, k=1)
        assert select_pruned(LAM, conf, gen, rules=CgdRules(rank="growth")).idx.tolist() \
            == select_pruned(LAM, conf, gen).idx.tolist() == _original_pruned(LAM.tolist(), 0.1, prune_set, 1)


def test_band_plain_ignores_momentum_as_the_original():
    # lr 0.1, μ 0.4: the heavy-ball band is 2(1 + μ)/lr = 28, the original's (1 − lr λ)² > 1 gives 20.
    lam = torch.tensor([-1.0, 0.5, 25.0], dtype=F64)
    assert prune_candidates(lam, "chaotic", 0.1, momentum=0.4).tolist() == [True, False, False]
    assert prune_candidates(lam, "chaotic", 0.1, momentum=0.4, rules=CgdRules(band="plain")).tolist() \
        == [True, False, True]
    assert [i for i in range(3) if (1 - 0.1 * lam[i]) ** 2 > 1] == [0, 2]


def test_rand_draws_with_replacement_collapse_repeats():
    # Pool of 3 (λ > 0 in LAM), k = 3. Distinct: always all 3. With replacement (randint, as the original) the
    # number of distinct picks D has P(D=1) = 3/27, P(D=2) = 18/27, P(D=3) = 6/27.
    conf = OptimConfig(name="cgd", lr=0.1, prune_set="pos", k=3, prune_k="rand")
    gen = torch.Generator().manual_seed(4)
    assert all(sorted(select_pruned(LAM, conf, gen).idx.tolist()) == [3, 4, 5] for _ in range(20))
    n = 3000
    picks = [select_pruned(LAM, conf, gen, rules=CgdRules(rand_draws="replacement")).idx.tolist() for _ in range(n)]
    assert all(set(p) <= {3, 4, 5} and len(set(p)) == len(p) for p in picks)
    for d, prob in ((1, 3 / 27), (2, 18 / 27), (3, 6 / 27)):
        freq = sum(len(p) == d for p in picks) / n
        assert abs(freq - prob) < 4 * math.sqrt(prob * (1 - prob) / n)  # 4 binomial standard errors
    # rand over a pool with implicit zeros (zeros=pool): 2 negatives + 2 null directions, k = 1 distinct draw
    # lands in the null space with probability 2/4.
    conf = OptimConfig(name="cgd", lr=0.1, prune_set="neg", k=1, prune_k="rand")
    lam = torch.tensor([-2.0, -0.5, 0.3], dtype=F64)
    nulls = [select_pruned(lam, conf, gen, rules=CgdRules(zeros="pool"), implicit_zeros=2).null for _ in range(n)]
    assert set(nulls) <= {0, 1} and abs(sum(nulls) / n - 0.5) < 4 * math.sqrt(0.25 / n)


def test_global_rule_hessian_applies_the_hessian_rules_to_sigma_squared():
    # χ at t = 1000 steps: log σ² = 2tχ = 20, 2, −2, −100. lr 0.1: chaotic is σ² > 20, i.e. log σ² > log 20 ≈ 3.0;
    # log σ² ≤ max + log(4·eps) ≈ −14.7 is a numerical zero (index 3).
    chi = torch.tensor([0.01, 0.001, -0.001, -0.05], dtype=F64)
    gen = torch.Generator().manual_seed(0)

    def pick(prune_set, rules, k=None, steps=1000):
        return sorted(select_global(chi, OptimConfig(name="cgd", lr=0.1, prune_set=prune_set, k=k), gen, rules,
                                    steps).tolist())

    sign, hessian = CgdRules(), CgdRules(global_rule="hessian")
    assert (pick("chaotic", sign), pick("pos", sign), pick("neg", sign)) == ([0, 1], [0, 1], [2, 3])
    s2 = [math.exp(20), math.exp(2), math.exp(-2), 0.0]  # σ², the smallest below float resolution of the largest
    assert pick("chaotic", hessian) == _original_pruned(s2, 0.1, "chaotic") == [0]
    assert pick("pos", hessian) == [0, 1, 2]  # every σ² > 0; the numerical zero kept (zeros=keep)
    assert pick("pos", ORIGINAL) == _original_pruned(s2, 0.1, "pos") == [0, 1, 2, 3]
    assert pick("neg", hessian) == [] and pick("neg", ORIGINAL) == _original_pruned(s2, 0.1, "neg") == [3]
    assert pick("pos", hessian, k=1) == [0] and pick("neg", sign, k=1) == [3]  # topk σ²; largest |χ|
    # The original's save_lyapunov_at file holds (σ²)^{1/t} = e^{2χ} ≈ 1: nothing above 20 (steps = 1).
    assert pick("chaotic", hessian, steps=1) == []
    with pytest.raises(ValueError, match="steps"):
        pick("pos", hessian, steps=None)


def test_project_gradient_prunes_the_whole_null_space_without_a_basis():
    gen = torch.Generator().manual_seed(5)
    q, _ = torch.linalg.qr(torch.randn(7, 7, dtype=F64, generator=gen))
    u, null = q[:, :3], q[:, 3:]  # range of H (r = 3) and an explicit basis of its null space
    g = torch.randn(7, dtype=F64, generator=gen)
    pruned = torch.tensor([1])
    out, frac = project_gradient(g, u, pruned, null_of=u)
    # Independent: remove u₁ and every null direction with the explicit basis.
    ref, _ = project_gradient(g, torch.cat([u, null], dim=1), torch.tensor([1, 3, 4, 5, 6]))
    torch.testing.assert_close(out, ref, atol=1e-14, rtol=0)  # |g| ~ 3: a few ulps of the 7-term sums
    assert frac == pytest.approx(float(1 - (u[:, [0, 2]].T @ g).pow(2).sum() / (g @ g)), rel=1e-12)
    noisy, _ = project_gradient(g, u, pruned, noise_fac=0.5, gen=torch.Generator().manual_seed(6), null_of=u)
    draws = torch.Generator().manual_seed(6)
    xi = torch.randn(1, dtype=F64, generator=draws)
    zeta = torch.randn(7, dtype=F64, generator=draws)
    torch.testing.assert_close(noisy - out, 0.5 * (u[:, 1] * xi + null @ (null.T @ zeta)), atol=1e-14, rtol=0)


def test_null_basis_is_orthonormal_and_orthogonal_to_the_range():
    gen = torch.Generator().manual_seed(7)
    u, _ = torch.linalg.qr(torch.randn(50, 10, dtype=F64, generator=gen))
    n = null_basis(u, 6, gen)
    assert n.shape == (50, 6)
    # float64 Householder QR and two projections: O(P·eps) ≈ 1e-14 in every inner product.
    torch.testing.assert_close(n.T @ n, torch.eye(6, dtype=F64), atol=1e-13, rtol=0)
    torch.testing.assert_close(u.T @ n, torch.zeros(10, 6, dtype=F64), atol=1e-13, rtol=0)


def test_pruned_directions_on_a_range_only_hessian():
    # H = U diag(−1, 0.5, 2) Uᵀ in R⁶: three implicit zeros. neg under zeros=pool is {−1} ∪ null space.
    gen = torch.Generator().manual_seed(8)
    u, _ = torch.linalg.qr(torch.randn(6, 3, dtype=F64, generator=gen))
    eig = SymEig(torch.tensor([-1.0, 0.5, 2.0], dtype=F64), u, 6)
    pool = CgdRules(zeros="pool")
    vecs, null_of = pruned_directions(eig, None, OptimConfig(name="cgd", prune_set="neg"), CgdRules(), gen, 1e-12)
    assert null_of is None and torch.equal(vecs, u[:, :1])
    vecs, null_of = pruned_directions(eig, None, OptimConfig(name="cgd", prune_set="neg"), pool, gen, 1e-12)
    assert torch.equal(vecs, u[:, :1]) and null_of is u  # the whole null space, by projection
    # k = 3 by top_abs: λ = −1, then two of the three zeros, drawn in the null space.
    vecs, null_of = pruned_directions(eig, None, OptimConfig(name="cgd", prune_set="neg", k=3), pool, gen, 1e-12)
    assert null_of is None and vecs.shape == (6, 3) and torch.equal(vecs[:, 0], u[:, 0])
    torch.testing.assert_close(vecs.T @ vecs, torch.eye(3, dtype=F64), atol=1e-13, rtol=0)  # float64 QR: ~P·eps
    # prune_global: the stored vectors of the selected exponents, re-orthonormalised.
    stored = (torch.tensor([0.2, -0.1, 0.05], dtype=F64), u, 10.0)
    vecs, null_of = pruned_directions(eig, stored, OptimConfig(name="cgd", prune_set="pos", prune_global=True),
                                      CgdRules(), gen, 0.0)
    assert null_of is None and vecs.shape == (6, 2)
    torch.testing.assert_close(vecs @ vecs.T, u[:, [0, 2]] @ u[:, [0, 2]].T, atol=1e-13, rtol=0)  # same span


@pytest.mark.parametrize("key,value", [("zeros", "drop"), ("rand_draws", "twice"), ("rank", "sq"), ("band", "wide"),
                                       ("global_rule", "sign"), ("tangent", "jacobian")])
def test_rules_errors_name_the_field(key, value):
    with pytest.raises(ValueError, match=key):
        CgdRules(**{key: value})


# ----------------------------------------------------------------------------- noise_fac=None, gamma, tangent map

def _originals_project_grads(grads, v, keep, noise_fac, xi):
    """The original's project_grads written out: V_k V_kᵀ g + fac · V_d ξ, fac = mean|g| if None."""
    fac = grads.abs().mean() if noise_fac is None else noise_fac
    vk, vd = v[:, keep], v[:, ~keep]
    return vk @ (vk.T @ grads) + fac * (vd @ xi)


def test_noise_fac_none_scales_the_noise_by_mean_abs_gradient_as_the_original():
    gen = torch.Generator().manual_seed(3)
    v, _ = torch.linalg.qr(torch.randn(6, 6, dtype=F64, generator=gen))  # a full eigenbasis, as the original's
    g = torch.randn(6, dtype=F64, generator=gen)
    keep = torch.tensor([True, False, True, True, False, True])
    cfg = OptimConfig(name="cgd", noise=True)  # noise_fac=None is now valid: the original's default
    out, _ = cgd_gradient(g, v[:, ~keep], cfg, gen=torch.Generator().manual_seed(7))
    xi = torch.randn(2, dtype=F64, generator=torch.Generator().manual_seed(7))
    # float64, 6-term products of O(1) numbers: ulps (~1e-15), bounded by 1e-13.
    torch.testing.assert_close(out, _originals_project_grads(g, v, keep, None, xi), atol=1e-13, rtol=0)
    assert abs(float(g.abs().mean()) - 1) > 0.1  # the scale differs from a unit noise_fac here: the check can fail
    fixed, _ = cgd_gradient(g, v[:, ~keep], OptimConfig(name="cgd", noise=True, noise_fac=0.25),
                            gen=torch.Generator().manual_seed(7))
    torch.testing.assert_close(fixed, _originals_project_grads(g, v, keep, 0.25, xi), atol=1e-13, rtol=0)


def test_gamma_mixes_the_gradient_and_the_pruned_gradient_as_the_original():
    gen = torch.Generator().manual_seed(4)
    v, _ = torch.linalg.qr(torch.randn(6, 6, dtype=F64, generator=gen))
    g = torch.randn(6, dtype=F64, generator=gen)
    keep = torch.tensor([True, True, False, True, False, False])
    for gamma in (0.0, 0.3, 1.0):
        out, _ = cgd_gradient(g, v[:, ~keep], OptimConfig(name="cgd", gamma=gamma))
        # The original's step: d_p = (1 − γ) p.grad + γ · projection (noise off).
        ref = (1 - gamma) * g + gamma * (v[:, keep] @ (v[:, keep].T @ g))
        torch.testing.assert_close(out, ref, atol=1e-13, rtol=0)  # ulps of O(1) values, as above
    assert OptimConfig(name="cgd").gamma == 1.0  # the original's default: the pruned gradient alone


def test_cgd_tangent_map_derivative_and_the_originals_projected_form():
    # A quadratic loss L = ½ wᵀHw and fixed pruned directions that are NOT eigenvectors of H (prune_global).
    gen = torch.Generator().manual_seed(5)
    b = torch.randn(5, 5, dtype=F64, generator=gen)
    h = b @ b.T - 2 * torch.eye(5, dtype=F64)
    vp, _ = torch.linalg.qr(torch.randn(5, 2, dtype=F64, generator=gen))
    lr, eye = 0.1, torch.eye(5, dtype=F64)
    for gamma in (1.0, 0.4):
        cfg = OptimConfig(name="cgd", lr=lr, gamma=gamma)

        def step(w):  # the CGD update, differentiated independently by autograd
            return w - lr * cgd_gradient(h @ w, vp, cfg)[0]

        jac = torch.autograd.functional.jacobian(step, torch.randn(5, dtype=F64, generator=gen))
        derivative = eye - lr * cgd_tangent_hessian(lambda y: h @ y, vp, gamma)(eye)
        torch.testing.assert_close(derivative, jac, atol=1e-13, rtol=0)  # exact up to float64 ulps of O(1) entries
    # The original's Pg H Pg with Pg = Vg[:, kept] Vg[:, kept]ᵀ for a full orthonormal basis Vg.
    vg, _ = torch.linalg.qr(torch.cat([vp, torch.randn(5, 3, dtype=F64, generator=gen)], dim=1))  # vg[:, :2] spans vp
    pg = vg[:, 2:] @ vg[:, 2:].T
    projected = cgd_tangent_hessian(lambda y: h @ y, vp, 0.4, CgdRules(tangent="projected"))(eye)
    torch.testing.assert_close(projected, pg @ h @ pg, atol=1e-13, rtol=0)  # γ ignored, as the original
    assert (projected - cgd_tangent_hessian(lambda y: h @ y, vp, 1.0)(eye)).abs().max() > 0.1  # the two differ here
    assert CgdRules.original().tangent == "projected" and CgdRules().tangent == "derivative"
    # For per-step eigenvectors of H (γ = 1) the two coincide: V_p commutes with H.
    lam, u = torch.linalg.eigh(h)
    both = [cgd_tangent_hessian(lambda y: h @ y, u[:, :2], 1.0, CgdRules(tangent=t))(eye)
            for t in ("derivative", "projected")]
    torch.testing.assert_close(both[0], both[1], atol=1e-12, rtol=0)


def test_global_directions_from_stored_eigenthings():
    stored = dict(exponents=torch.tensor([0.3, -0.1]), vectors=torch.arange(12.0).reshape(6, 2), steps=torch.tensor(40))
    values, vectors, steps = global_directions(stored, 4)
    assert values.dtype == vectors.dtype == F64 and values.tolist() == pytest.approx([0.3, -0.1])  # float32 input
    assert vectors.tolist() == stored["vectors"][:4].tolist() and steps == 40.0  # the weight part (momentum: 2P rows)
    assert global_directions(dict(stored, rooted=torch.tensor(True)), 4)[2] == 1.0  # a 1/t-rooted file
    assert global_directions({k: stored[k] for k in ("exponents", "vectors")}, 4)[2] is None
