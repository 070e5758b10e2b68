"""The host path on a GPU: GIN's cost in a training step and a call's host time against its CUDA-graph time.

``python -m bench.host_gpu [--reps N] [--json PATH]`` (a CUDA device; ``bench/gpu.sh`` runs it first), one run:

- the standalone call, 2D 32x3x192² float32, kernel sizes 1-3-1-3 (fixed, so eager and captured calls launch the
  same kernel): the reference and the fused seeded call, each timed from the host (back-to-back calls, one sync at
  the end, per call) and replayed from a CUDA graph;
- 3D 2x3x128³ float32, 3x3x3 kernels: the fused seeded call (drawn in the kernel) against the explicit draw's
  default, the weights as kernel arguments a launch a sample (drawn on the host each call, ``GINParams.from_seed``):
  whether the argument path still wins where a call is large (#31: kept only if it does);
- the 2-view training step (a MONAI UNet under bf16 autocast, Dice-CE + 10 x KL consistency, AdamW, as
  :mod:`bench.e2e`): GIN's time on the device's timeline and the whole step's, for the reference, the fused call
  (``gin_views``) and the trainer's own path (``fedgin.augment``'s gin augmentation, drawing from its pool).

The issue's targets (#31): GIN <= 0.25 ms in the step, the trainer's path within 10% of the fused row, the host time
within 1.25x of the graph time.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from fedgin import GINParams, gin, gin_apply, gin_views, make_config, reference_apply, warm_up
from fedgin.augment.gin_ipa import GINAugmentation

from .e2e import train_step
from .timing import Stopwatch, TimingSettings, exact_fp32, graph_median_ms

SHAPE = (32, 3, 192, 192)
K1313 = (1, 3, 1, 3)


def host_ms(fn: Callable[[], object], reps: int) -> float:
    """Per call, ``reps`` back-to-back calls and one sync: what a loop that never waits sees."""
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / reps * 1e3


def standalone(reps: int) -> list[dict]:
    x = torch.rand(SHAPE, device="cuda") + 0.5
    params = GINParams.from_seed(SHAPE[0], make_config(layer_kernel_sizes=K1313), 0, device="cuda")
    calls = {"reference": lambda: reference_apply(x, params),
             "fused": lambda: gin(x, layer_kernel_sizes=K1313)}
    rows = []
    for name, fn in calls.items():
        rows.append({"impl": name, "host_ms": host_ms(fn, reps),
                     "graph_ms": graph_median_ms(fn, TimingSettings())})
        rows[-1]["host_over_graph"] = rows[-1]["host_ms"] / rows[-1]["graph_ms"]
    return rows


def large_3d(reps: int) -> list[dict]:
    shape, ks = (2, 3, 128, 128, 128), (3, 3, 3, 3)
    x = torch.rand(shape, device="cuda") + 0.5
    cfg = make_config(in_channels=3, spatial_dims=3, layer_kernel_sizes=ks)
    seeds = iter(range(10**9))
    calls = {"fused, drawn in the kernel": lambda: gin(x, layer_kernel_sizes=ks),
             "weights as arguments, drawn on the host": lambda: gin_apply(
                 x, GINParams.from_seed(shape[0], cfg, next(seeds), device="cuda"))}
    rows = []
    for name, fn in calls.items():
        rows.append({"impl": name, "host_ms": host_ms(fn, max(reps // 4, 10))})
    return rows


def training_step(reps: int) -> list[dict]:
    from monai.networks.nets import UNet

    from fedgin.train.losses import make_loss

    x = torch.rand(SHAPE, device="cuda") + 0.5
    y = torch.randint(0, 4, (SHAPE[0], 1, *SHAPE[2:]), device="cuda")
    trainer = GINAugmentation(n_views=2)
    gen = torch.Generator().manual_seed(0)
    augment = {"none": None,
               "reference": lambda: torch.cat(list(gin_views(x, 2, backend="reference", layer_kernel_sizes=K1313))),
               "fused": lambda: gin_views(x, 2, layer_kernel_sizes=K1313).flatten(0, 1),
               "trainer path (aug-gin)": lambda: torch.cat(trainer.views(x, None, gen))}
    rows = []
    for name, aug in augment.items():
        torch.manual_seed(0)
        model = UNet(spatial_dims=2, in_channels=3, out_channels=4, channels=(16, 32, 64, 128), strides=(2, 2, 2),
                     num_res_units=0).cuda()
        opt = torch.optim.AdamW(model.parameters(), lr=5e-4)
        seg_loss = make_loss("dice_ce")
        clock = Stopwatch(torch.device("cuda"))

        def step(aug=aug, model=model, opt=opt, seg_loss=seg_loss, clock=clock) -> tuple[float, float]:
            t0 = clock.mark()
            xin = aug() if aug is not None else x
            t1 = clock.mark()
            train_step(model, opt, seg_loss, xin, y, 1 if aug is None else 2)
            t2 = clock.mark()
            clock.done()
            return clock.ms(t0, t2), clock.ms(t0, t1)

        for _ in range(10):
            step()
        times = [step() for _ in range(reps)]
        rows.append({"impl": name, "step_ms": statistics.median(t[0] for t in times),
                     "gin_ms": statistics.median(t[1] for t in times)})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.host_gpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=100)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench.host_gpu needs a CUDA device", file=sys.stderr)
        return 2
    with exact_fp32():
        warm_up(torch.rand(SHAPE, device="cuda"))  # every tuple of the pool: the trainer's path draws from it
        warm_up(torch.rand(SHAPE, device="cuda"), layer_kernel_sizes=K1313)
        report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "shape": SHAPE,
                  "standalone": standalone(args.reps), "training_step": training_step(args.reps),
                  "large_3d": large_3d(args.reps)}
    print(f"# host path on {report['device']}, 2D 32x3x192² fp32 k1313, medians")
    print("| call | from the host (ms) | from a CUDA graph (ms) | host / graph |\n|---|---:|---:|---:|")
    for r in report["standalone"]:
        print(f"| {r['impl']} | {r['host_ms']:.4f} | {r['graph_ms']:.4f} | {r['host_over_graph']:.2f} |")
    print("| 2-view step, GIN by | GIN (ms) | step (ms) |\n|---|---:|---:|")
    for r in report["training_step"]:
        print(f"| {r['impl']} | {r['gin_ms']:.3f} | {r['step_ms']:.3f} |")
    print("| 3D 2x3x128³ k3333 fp32 | from the host (ms) |\n|---|---:|")
    for r in report["large_3d"]:
        print(f"| {r['impl']} | {r['host_ms']:.4f} |")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
