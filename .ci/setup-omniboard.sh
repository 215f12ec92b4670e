#!/usr/bin/env bash
# Omniboard (npm, pinned, cached in .ci/omniboard) and Debian chromium for
# tests/test_omniboard.py. Prints the `export` lines for DLT_OMNIBOARD_BIN and
# DLT_CHROMIUM on stdout (for eval); progress goes to stderr. Idempotent: a cached
# install returns at once. Needs node/npm and, for chromium, root or sudo with apt-get.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=2.16.1
PREFIX=.ci/omniboard
BIN="$PREFIX/node_modules/.bin/omniboard"
STAMP="$PREFIX/.stamp-$VERSION"

if [ ! -x "$BIN" ] || [ ! -f "$STAMP" ]; then
  command -v npm >/dev/null 2>&1 || { echo "setup-omniboard: npm not found (apt-get install npm)" >&2; exit 1; }
  rm -rf "$PREFIX"
  mkdir -p "$PREFIX"
  echo "setup-omniboard: npm install omniboard@$VERSION into $PREFIX" >&2
  npm install --prefix "$PREFIX" --no-audit --no-fund --loglevel=error "omniboard@$VERSION" >&2
  touch "$STAMP"
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
