"""``fedgin nnunet``: what nnU-Net v2 needs to find fedgin's trainers (:mod:`fedgin.integrations.nnunet`)."""
from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import fedgin.integrations

HELP = "nnU-Net v2 integration: `fedgin nnunet trainers-dir` prints the folder to export as nnUNet_extTrainer"
TRAINERS_DIR = Path(fedgin.integrations.__file__).with_name("nnunet_trainers")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("what", choices=["trainers-dir"],
                        help="trainers-dir: the folder nnU-Net searches for the -tr trainers nnUNetTrainerGIN, "
                             "nnUNetTrainerGINShared, nnUNetTrainerGIN_IPA "
                             "(export nnUNet_extTrainer=$(fedgin nnunet trainers-dir))")


def run(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("nnunetv2") is None:
        raise ValueError("nnunetv2 is not installed in this Python: pip install \"fedgin[nnunet]\"")
    print(TRAINERS_DIR)
    return 0
