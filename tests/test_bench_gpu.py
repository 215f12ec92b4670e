"""bench/gpu.sh and bench/gpu_all.py: the one-run GPU benchmark, checked without a GPU.

The smoke run (``--device cpu --quick``) must write every section, the device line and
numbers; the verdict helpers are checked on hand-written tables. No timings are asserted.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "gpu.sh"


def _load_gpu_all():
    spec = importlib.util.spec_from_file_location("gpu_all", REPO / "bench" / "gpu_all.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_all"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


gpu_all = _load_gpu_all()


def _env() -> dict:
    return dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def _sections(text: str) -> dict[str, str]:
    """'3.1' -> the text of that section, up to the next '### ' heading."""
    parts = re.split(r"^### (3\.\d) ", text, flags=re.M)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts), 2)}


def _numeric_cells(section: str) -> list[float]:
    values = []
    for _, rows in gpu_all.markdown_tables(section):
        for row in rows:
            for cell in row:
                try:
                    values.append(gpu_all.number(cell))
                except ValueError:
                    pass
    return values


def test_quick_cpu_run_writes_every_section_device_line_and_numbers(tmp_path):
    bench_md = (REPO / "BENCHMARKS.md").read_bytes()
    out = tmp_path / "results" / "gpu.md"  # a folder that does not exist yet
    proc = subprocess.run(["bash", str(SCRIPT), "--device", "cpu", "--quick", "--out", str(out)],
                          cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # The parts write to temporary files only; BENCHMARKS.md is the coordinator's to paste into.
    assert hashlib.sha256((REPO / "BENCHMARKS.md").read_bytes()).digest() == hashlib.sha256(bench_md).digest()
    text = out.read_text()
    assert text.startswith("## 3. GPU")
    assert re.search(rf"^Device: CPU .*; torch {re.escape(torch.__version__)}; .*\d{{4}}-\d\d-\d\d \d\d:\d\d UTC",
                     text, re.M)
    sections = _sections(text)
    assert sorted(sections) == [f"3.{i}" for i in range(1, len(gpu_all.PARTS) + 1)]
    for i, part in enumerate(gpu_all.PARTS, 1):
        body = sections[f"3.{i}"]
        assert body.startswith(part.title) and f"bench/{part.script}" in body
        assert "Skipped: " in body or _numeric_cells(body), (part.key, body)
    # These scripts take --quick, so the smoke run must have measured them: positive times in a table.
    for key in ("chains", "resnet", "hessian", "ntk"):
        i = gpu_all.KEYS.index(key) + 1
        values = _numeric_cells(sections[f"3.{i}"])
        # Hessian and NTK tables also hold differences to a reference, which are 0 for the reference itself.
        floor_ok = (lambda v: v > 0) if key in ("chains", "resnet") else (lambda v: v >= 0)
        assert values and all(floor_ok(v) for v in values) and max(values) > 0, (key, sections[f"3.{i}"])
    # The Hessian and NTK tables came back through --markdown-out: their method rows are there.
    hessian = sections[f"3.{gpu_all.KEYS.index('hessian') + 1}"]
    assert "--quick" in hessian and "row-by-row autograd.grad (baseline)" in hessian and "Lanczos" in hessian
    ntk = sections[f"3.{gpu_all.KEYS.index('ntk') + 1}"]
    assert {"loop", "structured", "auto"} <= {r[0] for _, rows in gpu_all.markdown_tables(ntk) for r in rows}
    devinterp = sections[f"3.{gpu_all.KEYS.index('devinterp') + 1}"]
    if importlib.util.find_spec("devinterp") is None:
        assert "devinterp is not installed" in devinterp
    else:  # the quick run has the 16-chain cell, so the target line carries a ratio
        assert _numeric_cells(devinterp) and "devinterp / ours = " in text
    # The ResNet verdict equals the largest ratio over C >= 4 of the section's own table, recomputed here.
    resnet = sections[f"3.{gpu_all.KEYS.index('resnet') + 1}"]
    (header, rows), = [t for t in gpu_all.markdown_tables(resnet) if "C" in t[0]]
    col = header.index("chain-step / training step")
    worst = max(float(r[col]) for r in rows if int(r[0]) >= 4)
    verdict = "met" if worst <= 1.2 else "NOT met"
    assert f"largest ratio {worst:.2f} (at " in text and f"): {verdict} (quick" in text
    assert "≥ 50× devinterp at 16 chains on the 165-parameter DLN: " in text


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_run_without_a_gpu_fails_with_a_clear_message(tmp_path):
    out = tmp_path / "gpu.md"
    proc = subprocess.run(["bash", str(SCRIPT), "--out", str(out)], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "no CUDA device" in proc.stderr and "--device cpu" in proc.stderr
    assert not out.exists()


RESNET_MD = """Measured on: somewhere.

