"""The CUDA-graph SGLD step (llc.cuda_graph) on the CPU: which runs take it, and its validate/fallback logic.

No CUDA here: the capture is injected. ``_replaying_capture`` builds the real GraphStep
around a fake graph whose replay() runs the eager step on the captured tensors, so the
per-step copy into the static buffers is exercised; broken fakes (a wrong w, a wrong
loss, a raise, a capture that moves the chains) must each fall back with one warning
and leave the trace bit for bit the eager one. The real capture is tested in
tests/test_cuda.py (``pytest -m cuda``).
"""
import pytest
import torch

import llc.cuda_graph as cuda_graph
import llc.sgld as sgld
from llc.cuda_graph import GraphStep, first_graph_call
from llc.sgld import SGLDConfig, run_sgld, step_path
from tests.cases import dln_case

CFG = dict(epsilon=1e-4, gamma=2.0, batch_size=10, nbeta=30.0, num_chains=3, num_steps=12)
LIMIT = sgld.COMPILE_AUTO_MIN_CHAIN_STEPS


# --- the rule ---

# (compile, long run, device) -> path, with rows in memory and no amp: the table.
TABLE = {
    ("auto", False, "cpu"): "eager", ("auto", False, "cuda"): "eager",
    ("auto", True, "cpu"): "compiled", ("auto", True, "cuda"): "cuda-graph",
    (True, False, "cpu"): "compiled", (True, False, "cuda"): "compiled",
    (True, True, "cpu"): "compiled", (True, True, "cuda"): "compiled",
    (False, False, "cpu"): "eager", (False, False, "cuda"): "eager",
    (False, True, "cpu"): "eager", (False, True, "cuda"): "eager",
}


@pytest.mark.parametrize("key", list(TABLE))
@pytest.mark.parametrize("amp", [None, "bf16", "fp16"])
@pytest.mark.parametrize("streamed", [False, True])
def test_step_path_table(key, amp, streamed):
    compile_, long, device = key
    chain_steps = LIMIT if long else LIMIT - 1  # the threshold itself counts as long
    expected = TABLE[key]
    if streamed and expected == "cuda-graph":
        expected = "compiled"  # streamed x, y change every step: the graph cannot follow them
    if amp is not None and expected != "eager":
        expected = "eager-amp"
    assert step_path(compile_, chain_steps, device, amp, streamed=streamed) == expected


def test_auto_threshold_is_read_at_call_time(monkeypatch):
    monkeypatch.setattr(sgld, "COMPILE_AUTO_MIN_CHAIN_STEPS", 60)
    assert step_path("auto", 59, "cuda", None) == "eager" and step_path("auto", 60, "cuda", None) == "cuda-graph"


# --- first_graph_call with fake captures ---

def _problem(C=3):
    """An eager SGLD step and its first args (w, idx, xi, x, y, w*) on a float64 DLN."""
    _, loss, w_star, x, y = dln_case(n=200)
    gen = torch.Generator().manual_seed(3)
    idx = torch.randint(0, x.shape[0], (C, 10), generator=gen)  # (C, B)
    xi = torch.randn(C, w_star.numel(), generator=gen, dtype=w_star.dtype)  # (C, P)
    w = w_star.expand(C, -1).clone() + 0.01 * torch.randn(C, w_star.numel(), generator=gen, dtype=w_star.dtype)
    return sgld._eager_step(loss, 1e-4, -1.5e-3, 1e-2), (w, idx, xi, x, y, w_star)


class _ReplayGraph:
    """Stands in for torch.cuda.CUDAGraph: replay() runs the step on the captured tensors into the static loss."""

    def __init__(self, step, args, loss):
        self.step, self.args, self.loss, self.replays = step, args, loss, 0

    def replay(self):
        self.replays += 1
        self.loss.copy_(self.step(*self.args))


def _replaying_capture(step, args):
    w, idx, xi, x, y, w_star = args
    static_idx, static_xi, static_loss = idx.clone(), xi.clone(), torch.empty(w.shape[0], dtype=w.dtype)
    graph = _ReplayGraph(step, (w, static_idx, static_xi, x, y, w_star), static_loss)
    return GraphStep(graph, (w, x, y, w_star), static_idx, static_xi, static_loss, step)


