"""``fedgin demo``: the paper's scenario on the built-in phantom (2 CT sites, 1 small MRI site), on a CPU."""
from __future__ import annotations

import argparse

from fedgin.commands.train import add_config_arguments, config_from_args
from fedgin.fl.experiment import arm_names, run_experiment

HELP = "FedAvg vs FedGIN vs centralized GIN on phantom CT/MRI data, ending with the table (minutes on a CPU)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, default_preset="demo")
    parser.add_argument("--fast", action="store_true", help="the smaller demo-fast preset (~3 min on 2 CPU cores)")


def run(args: argparse.Namespace) -> int:
    if args.fast:
        args.preset = "demo-fast"
    cfg = config_from_args(args)
    out = args.out or f"runs/{cfg.name}"
    results, table = run_experiment(cfg, out, arm_names(cfg), resume=args.resume, progress=not args.quiet)
    print(table)
    mri = [t.name or t.modality for t in cfg.data.test if t.modality.startswith("mri")]
    for name in mri:
        gain = results["fedgin"][name]["dice/mean"] - results["fedavg"][name]["dice/mean"]
        print(f"FedGIN vs FedAvg on {name}: mean Dice {gain:+.3f}")
    print(f"results: {out}/table.md, plots and checkpoints in {out}/<arm>/")
    return 0
