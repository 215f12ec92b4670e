#!/usr/bin/env bash
# Build the docs site with warnings as errors (mkdocs build --strict).
#  1. docs/gen_config_keys.py (project Python: it imports the experiments) writes
#     docs/generated/, the config-key tables, from the Sacred config scopes;
#  2. mkdocs (its own venv, .docs-build/venv, from docs/requirements.txt) builds
#     .docs-build/site, checking every internal link and anchor.
# Env: PYTHON (project interpreter; default .venv/bin/python, else python3),
#      DOCS_VENV (default .docs-build/venv; created when missing).
set -euo pipefail
export NO_MKDOCS_2_WARNING=1  # mkdocs-material prints an end-of-life notice otherwise
cd "$(dirname "$0")/.."
start=$(date +%s)
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
DOCS_VENV=${DOCS_VENV:-.docs-build/venv}
stamp="$DOCS_VENV/.stamp-$(sha256sum docs/requirements.txt | cut -c1-16)"
if [ ! -e "$stamp" ]; then
    rm -rf "$DOCS_VENV"
    "$PYTHON" -m venv "$DOCS_VENV"
    PIP_CONSTRAINT=/dev/null "$DOCS_VENV/bin/pip" install -q --disable-pip-version-check -r docs/requirements.txt
    touch "$stamp"
fi
OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" \
    "$PYTHON" -W ignore::UserWarning docs/gen_config_keys.py
"$DOCS_VENV/bin/mkdocs" build --strict --clean --config-file mkdocs.yml "$@"
echo "docs built in $(( $(date +%s) - start )) s: .docs-build/site/index.html"
