"""What travels between the ServerApp and the ClientApps: weights as an ``ArrayRecord``, the run's config as
Flower run config, versions, and Flower's error reasons made readable."""
from __future__ import annotations

import hashlib
import importlib.metadata
import re
from pathlib import Path

import numpy as np
import yaml
from flwr.app import Array, ArrayRecord, Context

from fedgin.config import RunConfig, build, dump
from fedgin.fl.aggregate import Weights

CONFIG_KEY = "fedgin-config"  # run config: the fedgin config as YAML text
OUT_KEY = "fedgin-out"  # run config: the run directory, on the SuperLink's machine
RESUME_KEY = "fedgin-resume"  # run config: continue the interrupted run in the run directory
RUN_KEY = "fedgin-run"  # message config: the run's token (names a site's saved state of the run)


def fedgin_version() -> str:
    return importlib.metadata.version("fedgin")


def run_token(out: str | Path, cfg: RunConfig) -> str:
    """A run's name for the sites: the same for a run and its resumption, different for another run."""
    return hashlib.sha256(f"{Path(out).absolute()}\n{dump(cfg)}".encode()).hexdigest()[:16]


def to_record(weights: Weights) -> ArrayRecord:
    return ArrayRecord(array_dict={k: Array(np.asarray(v, order="C")) for k, v in weights.items()})


def to_weights(record: ArrayRecord) -> Weights:
    return {k: v.numpy() for k, v in record.items()}


def run_config(context: Context) -> RunConfig:
    """The fedgin config a run was started with (``flwr run`` carries it in the run config)."""
    text = context.run_config.get(CONFIG_KEY)
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"the Flower run config has no {CONFIG_KEY!r}: start runs with fedgin's app project "
                         "(python -m fedgin.fl.flower app ...)")
    return build(yaml.safe_load(text), "Flower run config")


def error_text(reason: str) -> str:
    """Flower's ``"<class 'ValueError'>:<'message'>"`` as ``"ValueError: message"``."""
    match = re.fullmatch(r"<class '(?:[\w.]*\.)?(\w+)'>:<'(.*)'>", reason, re.S)
    return f"{match[1]}: {match[2]}" if match else reason
