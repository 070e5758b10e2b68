"""What a result was measured with: device, library versions, git commit, precision flags."""
from __future__ import annotations

import os
import platform
import re
import subprocess
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except ImportError:
        return None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def git_state(repo: Path = REPO) -> dict:
    """Commit and whether the tree has uncommitted changes; None values where git or the repository is missing."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain") if commit else None
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def device_slug(device: torch.device) -> str:
    """``cpu``, or the GPU's name as a file-name part (``nvidia-h100-80gb-hbm3``)."""
    if device.type != "cuda":
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")


def environment(device: torch.device) -> dict:
    """Device, versions, git state and the TF32 flags the timings ran with."""
    info = {
        "device_type": device.type,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        "device_slug": device_slug(device),
        "cpu_threads": torch.get_num_threads(),
        "load_avg_1min": os.getloadavg()[0],  # other work on the machine makes CPU timings noisy
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "triton": _version("triton"),
        "monai": _version("monai"),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "git": git_state(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            sm_count=props.multi_processor_count, memory_gib=props.total_memory / 2**30,
            l2_bytes=getattr(props, "L2_cache_size", None), capability=f"{props.major}.{props.minor}",
            tf32_during_timing={"cudnn": torch.backends.cudnn.allow_tf32,
                                "matmul": torch.backends.cuda.matmul.allow_tf32},
        )
    info["tf32_during_checks"] = False
    return info
