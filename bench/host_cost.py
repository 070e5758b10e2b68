"""Where the host time of a GIN call goes: the draw, the call, and the two with the device drained.

The second H200 run measured GIN at 2.04 ms of a training step (two views, 2D 32x3x192²) whose kernels take
~0.2 ms (bench/NOTES.md, v1.8): the rest is host time. ``python -m bench.host_cost [--reps N]`` times, per
implementation, the wall clock of ``draw_params`` alone, of the call alone (launches queued, no sync), and of
draw + call + synchronize, as medians in µs, then torch.profiler's busiest host ops of five draws + calls. On a GPU,
then the queued host time of the fused kernel's plans on the 3D headline case (``--plans``: v1.9's weights as
kernel arguments against the default) and cProfile's busiest Python functions of the last one: the third H200 run
measured ``wargs`` 1.26x faster from a CUDA graph but 0.76x from the host (bench/NOTES.md, v1.9).
"""
from __future__ import annotations

import argparse
import cProfile
import functools
import io
import json
import pstats
import statistics
import sys
import time
from collections.abc import Callable

import torch

from .cases import K1313, SHARED, Case, draw_params, image_like, split_candidate
from .registry import IMPLEMENTATIONS, select
from .suite import resolve_device
from .timing import sync

CASE = Case(32, 3, (192, 192), kernel_sizes=K1313)  # the e2e step's GIN case
PLAN_CASE = Case(2, 3, (128,) * 3)  # the 3D headline case
PLANS = ({}, {"wargs": True}, {"wargs": True, SHARED: True})


def _median_us(fn: Callable[[], object], reps: int, device: torch.device, drain: bool) -> float:
    times = []
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        fn()
        if drain:
            sync(device)
        times.append((time.perf_counter() - t0) * 1e6)
    return statistics.median(times)


def host_cost(case: Case, impls: list[str], device: torch.device, reps: int = 50) -> list[dict]:
    """One row per implementation: ``draw_us``, ``call_us`` (queued), ``drained_us`` (draw + call + sync)."""
    x = image_like(case, device, torch.Generator(device=device).manual_seed(0))
    gen = torch.Generator().manual_seed(0)

    def row(name: str, fn: Callable) -> dict:
        params = draw_params(case, device, generator=gen)
        for _ in range(3):  # compiles and caches
            fn(x, draw_params(case, device, generator=gen))
        return {"impl": name,
                "draw_us": _median_us(lambda: draw_params(case, device, generator=gen), reps, device, False),
                "call_us": _median_us(lambda: fn(x, params), reps, device, False),
                "drained_us": _median_us(lambda: fn(x, draw_params(case, device, generator=gen)), reps, device, True)}

    return [row(impl.name, impl.prepare(case, device)) for impl in select(impls)]


def profile_table(case: Case, impl: str, device: torch.device, rows: int = 12) -> str:
    """torch.profiler's host ops of five draws + calls of ``impl``, by self CPU time."""
    from torch.profiler import ProfilerActivity, profile

    x = image_like(case, device, torch.Generator(device=device).manual_seed(0))
    fn = IMPLEMENTATIONS[impl].prepare(case, device)
    gen = torch.Generator().manual_seed(0)
    fn(x, draw_params(case, device, generator=gen))
    sync(device)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(5):
            fn(x, draw_params(case, device, generator=gen))
        sync(device)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def plan_host_cost(case: Case, candidates: tuple[dict, ...], device: torch.device, reps: int = 50) -> list[dict]:
    """Queued host time of ``gin_fused`` per candidate plan (:mod:`bench.sweep`'s overrides), in µs; the last
    row also carries cProfile's busiest functions of ``reps`` calls."""
    from fedgin.kernels import gin_fused, make_plan

    x = image_like(case, device, torch.Generator(device=device).manual_seed(0))
    out = torch.empty_like(x)
    rows = []
    for overrides in candidates:
        keywords, shared = split_candidate(overrides)
        plan = make_plan(case.shape, case.kernel_sizes, case.interm, **keywords)
        params = draw_params(case, device, per_sample=not shared, generator=torch.Generator().manual_seed(0))
        call = functools.partial(gin_fused, x, params, out=out, plan=plan)
        call()
        rows.append({"overrides": overrides, "call_us": _median_us(call, reps, device, False)})
    profiler = cProfile.Profile()
    sync(device)
    profiler.runcall(lambda: [call() for _ in range(reps)])
    sync(device)
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(15)
    rows[-1]["profile"] = text.getvalue()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.host_cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--impl", nargs="+", default=["reference", "triton"])
    parser.add_argument("--reps", type=int, default=50)
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--plans", action=argparse.BooleanOptionalAction, default=None,
                        help="the plans' host time on the 3D case (default: on a GPU only; the interpreter runs them)")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    impls = [name for name in args.impl if device.type == "cuda" or name != "triton"]  # interpreter: no timing
    print(f"# host cost of a GIN call, {CASE.label} on {device}; medians of {args.reps}, µs")
    print("| impl | draw | call (queued) | draw + call + sync |\n|---|---:|---:|---:|")
    for r in host_cost(CASE, impls, device, args.reps):
        print(f"| {r['impl']} | {r['draw_us']:.0f} | {r['call_us']:.0f} | {r['drained_us']:.0f} |")
    print(profile_table(CASE, impls[-1], device))
    if args.plans if args.plans is not None else device.type == "cuda":
        rows = plan_host_cost(PLAN_CASE, PLANS, device, args.reps)
        print(f"# queued host time of gin_fused, {PLAN_CASE.label}; medians of {args.reps}, µs")
        print("| plan | call (queued) |\n|---|---:|")
        for r in rows:
            print(f"| {json.dumps(r['overrides']) if r['overrides'] else 'default'} | {r['call_us']:.0f} |")
        print(rows[-1]["profile"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
