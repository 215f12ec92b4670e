"""amp (llc.precision): the loss forward/backward under torch.autocast, everything else in the run's dtype."""
import math

import numpy as np
import pytest
import torch

from llc.chain import ChainConfig, run_chains
from llc.estimate import estimate_llc, estimate_llc_flat
from llc.samplers import sampler_configs
from llc.sgld import SGLDConfig, SGLDKernel, _gather, run_sgld
from tests.cases import dln_case, mse


def _noisy_dln(dtype, n=1000):
    """A DLN teacher with 0.1 label noise: L_n(w*) ~ 0.01, far from zero (a realizable L_n(w*) = 0 is all rounding)."""
    _, loss, w, x, y = dln_case(n=n, dtype=dtype)
    y = y + 0.1 * torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=dtype)
    return loss, w, x, y


class _TodaysStep(SGLDKernel):
    """The SGLD step as it was before amp, written out op by op (fused path for C > 1, autograd for C = 1)."""

    def __init__(self, loss_fn, w_star, x, y, config, nbeta):
        super().__init__(loss_fn, w_star, x, y, config, nbeta)
        eps = config.epsilon
        self.coef = (eps * config.gamma / 2, -eps * nbeta / 2, math.sqrt(eps))
        self.loss_fn = loss_fn

    def step(self, t, w, draws):
        pull, drift, noise = self.coef
        xb, yb = _gather(self.x, draws.idx), _gather(self.y, draws.idx)
        if w.shape[0] > 1:
            loss, g = self.loss_fn.value_and_grad(w, xb, yb)
        else:
            with torch.enable_grad():
                wg = w.detach().requires_grad_(True)
                loss = self.loss_fn(wg[0], xb[0], yb[0]).reshape(1)
                (g,) = torch.autograd.grad(loss.sum(), wg)
        g.mul_(drift).add_(draws.xi, alpha=noise).add_(self.w_star - w, alpha=pull)
        w.add_(g)
        return loss.detach()


@pytest.mark.parametrize("chains", [1, 3])
def test_amp_none_is_bit_identical_to_the_plain_step(chains):
    loss, w, x, y = _noisy_dln(torch.float32, n=200)
    assert hasattr(loss, "value_and_grad")  # the fused path is the one C > 1 takes
    cfg = SGLDConfig(epsilon=1e-4, gamma=100.0, num_steps=150, batch_size=20, num_chains=chains, amp=None)
    got = run_sgld(loss, w, x, y, cfg, seed=4)
    ref, ref_w = run_chains(_TodaysStep(loss, w, x, y, cfg, cfg.resolve_nbeta(200)), w, 200, cfg, seed=4)
    torch.testing.assert_close(got.loss, ref.cpu(), rtol=0, atol=0)  # same ops in the same order: bit for bit
    torch.testing.assert_close(got.final_w, ref_w, rtol=0, atol=0)


