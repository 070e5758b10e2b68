"""What a result was measured with: device, library versions, git commit, precision flags."""
from __future__ import annotations

import os
import re

import torch

from fedgin.environment import environment as run_environment


def device_slug(device: torch.device) -> str:
    """``cpu``, or the GPU's name as a file-name part (``nvidia-h100-80gb-hbm3``)."""
    if device.type != "cuda":
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")


def environment(device: torch.device) -> dict:
    """Device, versions, git state and the TF32 flags the timings ran with."""
    info = {
        **run_environment(device),
        "device_slug": device_slug(device),
        "load_avg_1min": os.getloadavg()[0],  # other work on the machine makes CPU timings noisy
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
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
