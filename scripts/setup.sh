#!/usr/bin/env bash
# Create .venv and install fedgin (editable) with its test, benchmark and Flower extras.
# A CPU machine gets PyTorch 2.13 (CPU build) and Triton 3.6; pass --system-torch on a CUDA machine
# whose Python already has torch and triton (the venv then sees them).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--system-torch" ]; then
  python3 -m venv --system-site-packages .venv
else
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
if ! .venv/bin/python -c "import torch, triton" 2>/dev/null; then
  .venv/bin/python -m pip install -q "torch==2.13.0" "triton==3.6.0" "numpy<2.4"
fi
.venv/bin/python -m pip install -q "numpy<2.4" -e ".[test,bench,fl]"
