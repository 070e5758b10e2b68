"""GIN and GIN-IPA as augmentations (Ouyang et al., "Causality-inspired single-source domain generalization for
medical image segmentation", IEEE TMI 2022; repository cheng-01037/Causality-Medical-Image-Domain-Generalization).

``gin``: fedgin's GIN (``docs/gin.md`` states every default), ``n_views`` independent draws in one call.

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
from fedgin.gin import BACKENDS, check_finite_on_cpu, check_tensor, draw_seed, gin_views, make_config, seeded_backend


def gin_ipa_views(x: Tensor, generator: torch.Generator | None = None, backend: str = "auto", *, spacing: int = 24,
                  order: int = 2, downscale: int = 2, seed: int | None = None,
                  **gin_config) -> tuple[Tensor, Tensor, Tensor]:
    """The three GIN-IPA views of ``x`` [B, C, *S]: GIN1..3 the views of one seeded call (:func:`fedgin.gin_views`,
    its seed drawn first from ``generator``, or ``seed``), then the IPA mask from ``generator``.

    ``gin_config`` takes :class:`fedgin.GINConfig` fields (``in_channels``/``spatial_dims`` default to ``x``'s);
    ``spacing``, ``order``, ``downscale`` go to :func:`fedgin.augment.masks.ipa_mask`. On the Triton backend
    the views come from :func:`fedgin.kernels.launch.gin_ipa_seeded`: one stream launch draws and runs the three
    networks, one pass renormalizes and blends.
    """
    gin_config.setdefault("in_channels", x.shape[1])
    gin_config.setdefault("spatial_dims", x.dim() - 2)
    cfg = make_config(**gin_config)
    check_tensor(x, cfg)
    name = seeded_backend(x.device, x.dtype, cfg, backend)
    if seed is None:
        seed = draw_seed(generator)
    mask = ipa_mask((x.shape[0], *x.shape[2:]), generator, device=x.device, spacing=spacing, order=order,
                    downscale=downscale).to(work_dtype(x))
    if name == "triton":
        check_finite_on_cpu(x, True)
        from fedgin.kernels.launch import Seeded, gin_ipa_seeded

        return gin_ipa_seeded(x, Seeded(cfg, seed, cfg.views_sizes(seed, 3), 3), mask)
    g1, g2, g3 = gin_views(x, 3, backend="reference", seed=seed, **gin_config)
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
        """``n_views`` draws in one call (:func:`fedgin.gin_views`: on a GPU one stream launch and one scale launch,
        no sync)."""
        return tuple(gin_views(x, self.n_views, generator, self.backend, **self.gin_config))


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
