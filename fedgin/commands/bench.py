"""``fedgin bench``: the benchmark suite (:mod:`fedgin.bench`, source in bench/)."""
from fedgin.bench.cli import HELP, add_arguments, run

__all__ = ["HELP", "add_arguments", "run"]
