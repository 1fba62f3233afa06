#!/usr/bin/env bash
# Re-resolve every dependency and rewrite requirements.lock (the pip constraints file that the
# README install line and .ci/run use). Run it when pyproject.toml's dependencies change, then run
# the test suite in the venv it leaves behind and commit requirements.lock:
#
#     bash .ci/refresh_lock.sh            # -> requirements.lock, venv in /tmp/speechxfer-lock-venv
#     /tmp/speechxfer-lock-venv/bin/python -m pytest -m "not slow"
#
# It resolves in a brand-new virtualenv from the registry alone (no constraints), with every extra
# the tests use, so the lock is exactly what a fresh `pip install -e ".[dev]"` would pick today.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-/tmp/speechxfer-lock-venv}
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
# PIP_CONSTRAINT="" ignores machine-wide constraint files: the lock must come from the registry.
PIP_CONSTRAINT="" "$VENV/bin/python" -m pip install -q -e ".[dev]"
{
  echo "# speechxfer dependency lock: pip constraints for 'pip install -c requirements.lock -e \".[dev]\"'."
  echo "# Resolved $(date -u +%Y-%m-%d) on $("$VENV/bin/python" -c 'import platform; print(platform.python_version(), platform.machine())')"\
       "by .ci/refresh_lock.sh; rerun that script to refresh it. Do not edit by hand."
  "$VENV/bin/python" -m pip freeze --exclude-editable | sort -f
} > requirements.lock.new
mv requirements.lock.new requirements.lock
"$VENV/bin/python" -c "import torch, torchaudio; print('lock:', torch.__version__, torchaudio.__version__, 'load together')"
echo "wrote requirements.lock ($(grep -vc '^#' requirements.lock) packages)"
