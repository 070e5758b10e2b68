"""FMAug and RaffeSDG's frequency augmentation: random Butterworth high-pass filters, mixed by random masks.

Sources: Li et al., "Frequency-mixed single-source domain generalization for medical image segmentation"
(FreeSDG, MICCAI 2023) and "RaffeSDG: Random frequency filtering enabled single-source domain generalization for
medical image segmentation" (2024); repository liamheng/Non-IID_Medical_Image_Segmentation:
``utils/augmentations/fmaug.py``, ``models/guided_filter_pytorch/ModifiedHFCFilter.py``, ``utils/mixup_mask.py``,
``models/raffesdg_segmentation_model.py`` and the README's training commands.

FMAug, per sample (the original runs per image in the data loader):

1. the image is min-max scaled to [0, 1] (the original's inputs are [0, 1] images);
2. two filters are drawn from a bank of Butterworth high-pass filters: cutoff ratios
   ``0.1 * (exp(4.1 * t) - 1) / (exp(4.1) - 1)`` for 12 values of t evenly spaced in [0, 1] (``d0_num`` 12,
   ``d0_max`` 0.1, ``remap_ratio`` 4.1) times orders n in {1, 2, 3}; the cutoff in frequency-index units is
   ``d0 = max(floor(ratio * min(S) / 2), 1)`` and the gain at integer frequency radius d is
   ``1 / (1 + (d0 / (d + 1)) ** (2 n))``: the DC keeps ``1 / (1 + d0^(2n))`` (at most 1/2) of its value, low
   frequencies are attenuated, and the gain tends to 1 at high frequencies (no phase change);
3. each filtered image is ``|ifft(H * fft(x))|``, then each channel is scaled so that its 3rd and 97th
   percentiles (of values quantized to 1/256, as in the original) map to 0 and 1 (not clipped);
4. the two are blended ``m * y1 + (1 - m) * y2`` with a mask drawn from ``patch``, ``grid``, ``smooth``
   (:func:`fedgin.augment.masks.mix_mask`).

RaffeSDG's augmentation is FMAug with its released configuration: one filter per channel
(``butterworth_per_channel``), identity "filters" making up a quarter of the bank (``--mixup_remain_original``:
12 identities among 48; an identity still gets the percentile scaling), only ``smooth`` masks
(``--mixup_type smooth``), and the result mapped to [-1, 1] by ``2 y - 1`` (``Normalize(0.5, 0.5)``).
Its network also reconstructs the high-frequency image (:func:`high_frequency_target`, 27-tap Gaussian with
sigma 9, ratio 4, clamped to [-1, 1]) with an MSE loss of weight 1 (``--lambda_high 1.0``,
``--reconstruction_loss MSELoss``): :mod:`fedgin.augment.heads`, :func:`fedgin.augment.losses.high_frequency_loss`.

Not reproduced: the field-of-view mask of fundus images (``sub_mask``; CT/MRI have none) and FreeSDG's own
released pipeline, which used Gaussian high-pass filters with patch mixing (``utils/gaussian_mixup.py``).
Deviation: the frequency radius is the true integer frequency (distance of ``min(i, n - i)`` per axis) where the
original measured distances to the corners of the 512 x 512 spectrum (off by one on half of the axes).
3D volumes use the 3D FFT and radius (an extension; the originals are 2D).
"""
from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import torch
from monai.networks.layers import separable_filtering
from torch import Tensor

from fedgin.augment.base import Augmentation, rand, randint, register
from fedgin.augment.masks import MIX_MASKS, mix_mask

CUTOFF_RATIOS = tuple(float(v) for v in 0.1 * (np.exp(4.1 * np.linspace(0, 1, 12)) - 1) / (np.exp(4.1) - 1))
ORDERS = (1, 2, 3)
EVAL_CUTOFF_RATIO, EVAL_ORDER = 0.005, 1  # the originals' test-time filter (``hfc_filter_in``)


def frequency_radius(spatial: Sequence[int], device: torch.device | str | None = None) -> Tensor:
    """Integer frequency radius of every FFT coefficient (unshifted layout), float64 [*S]."""
    axes = [torch.minimum(torch.arange(n, device=device), n - torch.arange(n, device=device)).double()
            for n in spatial]
    grids = torch.meshgrid(*axes, indexing="ij")
    return torch.sqrt(sum(g * g for g in grids))


