"""``fedgin experiment``: the paper's protocol (FedAvg, FedGIN, centralized GIN; optionally all baselines), or
``--methods``: every comparison method federated and centralized, with its cost."""
from __future__ import annotations

import argparse

from fedgin.commands.train import add_config_arguments, config_from_args
from fedgin.fl.experiment import METHODS, arm_names, run_comparison, run_experiment

HELP = ("run FedAvg, FedGIN and centralized GIN (--all: every baseline; --methods: the comparison methods) on one "
        "scenario and print the table")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--all", action="store_true",
                        help="also centralized without GIN and each site alone")
    parser.add_argument("--arms", nargs="+",
                        help="run only these arms (fedavg fedgin central-gin central local-<site>)")
    parser.add_argument("--methods", nargs="+", metavar="METHOD",
                        help=f"compare methods, each federated and centralized with the same budget: "
                             f"{' '.join(METHODS)}, or all; writes comparison.md, .csv, .png")


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    if args.methods and (args.arms or args.all):
        raise ValueError("--methods runs its own arms; leave out --arms and --all")
    out = args.out or f"runs/{cfg.name}-{'comparison' if args.methods else 'experiment'}"
    if args.methods:
        _, table = run_comparison(cfg, out, args.methods, resume=args.resume, progress=not args.quiet)
        print(table)
        print(f"results: {out}/comparison.md, comparison.csv, comparison.png and {out}/<arm>/")
        return 0
    arms = args.arms or arm_names(cfg, args.all)
    _, table = run_experiment(cfg, out, arms, resume=args.resume, progress=not args.quiet)
    print(table)
    print(f"results: {out}/table.md and {out}/<arm>/")
    return 0
