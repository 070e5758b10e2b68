"""GIN and GIN-IPA as augmentations (Ouyang et al., "Causality-inspired single-source domain generalization for
medical image segmentation", IEEE TMI 2022; repository cheng-01037/Causality-Medical-Image-Domain-Generalization).

``gin``: fedgin's GIN (see ../shared/gin-spec.md for every default), ``n_views`` independent draws.

``gin_ipa``: the original's training input (``models/exp_trainer.py``, ``set_input_aug_sup``): three GIN views
of the batch, each from its own draw, and one IPA mask ``m`` per sample (``fedgin.augment.masks.ipa_mask``,
shared by the channels) that blends the first two::

    view1 = m * GIN1 + (1 - m) * GIN2
    view2 = (1 - m) * GIN1 + m * GIN2
    view3 = GIN3

so ``view1 + view2 == GIN1 + GIN2`` voxelwise. The original is 2D; the 3D version uses a trilinear mask.
The original trains on the three views with a segmentation loss on the first and a KL consistency loss between
the views (weight 10; :func:`fedgin.augment.losses.kl_consistency` with ``reverse=True``).
"""
from __future__ import annotations

import torch
from torch import Tensor

from fedgin.augment.base import Augmentation, gin_options, register, work_dtype
from fedgin.augment.masks import check_ipa_options, ipa_mask
from fedgin.gin import BACKENDS, gin, make_config, resolve_backend
from fedgin.params import GINParams
from fedgin.reference import reference_apply


def gin_ipa_views(x: Tensor, generator: torch.Generator | None = None, backend: str = "auto", *, spacing: int = 24,
                  order: int = 2, downscale: int = 2, **gin_config) -> tuple[Tensor, Tensor, Tensor]:
    """The three GIN-IPA views of ``x`` [B, C, *S]: GIN1..3 drawn in that order, then the IPA mask.

    ``gin_config`` takes :class:`fedgin.GINConfig` fields (``in_channels``/``spatial_dims`` default to ``x``'s);
    ``spacing``, ``order``, ``downscale`` go to :func:`fedgin.augment.masks.ipa_mask`. On the Triton backend
    the views come from :func:`fedgin.kernels.gin_ipa_fused`: one stream launch for the three draws when they
    share kernel sizes (one per distinct kernel-size tuple otherwise) and one pass that renormalizes and blends.
    """
    gin_config.setdefault("in_channels", x.shape[1])
    gin_config.setdefault("spatial_dims", x.dim() - 2)
    cfg = make_config(**gin_config)
    draws = [GINParams.draw_config(x.shape[0], cfg, device=x.device, generator=generator) for _ in range(3)]
    backends = {resolve_backend(x, p, backend, check_finite=i == 0) for i, p in enumerate(draws)}
    mask = ipa_mask((x.shape[0], *x.shape[2:]), generator, device=x.device, spacing=spacing, order=order,
                    downscale=downscale).to(work_dtype(x))
    if backends == {"triton"}:
        from fedgin.kernels import gin_ipa_fused

        return gin_ipa_fused(x, draws, mask)
    g1, g2, g3 = (reference_apply(x, p) for p in draws)
    a, b = g1.to(mask.dtype), g2.to(mask.dtype)
    view1 = mask * a + (1 - mask) * b
    view2 = (1 - mask) * a + mask * b
    return view1.to(x.dtype), view2.to(x.dtype), g3


@register("gin")
class GINAugmentation(Augmentation):
    """fedgin's GIN: a fresh random network per call and view (options: GIN's, minus channels and dims)."""

    takes_gin_options = True

    def __init__(self, n_views: int = 1, backend: str = "auto", **gin_config) -> None:
        super().__init__(n_views)
        if backend not in BACKENDS:
            raise ValueError(f"unknown GIN backend {backend!r}; choose one of {BACKENDS}")
        self.backend = backend
        self.gin_config = gin_options("gin", gin_config)

    def views(self, x: Tensor, label: Tensor | None, generator: torch.Generator | None) -> tuple[Tensor, ...]:
        """``n_views`` draws; ``x`` is checked for non-finite values once (a reduction and a device sync), not per
        view, so the later views queue behind the first without waiting for the GPU."""
        return tuple(gin(x, generator, self.backend, check_finite=i == 0, **self.gin_config)
                     for i in range(self.n_views))


@register("gin_ipa")
class GINIPA(Augmentation):
    """GIN-IPA: the three views of :func:`gin_ipa_views` (``n_views`` is 3)."""

    takes_gin_options = True

    def __init__(self, backend: str = "auto", spacing: int = 24, order: int = 2, downscale: int = 2,
                 **gin_config) -> None:
        super().__init__(3)
        if backend not in BACKENDS:
            raise ValueError(f"unknown GIN backend {backend!r}; choose one of {BACKENDS}")
        check_ipa_options(spacing, order, downscale)
        self.backend, self.spacing, self.order, self.downscale = backend, spacing, order, downscale
        self.gin_config = gin_options("gin_ipa", gin_config)

    def views(self, x: Tensor, label: Tensor | None, generator: torch.Generator | None) -> tuple[Tensor, ...]:
        return gin_ipa_views(x, generator, self.backend, spacing=self.spacing, order=self.order,
                             downscale=self.downscale, **self.gin_config)
