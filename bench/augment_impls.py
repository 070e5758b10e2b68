"""The comparison augmentations (``fedgin.augment``) as suite rows: what users would pick instead of GIN, timed on
the same shapes. They are not GIN, so the suite does not check them against ``reference_apply``
(``reference_check=False``: reported as "not GIN: no reference check"). One call is what a trainer pays per
batch: ``gin_ipa`` makes its 3 views, the others one; label-aware methods get a synthetic label map.
"""
from __future__ import annotations

import torch
from torch import Tensor

from fedgin import GINParams, gin_apply, make_config, warm_up
from fedgin.augment import AUGMENTATIONS, GINIPA, GINAugmentation, SemanticRandConv, ipa_mask, make_augmentation

from .cases import Case, image_like
from .registry import Impl, Prepared, register

N_CLASSES = 5  # background + 4 organs, as the trainer's default
GIN_BASED = (GINAugmentation, GINIPA, SemanticRandConv)  # they draw GIN's kernel sizes per call
SUMMARIES = {
    "gin": "fedgin.augment 'gin' (gin(x): a fresh per-sample draw + gin_apply backend auto, per call)",
    "gin_ipa": "GIN-IPA: three GIN draws + the IPA B-spline mask blend (3 views per call)",
    "randconv": "RandConv-mix: one random conv per batch, k in {1,3,5,7}, mixed with the input",
    "pro_randconv": "Pro-RandConv: a random deformable conv block applied 1-10 times",
    "fmaug": "FMAug: two random Butterworth high-pass views (FFT) blended by a random mask",
    "raffesdg": "RaffeSDG: per-channel random Butterworth filters, smooth mask, output in [-1, 1]",
    "semantic_randconv": "semantic random conv: one GIN per label class, blended by smoothed label masks "
                         f"({N_CLASSES} classes, synthetic label map)",
}


def synthetic_label(case: Case, device: torch.device) -> Tensor:
    """Bands of ``N_CLASSES`` classes along the first spatial axis, [B, 1, *S] (the methods need regions only)."""
    first = case.size[0]
    band = torch.arange(first, device=device) * N_CLASSES // first
    shape = (1, 1, first) + (1,) * (case.dims - 1)
    return band.reshape(shape).expand(case.batch, 1, *case.size).contiguous()


def _prepare(name: str):
    def prepare(case: Case, device: torch.device) -> Prepared:
        aug = make_augmentation(name)
        label = synthetic_label(case, device) if aug.needs_label else None
        gen = torch.Generator(device=device).manual_seed(0)
        if isinstance(aug, GIN_BASED) and device.type == "cuda":
            # each draw picks kernel sizes: time the steady state, not the first compile of each tuple
            warm_up(image_like(case, device, gen), aug.backend, **aug.gin_config)

        def fn(x: Tensor, params: GINParams) -> Tensor:
            out = aug(x, label=label, generator=gen)
            return out[0] if isinstance(out, tuple) else out

        return fn

    return prepare


def _prepare_gin_ipa_unfused(case: Case, device: torch.device) -> Prepared:
    """GIN-IPA as it was before the fused views: three ``gin_apply`` calls and the mask blend in PyTorch."""
    gen = torch.Generator(device=device).manual_seed(0)
    cfg = make_config(in_channels=case.channels, spatial_dims=case.dims)
    if device.type == "cuda":
        warm_up(image_like(case, device, gen))

    def fn(x: Tensor, params: GINParams) -> Tensor:
        g1, g2, g3 = (gin_apply(x, GINParams.draw_config(x.shape[0], cfg, device=x.device, generator=gen))
                      for _ in range(3))
        m = ipa_mask((x.shape[0], *x.shape[2:]), gen, device=x.device)
        views = ((m * g1 + (1 - m) * g2).to(x.dtype), ((1 - m) * g1 + m * g2).to(x.dtype), g3)  # eager: all made
        return views[0]

    return fn


for _name, _summary in SUMMARIES.items():
    register(Impl(f"aug-{_name}", _summary, _prepare(_name), graphable=False, reference_check=False))
register(Impl("aug-gin_ipa-unfused", "GIN-IPA unfused: three gin_apply calls (backend auto) and the mask blend in "
              "PyTorch, the path aug-gin_ipa replaced on the Triton backend", _prepare_gin_ipa_unfused,
              graphable=False, reference_check=False))

if set(SUMMARIES) != set(AUGMENTATIONS) - {"none"}:  # a new method must be benchmarked too
    raise RuntimeError(f"bench/augment_impls.py lists {sorted(SUMMARIES)}; fedgin.augment has {sorted(AUGMENTATIONS)}")
