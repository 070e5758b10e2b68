"""Pro-RandConv (Choi et al., "Progressive Random Convolutions for Single Domain Generalization", CVPR 2023).

One random convolution block is drawn per batch and call, and applied ``L`` times in a row (the same block,
weights shared), ``L`` uniform in {1, ..., ``max_repeats``}. The block is

    deformable conv (random offsets) -> per-sample, per-channel standardization -> affine (gamma, beta) -> tanh

so the output lies in (-1, 1); nothing rescales it afterwards. Values (the paper has no public code; the values
marked (?) are recalled from the paper and agree with two unofficial reproductions, but were not re-checked
against the paper's text):

- kernel size 3 (paper); weights N(0, sigma_w^2), sigma_w = 1 / sqrt(C_in * k^d) (He init, paper), multiplied
  elementwise by a Gaussian window ``exp(-|p|^2 / (2 sigma_g^2))`` over the tap offsets p, sigma_g ~ U(eps, 1)
  (paper), eps = 1e-3 (?);
- offsets N(0, sigma_d^2) i.i.d. per sample, tap, axis and voxel, sigma_d ~ U(eps, b_d) per batch; b_d = 0.5 (?):
  the paper's value for 224-pixel images (it uses 0.2 for 32-pixel digits (?)), the closer match for CT/MRI slices;
- gamma ~ N(0, 0.5^2), beta ~ N(0, 0.5^2) per channel (?);
- ``max_repeats`` L_max = 10 (paper, digits);
- standardization eps 1e-5 (our choice).

The paper uses torchvision's deformable convolution; torchvision is not a dependency here, so the deformable
sampling is ``F.grid_sample`` (bilinear / trilinear, zeros outside, all kernel taps in one call), which with zero
offsets is exactly the zero-padded convolution. 3D (trilinear, k^3 taps) is an extension; the paper is 2D.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from fedgin.augment.base import Augmentation, rand, randint, randn, register, work_dtype


@dataclass
class ProRandConvBlock:
    """One draw of the block: weight [C, C, k^d], offsets [B, k^d, d, *S] (voxels), gamma/beta [C], repeats."""

    weight: Tensor
    offsets: Tensor
    gamma: Tensor
    beta: Tensor
    repeats: int


def deformable_conv(x: Tensor, weight: Tensor, offsets: Tensor) -> Tensor:
    """Deformable convolution of ``x`` [B, C, *S] (zero padding, stride 1, one offset group).

    ``offsets`` [B, k^d, d, *S] shifts every tap's sampling point, in voxels along the spatial axes in order;
    tap ``m`` enumerates the kernel positions in row-major order, like ``weight[:, :, i, j(, l)]``.
    """
    return _deformable_conv(x, weight, deformable_grid(offsets, weight.shape[-1]))


def deformable_grid(offsets: Tensor, kernel_size: int) -> Tensor:
    """The ``grid_sample`` grid of every tap's sampling points, taps stacked along the first spatial axis:
    [B, k^d * S_0, S_1, ..., d], normalized for ``align_corners=True`` (reusable across repetitions)."""
    b, taps, dims, *spatial = offsets.shape
    r = kernel_size // 2
    dev, dtype = offsets.device, offsets.dtype
    base = torch.stack(torch.meshgrid(*[torch.arange(s, device=dev, dtype=dtype) for s in spatial], indexing="ij"))
    shifts = torch.tensor(list(itertools.product(range(-r, r + 1), repeat=dims)), device=dev, dtype=dtype)
    if shifts.shape[0] != taps:
        raise ValueError(f"offsets have {taps} taps, a kernel of size {kernel_size} in {dims}D has {shifts.shape[0]}")
    scale = torch.tensor([2.0 / max(s - 1, 1) for s in spatial], device=dev, dtype=dtype)
    view = (1, taps, dims) + (1,) * dims
    pos = (base + shifts.reshape(view) + offsets) * scale.reshape(1, 1, dims, *[1] * dims) - 1
    grid = pos.flip(2).movedim(2, -1)  # grid_sample wants (x, y[, z]) = the axes reversed, last
    return grid.reshape(b, taps * spatial[0], *spatial[1:], dims)


def _deformable_conv(x: Tensor, weight: Tensor, grid: Tensor) -> Tensor:
    """Sample every tap with one ``grid_sample`` call, then contract taps and input channels with ``weight``."""
    b, c, *spatial = x.shape
    sampled = F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode="zeros", align_corners=True)
    sampled = sampled.reshape(b, c, -1, *spatial)  # [B, C, taps, *S]
    return torch.einsum("oct,bct...->bo...", weight.reshape(*weight.shape[:2], -1), sampled)


@register("pro_randconv")
class ProRandConv(Augmentation):
    """Pro-RandConv: see the module docstring for the sources of the defaults and the uncertain ones."""

    def __init__(self, n_views: int = 1, kernel_size: int = 3, max_repeats: int = 10, offset_std_max: float = 0.5,
                 gamma_std: float = 0.5, beta_std: float = 0.5, eps: float = 1e-3, deformable: bool = True) -> None:
        super().__init__(n_views)
        if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"Pro-RandConv kernel_size must be an odd positive integer, got {kernel_size!r}")
        if isinstance(max_repeats, bool) or not isinstance(max_repeats, int) or max_repeats < 1:
            raise ValueError(f"Pro-RandConv max_repeats must be an integer >= 1, got {max_repeats!r}")
        if not 0 < eps < 1:
            raise ValueError(f"Pro-RandConv eps must be in (0, 1), got {eps!r}")
        if not offset_std_max >= eps:
            raise ValueError(f"Pro-RandConv offset_std_max must be >= eps ({eps}), got {offset_std_max!r}")
        for name, value in (("gamma_std", gamma_std), ("beta_std", beta_std)):
            if not value >= 0:
                raise ValueError(f"Pro-RandConv {name} must be >= 0, got {value!r}")
        self.kernel_size, self.max_repeats, self.offset_std_max = kernel_size, max_repeats, offset_std_max
        self.gamma_std, self.beta_std, self.eps, self.deformable = gamma_std, beta_std, eps, bool(deformable)

    def draw(self, x: Tensor, generator: torch.Generator | None = None) -> ProRandConvBlock:
        """Draw the block for a batch shaped like ``x`` (on ``x``'s device, in float32)."""
        b, c, spatial, dev = x.shape[0], x.shape[1], tuple(x.shape[2:]), x.device
        dims, k = len(spatial), self.kernel_size
        r = k // 2
        weight = randn((c, c) + (k,) * dims, generator, dev) / math.sqrt(c * k ** dims)
        sigma_g = self.eps + (1 - self.eps) * rand((1,), generator, dev)
        taps = torch.stack(torch.meshgrid(*[torch.arange(-r, r + 1, device=dev)] * dims, indexing="ij"))
        window = torch.exp(-(taps.float() ** 2).sum(0) / (2 * sigma_g ** 2))
        weight = weight * window
        sigma_d = self.eps + (self.offset_std_max - self.eps) * rand((1,), generator, dev)
        shape = (b, k ** dims, dims, *spatial)
        offsets = randn(shape, generator, dev) * sigma_d if self.deformable else torch.zeros(shape, device=dev)
        gamma = randn((c,), generator, dev) * self.gamma_std
        beta = randn((c,), generator, dev) * self.beta_std
        repeats = 1 + int(randint(self.max_repeats, (1,), generator, dev))
        return ProRandConvBlock(weight, offsets, gamma, beta, repeats)

    @staticmethod
    def apply(x: Tensor, block: ProRandConvBlock) -> Tensor:
        """Apply ``block`` ``block.repeats`` times; the result (in ``x``'s dtype) lies in [-1, 1]."""
        work = work_dtype(x)
        h = x.to(work)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        weight = block.weight.to(work)
        grid = deformable_grid(block.offsets.to(work), weight.shape[-1])
        gamma, beta = block.gamma.to(work).reshape(shape), block.beta.to(work).reshape(shape)
        for _ in range(block.repeats):
            h = _deformable_conv(h, weight, grid)
            flat = h.flatten(2)
            mean = flat.mean(-1).reshape(*h.shape[:2], *[1] * (h.dim() - 2))
            var = flat.var(-1, unbiased=False).reshape(mean.shape)
            h = torch.tanh(gamma * (h - mean) / torch.sqrt(var + 1e-5) + beta)
        return h.to(x.dtype)

    def augment(self, x: Tensor, label: Tensor | None, generator: torch.Generator | None) -> Tensor:
        return self.apply(x, self.draw(x, generator))
