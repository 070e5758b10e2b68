"""Host side of the fused GIN kernel: support check, parameter packing, tile plan, the launches.

Two launches per call by default, because the Frobenius renormalization needs the whole sample before any
element can be final:

- float32 and bfloat16 output: the stream kernel stores the unscaled mix and per-tile partial norms,
  then a light elementwise pass (one read and one write of the output) scales each sample.
  bfloat16 has float32's exponent range, so the unscaled mix cannot overflow.
- float16 output: the unscaled mix can exceed float16's range (the random stack amplifies by
  ~10^2-10^3), so the first pass writes only the partial norms and the second recomputes the stack
  and stores the renormalized output.

The partial norms are per tile and reduced in a fixed order: the result is deterministic.

One launch (``Plan.finish``, float32 and bfloat16 output): the stream kernel stores the unscaled mix, then the
last program of each sample to finish (elected by a per-sample atomic counter) reads the sample back, while it
is still in L2, and rescales it in place. It trades the scale pass's launch and its trip through device
memory for one program's serial rescale of a whole sample, so it suits samples small against the L2. Off by
default: the first H200 run measured it slower than the two launches (``bench/NOTES.md``, v1.4 and "The first GPU
run").

GIN-IPA (:func:`gin_ipa_fused`): the three draws' stack runs in one stream launch when they share kernel sizes
(else one per distinct kernel-size tuple), then one pass renormalizes and blends them into the three views.
"""
from __future__ import annotations

import functools
import importlib.util
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from types import ModuleType

import numpy as np
import torch
import triton
from torch import Tensor
from triton.runtime.interpreter import InterpretedFunction

from . import gin as gin_module
from .gin import NORMS_ONLY, STORE_FINISH, STORE_SCALED, STORE_UNSCALED

MAX_CHANNELS = 4
MAX_INTERM = 8
MAX_LAYERS = 8
KERNEL_SIZES = (1, 3, 5)
IO_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
SCALE_BLOCK = 1024
PBLOCK = 128
H100_SMS = 132  # streaming multiprocessors of an H100 or H200 SXM: the plan's default (a CUDA call passes its own)
FINISH_PER_THREAD = 16  # elements a thread a step of the one-launch rescale: 32 spilled in 1- and 2-warp CTAs (ptxas)
WARGS_MAX_FLOATS = 960  # weights and biases as kernel arguments: 3840 bytes, in CUDA's classic 4 KB with the rest
WARGS_SAMPLE_VOXELS = 128**3  # the smallest 3D sample a launch a sample was measured faster on (default_wargs)


@dataclass(frozen=True)
class Plan:
    """Tile shape, stream chunk and grid of one call: tiles of ``th`` rows (2D: ``th`` row bands, ``bands``) by
    ``tw`` columns of lanes; each streams a chunk of ``zc`` planes (2D: rows), ``n_zt`` chunks along S, ``n_pt`` tiles
    along P (3D: H) and ``n_wt`` along W."""

    th: int
    tw: int
    zc: int
    n_zt: int
    n_pt: int
    n_wt: int
    bands: bool
    num_warps: int
    maxnreg: int | None = None  # ptxas register cap per thread (None: ptxas chooses)
    finish: bool = False  # one launch: each sample's last program rescales it (not for float16 output)
    wvec: int = 1  # weights loaded one by one, or 4 at a time (128-bit loads; the 2D default since v1.8)
    scratch: bool = False  # 3D: later layers' in-plane shifts through a per-program scratch (the default since v1.8)
    wargs: bool = False  # weights and biases as kernel arguments: a launch a sample, or a batch sharing one (v1.9)

    @property
    def n_tiles(self) -> int:
        return self.n_zt * self.n_pt * self.n_wt


def stream_modes(dtype: torch.dtype, finish: bool = False) -> tuple[int, ...]:
    """The stream-kernel modes a call with ``dtype`` output launches, in order (see the module docstring)."""
    if dtype == torch.float16:
        return int(NORMS_ONLY), int(STORE_SCALED)
    return (int(STORE_FINISH),) if finish else (int(STORE_UNSCALED),)


def unsupported_reason(x: Tensor, params) -> str | None:
    """``None`` if the fused kernel runs ``x`` with ``params``; else what it cannot do."""
    cfg = params.config
    if x.dtype not in IO_DTYPES:
        return f"dtype {x.dtype} (float32, float16 or bfloat16 only)"
    if not 1 <= cfg.in_channels <= MAX_CHANNELS:
        return f"{cfg.in_channels} channels (1 to {MAX_CHANNELS})"
    if not 1 <= cfg.interm_channels <= MAX_INTERM:
        return f"{cfg.interm_channels} intermediate channels (1 to {MAX_INTERM})"
    if not 2 <= len(params.kernel_sizes) <= MAX_LAYERS:
        return f"{len(params.kernel_sizes)} layers (2 to {MAX_LAYERS})"
    if any(k not in KERNEL_SIZES for k in params.kernel_sizes):
        return f"kernel sizes {params.kernel_sizes} (each one of {KERNEL_SIZES})"
    if not (x.is_cuda or x.device.type == "cpu"):
        return f"device {x.device} (CUDA, or the CPU through Triton's interpreter)"
    if math.prod(x.shape[2:]) >= 2**31:
        return "one channel of one sample has 2^31 or more elements"
    return None


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def pack_params(params, spatial_dims: int) -> Tensor:
    """Per sample, one float32 row of a multiple of 16 floats (so rows stay 64-byte aligned and Triton knows it).

    Per layer: one group per (input channel, tap along P, tap along W), in that order, holding the COUT x K
    weights of the taps along S as ``[co, m]`` (accumulator ``m`` takes tap ``K - 1 - m``: the stream scatters),
    padded to a multiple of 4 (16 bytes: :func:`.gin._scatter` can load them 4 at a time); then the biases,
    padded to 4. Alpha is the row's last float. Two device ops whatever the depth: the draw's tensors side by side,
    then one gather through a cached index (:func:`_pack_index`).
    """
    bsz = params.alphas.shape[0]
    raw = [t.reshape(bsz, -1) for wb in zip(params.weights, params.biases, strict=True) for t in wb]
    raw = torch.cat([*raw, params.alphas.reshape(-1, 1), params.alphas.new_zeros(bsz, 1)], dim=1)
    layers = tuple((w.shape[2], w.shape[1]) for w in params.weights)  # (CIN, COUT)
    index = _pack_index(tuple(params.kernel_sizes), layers, spatial_dims, raw.device)
    return torch.index_select(raw, 1, index).to(torch.float32)  # less host time than raw[:, index]


