"""``python -m bench`` / ``fedgin bench``: run a preset, print the markdown table, write JSON, markdown and PNG."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from .cases import PRESETS
from .registry import IMPLEMENTATIONS
from .report import write_report
from .suite import run_suite

HELP = "time every GIN implementation (reference, torch.compile, Triton, baselines) on a preset of cases"
RESULTS = Path(__file__).resolve().parent / "results"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="quick",
                        help=f"case set: {', '.join(f'{p.name} ({p.summary})' for p in PRESETS.values())}")
    parser.add_argument("--impl", nargs="+", metavar="NAME",
                        help=f"implementations to run (names or comma lists; default all: "
                             f"{', '.join(IMPLEMENTATIONS)}); reference always runs as the speedup base")
    parser.add_argument("--out", help="output folder (default: $OUT when set, else bench/results/)")
    parser.add_argument("--device", help="cuda or cpu (default: cuda when present)")
    parser.add_argument("--max-cases", type=int, help="only the first N GIN cases and N training-step cases")
    parser.add_argument("--no-e2e", action="store_true", help="skip the training-step measurements")
    parser.add_argument("--budget-s", type=float,
                        help="report the work left after this many seconds as skipped (keeps a GPU lease safe)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int,
                        help="torch CPU threads (default torch's); 1 keeps CPU timings stable on a busy machine")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--list", action="store_true", help="list the implementations and presets, then exit")


def out_dir(arg: str | None) -> Path:
    """--out, else $OUT, else bench/results/ of this checkout."""
    return Path(arg or os.environ.get("OUT") or RESULTS)


def run(args: argparse.Namespace) -> int:
    if args.list:
        for impl in IMPLEMENTATIONS.values():
            print(f"{impl.name:10s} {impl.summary}")
        for preset in PRESETS.values():
            print(f"preset {preset.name}: {len(preset.cases)} cases, {len(preset.e2e)} training steps; "
                  f"{preset.summary}")
        return 0
    impls = [n for arg in args.impl for n in arg.split(",") if n] if args.impl else None
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    report = run_suite(args.preset, impls, device=args.device, max_cases=args.max_cases, e2e=not args.no_e2e,
                       budget_s=args.budget_s, progress=not args.no_progress, seed=args.seed)
    paths = write_report(report, out_dir(args.out))
    print(paths["md"].read_text())
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=HELP)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (ValueError, TypeError, FileNotFoundError) as err:
        print(f"python -m bench: error: {err}", file=sys.stderr)
        return 2
