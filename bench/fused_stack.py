"""The fused Linear-stack loss (llc.fused) against the generic functional_call loss (issue 19, item 2).

The same eager SGLD run (``run_sgld``, compile=False) three ways, on the same chains:

- generic: the flat loss as flat_loss_for_module built it before the fused path,
  ``functional_call`` of the module on views of w, vmapped over chains by the driver;
- fused: llc.fused's per-chain loss (F.linear on views of w), vmapped by the driver:
  what ``flat_loss_for_module`` now returns for these models, with no driver change;
- fused-batched: the driver calling ``loss.batched`` (one bmm per layer for all chains,
  no vmap) instead of vmapping the per-chain loss. The driver does not do this yet:
  the hook is emulated here by making ``llc.sgld``'s ``vmap`` return ``loss.batched``
  for a FusedFlatLoss (the script stops if the driver never calls it);
- fused-vg: the driver taking every chain's loss and gradient from
  ``loss.value_and_grad`` (llc.fused_grad's hand-written backward: no autograd graph)
  instead of vmap + autograd.grad. Emulated by replacing ``llc.sgld._eager_step`` with
  the same step around ``value_and_grad`` (:func:`value_and_grad_hook`).

Columns: ms per chain-step (wall time / (C · steps), median over alternating
repetitions) and the speed-ups over generic. Workloads (a) and (c) of
llc_vs_devinterp.py: the 165-parameter DLN 7→9→6→8 (MSE) and the 6,154-parameter
ReLU MLP (cross-entropy).

Run: python bench/fused_stack.py [--chains 1,4,8,16] [--quick]
"""
from __future__ import annotations

import contextlib

import torch
from _common import finish, markdown_table, median, parse_common, small_workloads, start, wall

import llc.sgld
from llc.estimate import generic_flat_loss
from llc.fused import FusedFlatLoss
from llc.sgld import SGLDConfig, run_sgld

VARIANTS = ["generic", "fused", "fused-batched", "fused-vg"]


@contextlib.contextmanager
def batched_hook(counter: list[int]):
    """The driver's vmap(loss_fn) replaced by loss_fn.batched for a fused loss, with its value_and_grad hidden.

    Since llc.sgld's eager step takes a fused loss's value_and_grad at 2+ chains, this variant hides
    that method so the step goes through the vmapped forward + autograd route with ``batched``.
    """
    real_vmap, real_step = llc.sgld.vmap, llc.sgld._eager_step

    class WithoutValueAndGrad:
        def __init__(self, fn: FusedFlatLoss):
            self.fn, self.batched = fn, fn.batched

        def __call__(self, *a):
            return self.fn(*a)

    def vmap(fn, *args, **kwargs):
        if isinstance(fn, WithoutValueAndGrad) and not args and not kwargs:
            def counted(*a):
                counter[0] += 1
                return fn.batched(*a)
            return counted
        return real_vmap(fn, *args, **kwargs)

    def eager_step(loss_fn, *rest):
        return real_step(WithoutValueAndGrad(loss_fn) if isinstance(loss_fn, FusedFlatLoss) else loss_fn, *rest)

    llc.sgld.vmap, llc.sgld._eager_step = vmap, eager_step
    try:
        yield
    finally:
        llc.sgld.vmap, llc.sgld._eager_step = real_vmap, real_step


@contextlib.contextmanager
def value_and_grad_hook(counter: list[int]):
    """Emulate the driver hook: the eager step of C > 1 chains takes (loss, ∇) from loss_fn.value_and_grad."""
    real = llc.sgld._eager_step

    def eager_step(loss_fn, pull, drift, noise, *rest):  # rest: llc.sgld._eager_step's later arguments (amp)
        base = real(loss_fn, pull, drift, noise, *rest)
        if not isinstance(loss_fn, FusedFlatLoss):
            return base

        def step(w, idx, xi, x, y, w_star):  # llc.sgld._eager_step's update, gradient from value_and_grad
            if w.shape[0] == 1:
                return base(w, idx, xi, x, y, w_star)
            counter[0] += 1
            loss, g = loss_fn.value_and_grad(w, llc.sgld._gather(x, idx), llc.sgld._gather(y, idx))
            g.mul_(drift).add_(xi, alpha=noise).add_(w_star - w, alpha=pull)
            w.add_(g)
            return loss

        return step

    llc.sgld._eager_step = eager_step
    try:
        yield
    finally:
        llc.sgld._eager_step = real


