"""Timers and ceilings: CUDA-event and CUDA-graph medians (triton.testing) on a GPU, perf_counter medians on a
CPU; the copy bandwidth of the same run; peak extra device memory of one call."""
from __future__ import annotations

import contextlib
import math
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TimingSettings:
    """How long to measure. GPU: ``do_bench`` warm-up and repetition budgets (ms, L2 flushed between calls)
    and ``do_bench_cudagraph``'s; CPU: at least ``cpu_min_reps`` calls, more until ``cpu_budget_ms``."""

    warmup_ms: float = 10.0
    rep_ms: float = 50.0
    graph_rep_ms: float = 20.0
    cpu_min_reps: int = 3
    cpu_max_reps: int = 50
    cpu_budget_ms: float = 250.0
    e2e_warmup: int = 2
    e2e_reps: int = 6
    e2e_cpu_reps: int = 3


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(fn: Callable[[], object], device: torch.device, settings: TimingSettings) -> float:
    """Median time of ``fn()`` in ms: CUDA events with L2 flushed between calls on a GPU, perf_counter on a CPU."""
    if device.type == "cuda":
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=settings.warmup_ms, rep=settings.rep_ms, return_mode="median"))
    fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < settings.cpu_min_reps or (
            len(times) < settings.cpu_max_reps and (time.perf_counter() - start) * 1e3 < settings.cpu_budget_ms):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def graph_median_ms(fn: Callable[[], object], settings: TimingSettings) -> float:
    """Median time of ``fn()`` in ms replayed from a CUDA graph (no Python launch overhead, L2 not flushed)."""
    from triton.testing import do_bench_cudagraph

    return float(do_bench_cudagraph(fn, rep=settings.graph_rep_ms, return_mode="median"))


def copy_bandwidth(device: torch.device, settings: TimingSettings) -> dict:
    """Bytes read plus bytes written per second of one large copy: 512 MiB on a GPU, 64 MiB on a CPU."""
    nbytes = (512 if device.type == "cuda" else 64) * 2**20
    src = torch.rand(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src), device, settings)
    return {"gb_s": 2 * nbytes / (ms * 1e6), "bytes": nbytes, "ms": ms}


def rotation_count(case_bytes: int, device: torch.device) -> int:
    """How many input buffers to cycle so that repeated calls read from memory, not from L2 (GPU: twice L2)."""
    if device.type != "cuda":
        return 2
    l2 = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 50 * 2**20)
    return max(2, min(16, math.ceil(2 * l2 / max(case_bytes, 1))))


def peak_extra_bytes(fn: Callable[[], torch.Tensor], device: torch.device) -> int | None:
    """Device memory one call of ``fn`` allocates at its peak beyond its output (GPU only, else None)."""
    if device.type != "cuda":
        return None
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    out = fn()
    sync(device)
    return max(0, torch.cuda.max_memory_allocated(device) - base - out.untyped_storage().nbytes())


@contextlib.contextmanager
def exact_fp32() -> Iterator[None]:
    """No TF32 in cuDNN convolutions or matmuls (they are on by default and make "fp32" ~5e-4 off)."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


class Stopwatch:
    """Marks on the device's timeline (CUDA events, or perf_counter on a CPU); read them after :meth:`done`."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.device = device

    def mark(self):
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def done(self) -> None:
        sync(self.device)

    def ms(self, start, end) -> float:
        return start.elapsed_time(end) if self.cuda else (end - start) * 1e3
