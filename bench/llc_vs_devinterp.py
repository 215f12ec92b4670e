"""Our SGLD sampler against devinterp 1.3.2 on the same LLC estimation (issue 4).

Both samplers get the same model at w*, the same n training points, ε, γ, nβ
(= n / log n, passed to devinterp explicitly: its own default is
batch / log batch), batch size, number of chains and steps, and the same
baseline L_n(w*) (the exact full-data loss, computed once outside the timing).
Repetitions alternate between the samplers in one process; each repetition uses
a new seed, and λ̂ is pooled over the repetitions' chains.

devinterp is called through its recommended entry point
``estimate_learning_coeff_with_summary`` with its default SGLD, ``cores=1``
(chains one after another: on a 2-core box a process pool only adds contention)
and a DataLoader whose dataset returns a whole batch with one gather
(``__getitems__``) instead of B single-row fetches and a collate.

Columns (per workload and chain count C, times are medians over repetitions):
- ms per chain-step: wall time of the whole call / (C · steps).
- devinterp / ours: how many times faster ours is.
- ours / SGD: our chain-step over one plain SGD training step (forward, backward,
  optimizer step) of the same model and batch: the practical floor.
- λ̂: mean ± std over all chains of all repetitions; z = |Δλ̂| / combined standard error.

Run: python bench/llc_vs_devinterp.py [--device cuda] [--workloads a,b,c] [--quick]
"""
from __future__ import annotations

import copy
import math
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from _common import (  # noqa: E402
    Workload, dln_workload, machine_line, markdown_table, median, mlp_workload, parse_common, setup, wall,
)
from llc.estimate import flat_loss_for_module, llc_from_trace  # noqa: E402
from llc.sgld import SGLDConfig, full_data_loss, run_sgld  # noqa: E402

SEED = 0


def make_workloads(device: torch.device, quick: bool) -> dict[str, Workload]:
    """(a) the smallest paper sweep's DLN, (b) a ~100k-parameter DLN, (c) an MLP classifier."""
    def steps(full: int) -> tuple[int, int]:  # (num_steps, num_burnin_steps): the second half is averaged
        t = 20 if quick else full
        return t, t // 2

    t_a, b_a = steps(1000)
    t_b, b_b = steps(100)
    t_c, b_c = steps(500)
    return {
        # docs/notes/llc.md#dln: widths 5-50, n = 1e5, batch 500, ε = 5e-7, γ = 1.
        "a": lambda: dln_workload("a", 7, [9, 6, 8], 100_000, epsilon=5e-7, gamma=1.0,
                                  num_steps=t_a, num_burnin_steps=b_a, device=device),
        "b": lambda: dln_workload("b", 50, [200, 200, 200, 50], 100_000, epsilon=1e-6, gamma=1.0,
                                  num_steps=t_b, num_burnin_steps=b_b, device=device),
        "c": lambda: mlp_workload("c", 20, [64, 64], 10, 100_000, epsilon=1e-5, gamma=10.0,
                                  num_steps=t_c, num_burnin_steps=b_c, device=device,
                                  train_steps=100 if quick else 2000),
    }


# --- devinterp ---------------------------------------------------------------

class BatchFetchDataset(TensorDataset):
    """TensorDataset whose DataLoader fetches a batch with one gather per tensor."""

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, ...]:
        i = torch.as_tensor(indices, device=self.tensors[0].device)
        return tuple(t.index_select(0, i) for t in self.tensors)


def keep_batch(batch):
    return batch


def run_devinterp(wl: Workload, chains: int, nbeta: float, init_loss: float, seed: int, device) -> np.ndarray:
    """devinterp's per-chain λ̂ (C,)."""
    from devinterp.slt.sampler import estimate_learning_coeff_with_summary

    loader = DataLoader(BatchFetchDataset(wl.x, wl.y), batch_size=wl.batch_size, shuffle=True, collate_fn=keep_batch)
    loss = wl.loss

    def evaluate(model, batch):
        xb, yb = batch
        return loss(model(xb), yb)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation and "nbeta passed in" notices
        out = estimate_learning_coeff_with_summary(
            copy.deepcopy(wl.model),
            loader=loader,
            evaluate=evaluate,
            optimizer_kwargs=dict(lr=wl.epsilon, localization=wl.gamma, nbeta=nbeta),
            num_draws=wl.num_steps - wl.num_burnin_steps,
            num_chains=chains,
            num_burnin_steps=wl.num_burnin_steps,
            num_steps_bw_draws=1,
            init_loss=init_loss,
            cores=1,
            seed=seed,
            device=device,
            verbose=False,
        )
    return np.array([out[f"llc-chain/{c}"] for c in range(chains)])


# --- ours --------------------------------------------------------------------