def test_bf16_keeps_the_run_dtype_and_shifts_lambdahat_by_the_rounding_bias():
    loss, w, x, y = _noisy_dln(torch.float32)
    n = x.shape[0]
    cfg = SGLDConfig(epsilon=1e-4, gamma=100.0, num_steps=2000, batch_size=100, num_chains=4)
    fp32 = estimate_llc_flat(loss, w, x, y, cfg, seed=0)
    bf16 = estimate_llc_flat(loss, w, x, y, cfg, seed=0, amp="bf16")  # the same draws
    assert (fp32.amp, bf16.amp, bf16.summary()["amp"]) == (None, "bf16", "bf16")
    assert bf16.loss_trace.dtype == np.float64 and bf16.init_loss == fp32.init_loss  # L_n(w*) in float32
    out = run_sgld(loss, w, x, y, SGLDConfig(epsilon=1e-4, gamma=100.0, num_steps=5, batch_size=100, num_chains=2,
                                             amp="bf16"), seed=0)
    assert out.final_w.dtype == torch.float32
    # bf16 rounds the outputs f by a relative ~2^-9 (8 significant bits), adding E[δ²] > 0 to every squared
    # residual: λ̂ moves up by about b = nβ (L_n^bf16(w*) - L_n(w*)), computed here independently at w*
    # (~0.04 against λ̂ ~ 4, i.e. bf16's ~3 significant digits). Along the chains w_t stays within the
    # localisation radius of w*, where f (and so E[δ²]) varies by a fraction of itself, and the bf16
    # gradients perturb the same-draw trajectories by a similar fraction: each chain's shift lies within b
    # of b (measured 0.022..0.042 for b = 0.038), far inside the chains' spread (std ~0.2).
    nbeta = n / math.log(n)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        l_bf16 = float(loss(w, x, y))
    b = nbeta * (l_bf16 - float(loss(w, x, y)))
    assert 0.005 < b < 0.2
    shift = bf16.lambdahat_per_chain - fp32.lambdahat_per_chain
    assert np.all(np.abs(shift - b) <= b), (shift, b)
    assert not np.array_equal(bf16.loss_trace, fp32.loss_trace)  # autocast did run


def test_amp_skips_compile_and_the_fused_path(monkeypatch):
    loss, w, x, y = _noisy_dln(torch.float32, n=200)
    calls = []
    inner = loss.value_and_grad
    monkeypatch.setattr(loss, "value_and_grad", lambda *a: calls.append(1) or inner(*a))
    cfg = SGLDConfig(epsilon=1e-4, num_steps=3, batch_size=20, num_chains=2, compile=True, amp="bf16")
    assert not cfg.wants_compile()
    out = run_sgld(loss, w, x, y, cfg, seed=0)
    assert out.compile_mode == "eager-amp" and not out.compiled and calls == []
    run_sgld(loss, w, x, y, SGLDConfig(epsilon=1e-4, num_steps=3, batch_size=20, num_chains=2, compile=False),
             seed=0)
    assert len(calls) == 3  # amp=None still takes the fused value_and_grad


@pytest.mark.parametrize("sampler", ["sgnht", "sghmc", "psgld"])
def test_other_minibatch_samplers_take_amp(sampler):
    net, *_ = dln_case(n=200, dtype=torch.float32)
    loss, w, x, y = _noisy_dln(torch.float32, n=200)
    kw = dict(epsilon=1e-5, gamma=100.0, num_steps=50, batch_size=20, num_chains=2, device="cpu", sampler=sampler)
    a = estimate_llc(net, mse, (x, y), **kw)
    b = estimate_llc(net, mse, (x, y), amp="bf16", **kw)
    assert b.amp == "bf16" and b.loss_trace.dtype == np.float64 and np.isfinite(b.loss_trace).all()
    # Draw 0 is L_B(w*) on each chain's first batch: the bf16 run must record the autocast loss there,
    # computed here independently (unbatched, from the chain's own generator). Here both give the same
    # float (measured), but mm and vmap's bmm may sum in another order and so round an output f to the
    # neighbouring bf16 value (2^-8 |f|, |f| ~ 1): against residuals ~0.1 that moves one squared residual
    # by up to ~8%, the batch mean of 20 rows x outputs by well under 1%: rel 1e-2.
    from llc.chain import block_steps, chain_generators
    k = block_steps(w.numel(), 50)
    for c, g in enumerate(chain_generators(0, 2, torch.device("cpu"))):
        if sampler != "psgld":  # the momentum samplers draw v_0 ~ N(0, I) first
            torch.randn(w.numel(), generator=g)
        idx = torch.randint(0, 200, (k, 20), generator=g)[0]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            want = float(loss(w, x[idx], y[idx]))
        assert b.loss_trace[c, 0] == pytest.approx(want, rel=1e-2)
        assert a.loss_trace[c, 0] == pytest.approx(float(loss(w, x[idx], y[idx])), rel=1e-5)  # fp32 rounding
    assert not np.array_equal(a.loss_trace[:, 0], b.loss_trace[:, 0])


