"""Benchmark of the Hessian toolkit (dynamics.hessian, dynamics.lanczos), side by side in one run.

    .venv/bin/python bench/hessian.py --threads 1 --reps 3            # prints the table
    .venv/bin/python bench/hessian.py --threads 1 --write              # and writes it into BENCHMARKS.md
    .venv/bin/python bench/hessian.py --device cuda --quick --markdown-out t.md   # what bench/gpu.sh runs

Workload: the USPS MLP 256-20-10 (5,350 parameters, ReLU, cross-entropy) on USPS-format
data (tests.datasets.write_usps: the real file format, synthetic images; no download),
after 300 SGD steps so that the spectrum has its outliers.

1. Top-5 eigenvalues (largest magnitude) of the Hessian on 1024 points: thick-restart
   Lanczos against PyHessian's power iteration with deflation (tol 1e-3, at most 100
   iterations per eigenvalue), and power iteration with a tighter tol. Both use the same
   HVP (forward-over-reverse); reported: HVPs, wall time, and the largest relative error
   of the 5 eigenvalues against an exact reference (the layer-structured dense Hessian,
   assembled in float64 over chunks of 64 points, its top eigenvalues by Lanczos to 1e-12).
2. One HVP against one gradient, at batch 8 and at 1024 points.
3. The exact Hessian at batch 8: row-by-row autograd (P backward passes through the graph of
   the gradient) against vmap(jvp(grad)) over the basis, the layer-structured dense Hessian
   (fresh allocation, and into a reused buffer), and the full eigendecomposition from the
   input-span-reduced Hessian that expt_chaos runs every step.

Timings are medians over ``--reps`` repetitions, the variants alternated within each
repetition so that load from other processes hits them alike. ``--quick`` (the sizes
bench/gpu.sh runs): one repetition, the eigenvalues on 256 points with one tolerance per
method instead of the scan; ``--device cuda`` puts the model, data and HVPs on the GPU.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
from pathlib import Path

import torch
from _common import BENCHMARKS_MD, REPO, machine_line, markdown_table, median, replace_marked, setup, wall
from torch.func import grad

from data.vision import load_vision_dataset
from dynamics.hessian import dense_hessian, hvp, mlp_hessian, mlp_hessian_eigh
from dynamics.lanczos import hessian_matvec, lanczos, power_iteration
from dynamics.mlp_hessian import mlp_params_from_flat
from llc.estimate import flat_model_for_module
from models.chaos_nets import build_model


def write_usps(*args, **kwargs):
    """tests/datasets.py's USPS-format writer, loaded from its file (tests/ is not an installed package)."""
    spec = importlib.util.spec_from_file_location("_bench_test_datasets", REPO / "tests" / "datasets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.write_usps(*args, **kwargs)


BEGIN, END = "<!-- hessian:start -->", "<!-- hessian:end -->"
SIZES = (256, 20, 10)


def cross_entropy(z, y):
    return (torch.logsumexp(z, dim=1) - z.gather(1, y[:, None])[:, 0]).mean()


def workload(dtype, device):
    """Trained 256-20-10 MLP as a flat loss, and its data (2048 points), on ``device``."""
    with tempfile.TemporaryDirectory() as tmp:
        write_usps(tmp, n_train=2048, n_test=8, seed=0)
        x, y = load_vision_dataset("usps", train=True, data_root=tmp, dtype=dtype)
    model = build_model("mlp", (1, 16, 16), 10, torch.Generator().manual_seed(0)).to(dtype)
    f, w = flat_model_for_module(model, dtype, device)
    x, y = x.flatten(1).to(device), y.to(device)
    gen = torch.Generator().manual_seed(1)
    loss = lambda u, xb, yb: cross_entropy(f(u, xb.view(-1, 1, 16, 16)), yb)  # noqa: E731
    g = grad(loss)
    for _ in range(300):
        i = torch.randint(0, x.shape[0], (64,), generator=gen).to(device)
        w = w - 0.05 * g(w, x[i], y[i])
    return loss, w.detach(), x, y


def structured_dense(w, x, y, chunk=64):
    """Exact float64 Hessian of the mean loss over all of x, summed over chunks."""
    w64 = w.double()
    ws, bs = mlp_params_from_flat(w64, SIZES)
    h = torch.zeros(w.numel(), w.numel(), dtype=torch.float64, device=w.device)
    for s in range(0, x.shape[0], chunk):
        xb, yb = x[s:s + chunk].double(), y[s:s + chunk]
        h += mlp_hessian(ws, bs, xb, yb) * (xb.shape[0] / x.shape[0])
    return h


def rel_err(found, ref):
    found = torch.sort(found.abs(), descending=True).values
    return float(((found - ref) / ref).abs().max())


LANCZOS_TOLS = [1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 1e-4]  # the scans, loosest first
POWER_TOLS = [1e-4, 3e-5, 1e-5, 3e-6, 1e-6, 1e-7]


def bench_eigs(loss, w, x, y, reps, device, points=1024, scan=True, k=5, target=1e-4):
    """HVPs and time to the top-k eigenvalues: PyHessian's defaults, and each method at the loosest
    tolerance (of a scan; without ``scan`` the tightest one only) whose eigenvalues are within
    ``target`` relative error of the reference."""
    xe, ye = x[:points], y[:points]
    h = structured_dense(w, xe, ye)
    on = dict(dtype=torch.float64, device=device)
    ref = lanczos(lambda v: h @ v, w.numel(), k, which="LM", tol=1e-12, gen=torch.Generator().manual_seed(0), **on)
    ref_abs = ref.eigenvalues.abs()
    mv64 = hessian_matvec(loss, w.double(), xe.double(), ye)
    gen = lambda: torch.Generator().manual_seed(7)  # noqa: E731
    lz = lambda tol: (lambda: lanczos(mv64, w.numel(), k, which="LM", tol=tol, gen=gen(), **on))  # noqa: E731
    pw = lambda tol, it: (  # noqa: E731
        lambda: power_iteration(mv64, w.numel(), k, tol=tol, max_iter=it, gen=gen(), **on))

    def loosest(make, tols):
        for tol in tols:  # loosest first
            res = make(tol)()
            if rel_err(res.eigenvalues, ref_abs) <= target:
                return tol
        return tols[-1]

    tol_l = loosest(lz, LANCZOS_TOLS if scan else LANCZOS_TOLS[-1:])
    tol_p = loosest(lambda t: pw(t, 1000), POWER_TOLS if scan else POWER_TOLS[-1:])
    variants = {
        f"Lanczos, thick restart + full reorth. (residual tol {tol_l:g})": lz(tol_l),
        "power iteration + deflation, PyHessian's defaults (tol 1e-3, max 100 per eigenvalue)": pw(1e-3, 100),
        f"power iteration + deflation (tol {tol_p:g}, max 1000 per eigenvalue)": pw(tol_p, 1000),
    }
    times = {name: [] for name in variants}
    results = {}
    for _ in range(reps):
        for name, fn in variants.items():
            t, res = wall(fn, device)
            times[name].append(t)
            results[name] = res
    rows = []
    for name, res in results.items():
        err = rel_err(res.eigenvalues, ref_abs)
        rows.append([name, str(res.num_matvecs), f"{median(times[name]):.2f}", f"{err:.1e}",
                     "yes" if err <= target else "no"])
    return rows, ref.eigenvalues.tolist(), float(ref.residuals.max())


def bench_hvp_vs_grad(loss, w, x, y, reps, device):
    rows = []
    v = torch.randn(w.numel(), generator=torch.Generator().manual_seed(3)).to(device)
    g = grad(loss)
    for n in (8, 1024):
        xb, yb = x[:n], y[:n]
        tg, th = [], []
        for _ in range(reps * 5):
            tg.append(wall(lambda: g(w, xb, yb), device)[0])
            th.append(wall(lambda: hvp(loss, w, v, xb, yb), device)[0])
        rows.append([str(n), f"{median(tg) * 1e3:.2f}", f"{median(th) * 1e3:.2f}", f"{median(th) / median(tg):.1f}x"])
    return rows


def row_by_row(loss, w, x, y):
    """The baseline: H[p] = ∂(∇L)_p / ∂w, one backward pass through the gradient's graph per row."""
    w = w.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(loss(w, x, y), w, create_graph=True)
    rows = [torch.autograd.grad(g[p], w, retain_graph=True)[0] for p in range(w.numel())]
    return torch.stack(rows)


def bench_exact(loss, w, x, y, reps, device):
    xb, yb = x[:8], y[:8]
    ws, bs = mlp_params_from_flat(w, SIZES)
    buf = torch.empty(w.numel(), w.numel(), dtype=w.dtype, device=device)
    ref = row_by_row(loss, w.double(), xb.double(), yb)
    variants = {
        "row-by-row autograd.grad (baseline)": lambda: row_by_row(loss, w, xb, yb),
        "vmap(jvp(grad)) over the basis, chunks of 256": lambda: dense_hessian(loss, w, xb, yb, chunk_size=256),
        "layer-structured (dynamics.mlp_hessian), new matrix": lambda: mlp_hessian(ws, bs, xb, yb),
        "layer-structured, into a reused buffer": lambda: mlp_hessian(ws, bs, xb, yb, out=buf),
        "all eigenpairs via the input-span reduction (float64; expt_chaos, every step)":
            lambda: mlp_hessian_eigh(*mlp_params_from_flat(w.double(), SIZES), xb.double(), yb),
    }
    times = {name: [] for name in variants}
    errs = {}
    for _ in range(reps):
        for name, fn in variants.items():
            t, out = wall(fn, device)
            times[name].append(t)
            if isinstance(out, torch.Tensor):
                errs[name] = float((out.double() - ref).abs().max() / ref.abs().max())
            else:
                dense = out.matmul(torch.eye(w.numel(), dtype=torch.float64, device=device))
                errs[name] = float((dense - ref).abs().max() / ref.abs().max())
    base = median(times["row-by-row autograd.grad (baseline)"])
    return [[name, f"{median(t):.3f}", f"{base / median(t):.1f}x", f"{errs[name]:.0e}"] for name, t in times.items()]


def write_section(body: str) -> None:
    """Replace the hessian section of BENCHMARKS.md (re-read right before writing; other sections untouched)."""
    replace_marked(BENCHMARKS_MD, BEGIN, END, body)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--reps", type=int, default=3, help="repetitions, variants alternated within each (default 3)")
    p.add_argument("--quick", action="store_true",
                   help="one repetition, eigenvalues on 256 points without the tolerance scan (bench/gpu.sh's sizes)")
    p.add_argument("--markdown-out", type=Path, default=None, help="also write the section to this file")
    p.add_argument("--write", action="store_true", help=f"write the section into {BENCHMARKS_MD.name}")
    args = p.parse_args(argv)
    device = setup(args)
    reps, points = (1, 256) if args.quick else (args.reps, 1024)
    machine = machine_line(device)
    print(machine, flush=True)
    loss, w, x, y = workload(torch.float32, device)
    exact = bench_exact(loss, w, x, y, reps, device)
    print(markdown_table(["exact Hessian, batch 8", "median s", "speed-up", "max rel. diff. to float64"], exact),
          flush=True)
    hvp_rows = bench_hvp_vs_grad(loss, w, x, y, reps, device)
    print(markdown_table(["points", "gradient ms", "HVP ms", "HVP / gradient"], hvp_rows), flush=True)
    eig_rows, ref, ref_res = bench_eigs(loss, w.double(), x.double(), y, reps, device, points, scan=not args.quick)
    eig_header = [f"top-5 eigenvalues, {points} points", "HVPs", "median s", "max rel. error", "<= 1e-4"]
    print(markdown_table(eig_header, eig_rows), flush=True)
    scan = ("The tolerances of the first and third rows are the loosest of a scan (Lanczos 1e-1 ... 1e-4, power "
            "iteration 1e-4 ... 1e-7) that bring all five eigenvalues within 1e-4 of the reference."
            if not args.quick else
            "--quick: the first and third rows use the tightest tolerance of the full run's scan (Lanczos 1e-4, "
            "power iteration 1e-7) instead of the scan, and the eigenvalues are of 256 points, not 1024.")
    body = "\n\n".join([
        "## Hessian toolkit (`bench/hessian.py`)",
        f"Measured with `.venv/bin/python bench/hessian.py {' '.join(argv if argv is not None else sys.argv[1:])}`: "
        f"{machine}. Device `{device}`; medians of {reps} repetitions, variants alternated.",
        "Workload: the USPS MLP 256-20-10 (5,350 parameters, ReLU, cross-entropy) on USPS-format synthetic data, "
        "after 300 SGD steps.",
        "**Exact Hessian at batch 8** (float32; the difference column compares with a float64 row-by-row Hessian):",
        markdown_table(["method", "median s", "speed-up vs row-by-row", "max rel. diff."], exact),
        "**One Hessian-vector product against one gradient** (forward-over-reverse, float32):",
        markdown_table(["points", "gradient ms", "HVP ms", "HVP / gradient"], hvp_rows),
        f"**Top-5 eigenvalues by magnitude** of the Hessian on {points} points (float64 HVPs). Reference: the exact "
        f"layer-structured Hessian, Lanczos to 1e-12 (largest Ritz residual {ref_res:.0e}); eigenvalues "
        + ", ".join(f"{v:.4g}" for v in ref) + ".",
        markdown_table(["method", "HVPs", "median s", "max rel. error", "reaches 1e-4"], eig_rows),
        scan,
    ])
    print(body)
    if args.markdown_out is not None:
        args.markdown_out.write_text(body + "\n")
    if args.write:
        write_section(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
