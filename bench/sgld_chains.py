"""Vectorised chains against a Python loop of single-chain runs (issue 2, "Speed").

The same total work both ways: C chains of T steps each, either as one
``run_sgld(num_chains=C)`` call (all chains in one vmapped step) or as C calls of
``run_sgld(num_chains=1)``. The model is a DLN of about 10k parameters, batch 500.
Repetitions alternate between the variants; times are medians.

Columns:
- loop / vectorised: ms per chain-step = wall time / (C · T).
- speed-up: loop time over vectorised time.
- the compiled columns repeat this with ``SGLDConfig.compile=True``; each chain
  count is compiled once in an untimed warm-up run (the compile time is listed).

Run: python bench/sgld_chains.py [--device cuda] [--quick]
"""
from __future__ import annotations

import torch
from _common import dln_workload, finish, markdown_table, median, parse_common, start, wall

from llc.estimate import flat_loss_for_module
from llc.sgld import SGLDConfig, run_sgld


def main() -> None:
    p = parse_common(__doc__.splitlines()[0])
    p.add_argument("--no-compile", action="store_true", help="skip the compile=True columns")
    args, device, chain_counts, reps, header_line = start(p)
    steps = 20 if args.quick else 300

    wl = dln_workload("k", 50, [100, 50, 10], 100_000, epsilon=1e-7, gamma=1.0, num_steps=steps,
                      num_burnin_steps=steps // 2, device=device)
    loss, w_star = flat_loss_for_module(wl.model, wl.loss, torch.float32, device)

    def run(chains: int, num_steps: int, seed: int, compile: bool):
        cfg = SGLDConfig(epsilon=wl.epsilon, gamma=wl.gamma, num_steps=num_steps, batch_size=wl.batch_size,
                         num_chains=chains, num_burnin_steps=num_steps // 2, compile=compile)
        return run_sgld(loss, w_star, wl.x, wl.y, cfg, seed)

    def loop(C: int, num_steps: int, compile: bool):
        for c in range(C):
            run(1, num_steps, seed=c, compile=compile)

    modes = [False] if args.no_compile else [False, True]
    rows = []
    for C in chain_counts:
        variants = {}
        compile_s = "–"
        for compile in modes:
            tag = "compiled" if compile else "eager"
            variants[f"loop {tag}"] = (lambda C=C, compile=compile: loop(C, steps, compile))
            variants[f"vectorised {tag}"] = (lambda C=C, compile=compile: run(C, steps, 0, compile))
            # Untimed warm-up (compiles the C-chain and the 1-chain steps when compile=True).
            warm_v = wall(lambda: run(C, 2, 0, compile), device)[0]
            wall(lambda: run(1, 2, 0, compile), device)
            if compile:
                compile_s = f"{warm_v:.0f}"
        names = list(variants)
        times = {v: [] for v in names}
        for r in range(reps):
            for v in names[r % len(names):] + names[:r % len(names)]:
                times[v].append(wall(variants[v], device)[0] / (C * steps))
        ms = {v: median(times[v]) * 1e3 for v in names}
        row = [str(C), f"{ms['loop eager']:.3f}", f"{ms['vectorised eager']:.3f}",
               f"{ms['loop eager'] / ms['vectorised eager']:.1f}×"]
        if True in modes:
            row += [f"{ms['loop compiled']:.3f}", f"{ms['vectorised compiled']:.3f}",
                    f"{ms['loop compiled'] / ms['vectorised compiled']:.1f}×",
                    f"{ms['loop eager'] / ms['vectorised compiled']:.1f}×", compile_s]
        rows.append(row)
        print(" | ".join(row), flush=True)

    targets = []
    for row in rows:
        if row[0] == "8":
            x = float(row[3].rstrip("×"))
            targets.append(f"- 8 chains: the vectorised sampler is {x:.1f}× faster than the loop of single-chain "
                           f"runs (issue 2 target ≥ 3×): {'met' if x >= 3 else 'NOT met'}")
            if len(row) > 6:
                xc = float(row[6].rstrip("×"))
                targets.append(f"- 8 chains, both compiled (for information, not the issue's criterion): {xc:.1f}×. "
                               "Compiling removes most per-step overhead from the single-chain loop too, so what "
                               "is left is compute, which vectorising over chains does not reduce.")
    header = ["chains", "loop ms", "vectorised ms", "speed-up"]
    if True in modes:
        header += ["loop compiled ms", "vectorised compiled ms", "speed-up compiled",
                   "eager loop / vectorised compiled", "compile s (C chains)"]
    body = "\n\n".join([
        f"Measured on: {header_line}. Device `{device}`; {wl.title}; batch {wl.batch_size}, {steps} steps per chain; "
        f"{reps} alternating repetitions per cell" + (" (QUICK smoke run: not a measurement)" if args.quick else "")
        + ". Times are ms per chain-step (median).",
        markdown_table(header, rows),
        "\n".join(targets),
    ]).strip()
    finish(args, body)


if __name__ == "__main__":
    main()
