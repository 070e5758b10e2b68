"""``fedgin train``: one run (federated or centralized) from a YAML config, a preset and overrides."""
from __future__ import annotations

import argparse
from pathlib import Path

from fedgin.config import PRESETS, load_config
from fedgin.environment import resolve_device
from fedgin.fl import engine

HELP = "train one segmentation model across sites (FedAvg/FedProx/FedBN, optional GIN) into a run directory"


def add_config_arguments(parser: argparse.ArgumentParser, default_preset: str | None = None) -> None:
    """The options every training command shares: config file, preset, overrides, output, resume."""
    parser.add_argument("config", nargs="?", help="YAML config file (unknown keys are errors)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default=default_preset,
                        help="start from a preset (a file's own 'preset:' key also works)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set fed.rounds=5 (repeatable; the value is YAML)")
    parser.add_argument("--rounds", type=int, help="shorthand for --set fed.rounds=N")
    parser.add_argument("--seed", type=int, help="shorthand for --set seed=N")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: auto)")
    parser.add_argument("--out", help="run directory (default: runs/<name>)")
    parser.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def config_from_args(args: argparse.Namespace):
    overrides = list(args.overrides)
    for key, flag in (("fed.rounds", args.rounds), ("seed", args.seed), ("device", args.device)):
        if flag is not None:
            overrides.append(f"{key}={flag}")
    return load_config(args.config, args.preset, overrides)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--engine", choices=("builtin", "flower"),
                        help="builtin: one process; flower: a local Flower SuperLink and one SuperNode process per "
                             "site (shorthand for --set engine=...; see docs/deployment.md)")


def run(args: argparse.Namespace) -> int:
    if getattr(args, "engine", None):
        args.overrides = [*args.overrides, f"engine={args.engine}"]
    cfg = config_from_args(args)
    out = args.out or f"runs/{cfg.name}"
    if cfg.engine == "flower":
        resolve_device(cfg.device)  # before the processes start
        try:
            from fedgin.fl.flower.launcher import run_local
        except ImportError as err:
            raise ValueError(f"engine flower needs Flower: pip install 'fedgin[fl]' ({err})") from None
        run_local(cfg, out, resume=args.resume, progress=not args.quiet)
        run_dir = Path(out)
    else:
        run_dir = engine.run(cfg, out, resume=args.resume, progress=not args.quiet).run_dir
    print((run_dir / "table.md").read_text())
    print(f"run directory: {run_dir}")
    return 0
