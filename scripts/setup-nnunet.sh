#!/usr/bin/env bash
# Create .venv-nnunet: fedgin with its nnU-Net extra, for the nnU-Net tests (`pytest -m nnunet`) and trainers.
# nnU-Net's trainer lookup imports timm (through dynamic-network-architectures), and timm imports torchvision, which
# needs the torch it was built for: PyTorch 2.14.1 with torchvision 0.29.1 (on this CPU machine: a CUDA build, about
# 5.5 GB; .venv's CPU torch 2.13 has no torchvision that loads beside it).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv-nnunet
.venv-nnunet/bin/python -m pip install -q --upgrade pip
.venv-nnunet/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
.venv-nnunet/bin/python -m pip install -q -e ".[nnunet,test]"
