"""End to end: the share of a segmentation training step that GIN costs with each implementation.

A step as in the original GIN training: ``views`` fresh GIN draws of the batch, a MONAI UNet on all views
under bf16 autocast, a Dice + cross-entropy loss on the first view plus 10x the KL consistency between
views, AdamW. The GIN part (draws included) and the whole step are timed on the device's timeline.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm

from .cases import E2ECase, draw_params, image_like
from .registry import Impl, Prepared, skip_reason
from .timing import Stopwatch, TimingSettings, sync

NO_GIN = "no-gin"  # the plain supervised step on one view: the UNet's own cost


def _stepper(e2e: E2ECase, device: torch.device, fn: Prepared | None, shared: bool,
             seed: int) -> Callable[[], tuple[float, float]]:
    """One training step as a closure returning (step ms, GIN ms); ``fn=None``: one view, no GIN."""
    from monai.networks.nets import UNet

    from fedgin.train.losses import make_loss

    case = e2e.gin
    torch.manual_seed(seed)
    model = UNet(spatial_dims=case.dims, in_channels=case.channels, out_channels=e2e.classes,
                 channels=e2e.unet_channels, strides=e2e.strides, num_res_units=0).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4)
    seg_loss = make_loss("dice_ce")
    gen = torch.Generator(device=device).manual_seed(seed)
    x = image_like(case, device, gen)
    y = torch.randint(0, e2e.classes, (case.batch, 1, *case.size), generator=gen, device=device)
    draw_gen = torch.Generator().manual_seed(seed)
    clock = Stopwatch(device)
    views = e2e.views if fn is not None else 1

    def step() -> tuple[float, float]:
        sync(device)
        t0 = clock.mark()
        if fn is not None:
            xin = torch.cat([fn(x, draw_params(case, device, per_sample=not shared, generator=draw_gen))
                             for _ in range(views)])
        else:
            xin = x
        t1 = clock.mark()
        train_step(model, opt, seg_loss, xin, y, views)
        t2 = clock.mark()
        clock.done()
        return clock.ms(t0, t2), clock.ms(t0, t1)

    return step


def train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, seg_loss: Callable, xin: torch.Tensor,
               y: torch.Tensor, views: int) -> None:
    """One step on ``xin`` (``views`` views of the batch stacked): the UNet under bf16 autocast, the segmentation
    loss on the first view plus 10x the KL consistency between the views, AdamW."""
    from fedgin.augment.losses import kl_consistency

    batch = y.shape[0]
    with torch.autocast(xin.device.type, dtype=torch.bfloat16):
        logits = model(xin)
        loss = seg_loss(logits[:batch], y)
        if views > 1:
            loss = loss + 10.0 * kl_consistency(list(logits.split(batch)), reverse=True)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def bench_e2e(e2e: E2ECase, impls: Sequence[Impl], device: torch.device, preset: str, settings: TimingSettings,
              deadline: float, seed: int, bar: tqdm) -> list[dict]:
    """One row for the step without GIN, then one per implementation (skipped/failed like the GIN rows)."""
    case = e2e.gin
    reps = settings.e2e_reps if device.type == "cuda" else settings.e2e_cpu_reps
    try:
        import monai  # noqa: F401 - the UNet and the losses need it; it is not on every GPU image
        missing = None
    except ImportError as err:
        missing = f"the training step needs MONAI ({err}); gpu.sh unpacks a carried wheel from .wheels/"
    rows = []
    for impl in [None, *impls]:
        name = NO_GIN if impl is None else impl.name
        bar.set_postfix_str(f"{e2e.label} {name}")
        row = {"case": e2e.label, "gin_case": case.label, "gin_case_id": case.id, "dims": case.dims,
               "batch": case.batch, "impl": name, "views": 1 if impl is None else e2e.views,
               "unet_channels": list(e2e.unet_channels), "strides": list(e2e.strides), "autocast": "bf16",
               "status": None, "reason": None, "step_ms": None, "gin_ms": None, "gin_share": None}
        try:
            if missing or time.monotonic() > deadline:
                reason = missing or "the run's time budget (--budget-s) was spent"
            else:
                reason = skip_reason(impl, case, device, preset, deadline) if impl is not None else None
            if reason is not None:
                row.update(status="skipped", reason=reason)
            else:
                fn = impl.prepare(case, device) if impl is not None else None
                step = _stepper(e2e, device, fn, impl is not None and impl.shared_network, seed)
                for _ in range(settings.e2e_warmup):
                    step()
                times = [step() for _ in range(reps)]
                step_ms = statistics.median(t[0] for t in times)
                gin_ms = statistics.median(t[1] for t in times) if impl is not None else 0.0
                row.update(status="ok", step_ms=step_ms, gin_ms=gin_ms, gin_share=gin_ms / step_ms)
        except Exception as err:  # noqa: BLE001 - reported as failed, never as a time
            row.update(status="failed", reason=f"{type(err).__name__}: {err}"[:500])
            if device.type == "cuda":
                torch.cuda.empty_cache()
        rows.append(row)
        bar.update()
    return rows
