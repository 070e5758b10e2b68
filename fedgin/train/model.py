"""The segmentation network of a run: a MONAI UNet sized by the config."""
from __future__ import annotations

from monai.networks.nets import UNet
from torch import nn

from fedgin.config import RunConfig

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def make_model(cfg: RunConfig) -> nn.Module:
    """A 2D or 3D UNet: ``data.channels`` in, background + ``data.organs`` out."""
    m = cfg.model
    return UNet(
        spatial_dims=2 if cfg.data.dims == "2d" else 3,
        in_channels=cfg.data.channels,
        out_channels=len(cfg.data.organs) + 1,
        channels=tuple(m.channels),
        strides=tuple(m.strides),
        num_res_units=m.num_res_units,
        norm=m.norm,
        dropout=m.dropout,
    )


def norm_keys(model: nn.Module) -> set[str]:
    """State-dict keys of the normalization layers (what FedBN keeps local)."""
    keys = set()
    for name, module in model.named_modules():
        if isinstance(module, _NORM_TYPES):
            keys.update(f"{name}.{k}" for k in module.state_dict())
    return keys
