"""The one dispatch point: ``gin_apply`` checks its input once and runs a backend."""
from __future__ import annotations

import functools
import itertools
import numbers
import threading
from collections.abc import Callable

import torch
from torch import Tensor

from fedgin import draw
from fedgin.params import GINConfig, GINParams
from fedgin.reference import reference_apply

BACKENDS = ("auto", "reference", "triton")
_IO_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_input(x: Tensor, params: GINParams, *, check_finite: bool = True) -> None:
    """Raise a ``TypeError``/``ValueError`` naming what is wrong with ``x`` for ``params``."""
    check_tensor(x, params.config)
    if x.shape[0] != params.batch:
        raise ValueError(f"GIN params were drawn for batch {params.batch}, input has batch {x.shape[0]}")
    if x.device != params.device:
        raise ValueError(f"GIN params are on {params.device}, input is on {x.device}; use params.to(x.device)")
    check_finite_on_cpu(x, check_finite)


def check_tensor(x: Tensor, cfg: GINConfig) -> None:
    """The checks that need only ``x``'s metadata: type, dtype, rank, sizes, channels, gradient."""
    if not isinstance(x, Tensor):
        raise TypeError(f"GIN input must be a torch.Tensor, got {type(x).__name__}")
    check_layout(tuple(x.shape), x.dtype, cfg)
    check_no_grad(x)


def check_layout(shape: tuple[int, ...], dtype: torch.dtype, cfg: GINConfig) -> None:
    """:func:`check_tensor`'s checks of the dtype, rank, sizes and channels."""
    if not dtype.is_floating_point:
        raise TypeError(f"GIN input must be floating point (float32, float16 or bfloat16), got {dtype}")
    rank = cfg.spatial_dims + 2
    if len(shape) != rank:
        layout = "B, C, H, W" if cfg.spatial_dims == 2 else "B, C, D, H, W"
        raise ValueError(f"GIN input for {cfg.spatial_dims}D must have rank {rank} [{layout}], got shape {shape}")
    if shape[0] == 0:
        raise ValueError("GIN input is an empty batch (B = 0)")
    if any(s == 0 for s in shape[2:]):
        raise ValueError(f"GIN input has an empty spatial size: {shape}")
    if shape[1] != cfg.in_channels:
        raise ValueError(f"GIN params expect {cfg.in_channels} input channels, input has {shape[1]}")


def check_no_grad(x: Tensor) -> None:
    if x.requires_grad:
        raise ValueError("GIN is an augmentation without gradient: pass a tensor that does not require grad")


def check_finite_on_cpu(x: Tensor, check_finite: bool) -> None:
    """On the CPU, a ``ValueError`` now for non-finite input; on a GPU nothing here (no sync): the kernels count such
    samples on the device and :func:`check_errors` raises for them."""
    if check_finite and x.device.type == "cpu" and not bool(torch.isfinite(x).all()):
        raise ValueError("GIN input contains non-finite values (NaN or Inf)")


def check_errors(device: torch.device | str | None = None) -> None:
    """Raise a ``ValueError`` if GIN calls on ``device`` (default: the current CUDA device) met non-finite input since
    the last check, then reset the count. Reading the count waits for the device: call it where the loop
    synchronizes anyway (fedgin's trainer: after each local epoch, and when a loss is not finite). Those samples'
    outputs are NaN. On the CPU a checked call raises at once; only unchecked kernel calls count there."""
    device = torch.device(device if device is not None else "cuda")
    if not triton_available():
        return  # nothing counts without the kernels (the reference on a GPU counts into their counter)
    count = _error_counter(device)
    bad = int(count.item())
    if bad:
        count.zero_()
        raise ValueError(f"GIN input contained non-finite values (NaN or Inf) in {bad} sample(s) on {device} since "
                         "the last check; their augmented outputs are NaN")


def _error_counter(device: torch.device) -> Tensor:
    from fedgin.kernels.launch import error_counter

    return error_counter(device)


def gin_apply(x: Tensor, params: GINParams, backend: str = "auto", *, check_finite: bool = True) -> Tensor:
    """Apply a drawn GIN to ``x`` [B, C, *S]; returns a new tensor of ``x``'s shape and dtype.

    ``backend``: ``"reference"`` (PyTorch), ``"triton"`` (the fused kernel; through Triton's interpreter
    for CPU tensors) or ``"auto"`` (Triton for CUDA tensors when the kernel supports the config, else
    the reference). ``check_finite``: on the CPU, non-finite input raises a ``ValueError`` at once; on a GPU the
    call never waits for the device, and :func:`check_errors` raises for such input later.
    """
    if resolve_backend(x, params, backend, check_finite=check_finite) == "reference":
        return _count_errors(reference_apply(x, params))
    from fedgin.kernels import gin_fused

    return gin_fused(x, params)


