#!/usr/bin/env bash
# Every GPU table of BENCHMARKS.md section 3 in one run, under 8 minutes on one H100/H200-class GPU.
#
#   bash bench/gpu.sh                          # on a GPU node; writes bench/gpu_results.md
#   srun --gres=gpu:1 bash bench/gpu.sh        # the same through SLURM
#   bash bench/gpu.sh --device cpu --quick     # smoke run without a GPU (tiny sizes, not a measurement)
#
# Fails with a clear message when no CUDA device is visible (unless --device cpu).
# All options go to bench/gpu_all.py (--out FILE, --only chains,resnet, --caps resnet=200, --budget S);
# it prints the device name, runs each table under its own time cap and writes one markdown file.
# The interpreter is $PYTHON if set, else .venv/bin/python, else python3.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# First the CUDA tests (`pytest -m cuda`: every routine on CUDA in float32 and float64 against the
# CPU, tests/test_cuda.py and the marked tests elsewhere), capped at 90 s; their summary goes to
# $GPU_TESTS_OUT (default bench/gpu_tests.txt). Skipped with --device cpu, GPU_SKIP_TESTS=1, or
# when torch sees no CUDA device (gpu_all.py then stops with its own message).
# A failing test is reported, and the tables still run.
case " $* " in *" --device cpu "*) GPU_SKIP_TESTS=1 ;; esac
if [ "${GPU_SKIP_TESTS:-0}" != 1 ] && "$PY" -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
    tests_out="${GPU_TESTS_OUT:-bench/gpu_tests.txt}"
    set +e
    DLT_TEST_CUDA=1 timeout 90 "$PY" -m pytest -q -m cuda -p no:cacheprovider tests > "$tests_out" 2>&1
    rc=$?
    set -e
    echo "pytest -m cuda: exit $rc (0 = all passed; 124 = over 90 s); summary in $tests_out"
    tail -n 3 "$tests_out"
fi
exec "$PY" bench/gpu_all.py "$@"
