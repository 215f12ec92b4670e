"""Every GPU table in one run, each part under its own time cap; what bench/gpu.sh runs (issue 19).

Parts, in order (the section numbers of the markdown it writes):
  3.1 chains     bench/sgld_chains.py       vectorised chains against a loop of single-chain runs
  3.2 devinterp  bench/llc_vs_devinterp.py  ours against devinterp on the 165-parameter DLN (skipped if not installed)
  3.3 hessian    bench/hessian.py           the Hessian toolkit's table
  3.4 ntk        bench/ntk.py               the empirical NTK table
  3.5 resnet     bench/gpu_resnet_llc.py    ResNet18 chain-step against a training step at batch 1024

Each script runs in its own process through its command line and is killed at its cap;
the caps of the real run add up to less than the 480 s budget (8 minutes on one
H100/H200-class GPU). A script's options are read from its source (``add_argument`` and
``parse_common``): a part whose script lacks ``--device`` (on CUDA) or ``--quick`` (with
--quick) is skipped with a line saying so, and no script is ever asked to write
BENCHMARKS.md (``--no-write`` where that is its default). The sections go to one markdown
file (bench/gpu_results.md), headed by the device, torch version and date, with issue 19's
GPU targets marked met / NOT met from the measured numbers.

Run: python bench/gpu_all.py [--device cuda|cpu] [--quick] [--out FILE] [--only chains,resnet] [--caps resnet=200]
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
DEFAULT_OUT = BENCH / "gpu_results.md"
BUDGET_S = 480.0  # issue 19: every GPU table in under 8 minutes
QUICK_CAP_S = 300.0  # per part in --quick: a smoke run, the cap only guards against a hang
RESNET_TARGET = 1.2  # ResNet18 chain-step ≤ 1.2 × a training step, at 4+ chains
DEVINTERP_TARGET = 50.0  # ≥ 50× devinterp at 16 chains on the small DLN


@dataclass(frozen=True)
class Part:
    """One table: its script and the arguments of the real (CUDA) and --quick runs."""

    key: str
    title: str
    script: str
    cap_s: float  # seconds in the real run
    real: tuple[str, ...]
    quick: tuple[str, ...]
    writes_by_default: bool = False  # writes BENCHMARKS.md unless given --no-write


PARTS = (
    # Eager only: runs of 16 × 300 chain-steps are below compile="auto"'s threshold, so eager is the default here.
    Part("chains", "Vectorised chains vs a loop of single-chain runs", "sgld_chains.py", 75,
         ("--chains", "1,4,16", "--no-compile"), ("--chains", "1,2", "--no-compile")),
    # devinterp runs its 16 chains one after another: 2 repetitions of 16 × 1000 steps take most of the cap.
    Part("devinterp", "Our sampler vs devinterp on the 165-parameter DLN", "llc_vs_devinterp.py", 170,
         ("--workloads", "a", "--chains", "16", "--reps", "2"),
         ("--workloads", "a", "--chains", "16", "--no-compile")),
    # --quick sizes in the real run too (one repetition; Hessian eigenvalues on 256 points without the
    # tolerance scan, NTK on n = 64 and 16): their full sizes would not fit the 8-minute budget with the rest.
    # The Hessian's row-by-row baseline is 5,350 sequential backward passes (twice): hence its 60 s.
    Part("hessian", "Hessian toolkit", "hessian.py", 60, ("--quick",), ()),
    Part("ntk", "Empirical NTK Gram matrix", "ntk.py", 45, ("--quick",), (), writes_by_default=True),
    Part("resnet", "ResNet18/CIFAR-10 LLC: chain-step vs training step at batch 1024", "gpu_resnet_llc.py", 120,
         ("--chains", "1,4,8"), ("--chains", "1,4")),
)
KEYS = tuple(p.key for p in PARTS)
COMMON_OPTIONS = {"--device", "--threads", "--reps", "--chains", "--quick", "--markdown-out"}  # _common.parse_common


def script_options(source: str) -> set[str]:
    """The long options a bench script's argparse defines, read from its source."""
    opts = set(re.findall(r"""add_argument\(\s*["'](--[\w-]+)["']""", source))
    return opts | COMMON_OPTIONS if "parse_common(" in source else opts


def plan(part: Part, options: set[str], device: str, quick: bool, reps: int | None,
         have_devinterp: bool) -> tuple[list[str] | None, str]:
    """(arguments, how the markdown comes back: 'file' | 'stdout'), or (None, why it is skipped)."""
    if part.key == "devinterp" and not have_devinterp:
        return None, ("devinterp is not installed in this Python (see bench/requirements-bench.txt), "
                      "so the devinterp target is not measured")
    if device != "cpu" and "--device" not in options:
        return None, f"bench/{part.script} has no --device option, so its table is CPU-only: not run on {device}"
    if quick and "--quick" not in options:
        return None, f"bench/{part.script} has no --quick option, and its full sizes are too slow for a smoke run"
    if part.writes_by_default and "--no-write" not in options:
        return None, f"bench/{part.script} would rewrite BENCHMARKS.md (it has no --no-write): not run"
    args = ["--device", device] if "--device" in options else []
    args += list(part.quick if quick else part.real)
    args += ["--quick"] if quick and "--quick" not in args else []
    if reps is not None and not quick and "--reps" in options:
        args += ["--reps", str(reps)]
    if "--no-write" in options:
        args += ["--no-write"]
    return args, "file" if "--markdown-out" in options else "stdout"


