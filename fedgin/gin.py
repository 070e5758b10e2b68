"""The one dispatch point: ``gin_apply`` checks its input once and runs a backend."""
from __future__ import annotations

import itertools
from dataclasses import replace

import torch
from torch import Tensor

from fedgin.params import GINConfig, GINParams
from fedgin.reference import reference_apply

BACKENDS = ("auto", "reference", "triton")
_IO_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_input(x: Tensor, params: GINParams, *, check_finite: bool = True) -> None:
    """Raise a ``TypeError``/``ValueError`` naming what is wrong with ``x`` for ``params``."""
    cfg = params.config
    if not isinstance(x, Tensor):
        raise TypeError(f"GIN input must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"GIN input must be floating point (float32, float16 or bfloat16), got {x.dtype}")
    rank = cfg.spatial_dims + 2
    if x.dim() != rank:
        layout = "B, C, H, W" if cfg.spatial_dims == 2 else "B, C, D, H, W"
        raise ValueError(
            f"GIN input for {cfg.spatial_dims}D must have rank {rank} [{layout}], got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError("GIN input is an empty batch (B = 0)")
    if any(s == 0 for s in x.shape[2:]):
        raise ValueError(f"GIN input has an empty spatial size: {tuple(x.shape)}")
    if x.shape[0] != params.batch:
        raise ValueError(f"GIN params were drawn for batch {params.batch}, input has batch {x.shape[0]}")
    if x.shape[1] != cfg.in_channels:
        raise ValueError(f"GIN params expect {cfg.in_channels} input channels, input has {x.shape[1]}")
    if x.device != params.device:
        raise ValueError(f"GIN params are on {params.device}, input is on {x.device}; use params.to(x.device)")
    if x.requires_grad:
        raise ValueError("GIN is an augmentation without gradient: pass a tensor that does not require grad")
    if check_finite and not bool(torch.isfinite(x).all()):
        raise ValueError("GIN input contains non-finite values (NaN or Inf)")


def gin_apply(x: Tensor, params: GINParams, backend: str = "auto", *, check_finite: bool = True) -> Tensor:
    """Apply a drawn GIN to ``x`` [B, C, *S]; returns a new tensor of ``x``'s shape and dtype.

    ``backend``: ``"reference"`` (PyTorch), ``"triton"`` (the fused kernel; through Triton's interpreter
    for CPU tensors) or ``"auto"`` (Triton for CUDA tensors when the kernel supports the config, else
    the reference). ``check_finite`` costs one reduction and a device sync; trainers that already
    validated their data may turn it off.
    """
    if resolve_backend(x, params, backend, check_finite=check_finite) == "reference":
        return reference_apply(x, params)
    from fedgin.kernels import gin_fused

    return gin_fused(x, params)


def resolve_backend(x: Tensor, params: GINParams, backend: str = "auto", *, check_finite: bool = True) -> str:
    """Check ``x`` for ``params`` and name the backend that runs it, ``"reference"`` or ``"triton"``, with
    :func:`gin_apply`'s errors (an unknown backend, bad input, a call the Triton backend cannot run)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown GIN backend {backend!r}; choose one of {BACKENDS}")
    check_input(x, params, check_finite=check_finite)
    if backend == "auto":
        return "triton" if x.is_cuda and triton_supports(x, params) is None else "reference"
    if backend == "triton":
        if x.dtype not in _IO_DTYPES:
            raise TypeError(f"the Triton GIN backend takes float32, float16 or bfloat16, got {x.dtype}")
        reason = triton_supports(x, params)
        if reason is not None:
            raise ValueError(f"the Triton GIN backend cannot run this call: {reason}")
    return backend


def triton_supports(x: Tensor, params: GINParams) -> str | None:
    """``None`` if the fused kernel can run ``x`` with ``params``, else why not."""
    try:
        from fedgin.kernels import unsupported_reason
    except ImportError as err:  # triton missing on this machine
        return f"triton is not importable ({err})"
    return unsupported_reason(x, params)


def gin(x: Tensor, generator: torch.Generator | None = None, backend: str = "auto", *, check_finite: bool = True,
        **config) -> Tensor:
    """Draw a GIN for ``x``'s batch and apply it; ``config`` takes :class:`GINConfig`'s fields.

    ``in_channels`` and ``spatial_dims`` default to ``x``'s; ``check_finite``: :func:`gin_apply`'s.
    """
    _check_batch(x)
    config.setdefault("in_channels", x.shape[1])
    config.setdefault("spatial_dims", x.dim() - 2)
    params = GINParams.draw_config(x.shape[0], make_config(**config), device=x.device, generator=generator)
    return gin_apply(x, params, backend, check_finite=check_finite)


def warm_up(x: Tensor, backend: str = "auto", **config) -> int:
    """Run GIN once on ``x`` with each kernel-size tuple a draw of ``config`` can pick; return how many ran.

    On the Triton backend every new tuple compiles a kernel the first time a draw picks it (the default pool of
    sizes 1 and 3 over 4 layers has 16 tuples; on an H200, timing ``fedgin.augment``'s gin while it still drew new
    tuples gave 886 ms a call for 64x3x256², against 0.28 ms for the kernel): call this once before timing or
    training. Triton also caches the compiled kernels on disk, so
    a later process loads them. ``config``: :func:`gin`'s. The draws use a generator of their own, so the global
    random state, and a seeded run after this call, are unchanged.
    """
    _check_batch(x)
    config.setdefault("in_channels", x.shape[1])
    config.setdefault("spatial_dims", x.dim() - 2)
    cfg = make_config(**config)
    tuples = ([cfg.layer_kernel_sizes] if cfg.layer_kernel_sizes is not None
              else list(itertools.product(cfg.kernel_sizes, repeat=cfg.n_layers)))
    generator = torch.Generator().manual_seed(0)
    for ks in tuples:
        params = GINParams.draw_config(x.shape[0], replace(cfg, layer_kernel_sizes=ks), device=x.device,
                                       generator=generator)
        gin_apply(x, params, backend)
    return len(tuples)


def _check_batch(x: Tensor) -> None:
    """What a draw needs of ``x`` before any config is known: a non-empty 2D or 3D batch tensor."""
    if not isinstance(x, Tensor):
        raise TypeError(f"GIN input must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() not in (4, 5):
        raise ValueError(f"GIN input must be [B, C, H, W] or [B, C, D, H, W], got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError("GIN input is an empty batch (B = 0)")


def make_config(**config) -> GINConfig:
    """A :class:`GINConfig` from keyword options; an unknown key is an error naming it."""
    known = set(GINConfig.__dataclass_fields__)
    unknown = sorted(set(config) - known)
    if unknown:
        raise ValueError(f"unknown GIN option(s) {unknown}; known: {sorted(known)}")
    return GINConfig(**config)


class GIN(torch.nn.Module):
    """GIN as a module: holds the config, draws a fresh network for every call (batch-level, any device)."""

    def __init__(self, backend: str = "auto", **config) -> None:
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"unknown GIN backend {backend!r}; choose one of {BACKENDS}")
        self.config = make_config(**config)
        self.backend = backend

    @torch.no_grad()
    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        _check_batch(x)
        params = GINParams.draw_config(x.shape[0], self.config, device=x.device, generator=generator)
        return gin_apply(x, params, self.backend)

    def extra_repr(self) -> str:
        return f"{self.config}, backend={self.backend!r}"

