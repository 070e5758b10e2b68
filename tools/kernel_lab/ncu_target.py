"""The headline stream kernels, for Nsight Compute (``bench/gpu.sh``'s ``ncu`` step).

``python -m tools.kernel_lab.ncu_target 2d|3d`` runs GIN on 2D 64x3x256² or 3D 2x3x128³ (fp32, 4 layers 3x3, a draw a
sample) twice with ``make_plan``'s plan (the seeded call's), then twice with the candidate (:data:`CANDIDATES`: 2D
bands of 64 rows, bench/NOTES.md v1.12; 3D the weights as kernel arguments, a launch a sample, an explicit draw's
default since v1.13). The first call of each compiles; the second runs between ``cudaProfilerStart`` and
``cudaProfilerStop``, so ``ncu --profile-from-start off`` profiles exactly the second calls' stream launches, whatever
their number (the 3D candidate launches once a sample). """
from __future__ import annotations

import sys

import torch

from fedgin.bench.cases import Case, draw_params, image_like
from fedgin.kernels import gin_fused, make_plan

CASES = {"2d": Case(64, 3, (256, 256)), "3d": Case(2, 3, (128,) * 3)}
CANDIDATES = {"2d": {"th": 4, "zc": 64}, "3d": {"wargs": True}}


def run_plans(case: Case, candidates: tuple[dict, ...], device: torch.device) -> list[torch.Tensor]:
    """GIN on ``case`` twice with each plan (``make_plan`` overrides; one draw, one input), the second call under
    the CUDA profiler on a GPU; the second outputs."""
    gen = torch.Generator(device=device).manual_seed(0)
    x = image_like(case, device, gen)
    params = draw_params(case, device, generator=torch.Generator().manual_seed(0))
    outs = []
    for overrides in candidates:
        plan = make_plan(case.shape, case.kernel_sizes, case.interm, **overrides)
        gin_fused(x, params, plan=plan)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.profiler.start()
        out = gin_fused(x, params, plan=plan)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.profiler.stop()
        outs.append(out)
        print(f"{case.label} {overrides or 'default'}: ran twice ({plan})", flush=True)
    return outs


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in CASES:
        print(f"usage: python -m tools.kernel_lab.ncu_target {'|'.join(CASES)}", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("tools.kernel_lab.ncu_target needs a CUDA device", file=sys.stderr)
        return 1
    run_plans(CASES[argv[0]], ({}, CANDIDATES[argv[0]]), torch.device("cuda"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