def markdown_tables(text: str) -> list[tuple[list[str], list[list[str]]]]:
    """Every pipe table in ``text`` as (header, rows); the separator line is dropped."""
    tables, block = [], []
    for line in [*text.splitlines(), ""]:
        if line.strip().startswith("|"):
            block.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif block:
            if len(block) >= 2:
                tables.append((block[0], block[2:]))
            block = []
    return tables


def stdout_markdown(output: str) -> str:
    """The markdown a script printed: from its last '## ' heading if it prints one, else from its first table."""
    lines = output.splitlines()
    heads = [i for i, ln in enumerate(lines) if ln.startswith("## ")]
    first = heads[-1] if heads else next((i for i, ln in enumerate(lines) if ln.startswith(("|", "**"))), len(lines))
    return "\n".join(ln for ln in lines[first:] if "Warning:" not in ln and "warnings.warn" not in ln).strip()


def own_heading_dropped(md: str) -> str:
    """A script's section without its own '## ' heading (gpu_all gives each part a numbered one)."""
    lines = md.strip().splitlines()
    return "\n".join(lines[1:] if lines and lines[0].startswith("## ") else lines).strip()


def number(cell: str) -> float:
    """'12.3×' -> 12.3, '0.95' -> 0.95."""
    return float(cell.replace("×", "").replace("x", "").strip())


def resnet_verdict(md: str | None) -> str:
    """Issue 19's ResNet18 target on gpu_resnet_llc's table: the largest ratio over C ≥ 4 must be ≤ 1.2."""
    col = "chain-step / training step"
    for header, rows in markdown_tables(md or ""):
        if "C" in header and col in header:
            ratios = {int(r[header.index("C")]): number(r[header.index(col)]) for r in rows}
            big = {c: v for c, v in ratios.items() if c >= 4}
            if big:
                worst = max(big, key=big.get)
                ok = "met" if big[worst] <= RESNET_TARGET else "NOT met"
                return (f"ResNet18 chain-step ≤ {RESNET_TARGET}× a training step at the same batch, at 4+ chains: "
                        f"largest ratio {big[worst]:.2f} (at {worst} chains): {ok}")
    return f"ResNet18 chain-step ≤ {RESNET_TARGET}× a training step at 4+ chains: not measured"


def ratio_column(name: str) -> bool:
    """'devinterp / ours', 'devinterp 2.0.1 / compiled': how many times faster a variant is than devinterp."""
    return name.startswith("devinterp") and " / " in name


def devinterp_verdict(md: str | None) -> str:
    """Issue 19's devinterp target on llc_vs_devinterp's time table: every 'devinterp / ...' column at (a, 16)."""
    lead = f"≥ {DEVINTERP_TARGET:g}× devinterp at 16 chains on the 165-parameter DLN: "
    for header, rows in markdown_tables(md or ""):
        if {"wl", "C"} <= set(header) and any(ratio_column(h) for h in header):
            for r in rows:
                if r[header.index("wl")] == "a" and r[header.index("C")] == "16":
                    ratios = [(h, number(r[i])) for i, h in enumerate(header) if ratio_column(h)]
                    return lead + "; ".join(f"{h} = {v:.1f}× ({'met' if v >= DEVINTERP_TARGET else 'NOT met'})"
                                            for h, v in ratios)
    return lead + "not measured"


