"""GIN's random parameters: the draw, kept separate from the application."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import Tensor

from fedgin import draw


@dataclass(frozen=True)
class GINConfig:
    """What a GIN network looks like; everything a draw needs besides the batch size."""

    in_channels: int = 3
    out_channels: int | None = None
    interm_channels: int = 2
    n_layers: int = 4
    kernel_sizes: tuple[int, ...] = (1, 3)  # the pool each layer draws from (one int: that size)
    spatial_dims: int = 2
    per_sample: bool = True
    slope: float = 0.01
    eps: float = 1e-5
    layer_kernel_sizes: tuple[int, ...] | None = None  # fix each layer's size instead of drawing from the pool

    def __post_init__(self) -> None:
        if self.out_channels is None:
            object.__setattr__(self, "out_channels", self.in_channels)
        for name in ("in_channels", "out_channels", "interm_channels", "n_layers", "spatial_dims"):
            value = getattr(self, name)
            if isinstance(value, bool) or int(value) != value:
                raise ValueError(f"GIN {name} must be an integer, got {value!r}")
            object.__setattr__(self, name, int(value))
            if name != "n_layers" and value < 1:
                raise ValueError(f"GIN {name} must be >= 1, got {value}")
        if isinstance(self.kernel_sizes, int):  # one size for every layer
            object.__setattr__(self, "kernel_sizes", (self.kernel_sizes,))
        if any(isinstance(k, bool) or int(k) != k for k in self.kernel_sizes):
            raise ValueError(f"GIN kernel sizes must be odd positive integers, got {self.kernel_sizes}")
        object.__setattr__(self, "kernel_sizes", tuple(int(k) for k in self.kernel_sizes))
        if self.layer_kernel_sizes is not None:
            fixed = tuple(self.layer_kernel_sizes)
            if len(fixed) != self.n_layers:
                raise ValueError(f"GIN layer_kernel_sizes {fixed} must give one size per layer ({self.n_layers})")
            if any(isinstance(k, bool) or int(k) != k or k < 1 or k % 2 == 0 for k in fixed):
                raise ValueError(f"GIN kernel sizes must be odd and positive, got {fixed}")
            object.__setattr__(self, "layer_kernel_sizes", tuple(int(k) for k in fixed))
        if self.out_channels != self.in_channels:
            raise ValueError(
                f"GIN mixes its output with the input, so out_channels ({self.out_channels}) "
                f"must equal in_channels ({self.in_channels})"
            )
        if self.n_layers < 2:
            raise ValueError(f"GIN n_layers must be >= 2, got {self.n_layers}")
        if not self.kernel_sizes:
            raise ValueError("GIN kernel_sizes pool is empty")
        for k in self.kernel_sizes:
            if k < 1 or k % 2 == 0:
                raise ValueError(f"GIN kernel sizes must be odd and positive, got {k}")
        if self.spatial_dims not in (2, 3):
            raise ValueError(f"GIN spatial_dims must be 2 or 3, got {self.spatial_dims}")
        if not self.eps > 0:
            raise ValueError(f"GIN eps must be > 0, got {self.eps}")

    def channels(self) -> list[tuple[int, int]]:
        """(C_in, C_out) of every layer: C_in -> M -> ... -> M -> C_out."""
        m, n = self.interm_channels, self.n_layers
        return [(self.in_channels if l == 0 else m, self.out_channels if l == n - 1 else m) for l in range(n)]

    def max_sizes(self) -> tuple[int, ...]:
        """Each layer's largest kernel size: its fixed size, or the pool's largest (the seeded draw's weight cube)."""
        return self.layer_kernel_sizes or (max(self.kernel_sizes),) * self.n_layers

    def seeded_sizes(self, seed: int) -> tuple[int, ...]:
        """The kernel sizes the seeded draw of ``seed`` gives each layer (:mod:`fedgin.draw`)."""
        return self.layer_kernel_sizes or draw.kernel_sizes(seed, self.kernel_sizes, self.n_layers)

    def views_sizes(self, seed: int, views: int) -> tuple[int, ...]:
        """Each layer's largest drawn size among the ``views`` views of ``seed`` (view ``v`` draws with
        ``seed + v * draw.VIEW_STRIDE``): the kernel sizes of the one launch that runs them all."""
        sizes = self.seeded_sizes(seed)
        for v in range(1, views):
            sizes = tuple(map(max, sizes, self.seeded_sizes(seed + v * draw.VIEW_STRIDE)))
        return sizes


@dataclass
class GINParams:
    """One draw of GIN for a batch: per-layer kernel sizes (shared), per-sample weights, biases, alphas."""

    kernel_sizes: tuple[int, ...]
    weights: list[Tensor]
    biases: list[Tensor]
    alphas: Tensor
    config: GINConfig = field(default_factory=GINConfig)
    _host: GINParams | None = field(default=None, repr=False, compare=False)  # the CPU draw it was moved from

    @property
    def batch(self) -> int:
        return int(self.alphas.shape[0])

    @property
    def device(self) -> torch.device:
        return self.alphas.device

    @classmethod
    def draw(
        cls,
        batch: int,
        in_channels: int = 3,
        out_channels: int | None = None,
        interm_channels: int = 2,
        n_layers: int = 4,
        kernel_sizes: int | tuple[int, ...] = (1, 3),
        spatial_dims: int = 2,
        per_sample: bool = True,
        slope: float = 0.01,
        eps: float = 1e-5,
        layer_kernel_sizes: tuple[int, ...] | None = None,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> GINParams:
        """Draw kernel sizes (one per layer, shared by the batch), N(0,1) weights and biases, U(0,1) alphas.

        ``layer_kernel_sizes`` fixes every layer's size instead (benchmarks and tests use it).

        The numbers come from ``generator`` (or the global RNG) on the generator's device and are then
        moved to ``device``, so one seed gives the same network whatever device or backend applies it.
        With ``per_sample=False`` one network serves the whole batch (alphas stay per sample).
        """
        cfg = GINConfig(in_channels, out_channels, interm_channels, n_layers, kernel_sizes,
                        spatial_dims, per_sample, slope, eps, layer_kernel_sizes)
        return cls.draw_config(batch, cfg, device=device, generator=generator)

    @classmethod
    def draw_config(cls, batch: int, cfg: GINConfig, device: torch.device | str | None = None,
                    generator: torch.Generator | None = None) -> GINParams:
        """:meth:`draw` from a :class:`GINConfig`."""
        if int(batch) < 1:
            raise ValueError(f"GIN needs a non-empty batch, got batch={batch}")
        gen_device = generator.device if generator is not None else torch.device("cpu")
        n_nets = batch if cfg.per_sample else 1
        pool = cfg.kernel_sizes
        ks, ws, bs = [], [], []
        for layer, (cin, cout) in enumerate(cfg.channels()):
            if cfg.layer_kernel_sizes is not None:
                k = cfg.layer_kernel_sizes[layer]
            else:
                k = pool[int(torch.randint(len(pool), (1,), generator=generator, device=gen_device))]
            shape = (n_nets, cout, cin) + (k,) * cfg.spatial_dims
            w = torch.randn(shape, generator=generator, device=gen_device)
            b = torch.randn((n_nets, cout), generator=generator, device=gen_device)
            ks.append(k)
            ws.append(w)
            bs.append(b)
        alphas = torch.rand((batch,), generator=generator, device=gen_device)
        drawn = cls(tuple(ks), [w.expand(batch, *w.shape[1:]) for w in ws], [b.expand(batch, -1) for b in bs],
                    alphas, cfg)
        dev = torch.device(device) if device is not None else gen_device
        if dev == gen_device:
            return drawn
        *moved, alphas = to_device([*ws, *bs, alphas], dev)  # the unexpanded draw: one copy of a shared network
        ws, bs = moved[:len(ws)], moved[len(ws):]
        return cls(tuple(ks), [w.expand(batch, *w.shape[1:]) for w in ws], [b.expand(batch, -1) for b in bs],
                   alphas, cfg, drawn if gen_device.type == "cpu" and dev.type != "cpu" else None)

    @classmethod
    def from_seed(cls, batch: int, cfg: GINConfig, seed: int, device: torch.device | str | None = None) -> GINParams:
        """The seeded draw of ``seed`` (:mod:`fedgin.draw`): the network the fused kernel draws on the device for the
        same seed, computed here on the host (moved to ``device``, keeping its CPU copy)."""
        if int(batch) < 1:
            raise ValueError(f"GIN needs a non-empty batch, got batch={batch}")
        if not 0 <= seed < 2**draw.SEED_BITS + 8 * draw.VIEW_STRIDE:
            raise ValueError(f"a GIN seed must be in [0, 2^{draw.SEED_BITS}), got {seed}")
        layers, kms, d = cfg.channels(), cfg.max_sizes(), cfg.spatial_dims
        draw.check_counters(batch, layers, kms, d)
        ks = cfg.seeded_sizes(seed)
        nets = np.arange(batch if cfg.per_sample else 1)
        blocks = draw.sample_block(seed, nets, layers, kms, d)
        alphas = blocks[:, -1] if cfg.per_sample else draw.alphas(seed, np.arange(batch), layers, kms, d)
        n = len(nets)
        weights, biases, at = [], [], 0
        for (cin, cout), k, km in zip(layers, ks, kms, strict=True):
            cube = blocks[:, at:at + cout * cin * km**d].reshape(n, cout, cin, *(km,) * d)
            lo = (km - k) // 2
            weights.append(torch.from_numpy(np.ascontiguousarray(cube[(...,) + (slice(lo, lo + k),) * d])))
            at += cout * cin * km**d
            biases.append(torch.from_numpy(np.ascontiguousarray(blocks[:, at:at + cout])))
            at += cout
        host = cls(ks, [w.expand(batch, *w.shape[1:]) for w in weights], [b.expand(batch, -1) for b in biases],
                   torch.from_numpy(np.ascontiguousarray(alphas)), cfg)
        return host if device is None or torch.device(device).type == "cpu" else host.to(device)

    def to(self, device: torch.device | str) -> GINParams:
        """The same draw on another device (moved from the CPU, it keeps its CPU copy: :meth:`on_host`)."""
        device = torch.device(device)
        n = len(self.weights)
        *moved, alphas = to_device([*self.weights, *self.biases, self.alphas], device)
        host = self if self.device.type == "cpu" else self._host
        return replace(self, weights=moved[:n], biases=moved[n:], alphas=alphas,
                       _host=None if device.type == "cpu" else host)

    @property
    def has_host_copy(self) -> bool:
        """Whether :meth:`on_host` returns without waiting for a device (a CPU draw, or one moved from the CPU)."""
        return self.device.type == "cpu" or self._host is not None

    def on_host(self) -> GINParams:
        """The same draw on the CPU: itself, the copy it was moved from, or a copy (which waits for the GPU)."""
        if self.device.type == "cpu":
            return self
        return self._host if self._host is not None else self.to("cpu")


def to_device(parts: list[Tensor], device: torch.device) -> list[Tensor]:
    """``parts`` (tensors of one dtype) on ``device`` in one copy: packed into one buffer, pinned and copied without
    blocking the host when it goes from the CPU to a GPU, unpacked as views. A copy per tensor from pageable memory
    blocks the host until the GPU's queue reaches it, a stall per tensor in a training loop (bench/NOTES.md, v1.5)."""
    if all(p.device == device for p in parts):
        return parts
    if len({(p.device, p.dtype) for p in parts}) > 1:  # nothing to pack them with: one copy each
        return [p.to(device) for p in parts]
    flat = [p.reshape(-1) for p in parts]
    if parts[0].device.type == "cpu" and device.type == "cuda":
        # packed straight into pinned memory: Tensor.pin_memory() first asks the driver whether the buffer is pinned,
        # 2.0 of 3.9 ms of five draws' and calls' host time on an H200's host (bench/NOTES.md, v1.9 measured)
        pinned = torch.empty(sum(f.numel() for f in flat), dtype=parts[0].dtype, pin_memory=True)
        flat = torch.cat(flat, out=pinned).to(device, non_blocking=True)
    else:
        flat = torch.cat(flat).to(device)
    return [v.view(p.shape) for v, p in zip(flat.split([p.numel() for p in parts]), parts, strict=True)]
