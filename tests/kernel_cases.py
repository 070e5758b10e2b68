"""Shared helpers for the kernel tests: explicit draws and the float64 comparison."""
from __future__ import annotations

import torch

from fedgin import GINParams, reference_apply
from fedgin.kernels import launch

TOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}


def draw(shape, kernel_sizes, interm=2, per_sample=True, seed=0, device="cpu") -> GINParams:
    """A draw for ``shape`` whose per-layer kernel sizes are exactly ``kernel_sizes``."""
    return GINParams.draw(shape[0], in_channels=shape[1], interm_channels=interm, n_layers=len(kernel_sizes),
                          spatial_dims=len(shape) - 2, per_sample=per_sample, layer_kernel_sizes=tuple(kernel_sizes),
                          device=device, generator=torch.Generator().manual_seed(seed))


def image_like(shape, dtype, seed=0, device="cpu") -> torch.Tensor:
    """Fresh random positive image-like values (never zeros)."""
    g = torch.Generator().manual_seed(1000 + seed)
    return (torch.rand(shape, generator=g) * 2 + torch.randn(shape, generator=g).abs()).to(dtype).to(device)


def rel_error(out: torch.Tensor, x: torch.Tensor, params: GINParams) -> float:
    """||out - ref|| / ||ref|| against the float64 reference on the same (already rounded) input."""
    ref = reference_apply(x.double(), params)
    assert not torch.isnan(out).any(), "unwritten (NaN-poisoned) or NaN output"
    return float((out.double() - ref).norm() / ref.norm())


def assert_plan_covers(plan, size, kernel_sizes) -> None:
    """``plan``'s tiles, less their in-plane halo, cover a sample of spatial ``size`` (and fit a CTA)."""
    halo = sum(k // 2 for k in kernel_sizes[1:])
    assert 1 <= plan.num_warps <= 16 and plan.tw > 2 * halo
    assert plan.n_wt * (plan.tw - 2 * halo) >= size[-1]
    if plan.bands:
        assert plan.n_zt * plan.th * plan.zc >= size[0]
    else:
        assert plan.th > 2 * halo and plan.n_pt * (plan.th - 2 * halo) >= size[1]
        assert plan.n_zt * plan.zc >= size[0]


def count_launches(monkeypatch) -> list[str]:
    """From now on, the names of the kernels :mod:`fedgin.kernels.launch` launches, in order."""
    launched: list[str] = []
    runner = launch._runner

    class Counting:
        def __init__(self, name, kernel):
            self.name, self.kernel = name, kernel

        def __getitem__(self, grid):
            launched.append(self.name)
            return self.kernel[grid]

    monkeypatch.setattr(launch, "_runner", lambda name, x: Counting(name, runner(name, x)))
    return launched
