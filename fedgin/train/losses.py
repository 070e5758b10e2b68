"""Segmentation and consistency losses."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss, DiceFocalLoss
from torch import Tensor, nn


def make_loss(name: str) -> nn.Module:
    """``dice_ce`` (soft Dice + cross-entropy) or ``dice_focal`` (soft Dice + focal), on logits and label ids."""
    if name == "dice_ce":
        return DiceCELoss(to_onehot_y=True, softmax=True)
    if name == "dice_focal":
        return DiceFocalLoss(to_onehot_y=True, softmax=True)
    raise ValueError(f"unknown loss {name!r}; choose dice_ce or dice_focal")


def consistency_loss(logits: list[Tensor]) -> Tensor:
    """Mean KL divergence of every view's prediction to the mean prediction (the original GIN training)."""
    log_probs = [F.log_softmax(v, dim=1) for v in logits]
    mean = torch.stack([lp.exp() for lp in log_probs]).mean(0)
    kl = [F.kl_div(lp, mean, reduction="none").sum(1).mean() for lp in log_probs]
    return torch.stack(kl).mean()