def run_ours(wl: Workload, flat_loss, w_star, chains: int, nbeta: float, init_loss: float, seed: int,
             compile: bool) -> np.ndarray:
    """Our per-chain λ̂ (C,): run_sgld plus the same λ̂ formula as estimate_llc_flat."""
    cfg = SGLDConfig(epsilon=wl.epsilon, gamma=wl.gamma, num_steps=wl.num_steps, batch_size=wl.batch_size,
                     num_chains=chains, nbeta=nbeta, num_burnin_steps=wl.num_burnin_steps, compile=compile)
    trace = run_sgld(flat_loss, w_star, wl.x, wl.y, cfg, seed)
    return llc_from_trace(trace.loss, init_loss, trace.nbeta, trace.burnin)


def sgd_step_seconds(wl: Workload, device, reps: int, steps: int) -> float:
    """Median time of one plain SGD step (gather, forward, backward, update) on the same model and batch."""
    model = copy.deepcopy(wl.model).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-9)
    gen = torch.Generator(device=device).manual_seed(0)

    def train(k: int):
        for _ in range(k):
            i = torch.randint(0, wl.n, (wl.batch_size,), generator=gen, device=device)
            opt.zero_grad()
            wl.loss(model(wl.x.index_select(0, i)), wl.y.index_select(0, i)).backward()
            opt.step()

    train(5)
    return median([wall(lambda: train(steps), device)[0] / steps for _ in range(reps)])


# --- table -------------------------------------------------------------------

def fmt_lambda(v: np.ndarray) -> str:
    return f"{v.mean():.1f} ± {v.std(ddof=1):.1f}" if v.size > 1 else f"{v.mean():.1f}"


def z_score(a: np.ndarray, b: np.ndarray) -> str:
    if a.size < 2 or b.size < 2:
        return "–"
    se = math.sqrt(a.var(ddof=1) / a.size + b.var(ddof=1) / b.size)
    return f"{abs(a.mean() - b.mean()) / se:.1f}" if se > 0 else "–"


def check_targets(results: dict, variants: list[str]) -> list[str]:
    """Issue 4's acceptance targets, evaluated on the measured numbers (met / NOT met)."""
    ours = [v for v in variants if v != "devinterp"]
    verdict = {True: "met", False: "NOT met"}
    lines = []
    for v in ours:
        if ("a", 8) in results:
            r = results["a", 8]["ms"]["devinterp"] / results["a", 8]["ms"][v]
            lines.append(f"(a), 8 chains, devinterp / {v} = {r:.1f}× (target ≥ 5×): {verdict[r >= 5]}")
        for key in ("b", "c"):
            ratios = {C: res["ms"]["devinterp"] / res["ms"][v] for (k, C), res in results.items() if k == key}
            if ratios:
                worst = min(ratios, key=ratios.get)
                lines.append(f"({key}), {v}: slowest ratio devinterp / {v} = {ratios[worst]:.2f}× at {worst} chains "
                             f"(target ≥ 1 at every chain count): {verdict[ratios[worst] >= 1]}")
        floor = {C: res["ms"][v] / res["sgd_ms"] for (k, C), res in results.items() if k == "b" and C >= 8}
        if floor:
            worst = max(floor, key=floor.get)
            lines.append(f"(b), {v}: chain-step / SGD step ≤ {floor[worst]:.2f} at 8+ chains "
                         f"(target ≤ 1.5): {verdict[floor[worst] <= 1.5]}")
        zs = []
        for res in results.values():
            a, b = res["lam"]["devinterp"], res["lam"][v]
            if a.size > 1 and b.size > 1:
                se = math.sqrt(a.var(ddof=1) / a.size + b.var(ddof=1) / b.size)
                zs.append(abs(a.mean() - b.mean()) / se if se > 0 else 0.0)
        if zs:
            lines.append(f"λ̂ devinterp vs {v}: |Δ| within 1 combined SE in {sum(z <= 1 for z in zs)}/{len(zs)} cells, "
                         f"within 2 SE in {sum(z <= 2 for z in zs)}/{len(zs)} (largest z = {max(zs):.1f}; "
                         "for two samplers of the same chain law about 68% and 95% are expected)")
    return lines


