"""Random spatial masks in [0, 1]: IPA's smooth B-spline field, and FMAug's patch / grid / smooth mixing masks.

IPA's mask (Ouyang et al., IEEE TMI 2022; repository cheng-01037/Causality-Medical-Image-Domain-Generalization,
``biasfield_interpolate_cchen/adv_bias.py`` with the configuration of ``models/exp_trainer.py``):

- control points N(0, 1) on a grid of spacing 24 (``blend_grid_size``) at half resolution (``downscale`` 2), with
  one extra control point outside each side: ``ceil(n / 24) + 2`` points per axis for ``n`` half-resolution voxels;
- per sample, divided by its largest magnitude and then by ``sqrt(1e-6 + sum of squares)`` (unit L2 norm);
- B-spline interpolation of order 2 (``interpolation_order``) by a transposed convolution of stride 24 whose kernel
  is a box of width 24 convolved twice with itself, each time divided by the width (a partition of unity);
- bilinear (here trilinear in 3D; the original is 2D only) upsampling to the image size, ``align_corners=True``;
- ``exp``, then a per-sample min-max rescale to [0, 1]: ``(f - min + 1e-20) / (max - min + 1e-20)``. (The original
  first rescales to [1 - 0.3, 1 + 0.3] with ``epsilon`` 0.3, then to [0, 1]; the composition is this one rescale.)

Differences, all deliberate: the original crops the interpolated field with airlab's offsets (97 voxels for a
96-voxel half-resolution image, then a fractional upsampling factor); here the field is cropped at the centre of
the control-point span to exactly ``ceil(S / downscale)`` voxels and resized to exactly ``S``. The interpolation is
done one axis at a time (the kernel is separable), which is the same field at a fraction of the cost in 3D.

FMAug's mixing masks (Li et al., repository liamheng/Non-IID_Medical_Image_Segmentation, ``utils/mixup_mask.py``):
``patch`` a box of ones with random sides in [min(S) // 5, min(S) // 2] at a random place, ``grid`` a fixed 4 x 4
(x 4) checkerboard of 0/1 cells, ``smooth`` a smooth random field. The original loads its smooth masks from files
that are not published; here a smooth mask is an IPA mask (same family: smooth, min-max scaled to [0, 1]).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from fedgin.augment.base import rand, randint, randn, target_device

MIX_MASKS = ("patch", "grid", "smooth")


def bspline_kernel_1d(spacing: int, order: int) -> Tensor:
    """The B-spline kernel of IPA along one axis: a box of width ``spacing`` convolved ``order`` times with itself.

    Each convolution is divided by ``spacing`` (as in the original), so the kernel sums to ``spacing`` and its
    copies at stride ``spacing`` sum to 1 (a partition of unity). Length ``(order + 1) * (spacing - 1) + 1``.
    """
    box = torch.ones(1, 1, spacing, dtype=torch.float64)
    kernel = box
    for _ in range(order):
        kernel = F.conv1d(kernel, box, padding=spacing - 1) / spacing
    return kernel.reshape(-1)


def ipa_mask(shape: Sequence[int], generator: torch.Generator | None = None, *,
             device: torch.device | str | None = None, spacing: int = 24, order: int = 2,
             downscale: int = 2) -> Tensor:
    """IPA's smooth random blending mask for a batch: ``shape`` is (B, *S) with 2 or 3 spatial sizes.

    Returns float32 [B, 1, *S] on ``device`` (default: the generator's device), each sample min-max scaled to
    [0, 1]. Defaults are the original's (spacing 24 at half resolution, order 2); see the module docstring.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (3, 4) or any(s < 1 for s in shape):
        raise ValueError(f"ipa_mask shape must be (B, H, W) or (B, D, H, W) with positive sizes, got {shape}")
    check_ipa_options(spacing, order, downscale)
    batch, spatial = shape[0], shape[1:]
    low = tuple(math.ceil(s / downscale) for s in spatial)
    grid = tuple(math.ceil(n / spacing) + 2 for n in low)
    points = randn((batch, 1, *grid), generator, target_device(device, generator))
    flat = points.flatten(1)
    flat = flat / (flat.abs().amax(dim=1, keepdim=True) + 1e-20)
    flat = flat / torch.sqrt(1e-6 + (flat * flat).sum(dim=1, keepdim=True))
    field = _bspline_field(flat.reshape(points.shape), spacing, order, low)
    if low != spatial:
        mode = "bilinear" if len(spatial) == 2 else "trilinear"
        field = F.interpolate(field, size=spatial, mode=mode, align_corners=True)
    field = torch.exp(field)
    lo = field.flatten(1).amin(dim=1).reshape(-1, *[1] * (field.dim() - 1))
    hi = field.flatten(1).amax(dim=1).reshape(-1, *[1] * (field.dim() - 1))
    return (field - lo + 1e-20) / (hi - lo + 1e-20)


def check_ipa_options(spacing: int, order: int, downscale: int) -> None:
    """Raise a ``ValueError`` naming a bad IPA mask option."""
    for name, value, least in (("spacing", spacing, 1), ("downscale", downscale, 1), ("order", order, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"IPA mask {name} must be an integer >= {least}, got {value!r}")


def _bspline_field(points: Tensor, spacing: int, order: int, size: tuple[int, ...]) -> Tensor:
    """Transposed convolution of the control points with the separable B-spline kernel, one axis at a time,
    cropped to ``size`` at the centre of the control-point span."""
    kernel = bspline_kernel_1d(spacing, order).to(points).reshape(1, 1, -1)
    field = points
    for axis, n in enumerate(size):
        dim = axis + 2
        moved = field.movedim(dim, -1)
        lead = moved.shape[:-1]
        line = F.conv_transpose1d(moved.reshape(-1, 1, moved.shape[-1]), kernel, stride=spacing)
        start = (line.shape[-1] - n) // 2
        line = line[..., start:start + n]
        field = line.reshape(*lead, n).movedim(-1, dim)
    return field


def mix_mask(kind: str, shape: Sequence[int], generator: torch.Generator | None = None, *,
             device: torch.device | str | None = None) -> Tensor:
    """One FMAug mixing mask per sample, float32 [B, 1, *S] in [0, 1]; ``kind`` is one of :data:`MIX_MASKS`."""
    shape = tuple(int(s) for s in shape)
    dev = target_device(device, generator)
    if kind == "smooth":
        return ipa_mask(shape, generator, device=dev)
    batch, spatial = shape[0], shape[1:]
    if kind == "grid":
        cells = [torch.div(torch.arange(s, device=dev) * 4, s, rounding_mode="floor") for s in spatial]
        parity = sum(torch.meshgrid(*cells, indexing="ij")) % 2
        return (1 - parity).to(torch.float32).expand(batch, 1, *spatial).clone()
    if kind == "patch":
        lo, hi = min(spatial) // 5, min(spatial) // 2
        sides = lo + randint(hi - lo + 1, (batch, len(spatial)), generator, dev)
        corner = _rand_below(torch.tensor(spatial, device=dev) - sides + 1, generator, dev)
        mask = torch.ones(batch, 1, *spatial, device=dev)
        for axis, s in enumerate(spatial):
            idx = torch.arange(s, device=dev).reshape(1, -1)
            inside = (idx >= corner[:, axis:axis + 1]) & (idx < corner[:, axis:axis + 1] + sides[:, axis:axis + 1])
            view = [batch, 1] + [1] * len(spatial)
            view[axis + 2] = s
            mask = mask * inside.reshape(view)
        return mask
    raise ValueError(f"unknown mixing mask {kind!r}; choose from {MIX_MASKS}")


def _rand_below(high: Tensor, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """Integers uniform in [0, high) elementwise (``high`` >= 1)."""
    u = rand(tuple(high.shape), generator, device)
    return torch.minimum((u * high).long(), high - 1)
