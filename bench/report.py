"""A run's outputs: ``<date>-<device>-<preset>.json`` (everything), ``.md`` (the tables) and ``.png``
(throughput vs pixels per batch with the copy-bandwidth roofline), written atomically side by side."""
from __future__ import annotations

import json
import math
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from fedgin.fl.rundir import atomic_path, atomic_write

ITEMSIZE = {"fp32": 4, "bf16": 2, "fp16": 2}
MARKERS = {"fp32": "o", "bf16": "s", "fp16": "^"}
TABLE = [  # header, row key, format, GPU only
    ("ms", "ms", ".4g", False), ("ms (graph)", "ms_graph", ".4g", True), ("Gpix/s", "gpix_s", ".3g", False),
    ("GB/s", "gb_s", ".3g", False), ("of copy", "frac_copy", ".1%", False), ("× ref", "speedup", ".2f", False),
    ("× ref (graph)", "speedup_graph", ".2f", True), ("rel err", "rel_error", ".1e", False),
    ("extra MB", "extra_mb", ".1f", True),
]


def _fmt(value, spec: str) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def _status(row: dict, notes: list[str]) -> str:
    """``ok``, or ``skipped [n]``/``failed [n]`` (or ``ok [n]``: a note) with the reason as footnote n."""
    if row["status"] == "ok" and not row["reason"]:
        return "ok"
    if row["reason"] not in notes:
        notes.append(row["reason"])
    return f"{row['status']} [{notes.index(row['reason']) + 1}]"


def markdown(report: dict) -> str:
    """The report's tables: GIN implementations per case, the training step, the anchors."""
    env, copy = report["environment"], report["copy"]
    git = env["git"]
    commit = (git["commit"][:12] + (" (uncommitted changes)" if git["dirty"] else "")) if git["commit"] else "unknown"
    lines = [
        f"# GIN benchmark: preset `{report['preset']}` on {env['device']}",
        "",
        f"{report['date']} · torch {env['torch']} · triton {env['triton']} · CUDA {env['cuda']} · "
        f"cuDNN {env['cudnn']} · torch CPU threads: {env['cpu_threads']} (load {env['load_avg_1min']:.1f}) · "
        f"git {commit} · {report['elapsed_s']:.0f} s",
        "",
        f"Copy bandwidth in this run: {copy['gb_s']:.0f} GB/s (read + write of {copy['bytes'] / 2**20:.0f} MiB). "
        f"Timing: {report['settings']['timing']}. Checks: {report['settings']['checks']}. "
        "GB/s counts the least traffic (input read once, output written once); × ref is the speedup over "
        "reference eager in this run.",
        "",
    ]
    notes: list[str] = []
    gpu = env["device_type"] == "cuda"  # CUDA-graph times and device memory exist only there
    columns = [(h, k, f) for h, k, f, gpu_only in TABLE if gpu or not gpu_only]
    lines += ["| case | impl | status | " + " | ".join(h for h, _, _ in columns) + " |",
              "|---|---|---|" + "---:|" * len(columns)]
    for r in report["rows"]:
        cells = " | ".join(_fmt(r[k], f) for _, k, f in columns)
        lines.append(f"| {r['case']} | {r['impl']} | {_status(r, notes)} | {cells} |")
    if report["e2e"]:
        lines += ["", "## Training step (end to end)", "",
                  "| step | impl | status | step ms | GIN ms | GIN share |", "|---|---|---|---:|---:|---:|"]
        for r in report["e2e"]:
            lines.append(f"| {r['case']} | {r['impl']} | {_status(r, notes)} | {_fmt(r['step_ms'], '.4g')} | "
                         f"{_fmt(r['gin_ms'], '.4g')} | {_fmt(r['gin_share'], '.1%')} |")
    if report["anchors"]:
        lines += ["", "## Anchors (measured earlier on this kind of card)", "",
                  "| metric | case | impl | anchor | measured | measured / anchor |", "|---|---|---|---:|---:|---:|"]
        for a in report["anchors"]:
            case = a.get("case_id") or a.get("e2e_case_id") or ""
            lines.append(f"| {a['metric']} | {case} | {a.get('impl', '')} | {a['value']:.4g} | "
                         f"{_fmt(a['measured'], '.4g')} | {_fmt(a['ratio'], '.2f')} |")
    if notes:
        lines += ["", *[f"[{i}] {note}" for i, note in enumerate(notes, 1)]]
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    """Gpix/s vs pixels per batch, one colour per implementation, one marker per dtype, a panel per 2D/3D,
    and the copy-bandwidth roofline for each bytes-per-pixel the cases have."""
    rows = [r for r in report["rows"] if r["status"] == "ok"]
    dims = sorted({r["dims"] for r in report["rows"]}) or [2]
    impls = list(dict.fromkeys(r["impl"] for r in report["rows"]))
    colors = {name: f"C{i % 10}" for i, name in enumerate(impls)}
    fig = Figure(figsize=(6.5 * len(dims), 4.8), layout="constrained")
    copy_gb_s = report["copy"]["gb_s"]
    for ax, d in zip(fig.subplots(1, len(dims), squeeze=False)[0], dims, strict=True):
        for r in (r for r in rows if r["dims"] == d):  # hollow, shrinking per implementation: overlaps stay visible
            ax.scatter(r["pixels"], r["gpix_s"], facecolors="none", edgecolors=colors[r["impl"]],
                       marker=MARKERS[r["dtype"]], s=70 / (1 + 0.45 * impls.index(r["impl"])), linewidths=1.3)
        for bpp in sorted({2 * r["channels"] * ITEMSIZE[r["dtype"]] for r in report["rows"] if r["dims"] == d}):
            ax.axhline(copy_gb_s / bpp, color="0.4", lw=0.8, ls="--")
            ax.annotate(f"copy roofline, {bpp} B/px", (0.01, copy_gb_s / bpp), xycoords=("axes fraction", "data"),
                        fontsize=7, color="0.3", va="bottom")
        ax.set(xscale="log", yscale="log", xlabel=f"{'pixels' if d == 2 else 'voxels'} per batch (B·prod(S))",
               ylabel=f"G{'pixel' if d == 2 else 'voxel'}/s", title=f"{d}D")
        ax.grid(True, which="major", lw=0.3)
    handles = [Line2D([], [], color=colors[n], marker="o", mfc="none", ls="", label=n) for n in impls]
    handles += [Line2D([], [], color="k", marker=m, mfc="none", ls="", label=dt) for dt, m in MARKERS.items()]
    fig.legend(handles=handles, loc="outside right center", fontsize=8)
    env = report["environment"]
    fig.suptitle(f"GIN throughput, preset {report['preset']}, {env['device']} (median, CUDA events / perf_counter)",
                 fontsize=9)
    fig.savefig(path, dpi=110)


def write_report(report: dict, out_dir: Path | str) -> dict[str, Path]:
    """Write the JSON, markdown and PNG of ``report`` under ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{report['date']}-{report['environment']['device_slug']}-{report['preset']}"
    paths = {"json": out / f"{stem}.json", "md": out / f"{stem}.md", "png": out / f"{stem}.png"}
    atomic_write(paths["json"], json.dumps(report, indent=1, allow_nan=False) + "\n")
    atomic_write(paths["md"], markdown(report))
    with atomic_path(paths["png"]) as tmp:
        plot(report, tmp)
    return paths
