"""The core routines on CUDA, in float32 and float64, against the same routine on the CPU.

Skipped without a CUDA device; marked ``cuda`` so a GPU session runs exactly these
(``pytest -m cuda tests``, which bench/gpu.sh does first). The deterministic routines
(HVP, dense Hessian, Lanczos, NTK) must agree with the CPU to the dtype's rounding: the
same sums in another order, a few ulps times the fan-in (≤ 10 here) and depth (≤ 3), so
rtol 1e-10 in float64 and 1e-4 in float32 leave > 100× headroom. The samplers draw
their noise from per-device generators (CUDA's Philox, not the CPU's Mersenne Twister),
so their λ̂ is compared statistically: within 3.5 combined standard errors plus 10%
(the 10% covers the small per-device discretisation differences of short chains).
"""
from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import llc.sgld as sgld
from dynamics.hessian import dense_hessian, hvp
from dynamics.lanczos import hessian_matvec, lanczos
from dynamics.ntk import empirical_ntk
from llc.estimate import estimate_llc, flat_loss_for_module
from llc.sgld import SGLDConfig, run_sgld
from tests.cases import dln_case

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

DTYPES = [torch.float32, torch.float64]
RTOL = {torch.float64: 1e-10, torch.float32: 1e-4}
CUDA = torch.device("cuda")


def _mlp(dtype):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 10), nn.Tanh(), nn.Linear(10, 3)).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_hvp_and_dense_hessian_match_the_cpu(dtype):
    net, *_, x, y = dln_case(dtype=torch.float64)
    loss_cpu, w_cpu = flat_loss_for_module(net.to(dtype), F.mse_loss, dtype, torch.device("cpu"))
    loss_gpu, w_gpu = flat_loss_for_module(net.to(dtype), F.mse_loss, dtype, CUDA)
    x, y = x.to(dtype), y.to(dtype)
    v = torch.randn(w_cpu.numel(), generator=torch.Generator().manual_seed(1), dtype=dtype)
    h_cpu = dense_hessian(loss_cpu, w_cpu, x, y)
    h_gpu = dense_hessian(loss_gpu, w_gpu, x.to(CUDA), y.to(CUDA)).cpu()
    scale = h_cpu.abs().max()
    torch.testing.assert_close(h_gpu, h_cpu, rtol=RTOL[dtype], atol=RTOL[dtype] * scale)
    hv = hvp(loss_gpu, w_gpu, v.to(CUDA), x.to(CUDA), y.to(CUDA)).cpu()
    torch.testing.assert_close(hv, h_cpu @ v, rtol=RTOL[dtype], atol=RTOL[dtype] * scale * v.abs().sum())


def test_lanczos_on_cuda_finds_the_dense_top_eigenvalues():
    net, *_, x, y = dln_case()
    loss, w = flat_loss_for_module(net, F.mse_loss, torch.float64, CUDA)
    x, y = x.to(CUDA), y.to(CUDA)
    exact = torch.linalg.eigvalsh(dense_hessian(loss, w, x, y)).flip(0)[:3].cpu()
    got = lanczos(hessian_matvec(loss, w, x, y), w.numel(), 3, tol=1e-10, dtype=torch.float64, device=CUDA,
                  gen=torch.Generator(device=CUDA).manual_seed(0))
    torch.testing.assert_close(got.eigenvalues.cpu(), exact, rtol=1e-8, atol=1e-8 * float(exact[0]))


@pytest.mark.parametrize("dtype", DTYPES)
def test_empirical_ntk_matches_the_cpu(dtype):
    net = _mlp(dtype)
    x = torch.randn(8, 5, generator=torch.Generator().manual_seed(2), dtype=dtype)
    k_cpu = empirical_ntk(net, dict(net.named_parameters()), x)
    net_gpu = _mlp(dtype).to(CUDA)
    k_gpu = empirical_ntk(net_gpu, dict(net_gpu.named_parameters()), x.to(CUDA)).cpu()
    torch.testing.assert_close(k_gpu, k_cpu, rtol=RTOL[dtype], atol=RTOL[dtype] * k_cpu.abs().max())


