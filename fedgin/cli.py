"""The ``fedgin`` command line: one subcommand per module in :mod:`fedgin.commands`."""
from __future__ import annotations

import argparse
import importlib
import sys
import warnings

COMMANDS = ("synth", "augment", "train", "experiment", "demo", "bench", "nnunet")
DESCRIPTION = ("Fused GIN augmentation and a federated CT/MRI segmentation trainer. Start with `fedgin demo`; "
               "`fedgin COMMAND -h` lists a command's options.")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedgin", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        module = importlib.import_module(f"fedgin.commands.{name}")
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    saved = warnings.formatwarning  # a user's warning (a data set's cases cut, say) as one line, not Python's two
    warnings.formatwarning = lambda message, category, *rest, **kw: (
        f"fedgin {args.command}: warning: {message}\n" if issubclass(category, UserWarning)
        else saved(message, category, *rest, **kw))
    try:
        return int(args.run(args) or 0)
    except (ValueError, TypeError, FileNotFoundError) as err:
        print(f"fedgin {args.command}: error: {err}", file=sys.stderr)
        return 2
    finally:
        warnings.formatwarning = saved
