"""The sampler's fast paths agree with the plain definitions.

- the batched gather equals advanced indexing;
- the compiled step equals the eager step up to float rounding, also when a cached
  compiled step is reused with new ε, γ, nβ (they must not be baked in);
- a failing torch.compile falls back to the eager step with a warning;
- the float32 update keeps the localisation unbiased (no 1 - εγ/2 rounding).
"""
import math

import pytest
import torch

import llc.sgld as sgld
from llc.sgld import SGLDConfig, run_sgld
from tests.cases import dln_case


def test_gather_equals_advanced_indexing():
    gen = torch.Generator().manual_seed(0)
    x, labels = torch.randn(50, 3, 2, generator=gen), torch.randint(0, 5, (50,), generator=gen)
    idx = torch.randint(0, 50, (4, 7), generator=gen)
    assert torch.equal(sgld._gather(x, idx), x[idx])
    assert torch.equal(sgld._gather(labels, idx), labels[idx])
    assert torch.equal(sgld._gather(x, idx.t().contiguous().t()), x[idx.t().contiguous().t()])  # strided idx


def test_compile_flag_is_validated():
    with pytest.raises(ValueError, match="compile"):
        SGLDConfig(compile="yes")
    assert SGLDConfig().compile == "auto"


def test_failed_compile_warns_and_matches_eager(monkeypatch):
    _, loss, w, x, y = dln_case(n=200)
    cfg = dict(epsilon=1e-4, gamma=2.0, num_steps=30, batch_size=10, num_chains=2)
    eager = run_sgld(loss, w, x, y, SGLDConfig(**cfg), seed=1)

    def broken_compile(fn, **kwargs):
        def raises(*args):
            args[0].add_(1.0)  # a half-done step must not leak into the chains
            raise RuntimeError("no C compiler")
        return raises

    monkeypatch.setattr(sgld, "_COMPILED", type(sgld._COMPILED)())
    monkeypatch.setattr(sgld.torch, "compile", broken_compile)
    with pytest.warns(RuntimeWarning, match="torch.compile failed"):
        fallback = run_sgld(loss, w, x, y, SGLDConfig(**cfg, compile=True), seed=1)
    assert torch.equal(fallback.loss, eager.loss) and torch.equal(fallback.final_w, eager.final_w)


def test_float32_localisation_has_no_bias():
    """With a zero loss, step 2 is w1 + Δ with E[Δ - sqrt(ε) ξ | w1] = -(εγ/2) w1.

    At ε = 5e-7, γ = 1 (the paper's DLN setting, docs/notes/llc.md#dln), 1 - εγ/2 is not a float32 number:
    scaling w by it would make γ 4.6% weaker. Regressing the pull on w1 over many
    coordinates must give -εγ/2 within 1%.
    """
    C, P, eps, gamma = 64, 2000, 5e-7, 1.0
    w_star = torch.zeros(P)
    x, y = torch.zeros(10, 1), torch.zeros(10, 1)

    def zero_loss(w, xb, yb):
        return (w * 0.0).sum() + (xb * 0.0).mean()

    cfg = SGLDConfig(epsilon=eps, gamma=gamma, num_steps=2, batch_size=2, num_chains=C, nbeta=1.0)
    w2 = run_sgld(zero_loss, w_star, x, y, cfg, seed=0).final_w.double()
    w1, xi1 = [], []
    for g in sgld.chain_generators(0, C, torch.device("cpu")):
        torch.randint(0, 10, (2, 2), generator=g)
        xi = torch.randn(2, P, generator=g)
        w1.append(math.sqrt(eps) * xi[0])  # step 1 starts at w* = 0, where the pull vanishes
        xi1.append(xi[1].double())
    w1, xi1 = torch.stack(w1).double(), torch.stack(xi1)
    pull = w2 - w1 - math.sqrt(eps) * xi1
    slope = float((pull * w1).sum() / (w1 * w1).sum())
    assert slope == pytest.approx(-eps * gamma / 2, rel=0.01)


@pytest.mark.slow
def test_compiled_matches_eager_and_compiles_once():
    """Compiles once (~10-40 s on a 2-core CPU), then reuses the step with new ε, γ, nβ and T.

    Reuse with new hyperparameters also checks that they are not baked into the code.
    """
    from torch._dynamo.utils import counters

    _, loss, w, x, y = dln_case(n=300)
    graphs = []
    for cfg in (
        dict(epsilon=1e-4, gamma=3.0, num_steps=40, batch_size=16, num_chains=3, nbeta=20.0),
        dict(epsilon=3e-5, gamma=0.5, num_steps=40, batch_size=16, num_chains=3, nbeta=50.0),
        dict(epsilon=3e-5, gamma=0.5, num_steps=7, batch_size=16, num_chains=3, nbeta=50.0),  # short last block
    ):
        eager = run_sgld(loss, w, x, y, SGLDConfig(**cfg), seed=2)
        compiled = run_sgld(loss, w, x, y, SGLDConfig(**cfg, compile=True), seed=2)
        graphs.append(counters["stats"]["unique_graphs"])
        torch.testing.assert_close(compiled.loss, eager.loss, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(compiled.final_w, eager.final_w, rtol=1e-9, atol=1e-12)
    assert loss in sgld._COMPILED
    assert graphs[0] >= 1 and graphs[0] == graphs[1] == graphs[2], f"graph counts {graphs}"
