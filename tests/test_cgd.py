"""CGD pruning: candidate sets, selection, projection, and its degenerate limit (plain SGD)."""
import pytest
import torch

from dynamics.cgd import OptimConfig, project_gradient, sgd_step
from dynamics.cgd_select import prune_candidates, select_pruned

F64 = torch.float64
LAM = torch.tensor([-2.0, -0.5, 0.0, 0.3, 1.0, 30.0], dtype=F64)  # lr 0.1: 2/lr = 20


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    yield


def test_candidate_sets():
    assert prune_candidates(LAM, "neg", 0.1).tolist() == [True, True, False, False, False, False]
    assert prune_candidates(LAM, "pos", 0.1).tolist() == [False, False, False, True, True, True]
    assert prune_candidates(LAM, "chaotic", 0.1).tolist() == [True, True, False, False, False, True]
    # Momentum widens the stable range to lr λ < 2(1 + μ): 2.8 (λ = 30 still expands), then 3.8.
    assert prune_candidates(LAM, "chaotic", 0.1, momentum=0.4).tolist() == [True, True, False, False, False, True]
    assert prune_candidates(LAM, "chaotic", 0.1, momentum=0.9).tolist() == [True, True, False, False, False, False]
    # Numerical zeros are not pruned as negative.
    assert prune_candidates(torch.tensor([-1e-12, 1e-12]), "neg", 0.1, zero_threshold=1e-9).tolist() == [False, False]
    assert prune_candidates(torch.tensor([0.2, -0.1, 0.0]), "chaotic", 0.1, lyapunov=True).tolist() == [True, False, False]
    assert prune_candidates(torch.tensor([0.2, -0.1, 0.0]), "neg", 0.1, lyapunov=True).tolist() == [False, True, False]


def test_selection_by_k_and_rule():
    gen = torch.Generator().manual_seed(0)
    cfg = OptimConfig(name="cgd", lr=0.1, prune_set="pos", k=2)
    assert sorted(select_pruned(LAM, cfg, gen).idx.tolist()) == [4, 5]  # top |λ| among λ > 0
    assert sorted(select_pruned(LAM, OptimConfig(name="cgd", lr=0.1, prune_set="pos"), gen).idx.tolist()) == [3, 4, 5]
    picks = {tuple(sorted(select_pruned(LAM, OptimConfig(name="cgd", lr=0.1, prune_set="pos", k=1, prune_k="rand"), gen).idx.tolist()))
             for _ in range(60)}
    assert picks == {(3,), (4,), (5,)}
    assert select_pruned(LAM, OptimConfig(name="cgd", lr=0.1, prune_set="neg", k=10), gen).idx.tolist() == [0, 1]


def test_projection_removes_exactly_the_pruned_components():
    gen = torch.Generator().manual_seed(1)
    v, _ = torch.linalg.qr(torch.randn(8, 5, dtype=F64, generator=gen))
    g = torch.randn(8, dtype=F64, generator=gen)
    pruned = torch.tensor([1, 3])
    out, frac = project_gradient(g, v, pruned)
    torch.testing.assert_close(v[:, pruned].T @ out, torch.zeros(2, dtype=F64), atol=1e-14, rtol=0)
    kept = torch.tensor([0, 2, 4])
    torch.testing.assert_close(v[:, kept].T @ out, v[:, kept].T @ g)
    # The part of g outside span(V) (zero-eigenvalue directions) is kept too.
    perp = g - v @ (v.T @ g)
    torch.testing.assert_close(out - v @ (v.T @ out), perp)
    assert frac == pytest.approx(float((v[:, pruned].T @ g).pow(2).sum() / g.pow(2).sum()))
    noisy, _ = project_gradient(g, v, pruned, noise_fac=0.5, gen=torch.Generator().manual_seed(2))
    xi = torch.randn(2, dtype=F64, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(v[:, pruned].T @ noisy, 0.5 * xi, atol=1e-14, rtol=0)
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
        torch.testing.assert_close(w, p.detach())


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
    torch.testing.assert_close(g, h_pos @ w)


@pytest.mark.parametrize("updates,key", [
    (dict(name="adam"), "name"),
    (dict(lr=0.0), "lr"),
    (dict(momentum=1.0), "momentum"),
    (dict(name="cgd", k=0), "k"),
    (dict(name="cgd", prune_set="zero"), "prune_set"),
    (dict(name="cgd", prune_k="bottom"), "prune_k"),
    (dict(name="cgd", prune_start=-1), "prune_start"),
    (dict(name="cgd", noise=True), "noise_fac"),
    (dict(prune_global=True), "cgd"),
])
def test_config_errors_name_the_field(updates, key):
    with pytest.raises(ValueError, match=key):
        OptimConfig(**updates)
