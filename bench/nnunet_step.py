"""GIN's share of an nnU-Net v2 training iteration: nnU-Net's own trainer against fedgin's, GIN on the reference
backend and on the fused one.

``python -m bench.nnunet_step DATASET CONFIGURATION [--device cuda] [--steps N] [--json PATH]``, with nnU-Net's
folders set (``nnUNet_preprocessed``, ``nnUNet_results``), the data set preprocessed for CONFIGURATION, and fedgin's
trainers exported (``nnUNet_extTrainer``). Each arm is built as ``nnUNetv2_train`` builds it
(``get_trainer_from_args``), started (``on_train_start``: the network, the optimizer, the loaders), and timed over
``steps`` calls of ``train_step`` on batches fetched beforehand (loading is not timed), a sync after each; GIN alone is
timed on the same batches. Reports each arm's median step and GIN call (ms) and GIN's share of the step.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from nnunetv2.run.run_training import get_trainer_from_args

from .timing import sync

# arm: (trainer, GIN backend)
ARMS = {"nnU-Net, no GIN": ("nnUNetTrainer", None), "GIN, reference": ("nnUNetTrainerGIN", "reference"),
        "GIN, fused": ("nnUNetTrainerGIN", "auto")}


def _timed(fn, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return (time.perf_counter() - start) * 1e3


def run_arm(dataset: str, configuration: str, trainer_name: str, backend: str | None, device: torch.device,
            steps: int, warmup: int) -> dict:
    """Median ms of ``train_step`` and of the trainer's GIN call over ``steps`` pre-fetched batches."""
    trainer = get_trainer_from_args(dataset, configuration, 0, trainer_name, device=device)
    if backend is not None:
        trainer.gin_config = {**trainer.gin_config, "backend": backend}
    trainer.num_epochs = 1
    trainer.on_train_start()
    try:
        trainer.on_train_epoch_start()
        batches = [next(trainer.dataloader_train) for _ in range(warmup + steps)]
        step_ms = [_timed(lambda b=b: trainer.train_step(b), device) for b in batches]
        gin_ms = []
        if backend is not None:
            data = [b["data"].to(device) for b in batches]
            gin_ms = [_timed(lambda d=d: trainer.gin_augment(d), device) for d in data]
    finally:
        trainer.on_train_end()
    out = {"trainer": trainer_name, "backend": backend, "batch": list(batches[0]["data"].shape),
           "step_ms": statistics.median(step_ms[warmup:])}
    if gin_ms:
        out["gin_ms"] = statistics.median(gin_ms[warmup:])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.nnunet_step", description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", help="nnU-Net data set name or id (preprocessed)")
    parser.add_argument("configuration", help="nnU-Net configuration, e.g. 2d or 3d_fullres")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=20, help="timed steps an arm (default: 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (default: 3)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    rows = {arm: run_arm(args.dataset, args.configuration, name, backend, device, args.steps, args.warmup)
            for arm, (name, backend) in ARMS.items()}
    base = rows["nnU-Net, no GIN"]["step_ms"]
    print(f"nnU-Net {args.configuration} on {device}, batch {rows['GIN, fused']['batch']}, median of {args.steps}")
    print("| arm | step (ms) | GIN call (ms) | GIN share of the step |\n|---|---:|---:|---:|")
    for arm, row in rows.items():
        gin_ms = row.get("gin_ms")
        share = f"{gin_ms / row['step_ms']:.1%}" if gin_ms is not None else ""
        print(f"| {arm} | {row['step_ms']:.2f} | {'' if gin_ms is None else f'{gin_ms:.3f}'} | {share} |")
        row["over_no_gin"] = row["step_ms"] / base
    if args.json:
        args.json.write_text(json.dumps({"device": str(device), "configuration": args.configuration,
                                         "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
