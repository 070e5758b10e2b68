"""RaffeSDG's auxiliary output: a head that reconstructs the high-frequency image from the segmentation
network's features (Li et al., RaffeSDG 2024; repository liamheng/Non-IID_Medical_Image_Segmentation).

The original builds it into its own multi-output UNet (``unet_mo``); here it is a separate module that the
trainer attaches to a full-resolution feature map of any network. Its layout is ours (not the original's):
3^d convolution, instance norm, LeakyReLU, 1^d convolution, tanh (the target,
:func:`fedgin.augment.frequency.high_frequency_target`, lies in [-1, 1]).
"""
from __future__ import annotations

from torch import Tensor, nn


class HighFreqReconstructionHead(nn.Module):
    """Features [B, in_channels, *S] -> high-frequency image [B, out_channels, *S] in (-1, 1).

    ``out_channels`` is the number of image channels (the target has the input's channels).
    """

    def __init__(self, in_channels: int, out_channels: int, spatial_dims: int = 2, hidden: int | None = None) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"HighFreqReconstructionHead spatial_dims must be 2 or 3, got {spatial_dims}")
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
            if value < 1:
                raise ValueError(f"HighFreqReconstructionHead {name} must be >= 1, got {value}")
        hidden = in_channels if hidden is None else hidden
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        norm = nn.InstanceNorm2d if spatial_dims == 2 else nn.InstanceNorm3d
        self.layers = nn.Sequential(conv(in_channels, hidden, 3, padding=1), norm(hidden, affine=True),
                                    nn.LeakyReLU(0.01), conv(hidden, out_channels, 1), nn.Tanh())

    def forward(self, features: Tensor) -> Tensor:
        return self.layers(features)
