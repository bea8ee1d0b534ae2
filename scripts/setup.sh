#!/usr/bin/env bash
# Set up ditguide on a fresh machine: a virtual environment .venv with the exact versions CI tests
# (requirements-lock.txt) and ditguide installed editable. Idempotent; rerunning is cheap.
#   bash scripts/setup.sh                 # main environment
#   bash scripts/setup.sh --with-vbench   # plus VBench's own environment (its pins clash with ours)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
# torch is pinned exactly here (a loose pin can pull a multi-GB CUDA build of another version).
"$VENV/bin/python" -m pip install -q -r requirements-lock.txt
"$VENV/bin/python" -m pip install -q --no-deps -e .
if [ "${1:-}" = "--with-vbench" ]; then
  bash scripts/setup_vbench_env.sh
fi
echo "ditguide environment ready: $VENV"
