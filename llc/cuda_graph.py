"""The SGLD step captured in a CUDA graph, so that small models are not launch-bound.

One step of a small model is dozens of tiny kernels, each cheaper to run than to launch;
a ``torch.cuda.CUDAGraph`` replays them all with one launch. PyTorch's recipe
(torch.cuda.graphs, "whole network capture") is followed: warm up on a side stream,
capture once into the graph's private memory pool, then per step copy the new inputs
into the captured (static) buffers and replay.

The step is llc.sgld's eager ``step(w, idx, xi, x, y, w*) -> loss (C,)``, which updates w
in place. w (the driver's one (C, P) state), x, y and w* keep their addresses for the
whole run (llc.chain.run_chains), so the graph reads and writes them directly; idx (C, B)
and xi (C, P) are new views every step and are copied into static buffers.

The first call validates the graph against the eager step on a copy of w; a failed
capture or any disagreement restores w, warns once and runs the eager step from then on
(compile_mode "eager-fallback", docs/llc.md). The capture is an argument, so that logic
is tested on the CPU with fake graphs (tests/test_cuda_graph.py).
"""
from __future__ import annotations

import warnings
from typing import Callable

import torch
from torch import Tensor

StepFn = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor], Tensor]  # as llc.sgld.StepFn
Capture = Callable[[StepFn, tuple], StepFn]  # (eager step, first step's args) -> replaying step

WARMUP_STEPS = 3  # side-stream iterations before capture (the recipe's count; lazy init, autograd's streams)
# Agreement of graph and eager on the first step, in units of the dtype's eps. They run the
# same kernels on the same inputs, so they agree bit for bit unless a kernel orders a
# reduction differently from run to run (atomics in a backward, a cuBLAS split-K choice);
# that moves g and the loss by a few ulps times the log of the reduction length, far below
# 128 ulps. A wrong capture (stale draws, a missed update, another tensor's address) moves
# w by |Δw| ~ sqrt(ε)|ξ|, and the loss by O(1) relative, both far above it.
AGREE_ULPS = 128


class GraphStep:
    """A captured step: ``step(w, idx, xi, x, y, w*)`` copies idx, xi in, replays, returns the loss (C,).

    The graph reads the tensors it was captured with; called with any other w, x, y or w*
    (not the case in one run of llc.chain) it runs the eager step instead of replaying.
    """

    def __init__(self, graph, fixed: tuple, idx: Tensor, xi: Tensor, loss: Tensor, eager: StepFn):
        self.graph, self.fixed, self.idx, self.xi, self.loss, self.eager = graph, fixed, idx, xi, loss, eager

    def __call__(self, w, idx, xi, x, y, w_star) -> Tensor:
        if any(a is not b for a, b in zip((w, x, y, w_star), self.fixed)):
            return self.eager(w, idx, xi, x, y, w_star)
        self.idx.copy_(idx)
        self.xi.copy_(xi)
        self.graph.replay()  # w becomes w_{t+1} in place; self.loss holds L_B(w_t)
        return self.loss.clone()  # (C,): the static output is overwritten by the next replay


def capture_cuda_graph(step: StepFn, args: tuple) -> StepFn:
    """Capture ``step`` on the first step's args (w, idx, xi, x, y, w*) in a CUDA graph; w does not move.

    Warm-up runs on clones of w (it executes); the capture itself only records, so the
    chains are where they were when this returns.
    """
    w, idx, xi, x, y, w_star = args
    static_idx, static_xi = idx.clone(), xi.clone()  # (C, B), (C, P): outside the graph's pool
    with torch.cuda.device(w.device):  # the capture and its streams on w's device, whichever is current
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_STEPS):
                step(w.clone(), static_idx, static_xi, x, y, w_star)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_loss = step(w, static_idx, static_xi, x, y, w_star)  # (C,), in the graph's pool
    return GraphStep(graph, (w, x, y, w_star), static_idx, static_xi, static_loss, step)


def _disagreement(w: Tensor, w_ref: Tensor, loss: Tensor, loss_ref: Tensor) -> str | None:
    """What differs between the graph's (w, loss) and the eager step's, beyond AGREE_ULPS; None if nothing."""
    for name, got, ref in (("w", w, w_ref), ("loss", loss, loss_ref)):
        tol = AGREE_ULPS * torch.finfo(ref.dtype).eps
        scale = float(ref.abs().max()) + torch.finfo(ref.dtype).tiny  # atol relative to the largest entry
        if got.shape != ref.shape or not torch.allclose(got, ref, rtol=tol, atol=tol * scale):
            diff = (got - ref).abs().max() if got.shape == ref.shape else "shape"
            return f"its first step's {name} differed from the eager step's (max abs diff {diff})"
    return None


def first_graph_call(eager: StepFn, args: tuple, capture: Capture | None = None,
                     stacklevel: int = 3) -> tuple[StepFn, Tensor]:
    """Capture ``eager`` and run the first step through the graph, validated; on any failure, go eager.

    The eager step runs on a clone of w with the same draws; the graph's w and loss must
    match it (AGREE_ULPS). On a failed capture, a capture that moved w, or a mismatch, w
    (args[0]) is restored, one RuntimeWarning says why and the eager step runs.

    Args:
        eager: the step to capture, step(w, idx, xi, x, y, w*) -> (C,) loss, w updated in place.
        args: the first step's (w, idx, xi, x, y, w*).
        capture: (step, args) -> replaying step; None: :func:`capture_cuda_graph`.

    Returns:
        The step to use from now on (the graph's, or ``eager``) and the first step's loss (C,).
    """
    w = args[0]
    w_before = w.clone()  # (C, P)
    try:
        graph = (capture or capture_cuda_graph)(eager, args)
        if not torch.equal(w, w_before):
            raise RuntimeError("the capture moved the chains")
        w_ref = w.clone()
        loss_ref = eager(w_ref, *args[1:])
        loss = graph(*args)
        what = _disagreement(w, w_ref, loss, loss_ref)
    except Exception as err:  # any capture failure: the eager step is always correct
        what = f"the capture failed ({type(err).__name__}: {str(err)[:300]})"
    if what is None:
        return graph, loss
    warnings.warn(f"SGLDConfig.compile='auto' took the CUDA-graph step but {what}; running the eager step instead",
                  RuntimeWarning, stacklevel=stacklevel)
    w.copy_(w_before)
    return eager, eager(*args)
