"""llc.minibatch: the packed gather returns the data's own rows, and the samplers' results do not change.

Packing copies bytes, so every comparison here is exact (torch.equal), not a tolerance.
"""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import llc.minibatch as mb
from llc.estimate import flat_loss_for_module
from llc.minibatch import LINE_BYTES, Minibatches, gather_rows, packed_layout
from llc.psgld import PSGLDConfig, run_psgld
from llc.sghmc import SGHMCConfig, run_sghmc
from llc.sgld import SGLDConfig, run_sgld
from tests.cases import dln_case

GEN = torch.Generator().manual_seed(0)
PACK = mb.pack

# (x, y, packed?): a row of x and a row of y fit in one 64-byte line, or not.
CASES = {
    "dln float32 7+8": (torch.randn(300, 7, generator=GEN), torch.randn(300, 8, generator=GEN), True),
    "float64 3+4": (torch.randn(300, 3, generator=GEN, dtype=torch.float64),
                    torch.randn(300, 4, generator=GEN, dtype=torch.float64), True),
    "labels 5+int64": (torch.randn(300, 5, generator=GEN), torch.randint(0, 9, (300,), generator=GEN), True),
    "images 1x2x3+int64": (torch.randn(300, 1, 2, 3, generator=GEN), torch.randint(0, 9, (300,), generator=GEN), True),
    "1-D x and y": (torch.randn(300, generator=GEN), torch.randn(300, generator=GEN), True),
    "exactly one line 8+8": (torch.randn(300, 8, generator=GEN), torch.randn(300, 8, generator=GEN), True),
    "too wide 20+int64": (torch.randn(300, 20, generator=GEN), torch.randint(0, 9, (300,), generator=GEN), False),
    "non-contiguous x": (torch.randn(7, 300, generator=GEN).t(), torch.randn(300, 8, generator=GEN), False),
}


@pytest.mark.parametrize("name", list(CASES))
def test_rows_equal_advanced_indexing(name):
    x, y, packed = CASES[name]
    batches = Minibatches(x, y)
    assert batches.packed is packed
    idx = torch.randint(0, x.shape[0], (4, 33), generator=GEN)
    xb, yb = batches(x, y, idx)
    assert torch.equal(xb, x[idx]) and torch.equal(yb, y[idx])
    assert xb.dtype == x.dtype and yb.dtype == y.dtype
    assert xb.is_contiguous() and yb.is_contiguous()  # the same layout as a separate gather
    xv, yv = batches(x, y, idx, copy=False)  # views of the packed rows, same values
    assert torch.equal(xv, x[idx]) and torch.equal(yv, y[idx])


def test_layout_offsets_are_aligned_and_fit_one_line():
    # x row 7·4 = 28 bytes; int64 y must start at 32, float32 y at 28.
    assert packed_layout(torch.zeros(5, 7), torch.zeros(5, dtype=torch.int64)) == 32
    assert packed_layout(torch.zeros(5, 7), torch.zeros(5, 8)) == 28
    assert packed_layout(torch.zeros(5, 8), torch.zeros(5, 8)) == 32  # 32 + 32 = LINE_BYTES
    assert packed_layout(torch.zeros(5, 8), torch.zeros(5, 9)) is None  # 32 + 36 > LINE_BYTES
    assert LINE_BYTES == 64


def test_not_packed_when_lengths_differ_grad_is_on_or_over_the_cap(monkeypatch):
    assert packed_layout(torch.zeros(5, 2), torch.zeros(6, 2)) is None
    assert packed_layout(torch.zeros(5, 2, requires_grad=True), torch.zeros(5, 2)) is None
    monkeypatch.setattr(mb, "MAX_PACKED_BYTES", 4 * LINE_BYTES)
    assert packed_layout(torch.zeros(4, 2), torch.zeros(4, 2)) == 8
    assert packed_layout(torch.zeros(5, 2), torch.zeros(5, 2)) is None


def test_an_in_place_change_to_the_data_is_seen():
    x, y = torch.randn(50, 3, generator=GEN), torch.randn(50, 2, generator=GEN)
    batches = Minibatches(x, y)
    idx = torch.arange(50).view(5, 10)
    batches(x, y, idx)  # builds the table
    x.mul_(2.0)
    y[3] = 7.0
    xb, yb = batches(x, y, idx)
    assert torch.equal(xb, x[idx]) and torch.equal(yb, y[idx])