def run_capped(cmd: list[str], cap_s: float) -> tuple[int | None, str, float]:
    """(exit code or None if killed at the cap, combined output, seconds); output is echoed as it comes."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: list[str] = []

    def pump() -> None:
        for line in proc.stdout:
            lines.append(line)
            print("    " + line, end="", flush=True)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        rc = proc.wait(timeout=cap_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the part's own process group (start_new_session)
        proc.wait()
        rc = None
    reader.join(timeout=5)
    return rc, "".join(lines), time.perf_counter() - start


def run_part(part: Part, argv_part: list[str], how: str, cap: float, md_file: Path) -> tuple[str, str | None, bool]:
    """(section text, the script's markdown or None, finished) of one part run under its cap.

    A part killed at its cap or failing keeps the last lines of its output and, if it had
    written some of its markdown file already (gpu_resnet_llc.py writes one row at a time),
    that partial table.
    """
    cmd = [sys.executable, str(BENCH / part.script), *argv_part]
    cmd += ["--markdown-out", str(md_file)] if how == "file" else []
    shown = " ".join(["python", f"bench/{part.script}", *argv_part])
    print(f"\n=== {part.key}: {shown} (cap {cap:.0f} s)", flush=True)
    md_file.unlink(missing_ok=True)
    rc, output, secs = run_capped(cmd, cap)
    written = md_file.read_text() if md_file.exists() else ""
    md_file.unlink(missing_ok=True)
    note = f"`{shown}`: {secs:.0f} s (cap {cap:.0f} s)."
    if rc == 0:
        md = own_heading_dropped(written if how == "file" else stdout_markdown(output))
        return f"{note}\n\n{md}", md, True
    why = f"Killed at its cap of {cap:.0f} s" if rc is None else f"Failed with exit code {rc}"
    tail = "\n".join(output.splitlines()[-15:])
    text = f"{note} {why}; the last lines of its output:\n\n```\n{tail}\n```"
    if written.strip():
        md = own_heading_dropped(written)
        return f"{text}\n\nWhat it had written before it stopped (partial):\n\n{md}", md, False
    return text, None, False


def device_line(device: str) -> str:
    import torch

    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    if device == "cpu":
        sys.path.insert(0, str(BENCH))
        from _common import cpu_name

        hw = f"CPU {cpu_name()} (--device cpu)"
    else:
        hw = f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"
    return f"Device: {hw}; torch {torch.__version__}; Python {sys.version.split()[0]}; {date}"


def parse_caps(text: str) -> dict[str, float]:
    caps = {}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        if key not in KEYS:
            raise SystemExit(f"--caps: unknown part {key!r}; expected some of {KEYS}")
        try:
            caps[key] = float(value)
        except ValueError:
            raise SystemExit(f"--caps: {key} needs seconds, as {key}=120; got {item!r}") from None
    return caps


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="cuda (default; fails without a GPU) or cpu (smoke runs)")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run, not a measurement")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"markdown file to write (default {DEFAULT_OUT})")
    p.add_argument("--only", default=",".join(KEYS), help=f"comma-separated subset of {KEYS}")
    p.add_argument("--caps", default="", help="per-part caps in seconds, e.g. resnet=200,ntk=60")
    p.add_argument("--budget", type=float, default=BUDGET_S, help=f"total seconds (default {BUDGET_S:g})")
    p.add_argument("--reps", type=int, default=None, help="timed repetitions per cell (default: each script's)")
    args = p.parse_args(argv)
    if args.device not in ("cuda", "cpu"):
        raise SystemExit(f"--device must be one of ('cuda', 'cpu'); got {args.device!r}")
    only = [k for k in args.only.split(",") if k]
    for k in only:
        if k not in KEYS:
            raise SystemExit(f"--only: unknown part {k!r}; expected some of {KEYS}")
    caps = parse_caps(args.caps)
    args.out.parent.mkdir(parents=True, exist_ok=True)

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench/gpu.sh: no CUDA device (torch.cuda.is_available() is False). Run it on a GPU node "
                         "(srun --gres=gpu:1 bash bench/gpu.sh), or pass --device cpu --quick for a smoke run.")
    header = device_line(args.device)
    print(header, flush=True)
    have_devinterp = importlib.util.find_spec("devinterp") is not None

    start = time.perf_counter()
    sections, results, failed = [], {}, []
    for number_, part in enumerate(PARTS, 1):
        if part.key not in only:
            continue
        title = f"### 3.{number_} {part.title} (`bench/{part.script}`)"
        options = script_options((BENCH / part.script).read_text())
        argv_part, how = plan(part, options, args.device, args.quick, args.reps, have_devinterp)
        left = args.budget - (time.perf_counter() - start)
        cap = QUICK_CAP_S if args.quick else min(caps.get(part.key, part.cap_s), left)
        if argv_part is not None and cap < 5:
            argv_part, how = None, f"not run: the {args.budget:g} s budget was used up by the parts before it"
        if argv_part is None:
            print(f"\n=== {part.key}: skipped: {how}", flush=True)
            sections.append(f"{title}\n\nSkipped: {how}.")
            continue
        section, md, ok = run_part(part, argv_part, how, cap, args.out.with_name(f".{args.out.stem}.{part.key}.md"))
        sections.append(f"{title}\n\n{section}")
        if md is not None:
            results[part.key] = md
        if not ok:
            failed.append(part.key)

    total = time.perf_counter() - start
    quick_note = " (QUICK smoke run on tiny sizes: not a measurement, the verdicts mean nothing)" if args.quick else ""
    targets = [resnet_verdict(results.get("resnet")) + (" (from a partial run)" if "resnet" in failed else ""),
               devinterp_verdict(results.get("devinterp")) + (" (from a partial run)" if "devinterp" in failed else "")]
    targets = [t + (" (quick: not a measurement)" if args.quick else "") for t in targets]
    text = "\n\n".join([
        "## 3. GPU (written by bench/gpu.sh)",
        f"{header}. All parts: {total:.0f} s of the {args.budget:g} s budget{quick_note}.",
        "**GPU targets (issue 19)**, from the numbers below:\n\n" + "\n".join(f"- {t}" for t in targets),
        *sections,
    ])
    args.out.write_text(text + "\n")
    print(f"\n{text}\n\nwrote {args.out} in {total:.0f} s" + (f"; parts not finished: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