def _count_errors(out: Tensor) -> Tensor:
    """On a GPU, add the samples of the reference's output that are not finite to the error count (no sync)."""
    if out.device.type != "cpu" and triton_available():
        _error_counter(out.device).add_(out.flatten(1).sum(1).isfinite().logical_not().sum())
    return out


def resolve_backend(x: Tensor, params: GINParams, backend: str = "auto", *, check_finite: bool = True) -> str:
    """Check ``x`` for ``params`` and name the backend that runs it, ``"reference"`` or ``"triton"``, with
    :func:`gin_apply`'s errors (an unknown backend, bad input, a call the Triton backend cannot run)."""
    _check_backend(backend)
    check_input(x, params, check_finite=check_finite)
    return _pick(backend, x.device, x.dtype, lambda: triton_supports(x, params))


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"unknown GIN backend {backend!r}; choose one of {BACKENDS}")


def _pick(backend: str, device: torch.device, dtype: torch.dtype, reason: Callable[[], str | None]) -> str:
    """The backend that runs a call on ``device``: ``reason()`` says why the kernel cannot, or ``None``."""
    if backend == "auto":
        return "triton" if device.type == "cuda" and reason() is None else "reference"
    if backend == "triton":
        if dtype not in _IO_DTYPES:
            raise TypeError(f"the Triton GIN backend takes float32, float16 or bfloat16, got {dtype}")
        why = reason()
        if why is not None:
            raise ValueError(f"the Triton GIN backend cannot run this call: {why}")
    return backend


def triton_supports(x: Tensor, params: GINParams) -> str | None:
    """``None`` if the fused kernel can run ``x`` with ``params``, else why not."""
    if not triton_available():
        return "triton is not importable"
    from fedgin.kernels import unsupported_reason

    return unsupported_reason(x, params)


@functools.cache
def triton_available() -> bool:
    try:
        import fedgin.kernels  # noqa: F401
    except ImportError:  # triton missing on this machine
        return False
    return True


def gin(x: Tensor, generator: torch.Generator | None = None, backend: str = "auto", *, seed: int | None = None,
        check_finite: bool = True, **config) -> Tensor:
    """Draw a GIN for ``x``'s batch and apply it: :func:`gin_views` with one view."""
    _check_batch(x)
    return _views(x, _config(x, config), 1, generator, backend, seed, check_finite)[0]


def gin_views(x: Tensor, views: int = 1, generator: torch.Generator | None = None, backend: str = "auto", *,
              seed: int | None = None, check_finite: bool = True, **config) -> Tensor:
    """``views`` independent GIN draws applied to ``x`` [B, C, *S], as [views, B, C, *S].

    ``config`` takes :class:`GINConfig`'s fields (``in_channels`` and ``spatial_dims`` default to ``x``'s). The
    networks are the seeded draw (:mod:`fedgin.draw`, :meth:`GINParams.from_seed`) of one seed a call: ``seed``, or
    one taken from ``generator`` (a CPU generator, default the global RNG), view ``v`` drawing with
    ``seed + v * 2^31``; the same seed gives the same networks on every backend. On a GPU the kernel draws them:
    a call is at most two launches (float16: three), with no host-device copy and no sync. Where the host cannot
    know the seed (a CUDA ``generator``, a CUDA-graph capture, ``torch.compile``), it is drawn on the device from
    PyTorch's CUDA RNG (each graph replay draws anew) and the kernels run each layer at the pool's largest size,
    a smaller drawn kernel as its centre. ``check_finite``: :func:`gin_apply`'s.
    """
    _check_batch(x)
    _check_views(views)
    return _views(x, _config(x, config), views, generator, backend, seed, check_finite)


def _views(x: Tensor, cfg: GINConfig, views: int, generator: torch.Generator | None, backend: str,
           seed: int | None, check_finite: bool) -> Tensor:
    """The call path of :func:`gin_views` and :class:`GIN`: everything that depends only on the call's shape, dtype,
    device, config, backend and views is resolved once (:func:`_route`); a call then draws a seed and launches."""
    check_no_grad(x)
    if torch.compiler.is_compiling():  # one opaque op, the seed a tensor: no graph break (the op checks the rest)
        seed_t = (torch.full((1,), _check_seed(seed), dtype=torch.int64, device=x.device) if seed is not None
                  else torch.randint(0, 2**draw.SEED_BITS, (1,), device=x.device, generator=generator))
        return torch.ops.fedgin.gin_views(x, seed_t, views, backend, *_op_config(cfg))
    route = _route(x.shape, x.dtype, x.device, cfg, backend, views)
    if seed is None and route.triton and x.is_cuda and (
            (generator is not None and generator.device.type == "cuda") or torch.cuda.is_current_stream_capturing()):
        return _device_seed_views(x, cfg, views, torch.randint(0, 2**draw.SEED_BITS, (1,), device=x.device,
                                                               generator=generator))
    seed = _check_seed(seed) if seed is not None else draw_seed(generator)
    check_finite_on_cpu(x, check_finite)
    if not route.triton:
        return _reference_views(x, cfg, views, seed)
    return route.launch(x, seed)


