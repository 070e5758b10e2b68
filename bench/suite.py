"""The run: every selected implementation on every case of a preset, checked against the float64 reference
before it is timed; a failure is recorded as failed (with the error), never as a time."""
from __future__ import annotations

import itertools
import math
import time
from collections.abc import Sequence
from datetime import date

import torch
from tqdm.auto import tqdm

from fedgin import GINParams, reference_apply
from fedgin.environment import resolve_device

from . import timing
from .anchors import compare_anchors
from .cases import Case, draw_params, get_preset, image_like
from .e2e import bench_e2e
from .environment import environment
from .registry import Impl, select, skip_reason
from .timing import TimingSettings, exact_fp32, median_ms, sync

TOLERANCE = {"fp32": 1e-4, "bf16": 1e-2, "fp16": 1e-2}  # ||out - ref|| / ||ref|| against float64
NO_CHECK = "not GIN: no reference check"  # the reason shown for implementations with reference_check=False


class CheckFailed(RuntimeError):
    """An implementation's output is not GIN's (beyond the dtype's tolerance)."""


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64 (NaN when ``out`` has NaN/Inf or the wrong shape)."""
    if out.shape != ref.shape:
        raise CheckFailed(f"output shape {tuple(out.shape)}, expected {tuple(ref.shape)}")
    return float((out.double() - ref).norm() / ref.norm())


def _measure(impl: Impl, case: Case, xs: list[torch.Tensor], params: GINParams, ref: torch.Tensor | None,
             device: torch.device, settings: TimingSettings, row: dict) -> None:
    """Prepare, check (``ref`` None: no check), then time ``impl`` on ``case``; fills ``row`` as it goes (so a
    failure keeps the error)."""
    fn = impl.prepare(case, device)
    with exact_fp32():
        out = fn(xs[0], params)
        sync(device)
    if ref is None:
        if out.shape != xs[0].shape:
            raise CheckFailed(f"output shape {tuple(out.shape)}, expected {tuple(xs[0].shape)}")
        row["reason"] = NO_CHECK
    else:
        err = relative_error(out, ref)
        row["rel_error"] = err if math.isfinite(err) else None
        if not err <= row["tol"]:
            raise CheckFailed(f"relative error {err:.3g} against the float64 reference exceeds {row['tol']:.0e}")
    del out
    extra = timing.peak_extra_bytes(lambda: fn(xs[0], params), device)
    row["extra_mb"] = None if extra is None else extra / 2**20
    cycle = itertools.cycle(xs)
    row["ms"] = median_ms(lambda: fn(next(cycle), params), device, settings)
    if device.type == "cuda":
        if not impl.graphable:
            row["graph_note"] = "not capturable: host work inside the call"
        else:
            try:
                row["ms_graph"] = timing.graph_median_ms(lambda: fn(next(cycle), params), settings)
            except Exception as err:  # noqa: BLE001 - the capture's failure is a finding, the event time stands
                row["graph_note"] = f"capture failed: {type(err).__name__}: {err}"[:300]
                sync(device)
    row["status"] = "ok"


def bench_case(case: Case, impls: Sequence[Impl], device: torch.device, preset: str, settings: TimingSettings,
               copy_gb_s: float, deadline: float, seed: int, bar: tqdm) -> list[dict]:
    """Rows for every implementation in ``impls`` on ``case`` (throughput and speedups: :func:`_derive`)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    xs = [image_like(case, device, gen) for _ in range(timing.rotation_count(case.min_bytes // 2, device))]
    cpu_gen = torch.Generator().manual_seed(seed)
    draws = {flag: draw_params(case, device, per_sample=flag, generator=cpu_gen) for flag in (True, False)}
    refs: dict[bool, torch.Tensor] = {}
    rows = []
    for impl in impls:
        bar.set_postfix_str(f"{case.label} {impl.name}")
        row = {"case": case.label, "case_id": case.id, "dims": case.dims, "batch": case.batch,
               "channels": case.channels, "size": list(case.size), "dtype": case.dtype,
               "kernel_sizes": list(case.kernel_sizes), "interm": case.interm, "pixels": case.pixels,
               "min_bytes": case.min_bytes, "floor_ms": case.min_bytes / (copy_gb_s * 1e6), "impl": impl.name,
               "shared_network": impl.shared_network, "n_buffers": len(xs), "tol": TOLERANCE[case.dtype],
               "status": None, "reason": None, "rel_error": None, "ms": None, "ms_graph": None, "graph_note": None,
               "extra_mb": None}
        try:
            reason = skip_reason(impl, case, device, preset, deadline)
            if reason is not None:
                row.update(status="skipped", reason=reason)
            else:
                per_sample = not impl.shared_network
                if impl.reference_check and per_sample not in refs:
                    refs[per_sample] = reference_apply(xs[0].double(), draws[per_sample])
                ref = refs[per_sample] if impl.reference_check else None
                _measure(impl, case, xs, draws[per_sample], ref, device, settings, row)
        except Exception as err:  # noqa: BLE001 - any failure is reported as failed, never as a time
            row.update(status="failed", reason=f"{type(err).__name__}: {err}"[:500], ms=None, ms_graph=None)
            if device.type == "cuda":
                torch.cuda.empty_cache()
        rows.append(row)
        bar.update()
    return rows


def _derive(rows: list[dict], copy_gb_s: float) -> None:
    """Throughput, achieved bandwidth, share of the copy bandwidth and speedups over the reference's row."""
    base = next((r for r in rows if r["impl"] == "reference" and r["status"] == "ok"), None)
    for r in rows:
        ok = r["status"] == "ok"
        ms = r["ms"] if ok else None
        r["gpix_s"] = r["pixels"] / (ms * 1e6) if ms else None
        r["gb_s"] = r["min_bytes"] / (ms * 1e6) if ms else None
        r["frac_copy"] = r["gb_s"] / copy_gb_s if ms else None
        r["speedup"] = base["ms"] / ms if ms and base else None
        r["speedup_graph"] = (base["ms_graph"] / r["ms_graph"]
                              if ok and base and base["ms_graph"] and r["ms_graph"] else None)


def run_suite(preset: str = "quick", impls: Sequence[str] | None = None, *, device: str | None = None,
              max_cases: int | None = None, e2e: bool = True, budget_s: float | None = None, progress: bool = True,
              seed: int = 0, settings: TimingSettings | None = None) -> dict:
    """Run ``preset`` and return the report (environment, copy bandwidth, rows, e2e rows, anchor comparison).

    ``impls``: registry names (default all; ``reference`` is always added as the speedup base).
    ``max_cases``: only the first N GIN cases and N training-step cases. ``budget_s``: after this many
    seconds the remaining work is reported as skipped.
    """
    spec = get_preset(preset)
    chosen = select(impls)
    dev = resolve_device(device)
    settings = settings or TimingSettings()
    if max_cases is not None and max_cases < 0:
        raise ValueError(f"--max-cases must be >= 0, got {max_cases}")
    cases = spec.cases[:max_cases]
    e2e_cases = spec.e2e[:max_cases] if e2e else ()
    start = time.monotonic()
    deadline = start + budget_s if budget_s is not None else float("inf")
    case_deadline = start + 0.8 * budget_s if budget_s is not None and e2e_cases else deadline  # e2e keeps a fifth
    env = environment(dev)
    copy = timing.copy_bandwidth(dev, settings)
    rows: list[dict] = []
    e2e_rows: list[dict] = []
    total = len(cases) * len(chosen) + len(e2e_cases) * (len(chosen) + 1)
    with tqdm(total=total, desc=f"bench {spec.name}", disable=not progress, dynamic_ncols=True) as bar:
        # GIN's own light implementations on every case first, then the heavy ones and the comparison methods:
        # a run cut short by its budget keeps the kernel's rows on every case
        first = [i for i in chosen if i.reference_check and not i.heavy]
        by_case: list[list[dict]] = [[] for _ in cases]
        for group in (first, [i for i in chosen if i not in first]):
            for n, case in enumerate(cases):
                if group:
                    by_case[n] += bench_case(case, group, dev, spec.name, settings, copy["gb_s"], case_deadline, seed,
                                             bar)
        order = {i.name: n for n, i in enumerate(chosen)}
        for case_rows in by_case:
            case_rows.sort(key=lambda r: order[r["impl"]])
            _derive(case_rows, copy["gb_s"])
            rows += case_rows
        for e2e_case in e2e_cases:
            e2e_rows += bench_e2e(e2e_case, chosen, dev, spec.name, settings, deadline, seed, bar)
    report = {
        "schema": 1, "preset": spec.name, "date": date.today().isoformat(), "environment": env,
        "copy": copy,
        "settings": {**settings.__dict__, "tolerance": TOLERANCE,
                     "checks": "float64 reference_apply on the same params, before timing; TF32 off during checks",
                     "timing": ("triton.testing.do_bench median (L2 flushed) and do_bench_cudagraph median, "
                                "rotating inputs" if dev.type == "cuda" else "time.perf_counter median"),
                     "seed": seed, "max_cases": max_cases, "budget_s": budget_s},
        "implementations": {i.name: i.summary for i in chosen},
        "rows": rows, "e2e": e2e_rows, "elapsed_s": time.monotonic() - start,
    }
    report["anchors"] = compare_anchors(report)
    return report