def test_other_data_than_its_own_is_gathered_apart():
    """llc.streaming hands the kernel each step's rows as new x, y: those are gathered, not the packed table."""
    x, y = torch.randn(50, 3, generator=GEN), torch.randn(50, 2, generator=GEN)
    batches = Minibatches(x, y)
    other_x, other_y = torch.randn(20, 3, generator=GEN), torch.randn(20, 2, generator=GEN)
    idx = torch.arange(20).view(4, 5)
    xb, yb = batches(other_x, other_y, idx)
    assert torch.equal(xb, other_x[idx]) and torch.equal(yb, other_y[idx])
    assert not Minibatches(None, None).packed  # a streamed kernel is built without in-memory data


def test_empty_data_and_an_empty_index():
    """Row sizes come from the shape, so n = 0 (or B = 0) builds and gathers nothing without failing."""
    x, y = torch.zeros(0, 3), torch.zeros(0, 2)
    xb, yb = Minibatches(x, y)(x, y, torch.zeros(2, 0, dtype=torch.long))
    assert xb.shape == (2, 0, 3) and yb.shape == (2, 0, 2)


def test_gather_rows_takes_a_strided_index():
    x = torch.randn(40, 3, generator=GEN)
    idx = torch.randint(0, 40, (6, 5), generator=GEN).t()  # non-contiguous (5, 6)
    assert torch.equal(gather_rows(x, idx), x[idx])


def _mlp_case():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 3)).double()
    x = torch.randn(400, 5, generator=GEN, dtype=torch.float64)
    y = torch.randint(0, 3, (400,), generator=GEN)
    loss, w = flat_loss_for_module(net, F.cross_entropy, torch.float64, torch.device("cpu"))
    return loss, w, x, y


def _generic_case():
    """Not a Linear stack (a LayerNorm): the vmapped functional_call path, with copied rows."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 5), nn.LayerNorm(5), nn.Tanh(), nn.Linear(5, 2)).double()
    x = torch.randn(400, 4, generator=GEN, dtype=torch.float64)
    y = torch.randn(400, 2, generator=GEN, dtype=torch.float64)
    loss, w = flat_loss_for_module(net, F.mse_loss, torch.float64, torch.device("cpu"))
    assert loss.path == "generic"
    return loss, w, x, y


def _unpacked(monkeypatch):
    monkeypatch.setattr(mb, "packed_layout", lambda x, y: None)


@pytest.mark.parametrize("case", ["dln", "dln-views", "mlp", "generic"])
@pytest.mark.parametrize("sampler", ["sgld", "psgld", "sghmc"])
def test_samplers_give_the_same_trace_packed_or_not(monkeypatch, case, sampler):
    """Every sampler that gathers through Minibatches: the packed run equals the unpacked one bit for bit."""
    if case.startswith("dln"):
        net, loss, w, x, y = dln_case(n=300)
        if case == "dln-views":  # F.mse_loss: the collapsed backward, on views of the packed rows
            loss, w = flat_loss_for_module(net, F.mse_loss, torch.float64, torch.device("cpu"))
            assert loss.takes_row_views(16)
    else:
        loss, w, x, y = _mlp_case() if case == "mlp" else _generic_case()
    assert Minibatches(x, y).packed
    common = dict(epsilon=1e-4, gamma=10.0, num_steps=25, batch_size=16, num_chains=3)
    def run():
        if sampler == "psgld":
            return run_psgld(loss, w, x, y, SGLDConfig(**common), PSGLDConfig(), seed=3)
        return {"sgld": run_sgld, "sghmc": run_sghmc}[sampler](
            loss, w, x, y, {"sgld": SGLDConfig, "sghmc": SGHMCConfig}[sampler](**common), seed=3)

    packs = []
    with monkeypatch.context() as m:
        m.setattr(mb, "pack", lambda *a: packs.append(1) or PACK(*a))
        packed = run()
    assert packs, "the sampler did not gather through llc.minibatch"
    with monkeypatch.context() as m:
        _unpacked(m)
        plain = run()
    assert torch.equal(packed.loss, plain.loss)
    assert torch.equal(packed.final_w, plain.final_w)


def test_only_the_collapsed_linear_backward_takes_row_views():
    """It copies x into its own layout; a ReLU stack's bmm reads the rows in place (BLAS rounds by stride)."""
    net, *_ = dln_case(n=50)
    dln_loss, _ = flat_loss_for_module(net, F.mse_loss, torch.float64, torch.device("cpu"))
    mlp_loss, *_ = _mlp_case()
    assert dln_loss.takes_row_views(16)
    assert not dln_loss.takes_row_views(2)  # input wider than the batch: not collapsed
    assert not mlp_loss.takes_row_views(16)
