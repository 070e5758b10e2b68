"""The built-in federated engine: rounds of client sampling, local fits, FedAvg, validation, checkpoints.

``fed.mode: centralized`` runs the same loop with one client that holds the pooled training data, so the
baselines share the code path and the budget in samples: rounds x local epochs of the pooled data, or with
``train.local_steps`` that many steps for each site a federated round samples. (With ``fed.fraction`` < 1 and
local epochs the pooled model still sees all the data every round.)
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from fedgin.config import RunConfig, dump, recipe
from fedgin.environment import environment, resolve_device
from fedgin.fl.aggregate import Weights, fedavg, fedavg_dsbn
from fedgin.fl.client import Client, get_weights, set_weights
from fedgin.fl.rundir import RunDir, atomic_write, to_arrays, to_tensors
from fedgin.train.data import Case, load_source, split
from fedgin.train.evaluate import evaluate_cases
from fedgin.train.local import TrainingDiverged
from fedgin.train.model import make_model, model_for_modality


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
    state = rd.load_state() if resume and rd.state.is_file() else None

    fed = build_federation(cfg, device, progress)
    atomic_write(rd.config, text)  # once the data loaded: a run that cannot start leaves nothing behind
    torch.manual_seed(cfg.seed)
    weights = get_weights(make_model(cfg))
    sampler = torch.Generator().manual_seed(cfg.seed)
    history: list[dict] = []
    best, best_round, best_score, start = weights, -1, -math.inf, 0
    best_local: dict[str, Weights] = {}
    if state is not None:
        weights, best = to_arrays(state["global"]), to_arrays(state["best"])
        # a state saved before runs kept FedBN's best-round layers has none
        best_local = {name: to_arrays(t) for name, t in state.get("best_local", {}).items()}
        best_round, best_score, start = state["best_round"], state["best_score"], state["round"]
        history = state["history"]
        sampler.set_state(state["sampler"])
        torch.set_rng_state(state["torch_rng"])
        for c in fed.trainers + fed.sites:
            c.load_state_dict(state["clients"][c.name])
    rd.log_start(environment(device), start + 1)

    local_keys, domain_keys = fed.trainers[0].local_keys, fed.trainers[0].domain_keys
    rounds = tqdm(range(start, cfg.fed.rounds), desc=cfg.name, disable=not progress, initial=start,
                  total=cfg.fed.rounds)
    for r in rounds:
        t0 = time.perf_counter()
        chosen = sample_clients(fed.trainers, cfg.fed.fraction, sampler)
        row: dict = {"round": r + 1}
        results, domains = [], []
        for c in chosen:
            try:
                res = c.fit(weights, r, progress=progress)
            except TrainingDiverged as err:
                kept = f"after round {history[-1]['round']}" if history else "none yet"
                raise TrainingDiverged(f"{err}; last good checkpoint: {rd.state} ({kept})") from None
            results.append((res.weights, res.num_samples if cfg.fed.weighting == "samples" else 1))
            domains.append(res.metrics.get("domain"))
            row.update({f"train/{c.name}/{k}": v for k, v in res.metrics.items()})
        if domain_keys:
            weights = fedavg_dsbn(results, weights, domains, domain_keys)
        else:
            weights = fedavg(results, weights, local_keys)
        row.update(validate_sites(fed.sites, weights, cfg.eval.hd95_every_round))
        score = row.get("val/score", float(r))  # no validation cases: keep the last round
        if score > best_score:
            best, best_round, best_score, best_local = weights, r, score, local_states(fed.sites)
        row.update({"best_round": best_round + 1, "time_s": time.perf_counter() - t0})
        history.append(row)
        _log(rounds, row, cfg, fed)
        if cfg.eval.keep_round_checkpoints:
            rd.save_round(r, weights)
        rd.write_history(history)
        rd.save_state({
            "round": r + 1, "global": to_tensors(weights), "best": to_tensors(best), "best_round": best_round,
            "best_score": best_score, "history": history, "sampler": sampler.get_state(),
            "torch_rng": torch.get_rng_state(), "best_local": {n: to_tensors(w) for n, w in best_local.items()},
            "clients": {c.name: c.state_dict() for c in fed.trainers + fed.sites},
        })

    save_best(rd, fed.sites, best, best_local)
    test = evaluate_tests(cfg, fed, best, device)
    from fedgin.fl.plots import write_plots
    from fedgin.fl.report import run_table

    atomic_write(rd.table, run_table(test, cfg.data.organs, title=f"{cfg.name}: best round {best_round + 1}"))
    write_plots(rd, cfg, history, test, fed, best, device)
    atomic_write(rd.test, json.dumps({"best_round": best_round + 1, "test": test}, indent=1))
    return RunResult(rd.path, test, best_round + 1, history)


def _finished(rd: RunDir) -> RunResult:
    done = json.loads(rd.test.read_text())
    history = [json.loads(line) for line in rd.metrics_jsonl.read_text().splitlines()]
    return RunResult(rd.path, done["test"], done["best_round"], history)


def local_states(sites) -> dict[str, Weights]:
    """Each site's own normalization layers now (FedBN; empty otherwise), a copy."""
    return {s.name: dict(s.local_state) for s in sites if s.local_state}


def save_best(rd: RunDir, sites, best: Weights, best_local: dict[str, Weights]) -> None:
    """``best_model.pt``; under FedBN also each site's model of the best round, shared weights and its own
    normalization layers (``best_model_<site>.pt``), which the sites take back for the test evaluation."""
    rd.save_weights(rd.best, best)
    for s in sites:
        s.local_state = best_local.get(s.name, {})
        if s.local_state:
            rd.save_weights(rd.site_best(s.name), {**best, **s.local_state})


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


def model_for(cfg: RunConfig, fed: Federation, weights: Weights, modality: str, device: torch.device):
    """The global model for a modality: under FedBN with the normalization state of a site of that modality,
    under DSBN with that modality's normalization selected."""
    model = model_for_modality(cfg, modality).to(device)
    local = next((s.local_state for s in fed.sites if s.modality == modality and s.local_state), {})
    set_weights(model, {**weights, **local})
    return model


def evaluate_tests(cfg: RunConfig, fed: Federation, weights: Weights, device: torch.device) -> dict:
    d, prepare = cfg.data, recipe(cfg).eval_input
    return {name: evaluate_cases(model_for(cfg, fed, weights, mod, device), cases, d.organs, d.channels, d.dims,
                                 prepare=prepare)
            for name, (mod, cases) in fed.tests.items()}


def _log(bar, row: dict, cfg: RunConfig, fed: Federation) -> None:
    mods = dict.fromkeys(s.modality for s in fed.sites)
    val = " ".join(f"{m} {row[f'val/{m}/dice/mean']:.3f}" for m in mods if f"val/{m}/dice/mean" in row)
    steps = [(row[f"train/{c.name}/step_time"], row[f"train/{c.name}/gin_share"])
             for c in fed.trainers if f"train/{c.name}/step_time" in row]
    step = sum(s for s, _ in steps) / len(steps)
    share = sum(g for _, g in steps) / len(steps)
    bar.write(f"round {row['round']}/{cfg.fed.rounds}: val Dice {val or '-'} (best round {row['best_round']}); "
              f"{row['time_s']:.1f} s, step {1000 * step:.0f} ms, {100 * share:.0f}% augmenting")
