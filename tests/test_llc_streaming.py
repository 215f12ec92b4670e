"""estimate_llc on a Dataset / DataLoader equals the in-memory path on the same draws."""
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from llc.estimate import estimate_llc

mse = torch.nn.functional.mse_loss


class PairDataset(Dataset):
    """A plain map-style Dataset: item i is (x_i, y_i), stacked by default_collate."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def _problem():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2))
    x = torch.randn(300, 3)
    return net, x, net(x).detach() + 0.1 * torch.randn(300, 2)


KW = dict(epsilon=1e-3, num_steps=150, batch_size=16, num_chains=3, num_burnin_steps=50, seed=4)


@pytest.mark.parametrize("wrap", ["tensor_dataset", "dataset", "dataloader", "dataset_prefetch"])
def test_streamed_results_equal_the_in_memory_path(wrap):
    net, x, y = _problem()
    ref = estimate_llc(net, mse, (x, y), **KW)
    data = {
        "tensor_dataset": TensorDataset(x, y), "dataset": PairDataset(x, y),
        "dataloader": DataLoader(PairDataset(x, y), batch_size=7, shuffle=True),  # its batching is not used
        "dataset_prefetch": PairDataset(x, y),
    }[wrap]
    got = estimate_llc(net, mse, data, prefetch=wrap == "dataset_prefetch", **KW)
    # Same generators, same rows in the same order, same kernels: bit-identical, not just close.
    np.testing.assert_array_equal(got.loss_trace, ref.loss_trace)
    assert got.init_loss == ref.init_loss and got.lambdahat == ref.lambdahat


def test_streamed_full_data_trace_chunks_and_restriction_equal_the_in_memory_path():
    net, x, y = _problem()
    kw = dict(KW, loss_trace_minibatch=False, eval_batch_size=64, param_mask=["2.weight", "2.bias"])  # 300 = 4·64 + 44
    ref = estimate_llc(net, mse, (x, y), **kw)
    got = estimate_llc(net, mse, PairDataset(x, y), **kw)
    np.testing.assert_array_equal(got.loss_trace, ref.loss_trace)  # same chunk boundaries: same float64 sums
    assert np.isnan(got.loss_trace[:, :50]).all() and np.isfinite(got.loss_trace[:, 50:]).all()


def test_streamed_float64_model_casts_float32_items_like_the_tensor_path():
    net, x, y = _problem()
    net = net.double()
    ref = estimate_llc(net, mse, (x, y), **KW)  # float32 data cast to the model's float64
    got = estimate_llc(net, mse, PairDataset(x, y), **KW)
    np.testing.assert_array_equal(got.loss_trace, ref.loss_trace)


def test_items_that_do_not_fit_the_loss_fail_before_compute():
    net, x, y = _problem()
    with pytest.raises(ValueError, match=r"data: the loss fails on a batch of the Dataset's items \(x \(2, 4\)"):
        estimate_llc(net, mse, PairDataset(torch.randn(300, 4), y), **KW)
    triples = TensorDataset(x, y, y)
    with pytest.raises(ValueError, match="TensorDataset must hold \\(x, y\\); it holds 3"):
        estimate_llc(net, mse, triples, **KW)

    class Triples(PairDataset):
        def __getitem__(self, i):
            return self.x[i], self.y[i], 0

    with pytest.raises(ValueError, match=r"\(x, y\) pairs .* collated to list of 3 items"):
        estimate_llc(net, mse, Triples(x, y), **KW)
    with pytest.raises(ValueError, match="batch_size must be <= the number of data points \\(300\\)"):
        estimate_llc(net, mse, PairDataset(x, y), **dict(KW, batch_size=301))
    with pytest.raises(ValueError, match="data must be \\(x, y\\) tensors, a Dataset or a DataLoader"):
        estimate_llc(net, mse, x, **KW)


STREAM_SAMPLERS = [("sgnht", {"diffusion_factor": 0.02}), ("sghmc", {"friction": 0.3}), ("psgld", {"rho": 0.9})]


@pytest.mark.parametrize("sampler,options", STREAM_SAMPLERS)
@pytest.mark.parametrize("minibatch_trace", [True, False])
def test_every_minibatch_sampler_streams_with_the_in_memory_draws(sampler, options, minibatch_trace):
    net, x, y = _problem()
    kw = dict(KW, sampler=sampler, sampler_options=options, loss_trace_minibatch=minibatch_trace, eval_batch_size=64)
    ref = estimate_llc(net, mse, (x, y), **kw)
    got = estimate_llc(net, mse, PairDataset(x, y), prefetch=True, **kw)
    # Tolerance zero is justified: the same generators draw the same indices and noise, the gathered rows are
    # the same floats in the same (C·B) order, and the same eager kernel runs on them with the same shapes,
    # so no op sees a different operand or reduction order (float rounding is identical, not just close).
    np.testing.assert_array_equal(got.loss_trace, ref.loss_trace)
    assert type(got.config) is type(ref.config) and got.lambdahat == ref.lambdahat
    assert np.isfinite(got.loss_trace[:, KW["num_burnin_steps"]:]).all()
    assert got.loss_trace[0, -1] != ref.loss_trace[0, 0]  # the chains moved: equality is not that of a frozen w*


def test_a_full_batch_sampler_cannot_stream_and_says_so_before_compute():
    net, x, y = _problem()
    allowed = r"\('sgld', 'psgld', 'sgnht', 'sghmc'\)"
    with pytest.raises(ValueError, match=r"sampler: a Dataset or DataLoader is streamed with a minibatch sampler, "
                                         r"one of " + allowed + r"; got 'mala'"):
        estimate_llc(net, mse, PairDataset(x, y), sampler="mala", **{k: v for k, v in KW.items() if k != "batch_size"})


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_streamed_on_cuda_with_pinned_prefetch_equals_the_cuda_in_memory_path():
    net, x, y = _problem()
    ref = estimate_llc(net, mse, (x, y), device="cuda", **KW)
    got = estimate_llc(net, mse, PairDataset(x, y), device="cuda", **KW)  # prefetch + pinned by default on CUDA
    np.testing.assert_array_equal(got.loss_trace, ref.loss_trace)