def test_validation():
    for bad in ("bfloat16", "fp32", True, 16):
        with pytest.raises(ValueError, match=r"amp must be one of \(None, 'bf16', 'fp16'\)"):
            ChainConfig(amp=bad)
        with pytest.raises(ValueError, match="amp must be one of"):
            SGLDConfig(amp=bad)
    net, loss, w, x, y = dln_case(n=100, dtype=torch.float32)
    with pytest.raises(ValueError, match="amp must be one of"):
        estimate_llc(net, mse, (x, y), num_steps=2, batch_size=10, device="cpu", amp="half")
    with pytest.raises(ValueError, match="amp must be one of"):
        estimate_llc_flat(loss, w, x, y, SGLDConfig(num_steps=2, batch_size=10), seed=0, amp="half")
    with pytest.raises(ValueError, match="amp='fp16' needs a CUDA device"):
        estimate_llc(net, mse, (x, y), num_steps=2, batch_size=10, device="cpu", amp="fp16")
    with pytest.raises(ValueError, match="amp='fp16' needs a CUDA device"):
        run_sgld(loss, w, x, y, SGLDConfig(num_steps=2, batch_size=10, amp="fp16"), seed=0)
    with pytest.raises(ValueError, match="amp: sampler='mala'"):
        sampler_configs("mala", SGLDConfig(amp="bf16"))
    net64, loss64, w64, x64, y64 = dln_case(n=100)
    with pytest.warns(RuntimeWarning, match="float64 run changes nothing"):
        run_sgld(loss64, w64, x64, y64, SGLDConfig(num_steps=2, batch_size=10, amp="bf16"), seed=0)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (fp16 autocast is CUDA-only)")
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_cuda_amp_matches_fp32_to_low_precision_rounding(amp):
    loss, w, x, y = _noisy_dln(torch.float32)
    dev = torch.device("cuda")
    w, x, y = w.to(dev), x.to(dev), y.to(dev)
    cfg = SGLDConfig(epsilon=1e-4, gamma=100.0, num_steps=2000, batch_size=100, num_chains=4)
    fp32 = estimate_llc_flat(loss, w, x, y, cfg, seed=0)
    low = estimate_llc_flat(loss, w, x, y, cfg, seed=0, amp=amp)
    assert low.amp == amp and low.loss_trace.dtype == np.float64
    # As on CPU: the shift is the output-rounding bias b (fp16 has 11 significant bits, bf16 8; CUDA matmuls may
    # also use TF32 in the fp32 run), within b of b, plus 1% of λ̂ for TF32 and kernel-order differences.
    n = x.shape[0]
    with torch.autocast("cuda", dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[amp]):
        l_low = float(loss(w, x, y))
    b = n / math.log(n) * (l_low - float(loss(w, x, y)))
    shift = low.lambdahat_per_chain - fp32.lambdahat_per_chain
    assert np.all(np.abs(shift - b) <= abs(b) + 0.01 * np.abs(fp32.lambdahat_per_chain)), (shift, b)


def test_streamed_data_takes_amp_with_the_same_draws():
    from torch.utils.data import TensorDataset

    net, *_ = dln_case(n=200, dtype=torch.float32)
    _, _, x, y = _noisy_dln(torch.float32, n=200)
    kw = dict(epsilon=1e-5, gamma=100.0, num_steps=20, batch_size=20, num_chains=2, device="cpu", amp="bf16")
    tensors = estimate_llc(net, mse, (x, y), **kw)
    streamed = estimate_llc(net, mse, TensorDataset(x, y), prefetch=False, **kw)
    assert streamed.amp == "bf16"
    # The same rows and noise through the same eager autocast step: bit for bit, as without amp.
    np.testing.assert_array_equal(streamed.loss_trace, tensors.loss_trace)
