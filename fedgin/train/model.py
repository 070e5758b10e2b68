"""The segmentation network of a run: a MONAI UNet sized by the config, with the method's extras
(domain-specific normalization under ``fed.norm: dsbn``, RaffeSDG's reconstruction head)."""
from __future__ import annotations

import torch.nn.functional as F
from monai.networks.nets import UNet
from torch import Tensor, nn

from fedgin.augment import HighFreqReconstructionHead, convert_to_dsbn, set_domain
from fedgin.config import MODALITIES, RunConfig, recipe

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
_CONVS = (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def make_model(cfg: RunConfig) -> nn.Module:
    """A 2D or 3D UNet: ``data.channels`` in, background + ``data.organs`` out.

    ``fed.norm: dsbn``: every BatchNorm holds one copy per modality (:data:`MODALITIES`; select one with
    :func:`fedgin.augment.use_domain`). ``aug.method: raffesdg``: a ``reconstruction`` head reads the input of the
    final convolution (:class:`ReconstructionBranch`).
    """
    m = cfg.model
    model = UNet(
        spatial_dims=2 if cfg.data.dims == "2d" else 3,
        in_channels=cfg.data.channels,
        out_channels=len(cfg.data.organs) + 1,
        channels=tuple(m.channels),
        strides=tuple(m.strides),
        num_res_units=m.num_res_units,
        norm=m.norm,
        dropout=m.dropout,
    )
    if cfg.fed.norm == "dsbn":
        convert_to_dsbn(model, len(MODALITIES))
    if recipe(cfg).reconstruction_weight:
        ReconstructionBranch.attach(model, cfg.data.channels)
    return model


def domain_index(modality: str) -> int:
    """The domain-specific normalization copy of a modality (its index in :data:`MODALITIES`)."""
    if modality not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r}; choose one of {list(MODALITIES)}")
    return MODALITIES.index(modality)


def model_for_modality(cfg: RunConfig, modality: str) -> nn.Module:
    """:func:`make_model`, with the modality's normalization selected under ``fed.norm: dsbn``."""
    model = make_model(cfg)
    if cfg.fed.norm == "dsbn":
        set_domain(model, domain_index(modality))
    return model


class ReconstructionBranch(nn.Module):
    """RaffeSDG's auxiliary branch on any network: a forward pre-hook keeps the input of the network's final
    convolution (in training mode), and :meth:`reconstruct` maps it to the high-frequency image with a
    :class:`fedgin.augment.HighFreqReconstructionHead` of that convolution's geometry. Attached as
    ``model.reconstruction``, so its weights train and federate with the network's."""

    def __init__(self, head: HighFreqReconstructionHead) -> None:
        super().__init__()
        self.head = head
        self.features: Tensor | None = None

    @classmethod
    def attach(cls, model: nn.Module, image_channels: int) -> ReconstructionBranch:
        last = [mod for mod in model.modules() if isinstance(mod, _CONVS)][-1]
        branch = cls(HighFreqReconstructionHead.mirroring(last, image_channels))
        model.add_module("reconstruction", branch)
        last.register_forward_pre_hook(branch.keep)
        return branch

    def keep(self, module: nn.Module, args: tuple) -> None:
        self.features = args[0] if self.training else None

    def reconstruct(self, size: tuple[int, ...], batch: int) -> Tensor:
        """The high-frequency prediction [batch, C, *size] from the first ``batch`` samples of the last forward
        (resized to ``size`` where the network resamples after its final convolution)."""
        if self.features is None:
            raise RuntimeError("no features kept: run the model in training mode first")
        pred = self.head(self.features[:batch])
        self.features = None
        if tuple(pred.shape[2:]) != tuple(size):
            pred = F.interpolate(pred, size=size, mode="bilinear" if len(size) == 2 else "trilinear",
                                 align_corners=False)
        return pred


def norm_keys(model: nn.Module) -> set[str]:
    """State-dict keys of the normalization layers (what FedBN keeps local)."""
    keys = set()
    for name, module in model.named_modules():
        if isinstance(module, _NORM_TYPES):
            keys.update(f"{name}.{k}" for k in module.state_dict())
    return keys
