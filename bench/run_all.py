"""Run every benchmark and rewrite its tables in BENCHMARKS.md (what `make bench` does).

Each script runs in its own process and writes its markdown section to a
temporary file; the section between the markers ``<!-- BEGIN <script> <device> ...``
and ``<!-- END <script> <device> -->`` in BENCHMARKS.md is then replaced, so a CPU
run and a GPU run (``--device cuda``) keep separate tables.

Run: python bench/run_all.py [--device cuda] [--threads N] [--reps R] [--quick]
(--quick is a smoke run: it prints the tables but leaves BENCHMARKS.md alone).
Each script gets an empty torch inductor cache, so compile times are cold ones.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import BENCHMARKS_MD, rewrite_section

BENCH = Path(__file__).resolve().parent
SCRIPTS = ["sgld_chains", "llc_vs_devinterp", "fused_stack", "mala_vs_sgld", "compile_threshold"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--reps", type=int, default=None, help="timed repetitions per cell (default: each script's)")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, BENCHMARKS.md untouched")
    p.add_argument("--only", default=",".join(SCRIPTS), help=f"comma-separated subset of {SCRIPTS}")
    args = p.parse_args()

    start = time.perf_counter()
    for name in args.only.split(","):
        if name not in SCRIPTS:
            raise SystemExit(f"--only: unknown script {name!r}; expected some of {SCRIPTS}")
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / f"{name}.md"
            cmd = [sys.executable, str(BENCH / f"{name}.py"), "--device", args.device, "--markdown-out", str(out)]
            cmd += ["--threads", str(args.threads)] if args.threads is not None else []
            cmd += ["--reps", str(args.reps)] if args.reps is not None else []
            cmd += ["--quick"] if args.quick else []
            print(f"\n=== {name} ({args.device}) ===", flush=True)
            t = time.perf_counter()
            # A fresh inductor cache: the listed compile times are cold compiles, as on a new machine.
            env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(Path(tmp) / "inductor-cache"))
            subprocess.run(cmd, check=True, env=env)
            print(f"=== {name}: {time.perf_counter() - t:.0f} s ===", flush=True)
            if not args.quick:
                rewrite_section(BENCHMARKS_MD, f"{name} {args.device.split(':')[0]}", out.read_text())
    where = "BENCHMARKS.md left unchanged (--quick)" if args.quick else f"tables written to {BENCHMARKS_MD}"
    print(f"\nAll benchmarks: {time.perf_counter() - start:.0f} s; {where}")


if __name__ == "__main__":
    main()