def cutoff_index(ratio: float, spatial: Sequence[int]) -> int:
    """The cutoff ``d0`` in frequency-index units for a cutoff ratio (the original's rule)."""
    return int(max((ratio * min(spatial)) // 2, 1))


def butterworth_gain(spatial: Sequence[int], d0: float, order: int, device: torch.device | str | None = None) -> Tensor:
    """The Butterworth high-pass gain ``1 / (1 + (d0 / (d + 1)) ** (2 order))`` on the FFT grid, float64 [*S]."""
    return butterworth_at(frequency_radius(spatial, device), d0, order)


def butterworth_at(radius: Tensor, d0: float, order: int) -> Tensor:
    """The Butterworth high-pass gain at frequency radii ``radius`` (:func:`frequency_radius`)."""
    return 1.0 / (1.0 + (d0 / (radius + 1.0)) ** (2 * order))


def butterworth_highpass(x: Tensor, d0: float, order: int) -> Tensor:
    """High-pass ``x`` [B, C, *S] with the Butterworth gain over all spatial axes; real, float64 or float32."""
    dims = tuple(range(2, x.dim()))
    gain = butterworth_gain(x.shape[2:], d0, order, x.device).to(x.real.dtype if x.is_complex() else x.dtype)
    return torch.fft.ifftn(torch.fft.fftn(x, dim=dims) * gain, dim=dims).real


def percentile_normalize(y: Tensor, threshold: float = 3.0) -> Tensor:
    """Scale each sample and channel so its ``threshold``-th and ``100 - threshold``-th percentiles map to 0 and 1.

    The percentiles are taken on values quantized to 1/256 (truncation toward zero, as the original); the
    output is not clipped. A channel whose two percentiles coincide is only shifted.
    """
    flat = y.flatten(2)
    ordered = (torch.trunc(flat * 256) / 256).sort(dim=-1).values
    lo, hi = (_percentile(ordered, p) for p in (threshold, 100 - threshold))
    span = torch.where(hi > lo, hi - lo, torch.ones_like(hi))
    return ((flat - lo) / span).reshape(y.shape)


def _percentile(ordered: Tensor, p: float) -> Tensor:
    """``numpy.percentile``'s default (linear) percentile ``p`` of sorted values along the last axis, keepdim."""
    pos = p / 100 * (ordered.shape[-1] - 1)
    below = int(pos)
    above = min(below + 1, ordered.shape[-1] - 1)
    frac = pos - below
    return ordered[..., below:below + 1] + frac * (ordered[..., above:above + 1] - ordered[..., below:below + 1])


def minmax01(x: Tensor) -> Tensor:
    """Each sample min-max scaled to [0, 1] over all channels and voxels (a constant sample becomes 0)."""
    flat = x.flatten(1)
    lo, hi = flat.amin(1, keepdim=True), flat.amax(1, keepdim=True)
    return ((flat - lo) / torch.where(hi > lo, hi - lo, torch.ones_like(hi))).reshape(x.shape)


def high_frequency_target(x: Tensor, kernel_size: int = 27, sigma: float = 9.0, ratio: float = 4.0) -> Tensor:
    """RaffeSDG's reconstruction target: ``clamp(ratio * (x01 - G * x01), -1, 1)``, float32 [B, C, *S].

    ``x01`` is each sample min-max scaled to [0, 1]; ``G`` a separable Gaussian of ``kernel_size`` taps and
    standard deviation ``sigma`` (``cv2.getGaussianKernel(27, 9)`` in the original), replicate padding.
    """
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"high_frequency_target kernel_size must be an odd positive integer, got {kernel_size!r}")
    if not sigma > 0:
        raise ValueError(f"high_frequency_target sigma must be > 0, got {sigma!r}")
    x01 = minmax01(x.detach().float())
    taps = torch.arange(kernel_size, device=x.device, dtype=torch.float32) - kernel_size // 2
    kernel = torch.exp(-taps ** 2 / (2 * sigma ** 2))
    low = separable_filtering(x01, kernel / kernel.sum(), mode="replicate")
    return torch.clamp(ratio * (x01 - low), -1.0, 1.0)


def _unit(x: Tensor) -> Tensor:
    """``x`` min-max scaled per sample (:func:`minmax01`), computed in float32 unless ``x`` is float64."""
    return minmax01(x if x.dtype == torch.float64 else x.float())


@register("fmaug")
class FMAug(Augmentation):
    """FMAug: two random Butterworth high-pass views blended by a random mask (defaults: the ``FMAug`` class)."""

    def __init__(self, n_views: int = 1, cutoff_ratios: Sequence[float] = CUTOFF_RATIOS,
                 orders: Sequence[int] = ORDERS, per_channel: bool = False, identity_fraction: float = 0.0,
                 masks: Sequence[str] = MIX_MASKS, percentile: float = 3.0) -> None:
        super().__init__(n_views)
        self.cutoff_ratios = (float(cutoff_ratios),) if np.isscalar(cutoff_ratios) else tuple(
            float(r) for r in cutoff_ratios)
        self.orders = (orders,) if np.isscalar(orders) else tuple(orders)
        self.masks = (masks,) if isinstance(masks, str) else tuple(masks)
        if not self.cutoff_ratios or any(not 0 <= r <= 1 for r in self.cutoff_ratios):
            raise ValueError(f"{self.name}: cutoff_ratios must be a non-empty list of values in [0, 1], "
                             f"got {cutoff_ratios!r}")
        if not self.orders or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in self.orders):
            raise ValueError(f"{self.name}: orders must be a non-empty list of integers >= 1, got {orders!r}")
        if not 0 <= identity_fraction < 1:
            raise ValueError(f"{self.name}: identity_fraction must be in [0, 1), got {identity_fraction!r}")
        bad = [m for m in self.masks if m not in MIX_MASKS]
        if not self.masks or bad:
            raise ValueError(f"{self.name}: masks must be a non-empty list from {MIX_MASKS}, got {masks!r}")
        if not 0 <= percentile < 50:
            raise ValueError(f"{self.name}: percentile must be in [0, 50), got {percentile!r}")
        self.per_channel, self.identity_fraction, self.percentile = bool(per_channel), identity_fraction, percentile

    def filtered(self, x01: Tensor, generator: torch.Generator | None) -> Tensor:
        """One random filter-bank draw per sample (and channel if ``per_channel``), percentile-normalized."""
        b, c, spatial, dev = x01.shape[0], x01.shape[1], tuple(x01.shape[2:]), x01.device
        n_filt = c if self.per_channel else 1
        n_bank = len(self.cutoff_ratios) * len(self.orders)
        pick = randint(n_bank, (b, n_filt), generator, dev).tolist()
        identity = (rand((b, n_filt), generator, dev) < self.identity_fraction).tolist()
        radius = frequency_radius(spatial, dev)
        cache: dict[tuple[int, int] | None, Tensor] = {None: torch.ones_like(radius)}
        gains = []
        for i, j in itertools.product(range(b), range(n_filt)):
            key = None
            if not identity[i][j]:
                ratio = self.cutoff_ratios[pick[i][j] // len(self.orders)]
                key = (cutoff_index(ratio, spatial), self.orders[pick[i][j] % len(self.orders)])
            if key not in cache:
                cache[key] = butterworth_at(radius, *key)
            gains.append(cache[key])
        return self._normalized_magnitude(x01, torch.stack(gains).reshape(b, n_filt, *spatial))

    def _normalized_magnitude(self, x01: Tensor, gain: Tensor) -> Tensor:
        """``|ifft(gain * fft(x01))|`` (float64), percentile-normalized, in ``x01``'s dtype (the originals'
        ``get_hfc`` and ``HFCFilter.forward``)."""
        dims = tuple(range(2, x01.dim()))
        out = torch.fft.ifftn(torch.fft.fftn(x01.double(), dim=dims) * gain, dim=dims).abs()
        return percentile_normalize(out.to(x01.dtype), self.percentile)

    def augment(self, x: Tensor, label: Tensor | None, generator: torch.Generator | None) -> Tensor:
        x01 = _unit(x)
        y1 = self.filtered(x01, generator)
        y2 = self.filtered(x01, generator)
        kind = self.masks[int(randint(len(self.masks), (1,), generator, x.device))]
        mask = mix_mask(kind, (x.shape[0], *x.shape[2:]), generator, device=x.device).to(y1.dtype)
        return self.finish(mask * y1 + (1 - mask) * y2).to(x.dtype)

    def finish(self, y: Tensor) -> Tensor:
        """The last step of the pipeline: FMAug returns the blend as is."""
        return y

    def eval_input(self, x: Tensor) -> Tensor:
        """The network never reads a raw image: at validation and test it reads the image through the originals'
        fixed test-time filter (``FourierButterworthHFCFilter(butterworth_d0_ratio=0.005, butterworth_n=1)``:
        cutoff ratio :data:`EVAL_CUTOFF_RATIO`, order :data:`EVAL_ORDER`), normalized and finished as a view."""
        x01 = _unit(x)
        gain = butterworth_gain(x.shape[2:], cutoff_index(EVAL_CUTOFF_RATIO, x.shape[2:]), EVAL_ORDER, x.device)
        return self.finish(self._normalized_magnitude(x01, gain)).to(x.dtype)


@register("raffesdg")
class RaffeSDG(FMAug):
    """RaffeSDG's augmentation: FMAug with per-channel filters, 1/4 identities, smooth masks, output 2 y - 1."""

    def __init__(self, n_views: int = 1, cutoff_ratios: Sequence[float] = CUTOFF_RATIOS,
                 orders: Sequence[int] = ORDERS, per_channel: bool = True, identity_fraction: float = 0.25,
                 masks: Sequence[str] = ("smooth",), percentile: float = 3.0) -> None:
        super().__init__(n_views, cutoff_ratios, orders, per_channel, identity_fraction, masks, percentile)

    def finish(self, y: Tensor) -> Tensor:
        return 2 * y - 1

