"""The built-in federated engine: rounds of client sampling, local fits, FedAvg, validation, checkpoints.

``fed.mode: centralized`` runs the same loop with one client that holds the pooled training data, so the
baselines share the code path and the budget in samples: rounds x local epochs of the pooled data, or with
``train.local_steps`` that many steps for each site a federated round samples. (With ``fed.fraction`` < 1 and
local epochs the pooled model still sees all the data every round.)
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from fedgin.config import RunConfig, dump
from fedgin.environment import environment, resolve_device
from fedgin.fl.aggregate import Weights, fedavg, fedavg_dsbn
from fedgin.fl.client import Client, get_weights
from fedgin.fl.ledger import Ledger
from fedgin.fl.rundir import RunDir, atomic_write
from fedgin.train.data import Case, load_source, split
from fedgin.train.local import TrainingDiverged
from fedgin.train.model import make_model


@dataclass
class RunResult:
    run_dir: Path
    test: dict[str, dict[str, float]]  # test set name -> metrics
    best_round: int
    history: list[dict]


@dataclass
class Federation:
    """The loaded data and clients of a run."""

    sites: list[Client]  # one per site: validation, and training in federated mode
    trainers: list[Client]  # who trains: the sites, or one client on the pooled data
    tests: dict[str, tuple[str, list[Case]]]  # name -> (modality, cases)


def build_federation(cfg: RunConfig, device: torch.device, progress: bool = False) -> Federation:
    sites, pooled, pooled_modalities = [], [], []
    for i, s in enumerate(cfg.data.sites):
        cases = load_source(s, cfg.data, progress=progress)
        train, val = split(cases, s.val_cases, f"site {s.name} ({s.data_dir or 'phantom'})")
        sites.append(Client(s.name, s.modality, train, val, cfg, device=device, seed=cfg.seed * 1000 + i))
        pooled += train
        pooled_modalities += [s.modality] * len(train)
    tests = {t.name or t.modality: (t.modality, load_source(t, cfg.data, progress=progress)) for t in cfg.data.test}
    if cfg.fed.mode == "centralized":
        for s in sites:  # evaluation only
            s.images = s.labels = None
        sampled = max(1, round(cfg.fed.fraction * len(sites)))  # as sample_clients
        steps = dataclasses.replace(cfg.train, local_steps=cfg.train.local_steps * sampled)
        trainers = [Client("pooled", "mixed", pooled, [], dataclasses.replace(cfg, train=steps), device=device,
                           seed=cfg.seed * 1000 + 999, case_modalities=pooled_modalities)]
    else:
        trainers = sites
    return Federation(sites, trainers, tests)


def run(cfg: RunConfig, out: str | Path, *, resume: bool = False, progress: bool = True) -> RunResult:
    """Train per ``cfg`` into the run directory ``out``; ``resume`` continues an interrupted run exactly."""
    device = resolve_device(cfg.device)  # before any work: an unusable device leaves nothing behind
    rd = RunDir(out)
    text = dump(cfg)
    if rd.check_start(text, resume):
        return _finished(rd)

    fed = build_federation(cfg, device, progress)
    atomic_write(rd.config, text)  # once the data loaded: a run that cannot start leaves nothing behind
    torch.manual_seed(cfg.seed)
    ledger = Ledger(cfg, rd, get_weights(make_model(cfg)))
    if resume and rd.state.is_file():
        clients = ledger.restore()["clients"]
        for c in fed.trainers + fed.sites:
            c.load_state_dict(clients[c.name])
    rd.log_start(environment(device), ledger.done + 1)

    local_keys, domain_keys = fed.trainers[0].local_keys, fed.trainers[0].domain_keys
    rounds = tqdm(range(ledger.done, cfg.fed.rounds), desc=cfg.name, disable=not progress, initial=ledger.done,
                  total=cfg.fed.rounds)
    for r in rounds:
        t0 = time.perf_counter()
        chosen = sample_clients(fed.trainers, cfg.fed.fraction, ledger.sampler)
        row: dict = {"round": r + 1}
        results, domains = [], []
        for c in chosen:
            try:
                res = c.fit(ledger.weights, r, progress=progress)
            except TrainingDiverged as err:
                raise TrainingDiverged(f"{err}; last good checkpoint: {ledger.last_checkpoint()}") from None
            results.append((res.weights, res.num_samples if cfg.fed.weighting == "samples" else 1))
            domains.append(res.metrics.get("domain"))
            row.update({f"train/{c.name}/{k}": v for k, v in res.metrics.items()})
        if domain_keys:
            weights = fedavg_dsbn(results, ledger.weights, domains, domain_keys)
        else:
            weights = fedavg(results, ledger.weights, local_keys)
        row.update(validate_sites(fed.sites, weights, cfg.eval.hd95_every_round))
        ledger.end_round(weights, row, fed.sites, t0, {c.name: c.state_dict() for c in fed.trainers + fed.sites})
        _log(rounds, row, cfg, fed)

    test = ledger.finish(fed.sites, fed.tests, device)
    return RunResult(rd.path, test, ledger.best_round + 1, ledger.history)


def _finished(rd: RunDir) -> RunResult:
    done = json.loads(rd.test.read_text())
    history = [json.loads(line) for line in rd.metrics_jsonl.read_text().splitlines()]
    return RunResult(rd.path, done["test"], done["best_round"], history)


def sample_clients(trainers: list[Client], fraction: float, gen: torch.Generator) -> list[Client]:
    k = max(1, round(fraction * len(trainers)))
    idx = torch.randperm(len(trainers), generator=gen)[:k].sort().values
    return [trainers[i] for i in idx.tolist()]


def validate_sites(sites: list[Client], weights: Weights, hd95: bool) -> dict[str, float]:
    """Validation per site and per modality (case-weighted); ``val/score`` = mean over modalities of mean Dice."""
    row: dict[str, float] = {}
    by_mod: dict[str, list[tuple[int, dict]]] = {}
    for s in sites:
        res = s.evaluate(weights, hd95)
        if res.num_samples:
            row.update({f"val/{s.name}/{k}": v for k, v in res.metrics.items()})
            by_mod.setdefault(s.modality, []).append((res.num_samples, res.metrics))
    for mod, rows in by_mod.items():
        for key in rows[0][1]:
            vals = np.array([m[key] for _, m in rows])
            w = np.array([n for n, _ in rows], dtype=float) * ~np.isnan(vals)
            row[f"val/{mod}/{key}"] = float(np.nansum(vals * w) / w.sum()) if w.sum() else float("nan")
    scores = [row[f"val/{m}/dice/mean"] for m in by_mod]
    if scores:
        row["val/score"] = float(np.nanmean(scores))
    return row


def _log(bar, row: dict, cfg: RunConfig, fed: Federation) -> None:
    mods = dict.fromkeys(s.modality for s in fed.sites)
    val = " ".join(f"{m} {row[f'val/{m}/dice/mean']:.3f}" for m in mods if f"val/{m}/dice/mean" in row)
    steps = [(row[f"train/{c.name}/step_time"], row[f"train/{c.name}/gin_share"])
             for c in fed.trainers if f"train/{c.name}/step_time" in row]
    step = sum(s for s, _ in steps) / len(steps)
    share = sum(g for _, g in steps) / len(steps)
    bar.write(f"round {row['round']}/{cfg.fed.rounds}: val Dice {val or '-'} (best round {row['best_round']}); "
              f"{row['time_s']:.1f} s, step {1000 * step:.0f} ms, {100 * share:.0f}% augmenting")