@functools.lru_cache(maxsize=64)
def _pack_index(kernel_sizes: tuple[int, ...], layers: tuple[tuple[int, int], ...], spatial_dims: int,
                device: torch.device) -> Tensor:
    """Column of the draw's side-by-side tensors (per layer weights [COUT, CIN, K, (KP,) K] and biases, then alpha,
    then a zero) that fills each float of a :func:`pack_params` row; padding takes the zero."""
    index: list[int] = []
    base = 0
    for k, (cin, cout) in zip(kernel_sizes, layers, strict=True):
        kp = k if spatial_dims == 3 else 1
        for ci in range(cin):
            for dp in range(kp):
                for dw in range(k):
                    group = [base + (((co * cin + ci) * k + (k - 1 - m)) * kp + dp) * k + dw
                             for co in range(cout) for m in range(k)]
                    index += group + [-1] * (_round_up(len(group), 4) - len(group))
        base += cout * cin * k * kp * k
        index += list(range(base, base + cout)) + [-1] * (_round_up(cout, 4) - cout)
        base += cout
    index += [-1] * (_round_up(len(index) + 1, 16) - len(index) - 1) + [base]  # alpha last
    zero = base + 1
    return torch.tensor([zero if i < 0 else i for i in index], dtype=torch.long, device=device)


def _pow2_at_least(n: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, triton.next_power_of_2(max(n, 1))))


# the largest stack the v1.8 plans were timed on (4 layers 3x3, C 3, M 2: 27 live tiles); 8 such layers (51) took
# 255 registers and spilled with them in 2D (ptxas, sm_90a), against 128 and 32 bytes with v1.5's plan
SWEPT_LIVE = 32
# v1.5's default plans as make_plan overrides, which the plan sweep and the sm_90 compile check keep beside v1.8's
V15_2D, V15_3D = {"tw": 64, "wvec": 1}, {"scratch": False}


def live_tiles(channels: int, interm: int, kernel_sizes: tuple[int, ...]) -> int:
    """Tiles a lane keeps live while a plane crosses the stack: each layer's pending and arriving accumulators
    (``COUT x K``). The register pressure the plan sizes lanes by (bench/NOTES.md, "Plans and ptxas")."""
    couts = [interm] * (len(kernel_sizes) - 1) + [channels]
    return sum(c * k for c, k in zip(couts, kernel_sizes, strict=True))


