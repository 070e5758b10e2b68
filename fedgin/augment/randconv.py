"""RandConv (Xu et al., "Robust and Generalizable Visual Representation Learning via Random Convolutions",
ICLR 2021; repository wildphoton/RandConv, ``lib/networks/rand_conv.py`` and ``exp_mnist10k.sh``).

One random convolution per batch (shared by all samples; a new one per call and view):

- kernel size uniform over ``kernel_sizes`` = (1, 3, 5, 7) (``-ks 1 3 5 7`` in the authors' digit experiments);
- weights ``nn.init.kaiming_normal_(w, nonlinearity='conv2d')``: N(0, 1 / fan_in), fan_in = C_in * k^d;
  zero padding ``k // 2``, stride 1, C_out = C_in;
- no bias (``rand_bias`` False by default; when on, U(-1/sqrt(fan_in), 1/sqrt(fan_in)) as in their code);
- RandConv-mix (``mixing`` True, the authors' best "RC_mix" setting): ``out = alpha * conv(x) + (1 - alpha) * x``
  with one alpha ~ U(0, 1) per batch, so alpha = 0 is the identity;
- ``identity_prob`` (default 0.0; 0.5 in their "RC_img" setting): the probability that the call returns ``x``.

Not reproduced: the optional clamp of the output to the dataset's value range (``clamp_output``, needs the data
mean and std; off by default). The authors train with a consistency loss between the predictions of the clean
image and two RandConv views (weight 10 for RC_mix, 5 for RC_img): :func:`fedgin.augment.losses.kl_consistency`.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from fedgin.augment.base import Augmentation, rand, randint, randn, register, work_dtype

_CONV = {2: F.conv2d, 3: F.conv3d}


def random_conv(x: Tensor, weight: Tensor, bias: Tensor | None = None, alpha: float | Tensor | None = None) -> Tensor:
    """Apply one convolution (zero padding k // 2) to ``x`` [B, C, *S]; mix ``alpha * conv + (1 - alpha) * x``.

    ``weight`` is [C_out, C_in, k, k(, k)] shared by the batch; ``alpha`` None means no mixing.
    Computes in float32 (float64 for float64 input); returns ``x``'s dtype.
    """
    work = work_dtype(x)
    xw = x.to(work)
    k = weight.shape[-1]
    out = _CONV[x.dim() - 2](xw, weight.to(work), None if bias is None else bias.to(work), padding=k // 2)
    if alpha is not None:
        out = alpha * out + (1 - alpha) * xw
    return out.to(x.dtype)


@register("randconv")
class RandConv(Augmentation):
    """RandConv(-mix): see the module docstring for the sources of the defaults."""

    def __init__(self, n_views: int = 1, kernel_sizes: Sequence[int] = (1, 3, 5, 7), mixing: bool = True,
                 identity_prob: float = 0.0, rand_bias: bool = False) -> None:
        super().__init__(n_views)
        sizes = (kernel_sizes,) if isinstance(kernel_sizes, int) else tuple(kernel_sizes)
        if not sizes or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 or k % 2 == 0 for k in sizes):
            raise ValueError(f"RandConv kernel_sizes must be a non-empty list of odd positive integers, got "
                             f"{kernel_sizes!r}")
        if not 0.0 <= identity_prob <= 1.0:
            raise ValueError(f"RandConv identity_prob must be in [0, 1], got {identity_prob!r}")
        self.kernel_sizes, self.mixing, self.identity_prob, self.rand_bias = sizes, bool(mixing), identity_prob, \
            bool(rand_bias)

    def augment(self, x: Tensor, label: Tensor | None, generator: torch.Generator | None) -> Tensor:
        dims, c, dev = x.dim() - 2, x.shape[1], x.device
        k = self.kernel_sizes[int(randint(len(self.kernel_sizes), (1,), generator, dev))]
        fan_in = c * k ** dims
        weight = randn((c, c) + (k,) * dims, generator, dev) / math.sqrt(fan_in)
        bias = (2 * rand((c,), generator, dev) - 1) / math.sqrt(fan_in) if self.rand_bias else None
        alpha = rand((1,), generator, dev) if self.mixing else None
        keep = bool(rand((1,), generator, dev) < self.identity_prob)
        if keep:
            return x.clone()
        return random_conv(x, weight, bias, None if alpha is None else alpha.to(work_dtype(x)))
