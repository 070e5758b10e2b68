"""What the suite measures: cases (shape, dtype, layer stack), the named presets, and the draws for a case."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from fedgin import GINConfig, GINParams

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
K3333 = (3, 3, 3, 3)
K1313 = (1, 3, 1, 3)  # one fixed draw from the original's pool (1, 3), so that timings are repeatable
K3X8 = (3,) * 8


@dataclass(frozen=True)
class Case:
    """One GIN call: batch, channels, spatial size, I/O dtype and the per-layer kernel sizes of the draw.

    ``heavy`` names the costly implementations (see :class:`bench.registry.Impl`) that run on this case in
    presets other than ``full``; elsewhere they are skipped with that reason.
    """

    batch: int
    channels: int
    size: tuple[int, ...]
    dtype: str = "fp32"
    kernel_sizes: tuple[int, ...] = K3333
    interm: int = 2
    heavy: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; choose one of {sorted(DTYPES)}")
        if len(self.size) not in (2, 3):
            raise ValueError(f"a case is 2D or 3D, got spatial size {self.size}")
        GINConfig(in_channels=self.channels, interm_channels=self.interm, n_layers=len(self.kernel_sizes),
                  kernel_sizes=self.kernel_sizes, spatial_dims=len(self.size))  # validates

    @property
    def dims(self) -> int:
        return len(self.size)

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.batch, self.channels, *self.size)

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def pixels(self) -> int:
        """Pixels (voxels) per batch: B * prod(spatial)."""
        return self.batch * math.prod(self.size)

    @property
    def elements(self) -> int:
        return self.pixels * self.channels

    @property
    def min_bytes(self) -> int:
        """The least traffic a call can have: the input read once and the output written once."""
        return 2 * self.elements * self.torch_dtype.itemsize

    @property
    def id(self) -> str:
        """A stable key, e.g. ``2d-b64-c3-256x256-fp32-k3333`` (anchors are matched on it)."""
        size = "x".join(map(str, self.size))
        ks = "".join(map(str, self.kernel_sizes))
        return f"{self.dims}d-b{self.batch}-c{self.channels}-{size}-{self.dtype}-k{ks}-m{self.interm}"

    @property
    def label(self) -> str:
        """A readable name, e.g. ``2D 64x3x256² fp32 k3333``."""
        side = self.size[0] if len(set(self.size)) == 1 else None
        size = f"{side}{'²' if self.dims == 2 else '³'}" if side else "x".join(map(str, self.size))
        ks = "".join(map(str, self.kernel_sizes))
        return f"{self.dims}D {self.batch}x{self.channels}x{size} {self.dtype} k{ks}"

    def config(self, per_sample: bool = True) -> GINConfig:
        return GINConfig(in_channels=self.channels, interm_channels=self.interm, n_layers=len(self.kernel_sizes),
                         kernel_sizes=tuple(sorted(set(self.kernel_sizes))), spatial_dims=self.dims,
                         per_sample=per_sample, layer_kernel_sizes=self.kernel_sizes)


SHARED = "shared_network"  # a plan-sweep candidate's key beside make_plan's: time it on a one-network draw


def split_candidate(candidate: dict) -> tuple[dict, bool]:
    """(``make_plan`` keywords, whether the draw shares one network for the batch) of a plan-sweep candidate."""
    return {k: v for k, v in candidate.items() if k != SHARED}, bool(candidate.get(SHARED, False))


def draw_params(case: Case, device: torch.device | str, per_sample: bool = True,
                generator: torch.Generator | None = None) -> GINParams:
    """A GIN draw for ``case`` with exactly its per-layer kernel sizes (drawn on the CPU, moved to ``device``).

    ``per_sample=False`` draws one network for the whole batch (the FedGIN authors' configuration).
    """
    return GINParams.draw_config(case.batch, case.config(per_sample), device=device, generator=generator)


def image_like(case: Case, device: torch.device | str, generator: torch.Generator) -> Tensor:
    """Random positive image-like values in the case's dtype (never zeros: they time and check nothing)."""
    shape = case.shape
    x = torch.rand(shape, generator=generator, device=device) * 2
    x += torch.randn(shape, generator=generator, device=device).abs()
    return x.to(case.torch_dtype)


@dataclass(frozen=True)
class E2ECase:
    """A segmentation training step (MONAI UNet, bf16 autocast, ``views`` GIN views) around a GIN case."""

    gin: Case
    unet_channels: tuple[int, ...] = (32, 64, 128, 256)
    strides: tuple[int, ...] = (2, 2, 2)
    classes: int = 5
    views: int = 2

    @property
    def label(self) -> str:
        return f"UNet{'-'.join(map(str, self.unet_channels))} step, {self.gin.label}, {self.views} views"


@dataclass(frozen=True)
class Preset:
    """A named list of GIN cases and training-step cases."""

    name: str
    summary: str
    cases: tuple[Case, ...]
    e2e: tuple[E2ECase, ...] = ()


HEAVY = ("compile", "authors")


def _quick() -> Preset:
    cases = (
        Case(4, 3, (128, 128), heavy=HEAVY),
        Case(4, 3, (128, 128), kernel_sizes=K1313),
        Case(2, 1, (128, 128), "bf16"),
        Case(2, 3, (96, 96), "fp16", K3X8),
        Case(1, 1, (32, 32, 32)),
        Case(1, 3, (24, 24, 24), "bf16", K1313),
        Case(1, 1, (16, 16)),  # small enough for Triton's interpreter on the CPU
    )
    e2e = (E2ECase(Case(2, 3, (64, 64), kernel_sizes=K1313, heavy=("authors",)), (8, 16, 32), (2, 2)),
           E2ECase(Case(1, 1, (32, 32, 32), kernel_sizes=K1313), (8, 16, 32), (2, 2)))
    return Preset("quick", "CPU-sized smoke run (seconds to a minute)", cases, e2e)


def _paper() -> Preset:
    """The training shapes: 2D B=20-64 at 192²-256² (and the anchors' 8x1x512²), 3D B=2 at 128³.

    Ordered by importance: a run cut short by its time budget loses the tail.
    """
    cases = (
        Case(64, 3, (256, 256), heavy=HEAVY), Case(2, 3, (128,) * 3, heavy=("compile",)),
        Case(32, 3, (192, 192)), Case(32, 3, (192, 192), kernel_sizes=K1313),
        Case(64, 3, (256, 256), kernel_sizes=K1313), Case(64, 3, (256, 256), "bf16"),
        Case(64, 3, (256, 256), "fp16"), Case(64, 3, (256, 256), kernel_sizes=K3X8),
        Case(8, 1, (256, 256), heavy=("authors",)), Case(8, 1, (512, 512)), Case(8, 1, (512, 512), kernel_sizes=K1313),
        Case(2, 1, (128,) * 3), Case(4, 1, (96,) * 3), Case(2, 3, (128,) * 3, "bf16"),
        Case(2, 3, (128,) * 3, "fp16"),  # the two-pass fp16 path (v1.1's norms-only barrier, bench/NOTES.md)
        Case(2, 3, (128,) * 3, kernel_sizes=K1313),
        Case(20, 3, (192, 192)), Case(20, 3, (256, 256)), Case(32, 3, (256, 256)), Case(64, 3, (192, 192)),
        Case(32, 1, (192, 192)), Case(32, 3, (192, 192), "bf16"),
    )
    e2e = (E2ECase(Case(32, 3, (192, 192), kernel_sizes=K1313, heavy=("authors",))),
           E2ECase(Case(2, 1, (128,) * 3, kernel_sizes=K1313)))
    return Preset("paper", "the training shapes on a GPU (sized for about 3 minutes on an H100)", cases, e2e)


def _full() -> Preset:
    """The whole matrix: 2D and 3D, batches, sizes, C = 1 and 3, three dtypes, three layer stacks."""
    cases = []
    for dtype in DTYPES:
        for ks in (K3333, K1313, K3X8):
            for c in (1, 3):
                cases += [Case(b, c, (s, s), dtype, ks) for s in (128, 192, 256, 512) for b in (8, 32, 64)
                          if b * s * s <= 64 * 256 * 256]
                cases += [Case(b, c, (s,) * 3, dtype, ks) for s in (64, 96, 128) for b in (1, 2, 4)
                          if b * s**3 <= 2 * 128**3]
    return Preset("full", "every combination (long: hours with torch.compile on every shape)", tuple(cases),
                  _paper().e2e)


PRESETS = {p.name: p for p in (_quick(), _paper(), _full())}


def get_preset(name: str) -> Preset:
    """The preset called ``name``; an unknown name is an error listing the known ones."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]