def _eager_reference(eager, args):
    w = args[0].clone()
    return w, eager(w, *args[1:])


def test_an_exact_graph_is_used():
    eager, args = _problem()
    w_ref, loss_ref = _eager_reference(eager, args)
    step, loss = first_graph_call(eager, args, capture=_replaying_capture)
    assert isinstance(step, GraphStep) and step.graph.replays == 1
    assert torch.equal(args[0], w_ref) and torch.equal(loss, loss_ref)  # the same code ran: bit for bit


def test_a_graph_off_by_rounding_is_used():
    """Reduction-order noise (here 4 ulps on every entry of w) is within AGREE_ULPS."""
    eager, args = _problem()

    def capture(step, a):
        def graph(*b):
            loss = step(*b)
            b[0].mul_(1 + 4 * torch.finfo(b[0].dtype).eps)
            return loss
        return graph

    step, _ = first_graph_call(eager, args, capture=capture)
    assert step is not eager


def _wrong_w(step, args):
    def graph(*a):
        loss = step(*a)
        a[0].add_(1e-6)  # a missed or doubled term: far below |Δw| ~ 1e-2 here, far above rounding
        return loss
    return graph


def _wrong_loss(step, args):
    return lambda *a: step(*a) * (1 + 1e-6)


def _raises(step, args):
    raise RuntimeError("operation not permitted when stream is capturing")


def _moves_w(step, args):
    step(*args)  # a warm-up on the real w instead of a clone
    return step


@pytest.mark.parametrize("capture, match", [
    (_wrong_w, r"first step's w differed"),
    (_wrong_loss, r"first step's loss differed"),
    (_raises, r"capture failed \(RuntimeError: operation not permitted"),
    (_moves_w, r"capture failed \(RuntimeError: the capture moved the chains"),
])
def test_a_wrong_graph_falls_back_with_one_warning_and_w_restored(capture, match):
    eager, args = _problem()
    w_ref, loss_ref = _eager_reference(eager, args)
    with pytest.warns(RuntimeWarning, match=match) as record:
        step, loss = first_graph_call(eager, args, capture=capture)
    assert len(record) == 1 and step is eager
    assert torch.equal(args[0], w_ref) and torch.equal(loss, loss_ref)  # restored, then one eager step


def test_graph_step_copies_each_steps_draws_and_runs_eager_on_other_tensors():
    eager, args = _problem()
    w, idx, xi, x, y, w_star = args
    graph = _replaying_capture(eager, args)
    idx2, xi2 = torch.flip(idx, (1,)), -xi  # a second step's draws, new tensors
    w_ref = w.clone()
    assert torch.equal(graph(w, idx2, xi2, x, y, w_star), eager(w_ref, idx2, xi2, x, y, w_star))
    assert torch.equal(w, w_ref) and torch.equal(graph.idx, idx2) and graph.graph.replays == 1
    other, ref = w.clone(), w.clone()  # not the captured w: the eager step, no replay
    assert torch.equal(graph(other, idx, xi, x, y, w_star), eager(ref, idx, xi, x, y, w_star))
    assert torch.equal(other, ref) and graph.graph.replays == 1


# --- through run_sgld ---

def _force_graph(monkeypatch):
    """compile="auto" takes the graph path on any device; True and False keep theirs (the eager references)."""
    rule = sgld.step_path
    monkeypatch.setattr(sgld, "step_path", lambda compile, *a, **k: "cuda-graph" if compile == "auto" else rule(
        compile, *a, **k))


@pytest.fixture
def captures(monkeypatch):
    """Forces the graph path on the CPU with a replaying fake capture; records the captures."""
    calls = []

    def capture(step, args):
        calls.append(args[0])
        return _replaying_capture(step, args)

    _force_graph(monkeypatch)
    monkeypatch.setattr(cuda_graph, "capture_cuda_graph", capture)
    return calls


@pytest.mark.parametrize("chains", [1, 3])
def test_run_sgld_through_the_fake_graph_equals_eager_bit_for_bit(captures, chains):
    _, loss, w, x, y = dln_case(n=200)
    cfg = dict(CFG, num_chains=chains)
    out = run_sgld(loss, w, x, y, SGLDConfig(**cfg), seed=1)
    assert out.compile_mode == "cuda-graph" and not out.compiled and len(captures) == 1
    eager = run_sgld(loss, w, x, y, SGLDConfig(**cfg, compile=False), seed=1)
    assert torch.equal(out.loss, eager.loss) and torch.equal(out.final_w, eager.final_w)


