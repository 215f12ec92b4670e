#!/usr/bin/env bash
# Install Debian's single-node SLURM (slurm-wlm) and munge for tests/test_slurm.py.
# Idempotent: returns at once when the binaries are already present. Needs root
# (or passwordless sudo) and Debian's package registry; CI machines have both.
set -euo pipefail

needed=(sbatch squeue slurmctld slurmd munged mungekey)
missing=0
for bin in "${needed[@]}"; do
  if ! command -v "$bin" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$bin" ]; then
    missing=1
  fi
done
if [ "$missing" = 0 ]; then
  echo "setup-slurm: slurm-wlm and munge already installed"
  exit 0
fi

SUDO=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO="sudo -n"
  else
    echo "setup-slurm: need root (or sudo) to apt-get install slurm-wlm munge" >&2
    exit 1
  fi
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "setup-slurm: apt-get not found; install slurm-wlm and munge by hand" >&2
  exit 1
fi

echo "setup-slurm: installing slurm-wlm and munge"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
# Package post-install scripts may try to start services; there is no systemd
# here and the test starts its own daemons, so a failed start is harmless.
$SUDO apt-get install -y -q --no-install-recommends slurm-wlm munge
echo "setup-slurm: installed $(dpkg-query -W -f "slurm-wlm \${Version}" slurm-wlm 2>/dev/null)"
