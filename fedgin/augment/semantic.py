"""Semantic-aware random convolution: each label region gets its own random network, blended by smoothed masks.

The idea is from Thaler et al., "Semantic-aware Random Convolution and Source Matching for Domain Generalization
in Medical Image Segmentation" (SRCSM, arXiv 2512.01510, 2025): "different regions of a source image are
augmented differently, based on their annotation labels". Their exact random network, its parameters and their
blending were not available to us; this module is therefore our construction in that spirit, and every default
here is ours:

- one GIN network (fedgin's GIN, Ouyang et al. TMI 2022, all of its defaults) per class index 0..K-1, each an
  independent per-sample draw, applied to the whole image;
- masks: the one-hot label map smoothed by a Gaussian of ``sigma`` = 2 voxels (MONAI ``GaussianFilter``, truncated
  at 4 sigma) and renormalized to sum to 1 at every voxel;
- ``out = sum_k mask_k * GIN_k(x)``.

Changing the label of a region changes the output only within ``ceil(4 sigma)`` voxels of that region (the
masks are the only thing that depends on the label). K is ``n_classes`` if given (recommended: the draws are then
independent of which classes a batch holds), else ``label.max() + 1`` of the batch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.layers import GaussianFilter
from torch import Tensor

from fedgin.augment.base import Augmentation, check_images, check_label, gin_options, register, work_dtype
from fedgin.gin import BACKENDS, gin_apply, make_config
from fedgin.params import GINParams


def semantic_random_conv(x: Tensor, label: Tensor, generator: torch.Generator | None = None, *,
                         n_classes: int | None = None, sigma: float = 2.0, backend: str = "auto",
                         **gin_config) -> Tensor:
    """Blend one random GIN network per label class with Gaussian-smoothed one-hot masks of ``label``.

    ``x`` [B, C, *S]; ``label`` [B, 1, *S] or [B, *S] with class indices in [0, n_classes).
    """
    check_images(x)
    label = check_label(label, x)
    if not sigma > 0:
        raise ValueError(f"semantic_random_conv sigma must be > 0, got {sigma!r}")
    top = int(label.max()) + 1
    k = top if n_classes is None else n_classes
    if top > k:
        raise ValueError(f"label map has class {top - 1}, but n_classes is {k}")
    gin_config.setdefault("in_channels", x.shape[1])
    gin_config.setdefault("spatial_dims", x.dim() - 2)
    cfg = make_config(**gin_config)
    work = work_dtype(x)
    onehot = F.one_hot(label, k).movedim(-1, 1).to(work)
    smooth = GaussianFilter(x.dim() - 2, sigma).to(x.device)(onehot).clamp_min(0)
    masks = smooth / smooth.sum(1, keepdim=True).clamp_min(1e-12)
    out = torch.zeros(x.shape, dtype=work, device=x.device)
    for c in range(k):
        params = GINParams.draw_config(x.shape[0], cfg, device=x.device, generator=generator)
        out += masks[:, c:c + 1] * gin_apply(x, params, backend).to(work)
    return out.to(x.dtype)


@register("semantic_randconv")
class SemanticRandConv(Augmentation):
    """:func:`semantic_random_conv` as an augmentation (needs the label map)."""

    needs_label = True
    takes_gin_options = True

    def __init__(self, n_views: int = 1, n_classes: int | None = None, sigma: float = 2.0, backend: str = "auto",
                 **gin_config) -> None:
        super().__init__(n_views)
        if n_classes is not None and (isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 1):
            raise ValueError(f"semantic_randconv n_classes must be None or an integer >= 1, got {n_classes!r}")
        if not sigma > 0:
            raise ValueError(f"semantic_randconv sigma must be > 0, got {sigma!r}")
        if backend not in BACKENDS:
            raise ValueError(f"unknown GIN backend {backend!r}; choose one of {BACKENDS}")
        self.n_classes, self.sigma, self.backend = n_classes, sigma, backend
        self.gin_config = gin_options("semantic_randconv", gin_config)

    def augment(self, x: Tensor, label: Tensor | None, generator: torch.Generator | None) -> Tensor:
        return semantic_random_conv(x, label, generator, n_classes=self.n_classes, sigma=self.sigma,
                                    backend=self.backend, **self.gin_config)