def waves(programs: int, slots: int) -> int:
    """Rounds of ``slots`` concurrent programs that ``programs`` equal programs take."""
    return -(-programs // slots)


def _stream_chunk(depth: int, tiles_per_chunk: int, halo: int, slots: int) -> int:
    """The 3D stream chunk (planes a program streams) with the least predicted time: waves of programs times the
    steps of each (the chunk plus the ``2 * halo`` planes it recomputes). Fit on an H200 (2x3x128³, zc 16/26/32/64):
    within 3% of the measured ratios (bench/NOTES.md, v1.5). Chunks of at least ``2 * halo`` planes (at most twice
    the work): the fit has no point beyond that."""
    counts = sorted({-(-depth // zc) for zc in range(min(max(2 * halo, 1), depth), depth + 1)})
    best = min(counts, key=lambda n: (waves(n * tiles_per_chunk, slots) * (-(-depth // n) + 2 * halo), n))
    return -(-depth // best)


def make_plan(shape: tuple[int, ...], kernel_sizes: tuple[int, ...], interm: int, *, th: int | None = None,
              tw: int | None = None, zc: int | None = None, lanes_per_thread: int | None = None,
              maxnreg: int | None = None, finish: bool = False, sms: int = H100_SMS, wvec: int | None = None,
              scratch: bool | None = None, wargs: bool = False, shared_network: bool = False) -> Plan:
    """Choose tiles for ``shape`` [B, C, *S] and ``interm`` intermediate channels: the in-plane halo of every
    tile is recomputed, so tiles are as wide as the image needs (2D up to 32 columns, 64 in a heavy stack; 3D up
    to 32 x 32); 2D streams row bands of up to 32 rows, 3D streams (H, W) tiles along chunks of D.

    Lanes a thread: 2, or 1 in a heavy stack (:func:`live_tiles` over 64). 2D used 4 up to v1.4: 2 measured 1.15x
    faster on an H200 (twice the warps an SM at 128 registers against 208). One lane a thread in a heavy stack also
    sets ``maxnreg`` to the most a CTA of the plan can have: without it, ptxas gave such kernels 32 to 64
    registers and spilled tens of KB (ptxas for sm_90a, bench/NOTES.md).

    Stacks of at most :data:`SWEPT_LIVE` live tiles take the plan sweep's winners (H200, float32, 2026-11-27;
    bench/NOTES.md, v1.8): 2D tiles of at most 32 columns with the weights loaded 4 at a time (1.38x v1.5's 64
    columns, one load a weight), 3D shifts through the scratch (1.39x ``tl.gather``).

    3D chunks: :func:`_stream_chunk` over ``sms`` streaming multiprocessors, one 16-warp CTA each (ptxas gives
    the 32 x 32 plan 128 registers a thread: the whole register file), or proportionally more for fewer warps.

    The keywords override one choice each (powers of two for ``th``, ``tw``, ``lanes_per_thread``) and the
    grid follows; ``finish`` asks for the one-launch renormalization (module docstring); ``wvec=4`` loads the
    weights 4 at a time (a quarter of the weight-load instructions, more registers: bench/NOTES.md, v1.6), ``wvec=1``
    one at a time; ``scratch`` (3D only) shifts the later layers' planes through a per-program scratch,
    ``scratch=False`` through ``tl.gather`` (the same values; on a GPU not always the same bits: NOTES v1.8).
    ``wargs`` passes the weights and biases as kernel arguments: they reach the FMAs from the constant bank, with no
    load-store instruction (bench/NOTES.md, v1.9). A launch a sample (and draw), or one for a batch that shares one
    network (``per_sample=False``); 3D chunks are planned for one sample a launch, or for the batch with
    ``shared_network``. They must fit :data:`WARGS_MAX_FLOATS`. :func:`gin_fused` takes them by default for a batch
    that shares one network and for large 3D samples (:func:`default_wargs`). The sweep (``python -m bench.sweep``)
    measures the alternatives on a GPU.
    """
    if wvec not in (None, 1, 4):
        raise ValueError(f"wvec must be 1 or 4, got {wvec}")
    if wargs:
        _wargs_fit(shape[1], interm, tuple(kernel_sizes), len(shape) - 2)
    return _make_plan(tuple(shape), tuple(kernel_sizes), interm, th, tw, zc, lanes_per_thread, maxnreg, finish, sms,
                      wvec, scratch, wargs, wargs and shared_network)


@functools.lru_cache(maxsize=256)  # a training loop calls with a handful of shapes: plan each once
def _make_plan(shape: tuple[int, ...], kernel_sizes: tuple[int, ...], interm: int, th: int | None, tw: int | None,
               zc: int | None, lanes_per_thread: int | None, maxnreg: int | None, finish: bool, sms: int,
               wvec: int | None, scratch: bool | None, wargs: bool, shared: bool) -> Plan:
    halo = sum(k // 2 for k in kernel_sizes[1:])
    live = live_tiles(shape[1], interm, kernel_sizes)
    bands = len(shape) == 4
    light = live <= 64
    swept = live <= SWEPT_LIVE
    if bands:
        _, _, h, w = shape
        tw = tw or _pow2_at_least(w + 2 * halo, max(16, triton.next_power_of_2(2 * halo + 8)), 32 if swept else 64)
        zc = min(zc or 32, h)
        th = th or _pow2_at_least(triton.cdiv(h, zc), 1, 16)
        n_zt, n_pt = triton.cdiv(h, th * zc), 1
    else:
        _, _, d, h, w = shape
        # 32 x 32 on 16 warps, 2 lanes a thread: 4 lanes a thread spilled (ptxas, sm_90, bench/NOTES.md)
        tw = tw or _pow2_at_least(w + 2 * halo, max(16, triton.next_power_of_2(2 * halo + 8)), 32)
        th = th or _pow2_at_least(h + 2 * halo, max(8, triton.next_power_of_2(2 * halo + 4)), 32)
        n_pt = triton.cdiv(h, max(th - 2 * halo, 1))
    n_wt = triton.cdiv(w, max(tw - 2 * halo, 1))
    lanes_per_thread = lanes_per_thread or (2 if light else 1)
    wvec = wvec or (4 if bands and swept else 1)
    scratch = not bands and (swept if scratch is None else scratch)
    num_warps = max(1, min(16, th * tw // (32 * lanes_per_thread)))
    if not bands:
        slots = sms * max(1, 16 // num_warps)
        per_launch = 1 if wargs and not shared else shape[0]
        zc = min(zc or _stream_chunk(d, per_launch * n_pt * n_wt, sum(k // 2 for k in kernel_sizes), slots), d)
        n_zt = triton.cdiv(d, zc)
    if maxnreg is None and lanes_per_thread == 1 and live > 64:
        maxnreg = min(255, 65536 // (32 * num_warps))
    return Plan(th, tw, zc, n_zt, n_pt, n_wt, bands, num_warps, maxnreg, finish, wvec, scratch, wargs)


@functools.cache
def _sm_count(index: int | None) -> int:
    props = torch.cuda.get_device_properties(torch.cuda.current_device() if index is None else index)
    return props.multi_processor_count


@functools.cache
def _interpreted_kernels() -> ModuleType:
    """A second copy of :mod:`.gin` whose functions all run in Triton's interpreter (for CPU tensors)."""
    spec = importlib.util.find_spec(f"{__package__}.gin")
    module = importlib.util.module_from_spec(spec)
    with triton.knobs.runtime.scope():
        triton.knobs.runtime.interpret = True
        spec.loader.exec_module(module)
    return module


def _runner(name: str, device: torch.device):
    """Kernel ``name`` of :mod:`.gin`: compiled for a CUDA device, interpreted for the CPU."""
    kernel = getattr(gin_module, name)
    if device.type == "cuda" or isinstance(kernel, InterpretedFunction):
        return kernel
    return getattr(_interpreted_kernels(), name)


def _layer_offsets(channels: int, interm: int, kernel_sizes: tuple[int, ...], spatial_dims: int) -> list[int]:
    """Offset of each layer's weights in a :func:`pack_params` row, and the end of the last layer's biases."""
    couts = [interm] * (len(kernel_sizes) - 1) + [channels]
    cins = [channels] + couts[:-1]
    off = [0]
    for cin, cout, k in zip(cins, couts, kernel_sizes, strict=True):
        kp = k if spatial_dims == 3 else 1
        off.append(off[-1] + cin * kp * k * _round_up(cout * k, 4) + _round_up(cout, 4))
    return off


@functools.lru_cache(maxsize=256)
def arg_floats(channels: int, interm: int, kernel_sizes: tuple[int, ...], spatial_dims: int) -> int:
    """Floats of a :func:`pack_params` row before its alpha (the weights and biases, padded as packed): what a
    ``wargs`` launch passes as kernel arguments."""
    return _layer_offsets(channels, interm, kernel_sizes, spatial_dims)[-1]


def _wargs_fit(channels: int, interm: int, kernel_sizes: tuple[int, ...], spatial_dims: int) -> int:
    """:func:`arg_floats`, refused where they exceed :data:`WARGS_MAX_FLOATS`."""
    floats = arg_floats(channels, interm, kernel_sizes, spatial_dims)
    if floats > WARGS_MAX_FLOATS:
        raise ValueError(f"wargs: {floats} floats of weights and biases exceed the {WARGS_MAX_FLOATS} that fit in "
                         "kernel arguments")
    return floats


def stream_args(x: Tensor, params, plan: Plan, draw: bool = False) -> dict:
    """Runtime and constexpr arguments of :func:`.gin.gin_stream_kernel`, less the pointers and MODE (with
    ``plan.wargs`` a launch also sets ``b0``, ``v0`` and ``wargs``; with ``draw``, the seed's). A new dict each
    call."""
    return dict(_stream_args(tuple(x.shape), tuple(params.kernel_sizes), params.config, plan, draw))


def draw_pool(cfg) -> tuple[int, ...]:
    """The kernel sizes a seeded draw picks each layer's from (``DRAW``'s ``POOL``), or ``()`` where they are fixed."""
    return cfg.kernel_sizes if cfg.layer_kernel_sizes is None and len(cfg.kernel_sizes) > 1 else ()


@functools.lru_cache(maxsize=256)  # a training loop calls with a handful of shapes: build each once (host time)
def _stream_args(shape: tuple[int, ...], ks: tuple[int, ...], cfg, plan: Plan, draw: bool = False) -> dict:
    spatial_dims = len(shape) - 2
    s, p, w = (shape[2], 1, shape[3]) if spatial_dims == 2 else shape[2:]
    rs = sum(k // 2 for k in ks)
    kps = ks if spatial_dims == 3 else (1,) * len(ks)
    ch = [cfg.in_channels] + [cout for _, cout in cfg.channels()]
    off = _layer_offsets(cfg.in_channels, cfg.interm_channels, ks, spatial_dims)
    return dict(
        S=s, P=p, W=w, zc=plan.zc, n_steps=plan.zc + 2 * rs,
        n_wt=plan.n_wt, n_pt=plan.n_pt,
        n_tiles=plan.n_tiles, view_step=1, nb=shape[0], b0=0, v0=0, slope=float(cfg.slope),
        eps=float(cfg.eps), wargs=(), seed_lo=0, seed_hi=0, block=1, shared=0, WARGS=plan.wargs,
        CH=tuple(ch), OFF=tuple(off), KS=ks,
        KPS=kps, BANDS=plan.bands, RS=rs, RH=rs - ks[0] // 2,
        TH=plan.th, TW=plan.tw, PBLOCK=PBLOCK, FBLOCK=FINISH_PER_THREAD * 32 * plan.num_warps, WVEC=plan.wvec,
        SCRATCH=plan.scratch, GUARD=scratch_guard(plan), DRAW=draw, POOL=draw_pool(cfg) if draw else (),
        num_warps=plan.num_warps,
        # the scratch is read back after a barrier: no software pipelining may move those loads
        **({"num_stages": 1} if plan.scratch else {}),
        **({"maxnreg": plan.maxnreg} if plan.maxnreg is not None else {}),
    )


def scratch_guard(plan: Plan) -> int:
    """Floats before and after the scratch: a shift of up to 2 (5x5 kernels) from the first or last lane. Even, so
    the scratch's stores are known 8-byte aligned, and Triton 3.6 lays the tiles out two columns a thread for them
    (bench/NOTES.md, v1.14)."""
    return 2 * plan.tw + 2


def _check_out(out: Tensor | None, x: Tensor, shape: tuple[int, ...]) -> Tensor:
    if out is None:
        return torch.empty(shape, dtype=x.dtype, device=x.device)
    if tuple(out.shape) != shape or out.dtype != x.dtype or not out.is_contiguous() or out.device != x.device:
        raise ValueError(f"out must be a contiguous {x.dtype} tensor of shape {shape} on {x.device}")
    return out


def _check_plan(plan: Plan, shape: Sequence[int], kernel_sizes: Sequence[int]) -> None:
    """Refuse a plan whose tiles, less their in-plane halo, do not cover a sample of ``shape`` [B, C, *S]."""
    halo = sum(k // 2 for k in kernel_sizes[1:])
    if plan.tw <= 2 * halo or (not plan.bands and plan.th <= 2 * halo):
        raise ValueError(f"{plan} leaves no tile interior for an in-plane halo of {halo}")
    s, w = shape[2], shape[-1]
    rows = plan.n_zt * plan.zc * (plan.th if plan.bands else 1)
    covered = rows >= s and plan.n_wt * (plan.tw - 2 * halo) >= w
    if not plan.bands:
        covered = covered and plan.n_pt * (plan.th - 2 * halo) >= shape[3]
    if not covered:
        raise ValueError(f"{plan} does not cover a sample of spatial size {tuple(shape[2:])}")


def default_wargs(x: Tensor, draws: Sequence) -> bool:
    """Whether the default plan passes the weights as kernel arguments (where the row fits and every draw's CPU copy
    is at hand, so no device sync): for a batch whose draws share one network (``per_sample=False``), in float32 and
    bfloat16, and in 3D in float16 too; and in 3D for a draw a sample (a launch a sample) once a sample holds
    :data:`WARGS_SAMPLE_VOXELS` voxels. Measured (bench/NOTES.md, v1.9 and the fourth H200 run): with a shared
    network 1.25-1.38x the default plan from a CUDA graph and 1.14-1.29x timed from the host (2D 64x3x256², 3D
    2x3x128³); 3D 2x3x128³ from the host, after the host-side cuts, a launch a sample 1.15x (float32), 1.12x
    (float16), 1.25x (bfloat16) and a shared network in float16 1.16x. 2D float16 with a shared network (two passes)
    was 0.58x from the host; smaller 3D samples leave a launch's host time (~200 µs) uncovered."""
    cfg = draws[0].config
    spatial = x.dim() - 2
    if not all(p.has_host_copy for p in draws) or arg_floats(
            cfg.in_channels, cfg.interm_channels, tuple(draws[0].kernel_sizes), spatial) > WARGS_MAX_FLOATS:
        return False
    if all(not p.config.per_sample for p in draws):
        return x.dtype != torch.float16 or spatial == 3
    return spatial == 3 and math.prod(x.shape[2:]) >= WARGS_SAMPLE_VOXELS


def _plan_for(x: Tensor, draws: Sequence, plan: Plan | None) -> Plan:
    """``plan``, or the default plan for ``draws`` (one kernel-size tuple) on ``x``; checked to cover ``x``."""
    params = draws[0]
    if plan is None:
        wargs = default_wargs(x, draws)
        plan = make_plan(tuple(x.shape), tuple(params.kernel_sizes), params.config.interm_channels,
                         sms=_sm_count(x.device.index) if x.is_cuda else H100_SMS, wargs=wargs,
                         shared_network=wargs and all(not p.config.per_sample for p in draws))
    _check_plan(plan, x.shape, params.kernel_sizes)
    return plan


def _stream(x: Tensor, draws: Sequence, out: Tensor, plan: Plan, view_step: int = 1, finish: bool = False) -> Tensor:
    """The stream launches of ``draws`` (parameters for ``x``'s batch, one kernel-size tuple) as one grid: draw
    ``v`` writes ``out`` [views, B, C, *S] view ``v * view_step``; ``finish``: renormalized in the same launch.
    Returns the partial norms [V * B, tiles, 2]."""
    first = draws[0]
    dims = x.dim() - 2
    rows = len(draws) * x.shape[0]
    dev = x.device
    part = torch.empty((rows, plan.n_tiles, 2), dtype=torch.float32, device=dev)
    if plan.wargs:  # weights and biases as kernel arguments, the alphas read
        launches = _wargs_launches(draws, dims)
        prm = torch.cat([p.alphas.reshape(-1) for p in draws]).to(device=dev, dtype=torch.float32)
    else:
        packed = [pack_params(p, dims) for p in draws]
        prm = packed[0] if len(packed) == 1 else torch.cat(packed)  # one draw (plain GIN): no copy
    modes = stream_modes(x.dtype, finish)
    # the per-sample counters of STORE_FINISH; the other modes never read it: no allocation or memset for them
    cnt = (torch.zeros(rows, dtype=torch.int32, device=dev) if int(STORE_FINISH) in modes
           else part.view(torch.int32))
    scratch = _scratch(plan, first.config.interm_channels, rows, dev) if plan.scratch else part
    args = stream_args(x, first, plan) | {"view_step": view_step}
    kernel = _runner("gin_stream_kernel", dev)
    err = error_counter(dev)
    for mode in modes:
        if not plan.wargs:
            kernel[(plan.n_tiles, x.shape[0], len(draws))](x, out, prm, part, cnt, scratch, part, part, err,
                                                           prm_stride=prm.shape[1], MODE=mode, **args)
            continue
        for samples, b, v, wargs in launches:
            kernel[(plan.n_tiles, samples, 1)](x, out, prm, part, cnt, scratch, part, part, err, prm_stride=16,
                                               MODE=mode, **(args | {"b0": b, "v0": v, "wargs": wargs}))
    return part


def _scratch(plan: Plan, interm: int, rows: int, device: torch.device) -> Tensor:
    """A 3D plan's scratch, zeroed: an edge lane's read of a region not yet written (or of a guard) gives a finite
    halo value."""
    return torch.zeros(scratch_floats_of(plan, interm, rows), dtype=torch.float32, device=device)


def scratch_floats_of(plan: Plan, interm: int, rows: int) -> int:
    """Floats of a 3D plan's scratch for ``rows`` samples: each tile's plane of ``interm`` channels, and a guard at
    either end."""
    return rows * plan.n_tiles * interm * plan.th * plan.tw + 2 * scratch_guard(plan)


@dataclass(frozen=True)
class Seeded:
    """A call's views drawn in the kernel (``fedgin.draw``): ``seed`` a Python int (eager calls: the kernel's
    arguments) or an int64 tensor on the device (captured or compiled calls); ``kernel_sizes`` the launch's, at
    least each view's drawn size per layer (a smaller kernel runs as the centre of a larger one)."""

    cfg: object
    seed: int | Tensor
    kernel_sizes: tuple[int, ...]
    views: int = 1


@functools.lru_cache(maxsize=64)
def block_floats(cfg, spatial_dims: int) -> int:
    """Numbers of a sample's block in the seeded draw (``fedgin.draw.block_floats``)."""
    return sum(cout * cin * km**spatial_dims + cout
               for (cin, cout), km in zip(cfg.channels(), cfg.max_sizes(), strict=True)) + 1


@functools.lru_cache(maxsize=64)
def draw_table(kernel_sizes: tuple[int, ...], layers: tuple[tuple[int, int], ...], max_sizes: tuple[int, ...],
               spatial_dims: int, device: torch.device) -> Tensor:
    """For each float of a :func:`pack_params` row of a launch with ``kernel_sizes``, what the seeded draw puts
    there (int32, one a float): bits 0-19 the index of its number in the sample's block (``fedgin.draw``: each
    layer's weights in the cube of its largest size, then its biases), 20-23 its layer, 24-27 its ring (a tap's
    largest offset from the kernel's centre), 28-29 what it is (1 a weight or bias, 0 padding or alpha). ``layers``:
    each layer's (C_in, C_out); ``max_sizes``: each layer's largest size (the cube its weights are numbered in). Built
    once per tuple and device."""
    table: list[int] = []
    base = 0
    for layer, (k, km, (cin, cout)) in enumerate(zip(kernel_sizes, max_sizes, layers, strict=True)):
        kp, kmp = (k, km) if spatial_dims == 3 else (1, 1)
        for ci in range(cin):
            for dp in range(kp):
                for dw in range(k):
                    group = []
                    for co in range(cout):
                        for m in range(k):
                            s, p, w = (k - 1 - m) - k // 2, dp - kp // 2, dw - k // 2  # offsets from the centre
                            raw = base + (((co * cin + ci) * km + s + km // 2) * kmp + p + kmp // 2) * km + w + km // 2
                            group.append(raw | layer << 20 | max(abs(s), abs(p), abs(w)) << 24 | 1 << 28)
                    table += group + [0] * (_round_up(len(group), 4) - len(group))
        base += cout * cin * km * kmp * km
        table += [base + co | layer << 20 | 1 << 28 for co in range(cout)] + [0] * (_round_up(cout, 4) - cout)
        base += cout
    table += [0] * (_round_up(len(table) + 1, 16) - len(table))  # and the alpha's place
    return torch.tensor(table, dtype=torch.int32, device=device)


@functools.cache
def _zero_seed(device: torch.device) -> Tensor:
    """The device part of an eager call's seed: 0 (its seed is in the kernel's arguments)."""
    return torch.zeros(1, dtype=torch.int64, device=device)


@functools.cache
def error_counter(device: torch.device) -> Tensor:
    """The device's count of samples whose sums were not finite (``_sample_scale``): int32, never reset here."""
    return torch.zeros(1, dtype=torch.int32, device=device)


def _wargs_launches(draws: Sequence, spatial_dims: int) -> list[tuple[int, int, int, tuple[float, ...]]]:
    """(samples, first sample, draw, weights and biases) of each ``wargs`` launch: one a draw whose samples share
    one network, else one a sample. From the draws' CPU copies (:meth:`fedgin.GINParams.on_host`)."""
    launches = []
    for v, p in enumerate(draws):
        end = _wargs_fit(p.config.in_channels, p.config.interm_channels, tuple(p.kernel_sizes), spatial_dims)
        host = p.on_host()
        bsz = host.batch
        if all(t.stride(0) == 0 for t in host.weights + host.biases):  # drawn with one network: pack it once
            host = replace(host, weights=[w[:1] for w in host.weights], biases=[b[:1] for b in host.biases],
                           alphas=host.alphas[:1])
        rows = _host_rows(host, spatial_dims)[:, :end]
        if (rows == rows[:1]).all():
            launches.append((bsz, 0, v, tuple(rows[0].tolist())))
        else:
            launches += [(1, b, v, tuple(row)) for b, row in enumerate(rows.tolist())]
    return launches


def _host_rows(params, spatial_dims: int) -> np.ndarray:
    """:func:`pack_params` of a CPU draw in NumPy: the same floats, a few µs instead of a dozen torch ops' host time
    (each ``wargs`` call packs its draw on the host)."""
    bsz = params.alphas.shape[0]
    raw = [t.numpy().reshape(bsz, -1) for wb in zip(params.weights, params.biases, strict=True) for t in wb]
    raw = np.concatenate([*raw, params.alphas.numpy().reshape(-1, 1), np.zeros((bsz, 1), raw[0].dtype)], axis=1)
    layers = tuple((w.shape[2], w.shape[1]) for w in params.weights)
    return raw[:, _pack_index_host(tuple(params.kernel_sizes), layers, spatial_dims)].astype(np.float32)


@functools.lru_cache(maxsize=64)
def _pack_index_host(kernel_sizes: tuple[int, ...], layers: tuple[tuple[int, int], ...],
                     spatial_dims: int) -> np.ndarray:
    return _pack_index(kernel_sizes, layers, spatial_dims, torch.device("cpu")).numpy()


def gin_fused(x: Tensor, params, out: Tensor | None = None, plan: Plan | None = None) -> Tensor:
    """GIN of ``x`` [B, C, *S] with ``params`` in two launches (one with ``plan.finish``); ``x`` is made
    contiguous if it is not.

    Assumes the input checks of :func:`fedgin.gin.check_input` passed and
    :func:`unsupported_reason` returned ``None``. ``out`` (optional) receives the result; ``plan``
    (optional) overrides :func:`make_plan`'s tiles (tests use small tiles to cross tile borders).
    """
    x = x.contiguous()
    out = _check_out(out, x, tuple(x.shape))
    plan = _plan_for(x, [params], plan)
    part = _stream(x, [params], out, plan, finish=plan.finish)
    _scale(x, out, part, plan, params.config.eps, x.shape[0])
    return out


def gin_seeded(x: Tensor, seeded: Seeded, out: Tensor | None = None, plan: Plan | None = None) -> Tensor:
    """GIN of ``x`` [B, C, *S], ``seeded.views`` independent networks drawn in the kernel, as [views, B, C, *S]: one
    stream launch for every view and one scale launch (float16: two stream launches). No host-device copy, no sync.

    Assumes :func:`fedgin.gin.check_input`'s checks and :func:`unsupported_reason` passed for ``x``; ``plan``
    (optional) overrides :func:`make_plan`'s tiles (two launches: never ``wargs``, the weights are drawn on the
    device, nor ``finish``).
    """
    call = seeded_call(tuple(x.shape), x.dtype, x.device, seeded.cfg, seeded.kernel_sizes, seeded.views, plan)
    return call(x, seeded.seed, out)


@dataclass(frozen=True)
class SeededCall:
    """A seeded call's launches for one shape, dtype, device, config, kernel sizes and views, built once
    (:func:`seeded_call`): a call then allocates its output [views, B, C, *S] and one float32 buffer (partial norms,
    parameter rows, a 3D plan's scratch) and launches."""

    out_shape: tuple[int, ...]
    grid: tuple[int, int, int]
    launches: tuple[dict, ...]  # the stream launches' other arguments: the first draws, float16's second reads
    buffer: tuple[int, int, int]  # offsets of the rows and of the scratch in the float32 buffer; its floats
    part_cols: int  # floats of a sample's partial norms
    table: Tensor
    zero_seed: Tensor
    err: Tensor
    stream: object
    scale_grid: tuple[int, int] | None  # the scale pass, where the stream stores the mix unscaled
    scale_args: tuple

    def __call__(self, x: Tensor, seed: int | Tensor, out: Tensor | None = None) -> Tensor:
        """The views of ``x`` drawn with ``seed`` (an int, or an int64 tensor [1] on the device), into ``out``."""
        x = x.contiguous()
        out = _check_out(out, x, self.out_shape)
        part = self.run(x, out, seed)
        if self.scale_grid is not None:
            _runner("gin_scale_kernel", x.device)[self.scale_grid](out, part, self.err, *self.scale_args,
                                                                   BLOCK=SCALE_BLOCK, PBLOCK=PBLOCK, num_warps=4)
        return out

    def run(self, x: Tensor, out: Tensor, seed: int | Tensor) -> Tensor:
        """The stream launches into ``out``; returns the partial norms (a flat float32 tensor)."""
        rows_at, scratch_at, floats = self.buffer
        buf = torch.empty(floats, dtype=torch.float32, device=x.device)
        part, prm = buf, buf[rows_at:]
        if floats > scratch_at:  # a 3D plan's scratch, zeroed: a read of a region not yet written gives a finite halo
            scratch = buf[scratch_at:]
            scratch.zero_()
        else:
            scratch = buf
        if isinstance(seed, Tensor):
            seed_t, lo, hi = seed, 0, 0
        else:
            seed_t, lo, hi = self.zero_seed, seed & 0x7FFFFFFF, seed >> 31
        for kwargs in self.launches:  # err as cnt_ptr: read only by STORE_FINISH, which a seeded call never takes
            self.stream[self.grid](x, out, prm, part, self.err, scratch, seed_t, self.table, self.err, seed_lo=lo,
                                   seed_hi=hi, **kwargs)
        return part


@functools.lru_cache(maxsize=256)
def seeded_call(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, cfg, ks: tuple[int, ...],
                views: int, plan: Plan | None = None, scale: bool = True) -> SeededCall:
    """The :class:`SeededCall` of ``views`` views of a [B, C, *S] ``shape`` drawn in launches with kernel sizes ``ks``
    (``scale``: with the scale pass where the stream stores unscaled; GIN-IPA's blend scales instead)."""
    dims = len(shape) - 2
    plan = plan or make_plan(shape, ks, cfg.interm_channels, sms=_sm_count(device.index) if device.type == "cuda"
                             else H100_SMS)
    if plan.wargs or plan.finish:
        raise ValueError("a seeded call draws its weights on the device in two launches: no wargs or finish plan")
    _check_plan(plan, shape, ks)
    rows = views * shape[0]
    prm_cols = _round_up(arg_floats(cfg.in_channels, cfg.interm_channels, ks, dims) + 1, 16)
    launches = []
    for i, mode in enumerate(stream_modes(dtype)):  # float16's second pass reads the rows the first drew
        args = {k: v for k, v in _stream_args(shape, ks, cfg, plan, i == 0).items() if k not in ("seed_lo", "seed_hi")}
        launches.append(args | {"prm_stride": prm_cols, "MODE": mode, "block": block_floats(cfg, dims),
                                "shared": int(not cfg.per_sample)})
    numel = math.prod(shape[1:])
    unscaled = scale and stream_modes(dtype) == (int(STORE_UNSCALED),)
    # one buffer: the partial norms, then the rows, then the scratch, each 16-float aligned (as the kernel is compiled)
    rows_at = _round_up(rows * plan.n_tiles * 2, 16)
    scratch_at = rows_at + rows * prm_cols
    scratch_floats = scratch_floats_of(plan, cfg.interm_channels, rows) if plan.scratch else 0
    return SeededCall(
        (views, *shape), (plan.n_tiles, shape[0], views), tuple(launches),
        (rows_at, scratch_at, scratch_at + scratch_floats), plan.n_tiles * 2,
        draw_table(ks, tuple(cfg.channels()), cfg.max_sizes(), dims, device), _zero_seed(device),
        error_counter(device), _runner("gin_stream_kernel", device),
        (triton.cdiv(numel, SCALE_BLOCK), rows) if unscaled else None,
        (plan.n_tiles, numel, float(cfg.eps)))


def _scale(x: Tensor, out: Tensor, part: Tensor, plan: Plan, eps: float, rows: int) -> None:
    """The scale pass over ``rows`` stored samples, where the stream stored them unscaled."""
    if stream_modes(x.dtype, plan.finish) == (int(STORE_UNSCALED),):
        numel = math.prod(x.shape[1:])
        _runner("gin_scale_kernel", x.device)[(triton.cdiv(numel, SCALE_BLOCK), rows)](
            out, part, error_counter(x.device), part.shape[1], numel, float(eps), BLOCK=SCALE_BLOCK, PBLOCK=PBLOCK,
            num_warps=4)


def gin_ipa_fused(x: Tensor, draws: Sequence, mask: Tensor, out: Tensor | None = None,
                  plan: Plan | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """GIN-IPA's three views of ``x`` [B, C, *S] (:func:`fedgin.augment.gin_ipa.gin_ipa_views`) from the three GIN
    ``draws`` and the IPA ``mask`` [B, 1, *S]: one stream launch per distinct kernel-size tuple among the draws
    (one when they share it) and one pass that renormalizes and blends.

    Assumes every draw passed :func:`fedgin.gin.check_input` and :func:`unsupported_reason` for ``x``. ``out``
    (optional): [3, B, C, *S] receiving the views; ``plan`` (optional): tiles for every stream launch.
    """
    if len(draws) != 3:
        raise ValueError(f"GIN-IPA takes 3 GIN draws, got {len(draws)}")
    x, mask, out = _ipa_operands(x, mask, out)
    bsz = x.shape[0]
    groups: dict[tuple[int, ...], list[int]] = {}
    for v, p in enumerate(draws):
        groups.setdefault(tuple(p.kernel_sizes), []).append(v)
    parts: list[Tensor | None] = [None] * 3
    for views in groups.values():  # any subset of 3 views is evenly spaced: (0, 2) is every 2nd view from 0
        step = views[1] - views[0] if len(views) > 1 else 1
        group = [draws[v] for v in views]
        part = _stream(x, group, out[views[0]], _plan_for(x, group, plan), view_step=step)
        for j, v in enumerate(views):
            parts[v] = part[j * bsz:(j + 1) * bsz]
    return _ipa_blend(x, mask, out, parts, draws[0].config.eps)


def gin_ipa_seeded(x: Tensor, seeded: Seeded, mask: Tensor, out: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """GIN-IPA's three views from ``seeded`` (3 views drawn in the kernel): one stream launch and the blend pass."""
    if seeded.views != 3:
        raise ValueError(f"GIN-IPA takes 3 GIN views, got {seeded.views}")
    x, mask, out = _ipa_operands(x, mask, out)
    call = seeded_call(tuple(x.shape), x.dtype, x.device, seeded.cfg, seeded.kernel_sizes, 3, scale=False)
    bsz = x.shape[0]
    part = call.run(x, out, seeded.seed)[:3 * bsz * call.part_cols].view(3 * bsz, call.part_cols // 2, 2)
    return _ipa_blend(x, mask, out, [part[v * bsz:(v + 1) * bsz] for v in range(3)], seeded.cfg.eps)


def _ipa_operands(x: Tensor, mask: Tensor, out: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    bsz = x.shape[0]
    if tuple(mask.shape) != (bsz, 1, *x.shape[2:]):
        raise ValueError(f"IPA mask must have shape {(bsz, 1, *x.shape[2:])}, got {tuple(mask.shape)}")
    x = x.contiguous()
    return x, mask.to(device=x.device, dtype=torch.float32).contiguous(), _check_out(out, x, (3, *x.shape))


def _ipa_blend(x: Tensor, mask: Tensor, out: Tensor, parts: Sequence[Tensor], eps: float) -> tuple[Tensor, ...]:
    bsz, n_sp = x.shape[0], math.prod(x.shape[2:])
    _runner("gin_ipa_kernel", x.device)[(triton.cdiv(n_sp, SCALE_BLOCK), bsz)](
        out, mask, *parts, error_counter(x.device), *(p.shape[1] for p in parts), bsz, x.shape[1], n_sp, float(eps),
        SCALED=x.dtype == torch.float16, BLOCK=SCALE_BLOCK, PBLOCK=PBLOCK, num_warps=4)
    return out[0], out[1], out[2]
