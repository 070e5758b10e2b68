"""One site's local training: batches, GIN views on the fly, loss, FedProx term, optimizer steps."""
from __future__ import annotations

import math
import time
from collections.abc import Mapping

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from fedgin.config import RunConfig, gin_config
from fedgin.gin import gin_apply
from fedgin.params import GINParams
from fedgin.train.losses import consistency_loss, make_loss


class TrainingDiverged(ValueError):
    """The loss became NaN or infinite."""


def make_optimizer(model: nn.Module, cfg: RunConfig) -> torch.optim.Optimizer:
    t = cfg.train
    opt = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
    return opt(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)


def batch_order(n: int, cfg: RunConfig, generator: torch.Generator) -> list[Tensor]:
    """The index batches of one round: ``local_steps`` batches, or ``local_epochs`` shuffled passes."""
    bs = cfg.train.batch_size
    if cfg.train.local_steps:
        need = cfg.train.local_steps * bs
        order = torch.cat([torch.randperm(n, generator=generator) for _ in range(math.ceil(need / n))])
        return list(order[:need].split(bs))
    return [b for _ in range(cfg.train.local_epochs) for b in torch.randperm(n, generator=generator).split(bs)]


def expand_channels(x: Tensor, channels: int) -> Tensor:
    """Grayscale [B, 1, *S] replicated to ``channels`` channels."""
    return x if channels == 1 else x.expand(-1, channels, *x.shape[2:])


def train_local(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    cfg: RunConfig,
    generator: torch.Generator,
    *,
    anchor: Mapping[str, Tensor] | None = None,
    desc: str = "",
    progress: bool = False,
) -> dict[str, float]:
    """Train ``model`` in place for one round on ``images`` [N, 1, *S] / ``labels`` [N, 1, *S].

    ``generator`` drives the shuffling and the GIN draws. ``anchor`` (the global weights) enables the FedProx
    term when ``fed.prox_mu > 0``. Returns scalar metrics: mean loss, mean step time, the share of it in GIN.
    """
    device = next(model.parameters()).device
    seg_loss = make_loss(cfg.train.loss)
    optimizer = make_optimizer(model, cfg)
    aug = cfg.aug
    gcfg = gin_config(cfg) if aug.method == "gin" else None
    mu = cfg.fed.prox_mu
    prox = [(p, anchor[n].to(device)) for n, p in model.named_parameters()] if mu > 0 and anchor else []
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    model.train()
    losses, step_times, gin_times = [], [], []
    batches = batch_order(len(images), cfg, generator)
    for step, idx in enumerate(tqdm(batches, desc=desc, leave=False, disable=not progress)):
        start = time.perf_counter()
        x = expand_channels(images[idx].to(device), cfg.data.channels)
        y = labels[idx].to(device)
        if gcfg is not None:
            sync()
            g0 = time.perf_counter()
            views = [gin_apply(x, GINParams.draw_config(len(idx), gcfg, device=device, generator=generator),
                               aug.backend, check_finite=False) for _ in range(aug.views)]
            sync()
            gin_times.append(time.perf_counter() - g0)
            x = torch.cat(views)
        logits = model(x)
        loss = seg_loss(logits[: len(idx)], y)
        if aug.views > 1:
            loss = loss + aug.consistency_weight * consistency_loss(list(logits.split(len(idx))))
        if prox:
            loss = loss + mu / 2 * sum((p - a).pow(2).sum() for p, a in prox)
        if not torch.isfinite(loss):
            raise TrainingDiverged(f"the loss diverged ({loss.item()}) at {desc or 'local training'} step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sync()
        losses.append(loss.item())
        step_times.append(time.perf_counter() - start)
    step_time = sum(step_times) / max(len(step_times), 1)
    gin_share = sum(gin_times) / max(sum(step_times), 1e-12)
    return {"loss": sum(losses) / max(len(losses), 1), "step_time": step_time, "gin_share": gin_share,
            "steps": float(len(batches))}
