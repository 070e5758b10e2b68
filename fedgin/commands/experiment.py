"""``fedgin experiment``: the paper's protocol (FedAvg, FedGIN, centralized GIN; optionally all baselines)."""
from __future__ import annotations

import argparse

from fedgin.commands.train import add_config_arguments, config_from_args
from fedgin.fl.experiment import arm_names, run_experiment

HELP = "run FedAvg, FedGIN and centralized GIN (--all: every baseline) on one scenario and print the table"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--all", action="store_true",
                        help="also centralized without GIN and each site alone")
    parser.add_argument("--arms", nargs="+",
                        help="run only these arms (fedavg fedgin central-gin central local-<site>)")


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    arms = args.arms or arm_names(cfg, args.all)
    out = args.out or f"runs/{cfg.name}-experiment"
    _, table = run_experiment(cfg, out, arms, resume=args.resume, progress=not args.quiet)
    print(table)
    print(f"results: {out}/table.md and {out}/<arm>/")
    return 0
