"""One site's local training: batches, augmented views on the fly (the run's method and its losses), FedProx term,
domain-specific normalization, optimizer steps."""
from __future__ import annotations

import math
import time
from collections.abc import Mapping

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from fedgin.augment import high_frequency_loss, kl_consistency, use_domain
from fedgin.config import RunConfig, recipe
from fedgin.gin import check_errors
from fedgin.train.losses import make_loss


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


def forward(model: nn.Module, x: Tensor, domains: Tensor | None) -> Tensor:
    """``model(x)``; with per-sample ``domains`` (domain-specific normalization) each domain's samples run
    through that domain's normalization."""
    if domains is None:
        return model(x)
    groups = domains.unique().tolist()
    if len(groups) == 1:
        with use_domain(model, groups[0]):
            return model(x)
    out = None
    for d in groups:
        sel = domains == d
        with use_domain(model, d):
            part = model(x[sel])
        out = part.new_empty((len(x), *part.shape[1:])) if out is None else out
        out[sel] = part
    return out


def train_local(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    cfg: RunConfig,
    generator: torch.Generator,
    *,
    anchor: Mapping[str, Tensor] | None = None,
    domains: Tensor | None = None,
    desc: str = "",
    progress: bool = False,
) -> dict[str, float]:
    """Train ``model`` in place for one round on ``images`` [N, 1, *S] / ``labels`` [N, 1, *S].

    ``generator`` drives the shuffling and the augmentation draws (``aug.*``: the method, its views and losses,
    :func:`fedgin.config.recipe`). ``anchor`` (the global weights) enables the FedProx term, over the parameters
    it holds, when ``fed.prox_mu > 0``. ``domains`` [N] (``fed.norm: dsbn``): each sample's domain-specific
    normalization.
    Returns scalar metrics: mean loss, mean step time, the share of it spent augmenting (``gin_share``, named
    after GIN but measured for every method), steps.
    """
    device = next(model.parameters()).device
    seg_loss = make_loss(cfg.train.loss)
    optimizer = make_optimizer(model, cfg)
    plan = recipe(cfg)
    branch = getattr(model, "reconstruction", None) if plan.reconstruction_weight else None
    mu = cfg.fed.prox_mu
    prox = [(p, anchor[n].to(device)) for n, p in model.named_parameters() if n in anchor] if mu > 0 and anchor else []
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    model.train()
    losses, step_times, aug_times = [], [], []
    batches = batch_order(len(images), cfg, generator)
    for step, idx in enumerate(tqdm(batches, desc=desc, leave=False, disable=not progress)):
        start = time.perf_counter()
        x = expand_channels(images[idx].to(device), cfg.data.channels)
        y = labels[idx].to(device)
        if plan.augmentation is not None:
            sync()
            a0 = time.perf_counter()
            views = plan.views(x, y, generator)
            sync()
            aug_times.append(time.perf_counter() - a0)
        else:
            views = [x]
        doms = None if domains is None else domains[idx].to(device).repeat(len(views))
        logits = forward(model, torch.cat(views) if len(views) > 1 else views[0], doms)
        loss = seg_loss(logits[: len(idx)], y)
        if len(views) > 1 and plan.consistency_weight:
            loss = loss + plan.consistency_weight * kl_consistency(list(logits.split(len(idx))), plan.reverse_kl)
        if branch is not None:
            loss = loss + plan.reconstruction_weight * high_frequency_loss(
                branch.reconstruct(tuple(x.shape[2:]), len(idx)), x)
        if prox:
            loss = loss + mu / 2 * sum((p - a).pow(2).sum() for p, a in prox)
        if not torch.isfinite(loss):
            check_errors(device)  # non-finite input to GIN on a GPU: name it rather than the loss
            raise TrainingDiverged(f"the loss diverged ({loss.item()}) at {desc or 'local training'} step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sync()
        losses.append(loss.item())
        step_times.append(time.perf_counter() - start)
    check_errors(device)
    step_time = sum(step_times) / max(len(step_times), 1)
    aug_share = sum(aug_times) / max(sum(step_times), 1e-12)
    return {"loss": sum(losses) / max(len(losses), 1), "step_time": step_time, "gin_share": aug_share,
            "steps": float(len(batches))}
