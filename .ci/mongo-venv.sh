#!/usr/bin/env bash
# Build .ci/mongoeco-venv: a small venv with mongoeco's MongoDB wire-protocol server
# (mongoeco needs Python >= 3.13; the project's venv may be older). Cached: a stamp
# named after the pin makes a second call return at once. Prints the venv's python.
#   MONGOECO_PYTHON=/path/to/python3.13  overrides the interpreter search.
set -euo pipefail
cd "$(dirname "$0")/.."
PIN="mongoeco[wire]==4.11.0"
VENV=.ci/mongoeco-venv
STAMP="$VENV/.stamp-$(echo "$PIN" | sha256sum | cut -c1-12)"
if [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ]; then
  echo "$VENV/bin/python"
  exit 0
fi

ok() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 13))' >/dev/null 2>&1; }

find_python() {
  if [ -n "${MONGOECO_PYTHON:-}" ]; then echo "$MONGOECO_PYTHON"; return; fi
  local c
  for c in python3.14 python3.13 python3; do  # pyenv shims exist but may fail: try each
    if command -v "$c" >/dev/null 2>&1 && ok "$(command -v "$c")"; then command -v "$c"; return; fi
  done
  if command -v pyenv >/dev/null 2>&1; then
    for c in "$(pyenv root)"/versions/3.1[3-9]*/bin/python; do
      if [ -x "$c" ] && ok "$c"; then echo "$c"; return; fi
    done
  fi
  return 1
}

PY313=$(find_python) || { echo "mongo-venv: no Python >= 3.13 found (set MONGOECO_PYTHON)" >&2; exit 1; }
rm -rf "$VENV"
"$PY313" -m venv "$VENV" >&2
PIP_CONSTRAINT=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1 "$VENV/bin/python" -m pip install -q "$PIN" >&2
touch "$STAMP"
echo "$VENV/bin/python"
