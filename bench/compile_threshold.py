"""Where compile="auto" should switch: first-call compile cost against per-step saving.

First, one throwaway compiled run on a tiny DLN pays the once-per-process start-up
(dynamo and inductor imports, the C++ toolchain's first call); its time is listed
apart. Then, for each workload and chain count C, on a fresh inductor cache (so
every compile is a cold one):

- compile s: wall time of the first compiled run minus that of a warm compiled run
  of the same length (the first call's compile cost);
- eager / compiled ms: wall time per step (all C chains) of warm runs, medians over
  alternating repetitions;
- break-even chain-steps: C · compile s / (eager − compiled per step), the run length
  num_chains · num_steps above which compiling is faster end to end ("never" when
  the compiled step is not faster).

llc.sgld.COMPILE_AUTO_MIN_CHAIN_STEPS is set from this table (its largest finite
break-even, rounded up).

Run: python bench/compile_threshold.py [--chains 1,4,8] [--reps 3] [--markdown-out FILE]
"""
from __future__ import annotations

import os
import tempfile

# Before torch is imported: an empty inductor cache, so the compile times are cold ones.
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="inductor_cold_"))

import torch
from _common import dln_workload, finish, markdown_table, median, parse_common, start, wall

from llc.estimate import flat_loss_for_module
from llc.sgld import COMPILE_AUTO_MIN_CHAIN_STEPS, SGLDConfig, run_sgld


def main() -> None:
    p = parse_common(__doc__.splitlines()[0])
    p.set_defaults(chains="1,4,8")
    args, device, chain_counts, reps, header_line = start(p)

    workloads = [  # (workload, timed steps per run); the settings of bench/llc_vs_devinterp.py (a), (b)
        (dln_workload("a", 7, [9, 6, 8], 100_000, epsilon=5e-7, gamma=1.0, num_steps=300,
                      num_burnin_steps=150, device=device), 20 if args.quick else 300),
        (dln_workload("b", 50, [200, 200, 200, 50], 100_000, epsilon=1e-6, gamma=1.0, num_steps=100,
                      num_burnin_steps=50, device=device), 10 if args.quick else 100),
    ]
    tiny = dln_workload("t", 2, [3, 2], 1_000, epsilon=1e-6, gamma=1.0, num_steps=2, num_burnin_steps=1,
                        device=device)
    tiny_loss, tiny_w = flat_loss_for_module(tiny.model, tiny.loss, torch.float32, device)
    tiny_cfg = SGLDConfig(epsilon=1e-6, gamma=1.0, num_steps=2, batch_size=10, num_chains=2, num_burnin_steps=1,
                          compile=True)
    startup_s = wall(lambda: run_sgld(tiny_loss, tiny_w, tiny.x, tiny.y, tiny_cfg, seed=0), device)[0]
    print(f"first compile in this process (start-up included): {startup_s:.1f} s", flush=True)
    rows, break_evens = [], []
    for wl, steps in workloads:
        for C in chain_counts:
            # A fresh loss function per cell: its compiled step is not in llc.sgld's cache.
            loss, w_star = flat_loss_for_module(wl.model, wl.loss, torch.float32, device)

            def run(compile: bool):
                cfg = SGLDConfig(epsilon=wl.epsilon, gamma=wl.gamma, num_steps=steps, batch_size=wl.batch_size,
                                 num_chains=C, num_burnin_steps=steps // 2, compile=compile)
                out = run_sgld(loss, w_star, wl.x, wl.y, cfg, seed=0)
                assert out.compile_mode == ("compiled" if compile else "eager"), out.compile_mode
                return out

            cold = wall(lambda: run(True), device)[0]
            wall(lambda: run(False), device)  # untimed eager warm-up (vmap, allocator)
            times = {"eager": [], "compiled": []}
            for r in range(reps):
                for v in (["eager", "compiled"] if r % 2 == 0 else ["compiled", "eager"]):
                    times[v].append(wall(lambda: run(v == "compiled"), device)[0])
            eager_s, comp_s = median(times["eager"]), median(times["compiled"])
            compile_s = max(cold - comp_s, 0.0)
            saving = (eager_s - comp_s) / steps  # seconds per step, all C chains
            if saving > 0:
                be = C * compile_s / saving
                break_evens.append(be)
                be_txt = f"{be:,.0f}"
            else:
                be_txt = "never"
            rows.append([wl.key, wl.title, str(C), f"{compile_s:.1f}", f"{eager_s / steps * 1e3:.3f}",
                         f"{comp_s / steps * 1e3:.3f}", be_txt])
            print(" | ".join(rows[-1]), flush=True)

    header = ["wl", "workload", "C", "compile s", "eager ms / step", "compiled ms / step",
              "break-even chain-steps"]
    worst = f"{max(break_evens):,.0f}" if break_evens else "none"
    body = "\n\n".join([
        f"Measured on: {header_line}. Device `{device}`; {reps} alternating repetitions per cell, "
        f"cold inductor cache" + (" (QUICK smoke run: not a measurement)" if args.quick else "") + ".",
        f"Once per process, the first compile of any step (a 2→3→2 DLN, 2 chains) took {startup_s:.1f} s: "
        "dynamo/inductor start-up, not counted in the compile s column.",
        markdown_table(header, rows),
        f"Largest break-even: {worst} chain-steps; llc.sgld.COMPILE_AUTO_MIN_CHAIN_STEPS = "
        f"{COMPILE_AUTO_MIN_CHAIN_STEPS:,} when this table was written.",
    ])
    finish(args, body)


if __name__ == "__main__":
    main()
