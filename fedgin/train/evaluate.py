"""Evaluation per patient in 3D: Dice (MONAI DiceMetric) and HD95 (HausdorffDistanceMetric) per organ."""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from monai.metrics import DiceMetric, HausdorffDistanceMetric
from torch import Tensor, nn

from fedgin.train.data import Case
from fedgin.train.local import expand_channels


@torch.no_grad()
def predict(model: nn.Module, case: Case, channels: int, dims: str, batch_size: int = 32,
            prepare: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """Label ids [X, Y, Z] for one case: slice by slice (2D, stacked to 3D) or the whole volume (3D).
    ``prepare`` maps each network input batch first (:meth:`fedgin.augment.recipes.Recipe.eval_input`)."""
    model.eval()
    device = next(model.parameters()).device
    image = case.image.to(device)
    prepare = prepare or (lambda x: x)
    if dims == "3d":
        return model(prepare(expand_channels(image[None], channels))).argmax(1)[0].cpu()
    slices = image.permute(3, 0, 1, 2)  # [Z, 1, X, Y]
    out = [model(prepare(expand_channels(s, channels))).argmax(1) for s in slices.split(batch_size)]
    return torch.cat(out).permute(1, 2, 0).cpu()


def case_scores(pred: Tensor, label: Tensor, n_classes: int, hd95: bool) -> tuple[Tensor, Tensor | None]:
    """Per-organ Dice and HD95 (voxels) of one patient; NaN where the organ is absent from the ground truth.

    An organ present but not predicted gets Dice 0 and HD95 = the volume's diagonal.
    """
    p = F.one_hot(pred.long(), n_classes).movedim(-1, 0)[None].float()
    y = F.one_hot(label.long(), n_classes).movedim(-1, 0)[None].float()
    dice = DiceMetric(include_background=False, reduction="none", ignore_empty=True)(p, y)[0]
    if not hd95:
        return dice, None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hd = HausdorffDistanceMetric(include_background=False, percentile=95, reduction="none")(p, y)[0].float()
    present = y[0, 1:].flatten(1).any(1)
    diagonal = math.sqrt(sum(s * s for s in pred.shape))
    hd = torch.where(present, torch.nan_to_num(hd, nan=diagonal, posinf=diagonal), torch.nan)
    return dice, hd


def evaluate_cases(model: nn.Module, cases: list[Case], organs: list[str], channels: int, dims: str,
                   hd95: bool = True, prepare: Callable[[Tensor], Tensor] | None = None) -> dict[str, float]:
    """Scalar metrics over patients: ``dice/<organ>``, ``dice/mean`` (and ``hd95/...``), means ignoring NaN.
    ``prepare``: as in :func:`predict`."""
    dices, hds = [], []
    for case in cases:
        d, h = case_scores(predict(model, case, channels, dims, prepare=prepare), case.label[0], len(organs) + 1,
                           hd95)
        dices.append(d)
        if h is not None:
            hds.append(h)
    out: dict[str, float] = {}
    for metric, rows in (("dice", dices), ("hd95", hds)):
        if not rows:
            continue
        per_organ = torch.stack(rows).nanmean(0)
        for name, value in zip(organs, per_organ.tolist(), strict=True):
            out[f"{metric}/{name}"] = value
        out[f"{metric}/mean"] = float(per_organ.nanmean())
    return out
