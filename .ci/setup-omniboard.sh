#!/usr/bin/env bash
# Omniboard (npm, pinned, cached in .ci/omniboard) and Debian chromium for
# tests/test_omniboard.py. Prints the `export` lines for DLT_OMNIBOARD_BIN and
# DLT_CHROMIUM on stdout (for eval); progress goes to stderr. Idempotent: a cached
# install returns at once. Needs node/npm and, for chromium, root or sudo with apt-get.
set -euo pipefail
cd "$(dirname "$0")/.."
# The whole dependency tree is pinned: .ci/omniboard-lock/package-lock.json (omniboard 2.16.1 and
# its 811 dependencies, exact versions and integrity hashes), installed with `npm ci`. A plain
# `npm install omniboard@2.16.1` resolves every ^range afresh and once failed on a registry that
# listed a version it could not serve (ETARGET); the lock also keeps CI on one tested tree.
LOCK=.ci/omniboard-lock
PREFIX=.ci/omniboard
BIN="$PREFIX/node_modules/.bin/omniboard"
STAMP="$PREFIX/.stamp-$(cat "$LOCK/package.json" "$LOCK/package-lock.json" | sha256sum | cut -c1-16)"
ATTEMPTS=3  # transient registry or network errors: retried, then this script fails (and .ci/run with it)

if [ ! -x "$BIN" ] || [ ! -f "$STAMP" ]; then
  command -v npm >/dev/null 2>&1 || { echo "setup-omniboard: npm not found (apt-get install npm)" >&2; exit 1; }
  for attempt in $(seq "$ATTEMPTS"); do
    rm -rf "$PREFIX"
    mkdir -p "$PREFIX"
    cp "$LOCK/package.json" "$LOCK/package-lock.json" "$PREFIX/"
    echo "setup-omniboard: npm ci (omniboard, $LOCK) into $PREFIX, attempt $attempt of $ATTEMPTS" >&2
    if npm ci --prefix "$PREFIX" --no-audit --no-fund --loglevel=error >&2; then
      touch "$STAMP"
      break
    fi
    [ "$attempt" -lt "$ATTEMPTS" ] || { echo "setup-omniboard: npm ci failed $ATTEMPTS times" >&2; exit 1; }
    sleep $((15 * attempt))
  done
fi

CHROMIUM=$(command -v chromium || command -v chromium-browser || true)
if [ -z "$CHROMIUM" ]; then
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo -n"; fi
  echo "setup-omniboard: apt-get install chromium" >&2
  $SUDO apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium >&2
  CHROMIUM=$(command -v chromium)
fi
echo "export DLT_OMNIBOARD_BIN='$PWD/$BIN' DLT_CHROMIUM='$CHROMIUM'"