| C | chain-step ms | training step ms | chain-step / training step |
|---|---|---|---|
| 1 | 30.0 | 10.0 | 3.00 |
| 4 | 11.0 | 10.0 | {r4} |
| 8 | 12.5 | 10.0 | {r8} |
"""


def test_resnet_verdict_takes_the_largest_ratio_at_four_or_more_chains():
    # The 1-chain ratio 3.00 must not count; the worst of C = 4, 8 decides.
    assert gpu_all.resnet_verdict(RESNET_MD.format(r4="1.10", r8="1.25")).endswith(
        "largest ratio 1.25 (at 8 chains): NOT met")
    assert gpu_all.resnet_verdict(RESNET_MD.format(r4="1.10", r8="1.15")).endswith(
        "largest ratio 1.15 (at 8 chains): met")
    assert gpu_all.resnet_verdict(RESNET_MD.format(r4="1.20", r8="0.90")).endswith("1.20 (at 4 chains): met")
    assert gpu_all.resnet_verdict(None).endswith("not measured")


DEVINTERP_MD = """| wl | C | devinterp ms | ours ms | devinterp / ours | devinterp / compiled |
|---|---|---|---|---|---|
| a | 4 | 1.0 | 0.01 | 80.0× | 90.0× |
| a | 16 | 1.0 | 0.02 | 49.9× | 50.0× |
| b | 16 | 5.0 | 0.05 | 100.0× | 100.0× |
"""


def test_devinterp_verdict_reads_the_small_dln_at_16_chains_for_every_variant():
    line = gpu_all.devinterp_verdict("Wall time per chain-step:\n\n" + DEVINTERP_MD)
    assert line.endswith("devinterp / ours = 49.9× (NOT met); devinterp / compiled = 50.0× (met)")
    assert gpu_all.devinterp_verdict(DEVINTERP_MD.replace("| a | 16 |", "| a | 8 |")).endswith("not measured")
    assert gpu_all.devinterp_verdict(None).endswith("not measured")


def _part(key: str):
    return gpu_all.PARTS[gpu_all.KEYS.index(key)]


def test_plan_skips_what_a_script_cannot_do_and_never_lets_it_write_benchmarks_md():
    ntk, hessian = _part("ntk"), _part("hessian")
    args, why = gpu_all.plan(hessian, {"--threads", "--reps", "--write"}, "cuda", False, None, True)
    assert args is None and "--device" in why
    args, why = gpu_all.plan(ntk, {"--device", "--reps", "--no-write"}, "cpu", True, None, True)
    assert args is None and "--quick" in why
    args, why = gpu_all.plan(ntk, {"--device", "--reps"}, "cuda", False, None, True)  # would write BENCHMARKS.md
    assert args is None and "BENCHMARKS.md" in why
    args, how = gpu_all.plan(ntk, {"--device", "--reps", "--no-write"}, "cuda", False, 2, True)
    assert args == ["--device", "cuda", "--quick", "--reps", "2", "--no-write"] and how == "stdout"
    # The real run takes --quick sizes for the Hessian and NTK; the smoke run does not pass it twice.
    args, how = gpu_all.plan(ntk, gpu_all.script_options((REPO / "bench" / "ntk.py").read_text()), "cpu", True,
                             None, True)
    assert args.count("--quick") == 1 and "--no-write" in args and how == "file"
    args, how = gpu_all.plan(_part("chains"), gpu_all.COMMON_OPTIONS | {"--no-compile"}, "cuda", False, None, True)
    assert args[:2] == ["--device", "cuda"] and "--quick" not in args and how == "file"
    args, why = gpu_all.plan(_part("devinterp"), gpu_all.COMMON_OPTIONS, "cuda", False, None, False)
    assert args is None and "devinterp is not installed" in why


def test_script_options_read_from_the_bench_scripts():
    read = {p.key: gpu_all.script_options((REPO / "bench" / p.script).read_text()) for p in gpu_all.PARTS}
    assert {"--device", "--quick", "--markdown-out", "--no-compile"} <= read["chains"]
    assert {"--device", "--quick", "--markdown-out", "--workloads"} <= read["devinterp"]
    assert {"--device", "--quick", "--markdown-out", "--compile"} <= read["resnet"]
    assert {"--device", "--quick", "--markdown-out", "--no-write"} <= read["ntk"]
    assert {"--device", "--quick", "--markdown-out"} <= read["hessian"]


def test_every_option_a_part_passes_exists_in_its_script():
    # A renamed option in a bench script would otherwise only show up as a failed part on the GPU machine.
    for part in gpu_all.PARTS:
        options = gpu_all.script_options((REPO / "bench" / part.script).read_text())
        passed = {a for a in (*part.real, *part.quick) if a.startswith("--")}
        assert passed <= options, (part.key, passed - options)


def test_real_caps_fit_the_eight_minute_budget():
    assert sum(p.cap_s for p in gpu_all.PARTS) <= gpu_all.BUDGET_S == 480


def test_bad_options_name_the_key_and_the_allowed_values():
    with pytest.raises(SystemExit, match=r"--only: unknown part 'gpu'.*'resnet'"):
        gpu_all.main(["--device", "cpu", "--only", "gpu"])
    with pytest.raises(SystemExit, match=r"--caps: unknown part 'nkt'"):
        gpu_all.main(["--device", "cpu", "--caps", "nkt=10"])
    with pytest.raises(SystemExit, match=r"--caps: ntk needs seconds"):
        gpu_all.main(["--device", "cpu", "--caps", "ntk=ten"])
    with pytest.raises(SystemExit, match=r"--device must be one of \('cuda', 'cpu'\); got 'gpu'"):
        gpu_all.main(["--device", "gpu"])


def test_a_part_past_its_cap_is_killed_and_its_output_kept():
    cmd = [sys.executable, "-c", "import time; print('started', flush=True); time.sleep(120)"]
    rc, output, _ = gpu_all.run_capped(cmd, cap_s=2)
    assert rc is None and "started" in output


def test_a_part_stopped_at_its_cap_keeps_the_rows_it_had_written(tmp_path):
    script = tmp_path / "fake_bench.py"  # writes one row to --markdown-out, then hangs like a slow cell
    script.write_text(
        "import sys, time\n"
        "out = sys.argv[sys.argv.index('--markdown-out') + 1]\n"
        "open(out, 'w').write('| C | chain-step / training step |\\n|---|---|\\n| 4 | 1.10 |\\n')\n"
        "print('row written', flush=True)\n"
        "time.sleep(120)\n")
    part = gpu_all.Part("resnet", "fake", str(script), 5, (), ())  # an absolute path: BENCH / script == script
    # 5 s: a bare Python (no torch) writes its row well within it even on a loaded machine.
    section, md, finished = gpu_all.run_part(part, [], "file", 5, tmp_path / ".part.md")
    assert not finished and "Killed at its cap of 5 s" in section and "row written" in section
    assert "partial" in section and gpu_all.resnet_verdict(md).endswith("largest ratio 1.10 (at 4 chains): met")
    assert not (tmp_path / ".part.md").exists()


def test_stdout_markdown_takes_the_printed_section():
    section = "## Hessian toolkit (`bench/hessian.py`)\n\nbody\n\n| x |\n|---|\n| 3 |"
    hessian_like = "| a | b |\n|---|---|\n| 1 | 2 |\n" + section  # progress tables first, then the section
    assert gpu_all.stdout_markdown(hessian_like) == section
    ntk_like = "/x.py:1: UserWarning: slow\n  warnings.warn(\n**a. mlp**\n\n| m | ms |\n|---|---|\n| loop | 1.0 |"
    assert gpu_all.stdout_markdown(ntk_like) == "**a. mlp**\n\n| m | ms |\n|---|---|\n| loop | 1.0 |"
    assert gpu_all.own_heading_dropped("## Title\n\nbody") == "body"


@pytest.mark.slow
def test_ntk_table_at_the_real_run_arguments(tmp_path):
    """The real run's NTK part (--quick sizes, --markdown-out) on the CPU, through gpu.sh's non-quick mode."""
    out = tmp_path / "gpu.md"
    proc = subprocess.run(["bash", str(SCRIPT), "--device", "cpu", "--only", "ntk", "--reps", "1", "--out", str(out)],
                          cwd=REPO, env=_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    section = _sections(out.read_text())[f"3.{gpu_all.KEYS.index('ntk') + 1}"]
    methods = [r[0] for _, rows in gpu_all.markdown_tables(section) for r in rows]
    assert {"loop", "structured", "auto"} <= set(methods)
    assert all(v >= 0 for v in _numeric_cells(section))
