"""fedgin's GIN in nnU-Net v2 (``pip install "fedgin[nnunet]"``): trainers that augment each training batch on its
device, selected with ``-tr``.

nnU-Net finds them through ``export nnUNet_extTrainer=$(fedgin nnunet trainers-dir)``, then::

    nnUNetv2_train DATASET CONFIGURATION FOLD -tr nnUNetTrainerGIN

- ``nnUNetTrainerGIN``: a fresh network per sample, one view (the batch is replaced by its GIN).
- ``nnUNetTrainerGINShared``: one network per batch, as the FedGIN authors' client.
- ``nnUNetTrainerGIN_IPA``: GIN-IPA's three views of each batch (one forward of 3B samples), nnU-Net's loss on the
  first, plus the KL consistency of the three (``fedgin.augment.losses.kl_consistency``, reverse, weight 10 / K,
  K the segmentation heads), as fedgin's own trainer.

Where GIN runs: in :meth:`train_step`, after the batch is on the device and before autocast and the network, so it
is never part of the network nnU-Net compiles, and never touches a validation batch or inference. It runs after
nnU-Net's own (CPU) augmentations, which stay on: spatial transforms, noise, blur, brightness, contrast, gamma,
mirroring, then GIN's random intensity network on the result. The targets (deep supervision's list included) are
not touched: GIN changes intensities only.

Channels: nnU-Net's channels are modalities (CT; T1, T2, ...), z-scored or CT-normalized, so each channel is its
own GIN sample (its own network, its own norm: GIN's output has the channel's norm, so its normalization holds);
``nnUNetTrainerGINShared`` draws one network per channel for the whole batch. 2D and 3D patches alike; on a CUDA
device the fused kernels run (two launches a call, no sync), elsewhere the PyTorch reference.

Options are class attributes (``gin_config``: :class:`fedgin.GINConfig` fields such as ``n_layers`` or
``kernel_sizes``); subclass to change them, as nnU-Net's own variants do.
"""
from __future__ import annotations

from typing import ClassVar

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from torch import Tensor

from fedgin.augment.gin_ipa import gin_ipa_views
from fedgin.augment.losses import kl_consistency
from fedgin.augment.recipes import default_consistency
from fedgin.gin import check_errors, gin


def gin_batch(x: Tensor, shared: bool = False, **gin_config) -> Tensor:
    """GIN of an nnU-Net batch ``x`` [B, C, *S], each channel its own sample: per sample (one call on the
    [B * C, 1, *S] view), or ``shared``: one network a channel for the whole batch."""
    if not shared:
        return gin(x.reshape(-1, 1, *x.shape[2:]), **gin_config).view_as(x)
    return torch.cat([gin(x[:, c:c + 1].contiguous(), per_sample=False, **gin_config) for c in range(x.shape[1])],
                     dim=1)


def gin_ipa_batch(x: Tensor, **gin_config) -> Tensor:
    """GIN-IPA's three views of ``x`` [B, C, *S] as one [3B, C, *S] batch, each channel its own sample."""
    flat = x.reshape(-1, 1, *x.shape[2:])
    return torch.cat([v.view_as(x) for v in gin_ipa_views(flat, **gin_config)])


class nnUNetTrainerGIN(nnUNetTrainer):  # nnU-Net selects a trainer by its class name
    """nnU-Net's trainer with fedgin's GIN on every training batch: a fresh network per sample, one view."""

    gin_config: ClassVar[dict] = {}
    gin_shared: ClassVar[bool] = False

    def gin_augment(self, data: Tensor) -> Tensor:
        """The training batch's GIN (on its device); override to change what a step trains on."""
        return gin_batch(data, self.gin_shared, **self.gin_config)

    def train_step(self, batch: dict) -> dict:
        data = batch["data"].to(self.device, non_blocking=True)
        return super().train_step({**batch, "data": self.gin_augment(data)})

    def on_train_epoch_end(self, train_outputs: list[dict]) -> None:
        check_errors(self.device)  # non-finite input met on the GPU this epoch (the CPU raises at once): name it
        super().on_train_epoch_end(train_outputs)


class nnUNetTrainerGINShared(nnUNetTrainerGIN):
    """One GIN network a batch (a channel), as the FedGIN authors' client."""

    gin_shared = True


class ViewsLoss(torch.nn.Module):
    """nnU-Net's loss on the first of the K views of an output for K·B samples (deep supervision's list, or one
    tensor), plus ``weight`` × the views' KL consistency at full resolution; an output for B samples (validation)
    takes nnU-Net's loss alone."""

    def __init__(self, loss: torch.nn.Module, weight: float, reverse: bool) -> None:
        super().__init__()
        self.loss, self.weight, self.reverse = loss, weight, reverse

    def forward(self, output: Tensor | list[Tensor], target: Tensor | list[Tensor]) -> Tensor:
        scales = output if isinstance(output, (list, tuple)) else [output]
        n = (target[0] if isinstance(target, list) else target).shape[0]
        if scales[0].shape[0] == n:
            return self.loss(output, target)
        first = [o[:n] for o in scales] if isinstance(output, (list, tuple)) else output[:n]
        views = list(scales[0].float().split(n))
        return self.loss(first, target) + self.weight * kl_consistency(views, self.reverse)


class nnUNetTrainerGIN_IPA(nnUNetTrainerGIN):
    """GIN-IPA: three views a batch in one forward (nnU-Net's own ``train_step``); nnU-Net's loss on the first, plus
    the views' KL consistency (:class:`ViewsLoss`, GIN-IPA's weight and direction from
    :func:`fedgin.augment.recipes.default_consistency`)."""

    ipa_options: ClassVar[dict] = {}  # fedgin.augment.masks.ipa_mask's spacing, order, downscale

    def gin_augment(self, data: Tensor) -> Tensor:
        return gin_ipa_batch(data, **self.ipa_options, **self.gin_config)

    def _build_loss(self) -> torch.nn.Module:
        weight, reverse = default_consistency("gin_ipa", self.label_manager.num_segmentation_heads)
        return ViewsLoss(super()._build_loss(), weight, reverse)


TRAINERS = (nnUNetTrainerGIN, nnUNetTrainerGINShared, nnUNetTrainerGIN_IPA)
