"""RaffeSDG's auxiliary output: a head that reconstructs the high-frequency image from the segmentation
network's features (Li et al., RaffeSDG 2024; repository liamheng/Non-IID_Medical_Image_Segmentation).

The original's UNet (``unet_combine_2layer``) ends in two output layers of one geometry: ``upconv`` (the
segmentation) and ``h_upconv`` (the high-frequency image: 3 channels, then tanh), each a stride-2 transposed
convolution of the last decoder features. :meth:`HighFreqReconstructionHead.mirroring` builds that second layer
for any network: one convolution with the geometry of the network's own final convolution (kernel, stride,
padding, transposed or not), to the image's channels, then tanh (the target,
:func:`fedgin.augment.frequency.high_frequency_target`, lies in [-1, 1]). The original also gives that layer its own
decoder; a generic head cannot, so it reads the segmentation decoder's features.
"""
from __future__ import annotations

from torch import Tensor, nn

_CONV = {(2, False): nn.Conv2d, (3, False): nn.Conv3d, (2, True): nn.ConvTranspose2d, (3, True): nn.ConvTranspose3d}


class HighFreqReconstructionHead(nn.Module):
    """Features [B, in_channels, *S] -> high-frequency image [B, out_channels, *S'] in (-1, 1).

    One convolution (transposed when ``transposed``; ``output_padding`` only then) and tanh. ``out_channels`` is the
    number of image channels (the target has the input's channels).
    """

    def __init__(self, in_channels: int, out_channels: int, spatial_dims: int = 2, kernel_size: int | tuple = 1,
                 stride: int | tuple = 1, padding: int | tuple = 0, transposed: bool = False,
                 output_padding: int | tuple = 0) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"HighFreqReconstructionHead spatial_dims must be 2 or 3, got {spatial_dims}")
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
            if value < 1:
                raise ValueError(f"HighFreqReconstructionHead {name} must be >= 1, got {value}")
        extra = {"output_padding": output_padding} if transposed else {}
        self.conv = _CONV[spatial_dims, transposed](in_channels, out_channels, kernel_size, stride, padding, **extra)

    @classmethod
    def mirroring(cls, conv: nn.Module, out_channels: int) -> HighFreqReconstructionHead:
        """A head with the geometry of ``conv`` (a network's final ``Conv{2,3}d`` or ``ConvTranspose{2,3}d``):
        given that convolution's input, its output has the same spatial size as ``conv``'s."""
        if not isinstance(conv, tuple(_CONV.values())) or conv.dilation != (1,) * len(conv.dilation) \
                or conv.groups != 1 or conv.padding_mode != "zeros":
            raise ValueError(f"HighFreqReconstructionHead.mirroring needs a plain convolution, got {conv!r}")
        transposed = isinstance(conv, (nn.ConvTranspose2d, nn.ConvTranspose3d))
        return cls(conv.in_channels, out_channels, len(conv.kernel_size), conv.kernel_size, conv.stride,
                   conv.padding, transposed, conv.output_padding if transposed else 0)

    def forward(self, features: Tensor) -> Tensor:
        return self.conv(features).tanh()
