"""Would packed half-precision math keep GIN within the 1e-2 bound? An emulation on the CPU.

``python -m tools.kernel_lab.half_math [--size N] [--seeds K]``. The GIN stack is computed with every multiply-add
rounded to bfloat16 or float16 (as ``HFMA2``/``HFMA2.BF16`` would: one rounding per fused multiply-add, weights and
biases rounded too), or with each plane's half-precision partial sum added to a float32 accumulator, the mix and
renormalization in float64, and compared with the float64 reference on CT-like intensities (up to ~500). ``prescaled``:
the layer-1 input is divided by its maximum and each layer's weights by the square root of its fan-in, biases by the
running product; leaky ReLU is positively homogeneous, so dividing the stack's output by that product gives the same
GIN, with every activation near 1 instead of 10^2 to 10^5 (float16's largest value is 65504). The findings are in
bench/NOTES.md (v1.4). """
from __future__ import annotations

import argparse
import math
import statistics

import torch
import torch.nn.functional as F

from fedgin import GINParams, reference_apply

STACKS = {"4 layers 3^3, M 2": ((3, 3, 3, 3), 2), "8 layers 3^3, M 8": ((3,) * 8, 8)}
# (name, half dtype, prescaled, float32 accumulation of each plane's half-precision partial sum)
MATH = (("bfloat16", torch.bfloat16, False, False), ("float16", torch.float16, False, False),
        ("float16 prescaled", torch.float16, True, False), ("bfloat16 prescaled", torch.bfloat16, True, False),
        ("float16 prescaled, fp32 sum of planes", torch.float16, True, True),
        ("bfloat16 prescaled, fp32 sum of planes", torch.bfloat16, True, True))


def _conv_rounded(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor, dtype: torch.dtype, plane_sums: bool
                  ) -> torch.Tensor:
    """One 3D conv of ``h`` [Cin, D, H, W] (values of ``dtype``, held in float32) accumulated tap by tap in ``dtype``;
    ``plane_sums``: each input channel's k x k taps of one plane in ``dtype``, their sum added in float32."""
    k = w.shape[-1]
    r = k // 2
    size = h.shape[1:]
    hp = F.pad(h, (r,) * 6)
    acc = torch.zeros((w.shape[0], *size))
    w = w.to(dtype).float()
    for ci in range(w.shape[1]):
        for a in range(k):
            part = torch.zeros_like(acc) if plane_sums else acc
            for c in range(k):
                for e in range(k):
                    tap = hp[ci, a:a + size[0], c:c + size[1], e:e + size[2]]
                    # the product of two half values is exact in float32: one rounding, as in a fused multiply-add
                    part = (part + w[:, ci, a, c, e, None, None, None] * tap).to(dtype).float()
            acc = acc + part if plane_sums else part
    if plane_sums:
        return (acc + b.float()[:, None, None, None]).to(dtype).float()
    return (acc + b.to(dtype).float()[:, None, None, None]).to(dtype).float()


def half_math_gin(x: torch.Tensor, params: GINParams, dtype: torch.dtype, prescale: bool,
                  plane_sums: bool = False) -> torch.Tensor:
    """GIN of one 3D sample ``x`` [1, C, D, H, W] with the conv stack in ``dtype`` arithmetic (float64 result)."""
    slope = params.config.slope
    scale = 1.0 / float(x.abs().max()) if prescale else 1.0
    h = (x[0].float() * scale).to(dtype).float()
    last = len(params.kernel_sizes) - 1
    for layer, (w, b) in enumerate(zip(params.weights, params.biases, strict=True)):
        w = w[0].float()
        if prescale:
            c = 1.0 / math.sqrt(w[0].numel())
            w, scale = w * c, scale * c
        h = _conv_rounded(h, w, b[0].float() * scale, dtype, plane_sums)
        if layer < last:
            h = torch.where(h >= 0, h, (h * slope).to(dtype).float())
    alpha = float(params.alphas[0])
    xd = x.double()
    mixed = alpha * h.double()[None] / scale + (1 - alpha) * xd
    return mixed * (xd.norm() / (mixed.norm() + params.config.eps))


def errors(size: int, seeds: int) -> dict[tuple[str, str], list[float]]:
    """Relative error ||out - ref|| / ||ref|| per (stack, arithmetic), one per seed (inf where it overflowed)."""
    out: dict[tuple[str, str], list[float]] = {}
    for stack, (ks, interm) in STACKS.items():
        for seed in range(seeds):
            g = torch.Generator().manual_seed(seed)
            x = (torch.rand((1, 3, size, size, size), generator=g) * 400 + 100).double()
            params = GINParams.draw(1, in_channels=3, interm_channels=interm, n_layers=len(ks), spatial_dims=3,
                                    layer_kernel_sizes=ks, generator=g)
            ref = reference_apply(x, params)
            for name, dtype, prescale, plane_sums in MATH:
                got = half_math_gin(x, params, dtype, prescale, plane_sums)
                err = float((got - ref).norm() / ref.norm())
                out.setdefault((stack, name), []).append(err if math.isfinite(err) else math.inf)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.kernel_lab.half_math", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=24, help="volume edge (default 24)")
    parser.add_argument("--seeds", type=int, default=6, help="draws per stack (default 6)")
    args = parser.parse_args(argv)
    print(f"| stack | arithmetic | median error | max error (of {args.seeds} draws, {args.size}^3 x 3 channels) |")
    print("|---|---|---:|---:|")
    for (stack, name), errs in errors(args.size, args.seeds).items():
        print(f"| {stack} | {name} | {statistics.median(errs):.1e} | {max(errs):.1e} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