def test_run_sgld_falls_back_once_for_the_whole_run(monkeypatch):
    _force_graph(monkeypatch)
    monkeypatch.setattr(cuda_graph, "capture_cuda_graph", _wrong_w)
    _, loss, w, x, y = dln_case(n=200)
    with pytest.warns(RuntimeWarning, match="CUDA-graph step but its first step's w differed") as record:
        out = run_sgld(loss, w, x, y, SGLDConfig(**CFG), seed=1)
    assert len(record) == 1 and out.compile_mode == "eager-fallback"
    eager = run_sgld(loss, w, x, y, SGLDConfig(**CFG, compile=False), seed=1)
    assert torch.equal(out.loss, eager.loss) and torch.equal(out.final_w, eager.final_w)


def test_cpu_runs_are_unchanged(monkeypatch):
    """On the CPU "auto" never captures: short runs are the eager run, long ones the compile=True run, bit for bit."""
    calls = []
    monkeypatch.setattr(cuda_graph, "capture_cuda_graph", lambda step, args: calls.append(1) or step)
    monkeypatch.setattr(sgld, "_COMPILED", type(sgld._COMPILED)())
    monkeypatch.setattr(sgld.torch, "compile", lambda fn, **kw: fn)  # the compiled path's code, uncompiled
    _, loss, w, x, y = dln_case(n=200)
    monkeypatch.setattr(sgld, "COMPILE_AUTO_MIN_CHAIN_STEPS", 37)  # 3 chains x 12 steps = 36 < 37: short
    short = run_sgld(loss, w, x, y, SGLDConfig(**CFG), seed=1)
    eager = run_sgld(loss, w, x, y, SGLDConfig(**CFG, compile=False), seed=1)
    assert short.compile_mode == eager.compile_mode == "eager" and torch.equal(short.loss, eager.loss)
    monkeypatch.setattr(sgld, "COMPILE_AUTO_MIN_CHAIN_STEPS", 36)  # long
    long = run_sgld(loss, w, x, y, SGLDConfig(**CFG), seed=1)
    comp = run_sgld(loss, w, x, y, SGLDConfig(**CFG, compile=True), seed=1)
    assert long.compile_mode == comp.compile_mode == "compiled" and torch.equal(long.loss, comp.loss)
    assert torch.equal(long.final_w, comp.final_w) and calls == []


def test_capture_warms_up_on_clones_and_captures_the_real_tensors(monkeypatch):
    """capture_cuda_graph's control flow with torch.cuda's stream and graph API faked (recording, not executing)."""
    eager, args = _problem()
    w, idx, xi, x, y, w_star = args
    w0 = w.clone()
    calls = []

    def recording_step(*a):
        calls.append(a)
        return eager(*a)

    class _Null:
        def __init__(self, *a, **k):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            if capturing:  # a capture records without executing: undo the body's step
                w.copy_(w0)
            return False

        def wait_stream(self, other):
            pass

    capturing = False

    def fake_graph(graph):
        nonlocal capturing
        capturing = True
        return _Null()

    for name in ("Stream", "stream", "device", "CUDAGraph"):
        monkeypatch.setattr(torch.cuda, name, _Null)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda *a: _Null())
    monkeypatch.setattr(torch.cuda, "graph", fake_graph)
    step = cuda_graph.capture_cuda_graph(recording_step, args)
    assert torch.equal(w, w0) and len(calls) == cuda_graph.WARMUP_STEPS + 1
    assert all(c[0] is not w and c[0].data_ptr() != w.data_ptr() for c in calls[:-1])  # warm-up on clones
    captured = calls[-1]
    assert all(a is b for a, b in zip(captured[:1] + captured[3:], (w, x, y, w_star)))  # the real tensors
    assert captured[1] is step.idx and captured[2] is step.xi and step.idx is not idx and torch.equal(step.idx, idx)
    assert all(a is b for a, b in zip(step.fixed, (w, x, y, w_star))) and step.xi.data_ptr() != xi.data_ptr()
