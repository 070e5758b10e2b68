"""Segmentation and consistency losses."""
from __future__ import annotations

from monai.losses import DiceCELoss, DiceFocalLoss
from torch import nn


def make_loss(name: str) -> nn.Module:
    """``dice_ce`` (soft Dice + cross-entropy) or ``dice_focal`` (soft Dice + focal), on logits and label ids."""
    if name == "dice_ce":
        return DiceCELoss(to_onehot_y=True, softmax=True)
    if name == "dice_focal":
        return DiceFocalLoss(to_onehot_y=True, softmax=True)
    raise ValueError(f"unknown loss {name!r}; choose dice_ce or dice_focal")
