"""SGLD against full-batch MALA: the cost of one λ̂ estimate, side by side (issue 12 §3).

The workload is MALA_vs_SGLD.ipynb's: a ReLU MLP 10→20→20→10 (P = 850) at the
notebook's teacher w*, x ~ U(-10, 10)^10, MSE, ε = 1e-5, γ = 1, nβ = n / log n, SGLD
batch 32. Both samplers run the same C chains of T steps (``--chains``, default 5, the
notebook's 5 runs); the MALA acceptance diagnostic of the experiment is off, so each
column is the sampler alone. The estimate's baseline L_n(w*), one full-data pass that
both samplers need, is left out of both. Repetitions alternate between the samplers;
times are medians.

Columns:
- SGLD / MALA ms: wall time per chain-step = time / (C · T).
- MALA / SGLD: the ratio, which is also the ratio of the cost of one estimate at equal
  chains and draws (the experiment's ``time_ratio``).
- s per estimate: C · 10000 chain-steps (the notebook's draws) at the measured rate.

Run: python bench/mala_vs_sgld.py [--device cuda] [--quick] [--chains 5]
"""
from __future__ import annotations

import torch
from _common import finish, markdown_table, median, mse, parse_common, start, wall
from torch.func import functional_call

from data.synthetic import teacher_dataset
from llc.estimate import flat_model_for_module
from llc.mala import MALAConfig, run_mala
from llc.sgld import SGLDConfig, run_sgld
from models.relu_mlp import ReLUMLP, notebook_teacher

SIZES = [10, 20, 20, 10]
NS = [100, 1000, 10_000, 100_000]
PAPER_DRAWS = 10_000
EVAL_BATCH = 16384  # as experiments/expt_mala_vs_sgld.py


def main() -> None:
    p = parse_common(__doc__.splitlines()[0])
    p.set_defaults(chains="5")
    args, device, chain_counts, reps, header_line = start(p)
    C = chain_counts[0]

    gen = torch.Generator().manual_seed(0)
    w64 = notebook_teacher(SIZES, gen)
    net = ReLUMLP(SIZES)
    w32 = {k: v.float() for k, v in w64.items()}
    net.load_state_dict(w32)
    x_all, y_all = teacher_dataset(lambda q, xb: functional_call(net, q, (xb,)), w32, max(NS), SIZES[0], "uniform", gen)
    net = net.to(device).eval()
    f, w_star = flat_model_for_module(net, torch.float32, device)

    def loss(w, xb, yb):
        return mse(f(w, xb), yb)

    rows = []
    for n in NS:
        x, y = x_all[:n].to(device), y_all[:n].to(device)
        steps = 10 if args.quick else max(20, min(200, 2_000_000 // n))  # MALA's full passes: fewer steps at large n
        common = dict(epsilon=1e-5, gamma=1.0, num_chains=C, num_burnin_steps=0)

        def sgld(T):
            return run_sgld(loss, w_star, x, y, SGLDConfig(**common, num_steps=T, batch_size=32), seed=0)

        def mala(T):
            return run_mala(loss, w_star, x, y, MALAConfig(**common, num_steps=T, adapt_step_size=False),
                            seed=0, eval_batch_size=EVAL_BATCH)

        variants = {"sgld": sgld, "mala": mala}
        for fn in variants.values():
            wall(lambda: fn(2), device)  # untimed warm-up
        times = {v: [] for v in variants}
        names = list(variants)
        for r in range(reps):
            for v in names[r % 2:] + names[:r % 2]:
                times[v].append(wall(lambda: variants[v](steps), device)[0] / (C * steps))
        ms = {v: median(times[v]) * 1e3 for v in names}
        ratio = ms["mala"] / ms["sgld"]
        row = [f"{n:,}", str(steps), f"{ms['sgld']:.3f}", f"{ms['mala']:.3f}", f"{ratio:.1f}×",
               f"{ms['sgld'] * C * PAPER_DRAWS / 1e3:.0f}", f"{ms['mala'] * C * PAPER_DRAWS / 1e3:.0f}"]
        rows.append(row)
        print(" | ".join(row), flush=True)

    header = ["n", "timed steps", "SGLD ms", "MALA ms", "MALA / SGLD", "SGLD s per estimate", "MALA s per estimate"]
    body = "\n\n".join([
        f"Measured on: {header_line}. Device `{device}`; ReLU MLP 10→20→20→10 (P = 850), the notebook's teacher; "
        f"ε = 1e-5, γ = 1, SGLD batch 32; {C} chains; {reps} alternating repetitions "
        "per cell" + (" (QUICK smoke run: not a measurement)" if args.quick else "")
        + f". Times are ms per chain-step (median); s per estimate = {C} chains × {PAPER_DRAWS} draws at that rate.",
        markdown_table(header, rows),
    ]).strip()
    finish(args, body)


if __name__ == "__main__":
    main()
