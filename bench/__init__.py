"""fedgin's benchmark suite (installed as ``fedgin.bench``): every GIN implementation, checked against the float64
reference and timed on presets of cases, plus the GIN share of a training step.

``python -m bench --preset quick|paper|full`` (or ``fedgin bench``); ``bench/gpu.sh`` runs the GPU tests and the
``paper`` preset in one command. New implementations are :func:`register` entries.
"""
from . import augment_impls  # noqa: F401 - registers the comparison augmentations after GIN's entries
from .cases import PRESETS, Case, E2ECase, Preset, get_preset
from .registry import IMPLEMENTATIONS, Impl, register, select
from .report import write_report
from .suite import run_suite

__all__ = ["IMPLEMENTATIONS", "PRESETS", "Case", "E2ECase", "Impl", "Preset", "get_preset", "register", "run_suite",
           "select", "write_report"]
