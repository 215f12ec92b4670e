"""Our SGLD sampler against devinterp 1.3.2 and 2.0.1 on the same LLC estimation (issues 4, 19).

All samplers get the same model at w*, the same n training points, ε, γ, nβ
(= n / log n, passed to devinterp explicitly: its own default is
batch / log batch), batch size, number of chains and steps, and the same
baseline L_n(w*) (the exact full-data loss, computed once outside the timing).
Repetitions alternate between the samplers in one run; each repetition uses a
new seed, and λ̂ is pooled over the repetitions' chains.

Each devinterp version runs in its own venv (.venv-bench/devinterp-X, made by
`make bench-venvs`) as a worker process (bench/devinterp_worker.py says how each
version is called); this script starts both, hands them the workload, and asks
them for each timed run in turn, so every cell alternates all samplers. Only the
sampling call is timed, on both sides.

Ours ("ours") is the library's default: flat_loss_for_module (the fused path for
these Linear stacks) and run_sgld with compile="auto". "compiled" forces
compile=True; "hooked" is ours with the driver taking every chain's loss and
gradient from the fused loss's ``value_and_grad`` (one bmm per layer, hand-written
backward, no vmap or autograd), which llc.sgld does not do yet: emulated with
bench/fused_stack.value_and_grad_hook.

Columns (per workload and chain count C, times are medians over repetitions):
- ms per chain-step: wall time of the whole call / (C · steps).
- devinterp X / ours: how many times faster ours is.
- ours / SGD: our chain-step over one plain SGD training step (forward, backward,
  optimizer step) of the same model and batch: the practical floor.
- λ̂: mean ± std over all chains of all repetitions; z = |Δλ̂| / combined standard error.

Run: python bench/llc_vs_devinterp.py [--device cuda] [--workloads a,b,c] [--quick]
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import torch
from _common import (
    REPO,
    Workload,
    dln_workload,
    finish,
    markdown_table,
    median,
    mlp_workload,
    parse_common,
    start,
    wall,
)
from fused_stack import value_and_grad_hook

from llc.estimate import flat_loss_for_module, llc_from_trace
from llc.sgld import SGLDConfig, full_data_loss, run_sgld

DEVINTERP_VERSIONS = ("1.3.2", "2.0.1")
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

def venv_python(version: str) -> Path:
    return REPO / ".venv-bench" / f"devinterp-{version}" / "bin" / "python"


class DevinterpWorker:
    """A bench/devinterp_worker.py process in one devinterp version's venv."""

    def __init__(self, version: str, threads: int):
        python = venv_python(version)
        if not python.exists():
            raise SystemExit(f"{python} is missing: run `make bench-venvs` (bench/README.md, 'devinterp install')")
        env = dict(os.environ, PYTHONPATH=str(REPO), TQDM_DISABLE="1")
        self.version = version
        self.proc = subprocess.Popen([str(python), str(REPO / "bench" / "devinterp_worker.py"), str(threads)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)

    def ask(self, req: dict) -> dict:
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        for line in self.proc.stdout:
            if line.startswith("REPLY "):
                return json.loads(line[len("REPLY "):])
        raise SystemExit(f"devinterp {self.version} worker exited (rc {self.proc.wait()})")

    def load(self, path: Path) -> None:
        got = self.ask({"op": "load", "path": str(path)})["version"]
        if got != self.version:
            raise SystemExit(f"{venv_python(self.version)} has devinterp {got}, expected {self.version}")

    def run(self, wl: Workload, chains: int, nbeta: float, init_loss: float, seed: int,
            fresh_batches: bool = False) -> tuple[float, np.ndarray]:
        out = self.ask({"op": "run", "chains": chains, "num_steps": wl.num_steps,
                        "num_burnin_steps": wl.num_burnin_steps, "seed": seed, "nbeta": nbeta,
                        "init_loss": init_loss, "fresh_batches": fresh_batches})  # 1.x ignores it
        return out["seconds"], np.array(out["lambdahat"])

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def save_workload(wl: Workload, device, path: Path) -> None:
    """What a worker needs, with the loss by name (bench/_common's mse and cross_entropy are torch's)."""
    name = {torch.nn.functional.mse_loss: "mse", torch.nn.functional.cross_entropy: "cross_entropy"}[wl.loss]
    torch.save({"model": wl.model, "x": wl.x, "y": wl.y, "loss": name, "epsilon": wl.epsilon, "gamma": wl.gamma,
                "batch_size": wl.batch_size, "device": str(device)}, path)


# --- ours --------------------------------------------------------------------

def run_ours(wl: Workload, flat_loss, w_star, chains: int, nbeta: float, init_loss: float, seed: int,
             variant: str) -> tuple[np.ndarray, str]:
    """Our per-chain λ̂ (C,) and the step that ran: run_sgld plus the same λ̂ formula as estimate_llc_flat."""
    cfg = SGLDConfig(epsilon=wl.epsilon, gamma=wl.gamma, num_steps=wl.num_steps, batch_size=wl.batch_size,
                     num_chains=chains, nbeta=nbeta, num_burnin_steps=wl.num_burnin_steps,
                     compile=True if variant == "compiled" else "auto")
    with value_and_grad_hook([0]) if variant == "hooked" else contextlib.nullcontext():
        trace = run_sgld(flat_loss, w_star, wl.x, wl.y, cfg, seed)
    return llc_from_trace(trace.loss, init_loss, trace.nbeta, trace.burnin), trace.compile_mode


MATMUL_OPS = ("aten::bmm", "aten::baddbmm", "aten::mm", "aten::addmm")


def matmul_seconds(fn) -> float:
    """CPU time fn() spends inside matrix-product kernels (profiler self time of MATMUL_OPS).

    Any implementation of the same step at the same precision does these products, so
    devinterp's time over this is the most our step could gain by shedding everything
    else with these kernels (BENCHMARKS.md §2, "ceiling").
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return sum(e.self_cpu_time_total for e in prof.key_averages() if e.key in MATMUL_OPS) * 1e-6


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


def z_value(a: np.ndarray, b: np.ndarray) -> float | None:
    if a.size < 2 or b.size < 2:
        return None
    se = math.sqrt(a.var(ddof=1) / a.size + b.var(ddof=1) / b.size)
    return abs(a.mean() - b.mean()) / se if se > 0 else 0.0


def check_targets(results: dict, ours: list[str], devinterps: list[str]) -> list[str]:
    """Issue 19's acceptance targets (CPU, default settings), evaluated on the measured numbers."""
    verdict = {True: "met", False: "NOT met"}
    lines = []
    for v in ours:
        for d in devinterps:
            if ("a", 8) in results:
                r = results["a", 8]["ms"][d] / results["a", 8]["ms"][v]
                target = 20 if d == "devinterp-2.0.1" else None
                lines.append(f"(a), 8 chains, {d} / {v} = {r:.1f}×"
                             + (f" (target ≥ {target}×): {verdict[r >= target]}" if target else " (no target)"))
            if ("c", 8) in results:
                r = results["c", 8]["ms"][d] / results["c", 8]["ms"][v]
                lines.append(f"(c), 8 chains, {d} / {v} = {r:.1f}× (target ≥ 5×): {verdict[r >= 5]}")
        floor = {C: res["ms"][v] / res["sgd_ms"] for (k, C), res in results.items() if k == "b" and C >= 8}
        if floor:
            worst = max(floor, key=floor.get)
            lines.append(f"(b), {v}: chain-step / SGD step ≤ {floor[worst]:.2f} at 8+ chains "
                         f"(target ≤ 1.0): {verdict[floor[worst] <= 1.0]}")
        for d in devinterps:
            zs = [z for res in results.values() if (z := z_value(res["lam"][d], res["lam"][v])) is not None]
            if zs:
                frac = sum(z <= 2 for z in zs) / len(zs)
                lines.append(f"λ̂ {d} vs {v}: within 2 combined SE in {sum(z <= 2 for z in zs)}/{len(zs)} cells "
                             f"(largest z = {max(zs):.1f}; target ≥ 90%): {verdict[frac >= 0.9]}")
    return lines


def main() -> None:
    p = parse_common(__doc__.splitlines()[0])
    p.add_argument("--workloads", default="a,b,c", help="comma-separated subset of a,b,c")
    p.add_argument("--no-compile", action="store_true", help="skip the compile=True variant")
    p.add_argument("--no-hooked", action="store_true", help="skip the emulated batched-driver variant")
    p.add_argument("--devinterp", default=",".join(DEVINTERP_VERSIONS),
                   help=f"comma-separated devinterp versions (default {','.join(DEVINTERP_VERSIONS)})")
    p.add_argument("--seed", type=int, default=SEED, help=f"base seed; repetition r uses seed + r (default {SEED})")
    p.add_argument("--fresh-batches", action="store_true",
                   help="devinterp 2.x: a dataset long enough that its itertools.cycle replays no batch "
                        "(its default replays the first epoch's; a diagnostic, not its recommended route)")
    args, device, chain_counts, reps, header_line = start(p)

    workers = {f"devinterp-{v}": DevinterpWorker(v, torch.get_num_threads()) for v in args.devinterp.split(",")}
    devinterps = list(workers)
    ours = ["ours"] + ([] if args.no_compile else ["compiled"]) + ([] if args.no_hooked else ["hooked"])
    variants = devinterps + ours
    time_rows, lam_rows, info_rows = [], [], []
    results: dict[tuple[str, int], dict] = {}
    builders = make_workloads(device, args.quick)
    tmp = tempfile.TemporaryDirectory()
    for key in args.workloads.split(","):
        wl = builders[key]()
        path = Path(tmp.name) / f"{key}.pt"
        save_workload(wl, device, path)
        for w in workers.values():
            w.load(path)
        flat_loss, w_star = flat_loss_for_module(wl.model, wl.loss, torch.float32, device)
        nbeta = wl.n / math.log(wl.n)
        with torch.no_grad():
            init_loss = float(full_data_loss(flat_loss, w_star[None], wl.x, wl.y)[0])
        sgd = sgd_step_seconds(wl, device, reps=max(3, reps), steps=5 if args.quick else 30)
        print(f"\n({key}) {wl.title}; loss path {flat_loss.path}; SGD step {sgd * 1e3:.3f} ms", flush=True)
        compile_s, modes = [], set()

        def runner(v: str, wlv: Workload, C: int, seed: int) -> tuple[float, np.ndarray]:
            if v in workers:
                return workers[v].run(wlv, C, nbeta, init_loss, seed, args.fresh_batches)
            dt, (lam, mode) = wall(lambda: run_ours(wlv, flat_loss, w_star, C, nbeta, init_loss, seed, v), device)
            if v == "ours":
                modes.add(mode)
            return dt, lam

        for C in chain_counts:
            short = copy.copy(wl)
            short.num_steps, short.num_burnin_steps = 2, 1
            warm = {v: runner(v, short, C, 0)[0] for v in variants}  # untimed: imports, allocator, compile
            if "compiled" in variants:
                compile_s.append(f"{C}: {warm['compiled']:.0f} s")
            times = {v: [] for v in variants}
            lams = {v: [] for v in variants}
            for r in range(reps):
                order = variants[r % len(variants):] + variants[:r % len(variants)]  # alternate who goes first
                for v in order:
                    dt, lam = runner(v, wl, C, args.seed + r)
                    times[v].append(dt / (C * wl.num_steps))
                    lams[v].append(lam)
            ms = {v: median(times[v]) * 1e3 for v in variants}
            floor = None  # ms per chain-step in matrix products (CPU only: the profiler's CPU self time)
            if device.type == "cpu":
                floor = 1e3 * matmul_seconds(lambda: run_ours(wl, flat_loss, w_star, C, nbeta, init_loss,
                                                               args.seed, "ours")) / (C * wl.num_steps)
            lam = {v: np.concatenate(lams[v]) for v in variants}
            results[key, C] = dict(ms=ms, lam=lam, sgd_ms=sgd * 1e3)
            row = [key, str(C)] + [f"{ms[v]:.3f}" for v in variants]
            row += [f"{ms[d] / ms[o]:.1f}×" for o in ours for d in devinterps]
            row += [f"{ms[o] / (sgd * 1e3):.2f}" for o in ours]
            row += ["–"] * (1 + len(devinterps)) if floor is None else (
                [f"{floor:.3f}"] + [f"{ms[d] / floor:.1f}×" for d in devinterps])
            time_rows.append(row)
            zs = [z_value(lam[d], lam[o]) for o in ours for d in devinterps]
            lrow = [key, str(C), str(C * reps)] + [fmt_lambda(lam[v]) for v in variants]
            lrow += ["–" if z is None else f"{z:.1f}" for z in zs]
            lam_rows.append(lrow)
            print(" | ".join(row), "||", " | ".join(lrow[3:]), flush=True)
        info_rows.append([
            key, wl.title, f"{wl.epsilon:g}", f"{wl.gamma:g}", f"{nbeta:.0f}", str(wl.batch_size),
            f"{wl.num_steps} ({wl.num_burnin_steps})",
            "–" if wl.true_lambda is None else f"{wl.true_lambda:g}", f"{sgd * 1e3:.3f}",
            f"{flat_loss.path}, {'/'.join(sorted(modes))}", ", ".join(compile_s) if compile_s else "–",
        ])
    for w in workers.values():
        w.close()
    tmp.cleanup()

    short_name = {d: d.replace("devinterp-", "dvi ") for d in devinterps}
    t_header = ["wl", "C"] + [f"{short_name.get(v, v)} ms" for v in variants]
    t_header += [f"{short_name[d]} / {o}" for o in ours for d in devinterps] + [f"{o} / SGD step" for o in ours]
    t_header += ["ours in matmuls ms"] + [f"ceiling {short_name[d]} / matmuls" for d in devinterps]
    l_header = ["wl", "C", "chains pooled"] + [f"λ̂ {short_name.get(v, v)}" for v in variants]
    l_header += [f"z {o} vs {short_name[d]}" for o in ours for d in devinterps]
    i_header = ["wl", "workload", "ε", "γ", "nβ", "batch", "steps (burn-in)", "Aoyagi λ", "SGD step ms",
                "ours: loss path, step", "compile s (first call, per C)"]
    body = "\n\n".join([
        f"Measured on: {header_line}. Device `{device}`; {reps} alternating repetitions per cell"
        + ("; devinterp 2.x with --fresh-batches (no first-epoch replay)" if args.fresh_batches else "")
        + (" (QUICK smoke run: not a measurement)" if args.quick else "") + ".",
        markdown_table(i_header, info_rows),
        "Wall time per chain-step (median over repetitions). \"ours in matmuls\": the part of our chain-step "
        "spent in matrix-product kernels (one profiled run); devinterp's time over it is the ceiling on the ratio "
        "with these kernels, at the same precision and threads:",
        markdown_table(t_header, time_rows),
        "λ̂ (mean ± std over chains, pooled over repetitions; z = |Δ| / combined standard error):",
        markdown_table(l_header, lam_rows),
        "Acceptance targets of issue 19 (CPU), checked on these numbers:",
        "\n".join(f"- {line}" for line in check_targets(results, ours, devinterps)),
    ])
    finish(args, body)


if __name__ == "__main__":
    main()
