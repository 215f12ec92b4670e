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
exec "$PY" bench/gpu_all.py "$@"
