"""What a run or a measurement ran with: the machine, the library versions and the git state of the code."""
from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent


def resolve_device(name: str | None) -> torch.device:
    """``name`` as a device (``None``/``"auto"``: CUDA when torch sees a GPU, else the CPU); a device this machine
    cannot run is a ``ValueError`` naming it (checked before any work)."""
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cuda", "cpu"):
        raise ValueError(f"device {name!r}: fedgin runs on cuda or cpu")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r}: torch {torch.__version__} sees no CUDA GPU on this machine; "
                             "use --device cpu (or auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    return device


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else ``platform.processor()``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def git_state(repo: Path = REPO) -> dict:
    """The commit of the checkout ``repo`` is the top of, and whether its tracked files have uncommitted changes;
    None values where git is missing or ``repo`` is not a checkout's top (an installed package)."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    top = git("rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != repo.resolve():
        return {"commit": None, "dirty": None}
    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def package_version(name: str) -> str | None:
    """An installed distribution's version, without importing it (None when not installed)."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def environment(device: torch.device) -> dict:
    """The device (GPU name, or the CPU's and its threads), Python, platform, the versions of fedgin's stack and
    the git state of the fedgin checkout."""
    from fedgin import __version__

    return {
        "device_type": device.type,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "cpu_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "fedgin": __version__,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        **{name: package_version(name) for name in ("triton", "monai", "flwr")},
        "git": git_state(),
    }