class _Route:
    """A seeded call's resolved path: the backend, and on the Triton backend the launcher of each kernel-size tuple
    (:func:`fedgin.kernels.launch.seeded_call`), built the first time a draw picks it."""

    def __init__(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, cfg: GINConfig,
                 backend: str, views: int) -> None:
        self.shape, self.dtype, self.device, self.cfg, self.views = shape, dtype, device, cfg, views
        self.triton = seeded_backend(device, dtype, cfg, backend) == "triton"
        self.calls: dict[tuple[int, ...], object] = {}

    def launch(self, x: Tensor, seed: int) -> Tensor:
        """The views of ``x`` drawn with ``seed``, in one launch at each layer's largest size among them."""
        ks = self.cfg.views_sizes(seed, self.views)
        call = self.calls.get(ks)
        if call is None:
            from fedgin.kernels.launch import seeded_call

            call = self.calls[ks] = seeded_call(self.shape, self.dtype, self.device, self.cfg, ks, self.views)
        return call(x, seed)


@functools.lru_cache(maxsize=256)
def _route(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, cfg: GINConfig, backend: str,
           views: int) -> _Route:
    """The checks of a call's shape, dtype, config and backend (their errors are raised on every call: a failure is
    not cached), then its :class:`_Route`."""
    shape = tuple(shape)
    check_layout(shape, dtype, cfg)
    draw.check_counters(shape[0], cfg.channels(), cfg.max_sizes(), cfg.spatial_dims)
    return _Route(shape, dtype, device, cfg, backend, views)


def draw_seed(generator: torch.Generator | None) -> int:
    """A call's seed: one draw of :data:`fedgin.draw.SEED_BITS` bits from ``generator`` (default the global RNG)."""
    return int(_seed_buffer().random_(0, 2**draw.SEED_BITS, generator=generator))


_local = threading.local()


def _seed_buffer() -> Tensor:
    """This thread's 0-d int64 tensor the seeds are drawn into (allocating one a call costs more than the draw)."""
    try:
        return _local.seed
    except AttributeError:
        with torch.inference_mode(False):  # a normal tensor: an inference tensor refuses in-place draws outside
            _local.seed = torch.empty((), dtype=torch.int64)
        return _local.seed


def _reference_views(x: Tensor, cfg: GINConfig, views: int, seed: int) -> Tensor:
    outs = [reference_apply(x, GINParams.from_seed(x.shape[0], cfg, seed + v * draw.VIEW_STRIDE, device=x.device))
            for v in range(views)]
    return _count_errors(torch.stack(outs))


def _device_seed_views(x: Tensor, cfg: GINConfig, views: int, seed: Tensor) -> Tensor:
    """The fused kernel's views from a seed on the device: every layer at the pool's largest size (the host cannot
    read the seed to pick the sizes)."""
    from fedgin.kernels.launch import Seeded, gin_seeded

    return gin_seeded(x, Seeded(cfg, seed, cfg.max_sizes(), views))


@functools.lru_cache(maxsize=256)
def seeded_backend(device: torch.device, dtype: torch.dtype, cfg: GINConfig, backend: str) -> str:
    """:func:`resolve_backend` for a seeded call (its errors; any drawn kernel size must suit the kernel)."""
    _check_backend(backend)

    def reason() -> str | None:
        probe = torch.empty((1, cfg.in_channels) + (1,) * cfg.spatial_dims, dtype=dtype)  # its device: below
        why = triton_supports(probe, _Shape(cfg))
        if why is None and device.type not in ("cuda", "cpu"):
            why = f"device {device} (CUDA, or the CPU through Triton's interpreter)"
        return why

    return _pick(backend, device, dtype, reason)


class _Shape:
    """What :func:`fedgin.kernels.unsupported_reason` reads of a draw: the config and the largest kernel sizes."""

    def __init__(self, cfg: GINConfig) -> None:
        self.config = cfg
        self.kernel_sizes = cfg.max_sizes()