HOOKS = {"fused-batched": batched_hook, "fused-vg": value_and_grad_hook}


def main() -> None:
    p = parse_common(__doc__.splitlines()[0])
    p.add_argument("--workloads", default="a,c", help="comma-separated subset of a (DLN), c (CE MLP)")
    args, device, chain_counts, reps, header_line = start(p)
    steps = 20 if args.quick else 400
    rows = []
    for wl, fused, w_star in small_workloads(args.workloads, steps, device, args.quick):
        key = wl.key
        generic = generic_flat_loss(wl.model, wl.loss, torch.float32, device)[0]
        losses = {"generic": generic, "fused": fused, "fused-batched": fused, "fused-vg": fused}
        for C in chain_counts:
            cfg = SGLDConfig(epsilon=wl.epsilon, gamma=wl.gamma, num_steps=steps, batch_size=wl.batch_size,
                             num_chains=C, num_burnin_steps=steps // 2, compile=False)
            calls = {v: [0] for v in HOOKS}

            def run(v: str, seed: int):
                with HOOKS[v](calls[v]) if v in HOOKS else contextlib.nullcontext():
                    return run_sgld(losses[v], w_star, wl.x, wl.y, cfg, seed)

            for v in VARIANTS:  # untimed warm-up
                run(v, 0)
            if C > 1 and not all(n[0] for n in calls.values()):
                raise SystemExit(f"an emulated hook was never called ({calls}): llc.sgld's eager step has changed")
            times = {v: [] for v in VARIANTS}
            traces = {}
            for r in range(reps):
                order = VARIANTS[r % len(VARIANTS):] + VARIANTS[:r % len(VARIANTS)]
                for v in order:
                    dt, tr = wall(lambda: run(v, r), device)
                    times[v].append(dt / (C * steps))
                    traces[v] = tr.loss
            ms = {v: median(times[v]) * 1e3 for v in VARIANTS}
            # Same seeds, same draws: the traces agree to float32 rounding (printed, not asserted).
            dev = max(float((traces[v] - traces["generic"]).abs().max() / traces["generic"].abs().max())
                      for v in VARIANTS[1:])
            row = [key, str(C)] + [f"{ms[v]:.3f}" for v in VARIANTS]
            row += [f"{ms['generic'] / ms[v]:.2f}×" for v in VARIANTS[1:]] + [f"{dev:.0e}"]
            rows.append(row)
            print(" | ".join(row), flush=True)

    header = ["wl", "C"] + [f"{v} ms" for v in VARIANTS] + [f"generic / {v}" for v in VARIANTS[1:]]
    header += ["max rel. trace diff"]
    body = "\n\n".join([
        f"Measured on: {header_line}. Device `{device}`; eager step (compile=False), {steps} steps per chain, "
        f"batch 500, n = 100,000, float32; {reps} alternating repetitions per cell"
        + (" (QUICK smoke run: not a measurement)" if args.quick else "")
        + ". (a) DLN 7→9→6→8 (P = 165), MSE; (c) MLP 20→64→64→10 ReLU (P = 6,154), cross-entropy. "
        "Times are ms per chain-step (median); fused is the default step (value_and_grad at 2+ chains, as fused-vg); "
        "fused-batched hides value_and_grad so the step vmaps loss.batched (bench/fused_stack.py).",
        markdown_table(header, rows),
    ])
    finish(args, body)


if __name__ == "__main__":
    main()