def main() -> None:
    p = parse_common(__doc__.splitlines()[0])
    p.add_argument("--workloads", default="a,b,c", help="comma-separated subset of a,b,c")
    p.add_argument("--no-compile", action="store_true", help="skip the compile=True variant")
    p.add_argument("--seed", type=int, default=SEED, help=f"base seed; repetition r uses seed + r (default {SEED})")
    args = p.parse_args()
    device = setup(args)
    chain_counts = [int(c) for c in args.chains.split(",")]
    reps = 1 if args.quick else args.reps
    header_line = machine_line(device)
    print(header_line, flush=True)

    variants = ["devinterp", "ours"] + ([] if args.no_compile else ["compiled"])
    time_rows, lam_rows, info_rows = [], [], []
    results: dict[tuple[str, int], dict] = {}
    builders = make_workloads(device, args.quick)
    for key in args.workloads.split(","):
        wl = builders[key]()
        flat_loss, w_star = flat_loss_for_module(wl.model, wl.loss, torch.float32, device)
        nbeta = wl.n / math.log(wl.n)
        with torch.no_grad():
            init_loss = float(full_data_loss(flat_loss, w_star[None], wl.x, wl.y)[0])
        sgd = sgd_step_seconds(wl, device, reps=max(3, reps), steps=5 if args.quick else 30)
        print(f"\n({key}) {wl.title}; SGD step {sgd * 1e3:.3f} ms", flush=True)
        compile_s = []
        for C in chain_counts:
            runners = {
                "devinterp": lambda s: run_devinterp(wl, C, nbeta, init_loss, s, device),
                "ours": lambda s: run_ours(wl, flat_loss, w_star, C, nbeta, init_loss, s, compile=False),
                "compiled": lambda s: run_ours(wl, flat_loss, w_star, C, nbeta, init_loss, s, compile=True),
            }
            # Untimed warm-up: imports, allocator, and the compile for this chain count.
            warm = {}
            for v in variants:
                short = copy.copy(wl)
                short.num_steps, short.num_burnin_steps = 2, 1
                runners_short = {
                    "devinterp": lambda: run_devinterp(short, C, nbeta, init_loss, 0, device),
                    "ours": lambda: run_ours(short, flat_loss, w_star, C, nbeta, init_loss, 0, compile=False),
                    "compiled": lambda: run_ours(short, flat_loss, w_star, C, nbeta, init_loss, 0, compile=True),
                }
                warm[v] = wall(runners_short[v], device)[0]
            if "compiled" in variants:
                compile_s.append(f"{C}: {warm['compiled']:.0f} s")
            times = {v: [] for v in variants}
            lams = {v: [] for v in variants}
            for r in range(reps):
                order = variants[r % len(variants):] + variants[:r % len(variants)]  # alternate who goes first
                for v in order:
                    dt, lam = wall(lambda: runners[v](args.seed + r), device)
                    times[v].append(dt / (C * wl.num_steps))
                    lams[v].append(lam)
            ms = {v: median(times[v]) * 1e3 for v in variants}
            lam = {v: np.concatenate(lams[v]) for v in variants}
            results[key, C] = dict(ms=ms, lam=lam, sgd_ms=sgd * 1e3)
            row = [key, str(C), f"{ms['devinterp']:.3f}", f"{ms['ours']:.3f}"]
            row += [f"{ms['compiled']:.3f}"] if "compiled" in variants else []
            row += [f"{ms['devinterp'] / ms['ours']:.1f}×"]
            row += [f"{ms['devinterp'] / ms['compiled']:.1f}×"] if "compiled" in variants else []
            row += [f"{ms['ours'] / (sgd * 1e3):.2f}"]
            row += [f"{ms['compiled'] / (sgd * 1e3):.2f}"] if "compiled" in variants else []
            time_rows.append(row)
            lrow = [key, str(C), str(C * reps), fmt_lambda(lam["devinterp"]), fmt_lambda(lam["ours"])]
            lrow += [fmt_lambda(lam["compiled"])] if "compiled" in variants else []
            lrow += [z_score(lam["devinterp"], lam["ours"])]
            lrow += [z_score(lam["devinterp"], lam["compiled"])] if "compiled" in variants else []
            lam_rows.append(lrow)
            print(" | ".join(row), "||", " | ".join(lrow[3:]), flush=True)
        info_rows.append([
            key, wl.title, f"{wl.epsilon:g}", f"{wl.gamma:g}", f"{nbeta:.0f}", str(wl.batch_size),
            f"{wl.num_steps} ({wl.num_burnin_steps})",
            "–" if wl.true_lambda is None else f"{wl.true_lambda:g}", f"{sgd * 1e3:.3f}",
            ", ".join(compile_s) if compile_s else "–",
        ])

    with_c = "compiled" in variants
    t_header = ["wl", "C", "devinterp ms", "ours ms"] + (["ours compiled ms"] if with_c else [])
    t_header += ["devinterp / ours"] + (["devinterp / compiled"] if with_c else [])
    t_header += ["ours / SGD step"] + (["compiled / SGD step"] if with_c else [])
    l_header = ["wl", "C", "chains pooled", "λ̂ devinterp", "λ̂ ours"] + (["λ̂ ours compiled"] if with_c else [])
    l_header += ["z ours"] + (["z compiled"] if with_c else [])
    i_header = ["wl", "workload", "ε", "γ", "nβ", "batch", "steps (burn-in)", "Aoyagi λ", "SGD step ms",
                "compile s (first call, per C)"]
    body = "\n\n".join([
        f"Measured on: {header_line}. Device `{device}`; {reps} alternating repetitions per cell"
        + (" (QUICK smoke run: not a measurement)" if args.quick else "") + ".",
        markdown_table(i_header, info_rows),
        "Wall time per chain-step (median over repetitions):",
        markdown_table(t_header, time_rows),
        "λ̂ (mean ± std over chains, pooled over repetitions; z = |Δ| / combined standard error):",
        markdown_table(l_header, lam_rows),
        "Acceptance targets of issue 4, checked on these numbers:",
        "\n".join(f"- {line}" for line in check_targets(results, variants)),
    ])
    print("\n" + body)
    if args.markdown_out is not None:
        args.markdown_out.write_text(body + "\n")


if __name__ == "__main__":
    main()
