#!/usr/bin/env bash
# Install a single-node SLURM (slurm-wlm: slurmctld + slurmd + client tools) and munge.
# Idempotent: does nothing when sbatch, slurmctld, slurmd and munged are already installed.
# Configure and start the daemons afterwards with .ci/start_slurm.sh.
set -euo pipefail

if command -v sbatch >/dev/null && command -v slurmctld >/dev/null \
   && command -v slurmd >/dev/null && command -v munged >/dev/null; then
  echo "install_slurm: slurm-wlm and munge already installed"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
# slurm-wlm pulls in slurmctld, slurmd and slurm-client; munge authenticates them.
$SUDO apt-get install -y -q --no-install-recommends slurm-wlm munge
echo "install_slurm: installed slurm-client $(dpkg-query -W -f="\${Version}" slurm-client 2>/dev/null || echo "(version unknown)")"
