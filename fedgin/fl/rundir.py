"""A run directory: resolved config, metrics per round, checkpoints (written atomically), results."""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import torch

from fedgin.fl.aggregate import Weights


@contextlib.contextmanager
def atomic_path(path: Path, mode: int | None = None) -> Iterator[Path]:
    """A temporary file beside ``path`` to write (it keeps ``path``'s suffix); renamed over ``path`` when the block
    ends, removed if it fails: ``path`` is never half-written. ``mode``: the permissions it is created with, under
    the umask (default 0o666, as any new file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}{path.suffix}"
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 if mode is None else mode))
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: Path, data: bytes | str, mode: int | None = None) -> None:
    """Write ``data`` to ``path`` through :func:`atomic_path`."""
    with atomic_path(path, mode) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)


def to_tensors(weights: Weights) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(v) for k, v in weights.items()}


def to_arrays(tensors: dict[str, torch.Tensor]) -> Weights:
    return {k: v.numpy() for k, v in tensors.items()}


class RunDir:
    """The files of one run under ``path``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.config = self.path / "config.yaml"
        self.state = self.path / "state.pt"
        self.metrics_jsonl = self.path / "metrics.jsonl"
        self.metrics_csv = self.path / "metrics.csv"
        self.checkpoints = self.path / "checkpoints"
        self.best = self.path / "best_model.pt"
        self.test = self.path / "test_metrics.json"
        self.environment = self.path / "environment.jsonl"
        self.table = self.path / "table.md"
        self.plots = self.path / "plots"

    def site_best(self, site: str) -> Path:
        """A site's best-round model under FedBN: the shared weights with its own normalization layers."""
        return self.path / f"best_model_{site}.pt"

    @property
    def finished(self) -> bool:
        return self.test.is_file()

    def check_start(self, config_text: str, resume: bool) -> bool:
        """A new run needs a folder without a run; a resumed one the config of the run it continues. True when the
        run to resume has finished already (nothing to do)."""
        if not resume:
            if self.config.exists():
                raise ValueError(f"{self.path} already holds a run; pass --resume to continue it or choose another "
                                 "--out")
            return False
        if not self.config.is_file():
            raise FileNotFoundError(f"{self.config} does not exist: nothing to resume in {self.path}")
        if self.config.read_text() != config_text:
            raise ValueError(f"the config differs from the one of the run in {self.config}; resume with the same one")
        return self.finished

    def log_start(self, environment: dict, first_round: int) -> None:
        """Append a line to ``environment.jsonl`` for a start or resume at ``first_round`` (1-based): the UTC time
        and ``environment`` (:func:`fedgin.environment.environment`: machine, versions, git commit)."""
        line = json.dumps({"started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                           "first_round": first_round, **environment})
        old = self.environment.read_text() if self.environment.is_file() else ""
        atomic_write(self.environment, old + line + "\n")

    def save_state(self, state: dict) -> None:
        buf = io.BytesIO()
        torch.save(state, buf)
        atomic_write(self.state, buf.getvalue())

    def load_state(self) -> dict:
        if not self.state.is_file():
            raise FileNotFoundError(f"{self.state} does not exist: nothing to resume")
        return torch.load(self.state, weights_only=True)

    def save_weights(self, path: Path, weights: Weights) -> None:
        buf = io.BytesIO()
        torch.save(to_tensors(weights), buf)
        atomic_write(path, buf.getvalue())

    def save_round(self, round_idx: int, weights: Weights) -> None:
        self.save_weights(self.checkpoints / f"global_round_{round_idx + 1:04d}.pt", weights)

    def write_history(self, history: list[dict]) -> None:
        """metrics.jsonl and metrics.csv, rewritten whole (so a resumed run never duplicates rounds)."""
        atomic_write(self.metrics_jsonl, "".join(json.dumps(row) + "\n" for row in history))
        columns = list(dict.fromkeys(k for row in history for k in row))
        out = io.StringIO()
        writer = csv.DictWriter(out, columns)
        writer.writeheader()
        writer.writerows(history)
        atomic_write(self.metrics_csv, out.getvalue())
