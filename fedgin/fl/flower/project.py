"""The Flower app project that ``flwr run`` submits: a ``pyproject.toml`` naming fedgin's ServerApp and ClientApp,
whose run config carries the fedgin config (as YAML) and the run directory (a path on the SuperLink's machine).

The apps are imported from the installed fedgin, so every machine needs the same fedgin (checked at the
handshake) and the SuperLink runs with ``--disable-runtime-dependency-installation``.
"""
from __future__ import annotations

from pathlib import Path

import tomli_w

from fedgin.config import RunConfig, dump
from fedgin.fl.flower.records import CONFIG_KEY, OUT_KEY, RESUME_KEY, fedgin_version
from fedgin.fl.rundir import atomic_write


def write_project(app_dir: str | Path, cfg: RunConfig, out: str | Path, resume: bool = False) -> Path:
    """Write ``app_dir/pyproject.toml`` for a run of ``cfg`` into the run directory ``out`` (``resume``: continue
    the interrupted run there); returns its path."""
    doc = {
        "project": {"name": "fedgin-flower", "version": fedgin_version(),
                    "description": f"fedgin run {cfg.name} on Flower"},
        "tool": {"flwr": {"app": {
            "publisher": "fedgin",
            "components": {"serverapp": "fedgin.fl.flower.server_app:app",
                           "clientapp": "fedgin.fl.flower.client_app:app"},
            "config": {CONFIG_KEY: dump(cfg), OUT_KEY: str(Path(out).absolute()), RESUME_KEY: resume},
        }}},
    }
    path = Path(app_dir) / "pyproject.toml"
    atomic_write(path, tomli_w.dumps(doc, multiline_strings=True))
    return path
