#!/usr/bin/env bash
# Lint and import order with ruff (config: ruff.toml), in its own small venv
# (.lint-venv, from .ci/requirements-lint.txt), so the project's pinned .venv is untouched.
# Env: LINT_VENV (default .lint-venv). Arguments go to `ruff check` (e.g. --fix, or paths; none: the whole tree).
set -euo pipefail
cd "$(dirname "$0")/.."
LINT_VENV=${LINT_VENV:-.lint-venv}
stamp="$LINT_VENV/.stamp-$(sha256sum .ci/requirements-lint.txt | cut -c1-16)"
if [ ! -e "$stamp" ]; then
    rm -rf "$LINT_VENV"
    python3 -m venv "$LINT_VENV"
    PIP_CONSTRAINT=/dev/null "$LINT_VENV/bin/pip" install -q --disable-pip-version-check -r .ci/requirements-lint.txt
    touch "$stamp"
fi
"$LINT_VENV/bin/ruff" check "$@"  # no path given: ruff checks the current directory