@pytest.mark.parametrize("sampler", ["sgld", "psgld", "mala", "sgnht", "sghmc"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_every_sampler_on_cuda_agrees_with_the_cpu(sampler, dtype):
    net, *_, x, y = dln_case(n=2000)
    eps = {"mala": 1e-4, "psgld": 1e-3}.get(sampler, 1e-4)
    kw = dict(epsilon=eps, gamma=10.0, num_steps=1500, batch_size=100, num_chains=4, seed=0, dtype=dtype,
              sampler=sampler)
    cpu = estimate_llc(net, F.mse_loss, (x, y), device="cpu", **kw)
    gpu = estimate_llc(net, F.mse_loss, (x, y), device="cuda", **kw)
    assert math.isfinite(gpu.lambdahat) and gpu.loss_trace.shape == cpu.loss_trace.shape
    se = math.hypot(cpu.lambdahat_std, gpu.lambdahat_std) / 2  # std over 4 chains -> standard error
    assert abs(cpu.lambdahat - gpu.lambdahat) < 3.5 * se + 0.10 * abs(cpu.lambdahat)


def test_fused_path_runs_on_cuda_and_matches_the_generic_one():
    """The fused Linear-stack step (≥ 2 chains) on CUDA gives the same λ̂ as on the CPU, statistically."""
    net, *_, x, y = dln_case(n=2000, dtype=torch.float32)
    kw = dict(epsilon=1e-4, gamma=10.0, num_steps=1500, batch_size=100, num_chains=8, seed=0)
    gpu = estimate_llc(net, F.mse_loss, (x, y), device="cuda", **kw)
    cpu = estimate_llc(net, F.mse_loss, (x, y), device="cpu", **kw)
    assert gpu.loss_path == "fused" == cpu.loss_path
    se = math.hypot(cpu.lambdahat_std, gpu.lambdahat_std) / math.sqrt(8)
    assert abs(cpu.lambdahat - gpu.lambdahat) < 3.5 * se + 0.10 * abs(cpu.lambdahat)


def _graph_case(path, dtype):
    """A DLN teacher problem on CUDA with a fused (Linear stack) or a generic (LayerNorm) flat loss."""
    net, *_, x, y = dln_case(n=500, dtype=torch.float64)
    if path == "generic":
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(3, 6), nn.LayerNorm(6), nn.Tanh(), nn.Linear(6, 2))
    loss, w = flat_loss_for_module(net.to(dtype), F.mse_loss, dtype, CUDA)
    assert loss.path == path
    return loss, w, x.to(CUDA, dtype), y.to(CUDA, dtype)


@pytest.mark.parametrize("path", ["fused", "generic"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_graph_step_matches_the_eager_step(monkeypatch, path, dtype):
    """compile="auto" on a long run captures the step in a CUDA graph: the eager run's trace, to float rounding.

    The graph replays the eager step's own kernels on the same draws (the same seed on the
    same device), so the two runs differ only where a kernel orders a reduction differently
    from run to run: a few ulps per step, not amplified over 60 steps of a contractive
    update (ε nβ λ_max(H) / 2 < 1 here). RTOL (1e-10 / 1e-4) leaves > 100× headroom and
    still catches stale draws or a missed update (|Δw| ~ sqrt(ε) = 1e-2 per step).
    """
    monkeypatch.setattr(sgld, "COMPILE_AUTO_MIN_CHAIN_STEPS", 1)  # this short run counts as long
    loss, w, x, y = _graph_case(path, dtype)
    cfg = dict(epsilon=1e-4, gamma=10.0, nbeta=100.0, num_steps=60, batch_size=20, num_chains=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a fallback (failed capture or validation) fails the test
        graph = run_sgld(loss, w, x, y, SGLDConfig(**cfg), seed=0)
    eager = run_sgld(loss, w, x, y, SGLDConfig(**cfg, compile=False), seed=0)
    assert graph.compile_mode == "cuda-graph" and eager.compile_mode == "eager"
    rtol = RTOL[dtype]
    torch.testing.assert_close(graph.loss, eager.loss, rtol=rtol, atol=rtol * float(eager.loss.abs().max()))
    torch.testing.assert_close(graph.final_w, eager.final_w, rtol=rtol, atol=rtol * float(eager.final_w.abs().max()))
    assert not torch.equal(graph.final_w, w.expand_as(graph.final_w))  # the chains moved


def test_a_failed_capture_falls_back_to_the_eager_step(monkeypatch):
    """A loss that synchronises (illegal while a stream captures) fails the capture: one warning, then eager.

    Last in the file: it also checks that CUDA works after a failed capture. The two runs
    are the same eager code on the same draws, so they agree to float64 rounding (RTOL).
    """
    monkeypatch.setattr(sgld, "COMPILE_AUTO_MIN_CHAIN_STEPS", 1)
    loss, w, x, y = _graph_case("generic", torch.float64)

    def syncing(wc, xc, yc):
        torch.cuda.synchronize()
        return loss(wc, xc, yc)

    cfg = dict(epsilon=1e-4, gamma=10.0, nbeta=100.0, num_steps=20, batch_size=20, num_chains=4)
    with pytest.warns(RuntimeWarning, match="CUDA-graph step but the capture failed") as record:
        out = run_sgld(syncing, w, x, y, SGLDConfig(**cfg), seed=0)
    assert sum(issubclass(r.category, RuntimeWarning) for r in record) == 1 and out.compile_mode == "eager-fallback"
    eager = run_sgld(syncing, w, x, y, SGLDConfig(**cfg, compile=False), seed=0)
    rtol = RTOL[torch.float64]
    torch.testing.assert_close(out.loss, eager.loss, rtol=rtol, atol=rtol * float(eager.loss.abs().max()))
    torch.testing.assert_close(out.final_w, eager.final_w, rtol=rtol, atol=rtol * float(eager.final_w.abs().max()))
    again = run_sgld(loss, w, x, y, SGLDConfig(**cfg), seed=0)  # a later capture still works
    assert again.compile_mode == "cuda-graph"
