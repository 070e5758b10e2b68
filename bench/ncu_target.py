"""The headline stream kernels once each, for Nsight Compute (``bench/gpu.sh``'s ``ncu`` step).

``python -m bench.ncu_target 2d|3d`` runs GIN with the default plan on 2D 64x3x256² or 3D 2x3x128³ (fp32, 4 layers
3x3) twice: the first call compiles, ``ncu --launch-skip 1 --launch-count 1`` profiles the second (see ``gpu.sh``).
"""
from __future__ import annotations

import sys

import torch

from fedgin import gin_apply

from .cases import Case, draw_params, image_like

CASES = {"2d": Case(64, 3, (256, 256)), "3d": Case(2, 3, (128,) * 3)}


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in CASES:
        print(f"usage: python -m bench.ncu_target {'|'.join(CASES)}", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("bench.ncu_target needs a CUDA device", file=sys.stderr)
        return 1
    device = torch.device("cuda")
    for case in (CASES[argv[0]],):
        gen = torch.Generator(device=device).manual_seed(0)
        x = image_like(case, device, gen)
        params = draw_params(case, device, generator=torch.Generator().manual_seed(0))
        for _ in range(2):
            gin_apply(x, params, backend="triton", check_finite=False)
        torch.cuda.synchronize()
        print(f"{case.label}: ran twice", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