def _check_views(views: int) -> None:
    if type(views) is not int and (isinstance(views, bool) or not isinstance(views, numbers.Integral)) or views < 1:
        raise ValueError(f"GIN views must be a positive integer, got {views!r}")


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**draw.SEED_BITS:
        raise ValueError(f"a GIN seed must be an integer in [0, 2^{draw.SEED_BITS}), got {seed!r}")
    return seed


def _config(x: Tensor, config: dict) -> GINConfig:
    if not config and not torch.compiler.is_compiling():  # gin(x): the defaults for x's channels and dimensions
        return _cached_config((("in_channels", x.shape[1]), ("spatial_dims", x.dim() - 2)))
    config.setdefault("in_channels", x.shape[1])
    config.setdefault("spatial_dims", x.dim() - 2)
    if torch.compiler.is_compiling():
        return make_config(**config)
    try:
        return _cached_config(tuple(sorted(config.items())))
    except TypeError:  # an unhashable option value (a list of sizes): build it
        return make_config(**config)


@functools.lru_cache(maxsize=256)
def _cached_config(items: tuple) -> GINConfig:
    return make_config(**dict(items))


def _op_config(cfg: GINConfig) -> tuple:
    return (cfg.interm_channels, cfg.n_layers, list(cfg.kernel_sizes), list(cfg.layer_kernel_sizes or ()),
            cfg.per_sample, float(cfg.slope), float(cfg.eps))


@torch.library.custom_op("fedgin::gin_views", mutates_args=())
def _gin_views_op(x: Tensor, seed: Tensor, views: int, backend: str, interm_channels: int, n_layers: int,
                  kernel_sizes: list[int], layer_kernel_sizes: list[int], per_sample: bool, slope: float,
                  eps: float) -> Tensor:
    """:func:`gin_views` as one operator for ``torch.compile``: ``seed`` an int64 tensor [1] (on a GPU, read by the
    kernel; on the CPU, read here)."""
    cfg = GINConfig(x.shape[1], None, interm_channels, n_layers, tuple(kernel_sizes), x.dim() - 2, per_sample, slope,
                    eps, tuple(layer_kernel_sizes) or None)
    route = _route(x.shape, x.dtype, x.device, cfg, backend, views)
    if route.triton and seed.device.type != "cpu":
        return _device_seed_views(x, cfg, views, seed)
    value = int(seed.item())  # a CPU tensor, or the reference on a GPU (which draws on the host)
    return route.launch(x, value) if route.triton else _reference_views(x, cfg, views, value)


@_gin_views_op.register_fake
def _(x, seed, views, backend, interm_channels, n_layers, kernel_sizes, layer_kernel_sizes, per_sample, slope, eps):
    return x.new_empty((views, *x.shape))


def warm_up(x: Tensor, backend: str = "auto", **config) -> int:
    """Run GIN once on ``x`` with each kernel-size tuple a draw of ``config`` can launch; return how many ran.

    On the Triton backend every new tuple compiles a kernel the first time a call launches it (the default pool of
    sizes 1 and 3 over 4 layers has 16 tuples; on an H200, timing ``fedgin.augment``'s gin while it still drew new
    tuples gave 886 ms a call for 64x3x256², against 0.28 ms for the kernel): call this once before timing or
    training. Triton also caches the compiled kernels on disk, so a later process loads them. ``config``:
    :func:`gin`'s. The draws use seeds of their own, so the global random state is unchanged.
    """
    _check_batch(x)
    cfg = _config(x, config)
    tuples = ([cfg.layer_kernel_sizes] if cfg.layer_kernel_sizes is not None
              else list(itertools.product(cfg.kernel_sizes, repeat=cfg.n_layers)))
    name = seeded_backend(x.device, x.dtype, cfg, backend)
    for ks in tuples:
        if name == "reference":
            _reference_views(x, cfg, 1, 0)
            continue
        from fedgin.kernels.launch import Seeded, gin_seeded

        gin_seeded(x, Seeded(cfg, 0, ks))
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
    """GIN as a module: holds the config, draws fresh networks for every call (:func:`gin_views`), any device.

    ``views``: independent draws a call, returned as [views, B, C, *S] (1: [B, C, *S]).
    """

    def __init__(self, backend: str = "auto", views: int = 1, **config) -> None:
        super().__init__()
        _check_backend(backend)
        _check_views(views)
        self.config = make_config(**config)
        self.backend = backend
        self.views = views

    @torch.no_grad()
    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        _check_batch(x)
        out = _views(x, self.config, self.views, generator, self.backend, None, True)
        return out[0] if self.views == 1 else out

    def extra_repr(self) -> str:
        return f"{self.config}, backend={self.backend!r}, views={self.views}"
