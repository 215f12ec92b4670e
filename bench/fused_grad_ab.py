"""The fused path's hand-written backward (llc/fused_grad.py) at a git revision against the working tree.

Both versions run in one process, interleaved (the order flips every repetition), so load
from other processes hits them alike: the default estimate path (``flat_loss_for_module``,
``run_sgld`` eager, C chains) on workloads (a) and (c) of llc_vs_devinterp.py. The
revision's file is loaded as a module and swapped in for ``llc.fused_grad.value_and_grad``;
everything else (driver, draws, update) is the working tree's.

Columns: ms per chain-step (wall time / (C · steps), median), before / after, and the
largest difference of the two post-burn-in loss traces over the trace's largest value
(same seeds and draws: 0 means bit-identical).

Run: python bench/fused_grad_ab.py --base f45ed82 [--chains 8] [--reps 9] [--threads 1]
"""
from __future__ import annotations

import importlib.util
import subprocess
import tempfile
from pathlib import Path

from _common import REPO, finish, markdown_table, median, parse_common, small_workloads, start, wall

import llc.fused_grad
from llc.sgld import SGLDConfig, run_sgld


def value_and_grad_at(rev: str):
    """llc/fused_grad.py's value_and_grad as it was at git revision ``rev``."""
    source = subprocess.run(["git", "show", f"{rev}:llc/fused_grad.py"], cwd=REPO, check=True,
                            capture_output=True, text=True).stdout
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fused_grad_base.py"
        path.write_text(source)
        spec = importlib.util.spec_from_file_location("fused_grad_base", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module.value_and_grad


def main() -> None:
    p = parse_common(__doc__.splitlines()[0])
    p.set_defaults(chains="8")
    p.add_argument("--base", required=True, help="git revision of the 'before' llc/fused_grad.py")
    p.add_argument("--workloads", default="a,c", help="comma-separated subset of a (DLN), c (CE MLP)")
    args, device, chain_counts, reps, header_line = start(p)
    versions = {"before": value_and_grad_at(args.base), "after": llc.fused_grad.value_and_grad}
    names = list(versions)
    steps = 20 if args.quick else 300
    rows = []
    for wl, loss, w_star in small_workloads(args.workloads, steps, device, args.quick):
        for C in chain_counts:
            cfg = SGLDConfig(epsilon=wl.epsilon, gamma=wl.gamma, num_steps=steps, batch_size=wl.batch_size,
                             num_chains=C, num_burnin_steps=steps // 2, compile=False)

            def run(name: str, seed: int):
                llc.fused_grad.value_and_grad = versions[name]
                return run_sgld(loss, w_star, wl.x, wl.y, cfg, seed)

            try:
                for name in names:  # untimed warm-up
                    run(name, 0)
                times, diff = {n: [] for n in names}, 0.0
                for r in range(reps):
                    traces = {}
                    for name in names if r % 2 == 0 else names[::-1]:
                        dt, tr = wall(lambda: run(name, r), device)
                        times[name].append(dt / (C * steps))
                        traces[name] = tr.loss[:, steps // 2:]
                    scale = float(traces["before"].abs().max())
                    diff = max(diff, float((traces["after"] - traces["before"]).abs().max()) / scale)
            finally:
                llc.fused_grad.value_and_grad = versions["after"]
            ms = {n: median(times[n]) * 1e3 for n in names}
            rows.append([wl.key, str(C), f"{ms['before']:.4f}", f"{ms['after']:.4f}",
                         f"{ms['before'] / ms['after']:.2f}×", f"{diff:.0e}"])
            print(" | ".join(rows[-1]), flush=True)
    header = ["wl", "C", f"before ({args.base}) ms", "after ms", "before / after", "max trace diff / max trace"]
    body = "\n\n".join([
        f"Measured on: {header_line}. Device `{device}`; eager run_sgld, {steps} steps per chain, batch 500, "
        f"n = 100,000, float32; {reps} interleaved repetitions per cell"
        + (" (QUICK smoke run: not a measurement)" if args.quick else "")
        + ". (a) DLN 7→9→6→8 (P = 165), MSE; (c) MLP 20→64→64→10 ReLU (P = 6,154), cross-entropy.",
        markdown_table(header, rows),
    ])
    finish(args, body)


if __name__ == "__main__":
    main()
