"""The plan sweep: the fused kernel's tile plans side by side, to tune :func:`fedgin.kernels.make_plan` on a GPU.

``python -m bench.sweep [--out DIR] [--budget-s S] [--ptxas]``. For each headline case, every candidate plan
(``make_plan`` keyword overrides; ``{}`` is the default plan; ``"shared_network": true`` beside them draws one
network for the batch, the FedGIN authors' configuration) is checked against the float64 reference on the
same draw, then the whole call (stream pass + scale pass, or the one launch of ``finish``) is timed: median
with L2 flushed, and on a GPU also replayed from a CUDA graph (no Python launch overhead; GB/s, share of the
copy bandwidth measured in the same run and the speedups over the default plan and over the eager reference, timed
on the same inputs in the same run, are from that time). The report is
rewritten after every row, so a run stopped by its budget keeps what it measured. Without a GPU the sweep runs
small stand-in cases through Triton's interpreter (a check of the sweep, not a timing); ``--ptxas`` compiles the
GPU candidates for sm_90 on the CPU instead and reports registers and spills. Exit status 1 when a plan gave a
wrong result or crashed (a plan the launcher refuses is reported as refused).

Why these candidates: bench/NOTES.md, v1.8 and v1.9 (every measured plan was limited by the load-store pipe, mostly
by the per-sample weights; the v1.9 candidates pass them as kernel arguments).
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from dataclasses import asdict
from datetime import date
from pathlib import Path

import torch

from fedgin import reference_apply
from fedgin.fl.rundir import atomic_write
from fedgin.kernels import gin_fused, make_plan
from fedgin.kernels.launch import V15_2D, stream_modes

from . import timing
from .cases import K3X8, SHARED, Case, draw_params, image_like, split_candidate
from .cli import out_dir
from .environment import environment
from .suite import TOLERANCE, relative_error, resolve_device

Candidates = tuple[dict, ...]

# (case, candidate overrides); the default plan first. Ordered by importance: the budget cuts the tail.
GPU_SWEEP: tuple[tuple[Case, Candidates], ...] = (
    # 3D float32 first: make_plan's plan (the seeded call's: the weights read from memory) against the weights as
    # kernel arguments (a launch a sample, the default of an explicit draw of 128³ samples). Then 2D float32 (never
    # reached since the third run): a shared network, one launch (finish), bands of 64 rows (v1.12); then the rest
    # ("{}" is make_plan's plan). The options no GPU ever timed left with issue #32 (docs/kernel-design.md).
    (Case(2, 3, (128,) * 3), ({}, {"wargs": True})),
    (Case(64, 3, (256, 256)), ({}, {"wargs": True, SHARED: True}, {"finish": True}, {"th": 4, "zc": 64},
                               {"wargs": True, SHARED: True, "th": 4, "zc": 64})),
    (Case(64, 3, (256, 256), "fp16"), ({}, {"wargs": True, SHARED: True})),
    (Case(64, 3, (256, 256), "bf16"), ({}, {"wargs": True, SHARED: True}, V15_2D)),
    (Case(16, 4, (128, 128), kernel_sizes=K3X8, interm=8), (
        {}, {"th": 1, "tw": 32}, {"th": 1, "tw": 64}, {"th": 2, "tw": 32})),
    (Case(4, 1, (96,) * 3), ({}, {"wargs": True})),
    (Case(2, 3, (128,) * 3, "fp16"), ({}, {"wargs": True, SHARED: True}, {"wargs": True})),
    (Case(2, 3, (128,) * 3, "bf16"), ({}, {"wargs": True})),
)

# Stand-ins for a CPU run (Triton's interpreter): odd sizes, a few programs, one plan that cannot run.
CPU_SWEEP: tuple[tuple[Case, Candidates], ...] = (
    (Case(1, 3, (21, 19), kernel_sizes=(3, 1, 3)), ({}, {"tw": 16, "th": 2, "zc": 8, "finish": True}, {"tw": 2})),
    (Case(1, 2, (5, 9, 11), "bf16", kernel_sizes=(3, 3)), ({}, {"zc": 2, "th": 8, "tw": 8})),
)


CPU_SETTINGS = timing.TimingSettings(cpu_min_reps=1, cpu_max_reps=1)  # the interpreter: a check, not a timing


def _programs(case: Case, plan) -> int:
    return case.batch * plan.n_tiles


def _rotating_call(xs: list[torch.Tensor], params, out: torch.Tensor, plan):
    calls = itertools.count()
    return lambda: gin_fused(xs[next(calls) % len(xs)], params, out=out, plan=plan)


def sweep_case(case: Case, candidates: Candidates, device: torch.device, settings: timing.TimingSettings,
               copy_gb_s: float, seed: int = 0) -> list[dict]:
    """One row per candidate plan of ``case``: checked, then timed (or failed with its error)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    xs = [image_like(case, device, gen) for _ in range(timing.rotation_count(case.min_bytes // 2, device))]
    draws: dict[bool, tuple] = {}  # shared network or not: (draw, its float64 reference)
    rows: list[dict] = []
    for overrides in candidates:
        row = {"case": case.label, "case_id": case.id, "impl": "triton", "overrides": overrides, "plan": None,
               "programs": None, "status": None, "reason": None, "rel_error": None, "ms": None, "ms_graph": None}
        try:
            keywords, shared = split_candidate(overrides)
            plan = make_plan(case.shape, case.kernel_sizes, case.interm, **keywords)
            row.update(plan=asdict(plan), programs=_programs(case, plan))
            if shared not in draws:
                params = draw_params(case, device, per_sample=not shared, generator=torch.Generator().manual_seed(seed))
                draws[shared] = params, reference_apply(xs[0].double(), params)
            params, ref = draws[shared]
            out = torch.full_like(xs[0], float("nan"))
            try:
                gin_fused(xs[0], params, out=out, plan=plan)
            except ValueError as err:  # the launcher refuses the plan (e.g. no tile interior)
                row.update(status="refused", reason=str(err)[:300])
                rows.append(row)
                continue
            timing.sync(device)
            row["rel_error"] = relative_error(out, ref)
            if not row["rel_error"] <= TOLERANCE[case.dtype]:
                raise RuntimeError(f"relative error {row['rel_error']:.2e} > {TOLERANCE[case.dtype]:.0e}")
            fn = _rotating_call(xs, params, out, plan)
            row["ms"] = timing.median_ms(fn, device, settings)
            if device.type == "cuda":  # no Python launch overhead: what the kernels cost
                row["ms_graph"] = timing.graph_median_ms(fn, settings)
            row["status"] = "ok"
        except Exception as err:  # noqa: BLE001 - a plan that fails is reported, never timed
            row.update(status="failed", reason=f"{type(err).__name__}: {err}"[:300], ms=None)
        rows.append(row)
    rows.append(_reference_row(case, xs, draws, device, settings))
    key = "ms_graph" if device.type == "cuda" else "ms"
    base = rows[0][key] if rows[0]["status"] == "ok" else None
    eager = rows[-1][key]
    for r in rows:
        best = r[key] if r["status"] == "ok" else None
        r["gb_s"] = case.min_bytes / (best * 1e6) if best else None
        r["frac_copy"] = r["gb_s"] / copy_gb_s if best else None
        r["vs_default"] = base / best if base and best else None
        r["vs_reference"] = eager / best if eager and best else None
    return rows


def _reference_row(case: Case, xs: list[torch.Tensor], draws: dict, device: torch.device,
                   settings: timing.TimingSettings) -> dict:
    """The eager reference (``reference_apply`` in the case's dtype) timed on the same inputs: every plan's speedup
    over it is from the same run."""
    row = {"case": case.label, "case_id": case.id, "impl": "reference", "overrides": None, "plan": None,
           "programs": None, "status": "ok", "reason": None, "rel_error": None, "ms": None, "ms_graph": None}
    try:
        params = draws[False][0] if False in draws else draw_params(case, device, generator=torch.Generator())
        cycle = itertools.cycle(xs)
        row["ms"] = timing.median_ms(lambda: reference_apply(next(cycle), params), device, settings)
        if device.type == "cuda":
            row["ms_graph"] = timing.graph_median_ms(lambda: reference_apply(next(cycle), params), settings)
    except Exception as err:  # noqa: BLE001 - reported; the plans' rows stand without a speedup over it
        row.update(status="failed", reason=f"{type(err).__name__}: {err}"[:300], ms=None, ms_graph=None)
    return row


def _plan_text(plan: dict | None) -> str:
    if plan is None:
        return "-"
    cap = f", maxnreg {plan['maxnreg']}" if plan["maxnreg"] else ""
    one = ", 1 launch" if plan["finish"] else ""
    per_sample = ", weights as arguments" if plan.get("wargs") else ""
    return f"{plan['th']} x {plan['tw']}, {plan['zc']}, {plan['num_warps']}{cap}{one}{per_sample}"


def _times(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}x"


def markdown(report: dict) -> str:
    """The sweep as a markdown table per case, fastest first."""
    env = report["environment"]
    lines = [f"# Plan sweep, {report['date']}, {env['device']}",
             f"torch {env['torch']}, triton {env['triton']}, commit {env['git']['commit']}; copy "
             f"{report['copy']['gb_s']:.0f} GB/s; {report['timing']}", ""]
    cases = dict.fromkeys(r["case"] for r in report["rows"])
    for case in cases:
        rows = sorted((r for r in report["rows"] if r["case"] == case),
                      key=lambda r: (r["gb_s"] is None, -(r["gb_s"] or 0.0)))
        lines += [f"## {case}", "", "| overrides | th x tw, zc, warps | programs | ms | ms (graph) | GB/s | of copy |"
                  " vs default | vs reference | rel. error |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            reference = r.get("impl") == "reference"
            over = "reference eager" if reference else json.dumps(r["overrides"]) if r["overrides"] else "default"
            shape = _plan_text(r["plan"])
            if r["status"] != "ok":
                failed = f"{r['status']}: {r['reason']}"
                lines.append(f"| {over} | {shape} | {r['programs'] or '-'} | {failed} | | | | | | |")
                continue
            graph = f"{r['ms_graph']:.4f}" if r["ms_graph"] else "-"
            lines.append(f"| {over} | {shape} | {r['programs'] or '-'} | {r['ms']:.4f} | {graph} | {r['gb_s']:.0f} | "
                         f"{100 * r['frac_copy']:.0f}% | {_times(r['vs_default'])} | {_times(r.get('vs_reference'))} | "
                         f"{'-' if reference else format(r['rel_error'], '.1e')} |")
        lines.append("")
    return "\n".join(lines)


def run_sweep(sweep: tuple[tuple[Case, Candidates], ...], device: torch.device, out: Path | None = None,
              budget_s: float | None = None, settings: timing.TimingSettings | None = None) -> dict:
    """Every case of ``sweep`` on ``device``; writes ``<date>-<device>-sweep.{json,md}`` under ``out`` after
    each case (when given). Cases left when ``budget_s`` runs out are listed as skipped."""
    settings = settings or (timing.TimingSettings() if device.type == "cuda" else CPU_SETTINGS)
    start = time.monotonic()
    env = environment(device)
    report = {"schema": 1, "date": date.today().isoformat(), "environment": env,
              "copy": timing.copy_bandwidth(device, settings), "rows": [], "skipped": [],
              "tolerance": TOLERANCE,
              "timing": ("do_bench median, L2 flushed, rotating inputs" if device.type == "cuda"
                         else "Triton interpreter on the CPU: checks the plans, times nothing useful")}
    for case, candidates in sweep:
        if budget_s is not None and time.monotonic() - start > budget_s:
            report["skipped"].append(case.label)
            continue
        report["rows"] += sweep_case(case, candidates, device, settings, report["copy"]["gb_s"])
        report["elapsed_s"] = time.monotonic() - start
        if out is not None:
            write(report, out)
    return report


def write(report: dict, out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"{report['date']}-{report['environment']['device_slug']}-sweep"
    paths = {"json": stem.with_suffix(".json"), "md": stem.with_suffix(".md")}
    atomic_write(paths["json"], json.dumps(report, indent=1) + "\n")
    atomic_write(paths["md"], markdown(report))
    return paths


def ptxas_table(sweep: tuple[tuple[Case, Candidates], ...]) -> str:
    """Registers and spills of every candidate's stream kernel, compiled for sm_90 on this machine."""
    from fedgin.kernels import aot

    lines = ["| case | overrides | warps | programs | ptxas (sm_90a) |", "|---|---|---:|---:|---|"]
    for case, candidates in sweep:
        for overrides in candidates:
            plan = make_plan(case.shape, case.kernel_sizes, case.interm, **split_candidate(overrides)[0])
            for mode in stream_modes(case.torch_dtype, plan.finish):
                report = aot.compile_stream(case.shape, case.kernel_sizes, case.torch_dtype, case.channels,
                                            case.interm, mode, plan).split(" | ", 1)[1]
                over = json.dumps(overrides) if overrides else "default"
                lines.append(f"| {case.label} (mode {mode}) | {over} | {plan.num_warps} | "
                             f"{_programs(case, plan)} | {report} |")
                print(lines[-1], flush=True)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="output folder (default: $OUT when set, else bench/results/)")
    parser.add_argument("--device", help="cuda or cpu (default: cuda when present)")
    parser.add_argument("--budget-s", type=float, help="start no new case after this many seconds")
    parser.add_argument("--ptxas", action="store_true",
                        help="compile the GPU candidates for sm_90 here and print registers and spills (no GPU)")
    args = parser.parse_args(argv)
    if args.ptxas:
        ptxas_table(GPU_SWEEP)
        return 0
    try:
        device = resolve_device(args.device)
    except ValueError as err:
        print(f"python -m bench.sweep: error: {err}", file=sys.stderr)
        return 2
    out = out_dir(args.out)
    report = run_sweep(GPU_SWEEP if device.type == "cuda" else CPU_SWEEP, device, out, args.budget_s)
    print(markdown(report))
    print("wrote " + ", ".join(str(p) for p in write(report, out).values()))
    return 1 if any(r["status"] == "failed" and r.get("impl") != "reference" for r in report["rows"]) else 0


if __name__ == "__main__":
    raise SystemExit(main())
