"""The pure-PyTorch GIN oracle: the original's method, one grouped convolution per layer."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from fedgin.params import GINParams


@torch.no_grad()
def reference_apply(x: Tensor, params: GINParams) -> Tensor:
    """GIN of ``x`` [B, C, *S] with ``params``, exactly as ``docs/gin.md`` states.

    Math runs in float32 (float64 for float64 input); the output has the input's dtype.
    Inputs are assumed checked (see :func:`fedgin.gin.gin_apply`).
    """
    cfg = params.config
    conv = F.conv2d if cfg.spatial_dims == 2 else F.conv3d
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    b, c = x.shape[:2]
    spatial = x.shape[2:]
    xw = x.to(work)
    h = xw.reshape(1, b * c, *spatial)
    last = len(params.weights) - 1
    for layer, (k, w, bias) in enumerate(zip(params.kernel_sizes, params.weights, params.biases, strict=True)):
        w = w.to(work)
        h = conv(h, w.reshape(-1, *w.shape[2:]), bias.to(work).reshape(-1), padding=k // 2, groups=b)
        if layer < last:
            h = F.leaky_relu(h, cfg.slope)
    h = h.reshape(b, -1, *spatial)
    shape = (b,) + (1,) * (x.dim() - 1)
    alpha = params.alphas.to(work).reshape(shape)
    mixed = alpha * h + (1 - alpha) * xw
    scale = xw.flatten(1).norm(dim=1) / (mixed.flatten(1).norm(dim=1) + cfg.eps)
    return (mixed * scale.reshape(shape)).to(x.dtype)
