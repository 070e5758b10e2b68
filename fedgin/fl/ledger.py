"""A run's round ledger, kept by both federated engines (the built-in loop, :mod:`fedgin.fl.engine`, and the Flower
ServerApp, :mod:`fedgin.fl.flower.server_app`): the metrics history, the best round (its weights, score and, under
FedBN, each site's normalization layers), the state saved after every round (one schema, from which either engine
resumes its own runs), and the finish (best model, test evaluation, table, plots, test metrics)."""
from __future__ import annotations

import json
import math
import time

import torch

from fedgin.config import RunConfig, recipe
from fedgin.fl.aggregate import Weights
from fedgin.fl.client import set_weights
from fedgin.fl.plots import write_plots
from fedgin.fl.report import run_table
from fedgin.fl.rundir import RunDir, atomic_write, to_arrays, to_tensors
from fedgin.train.evaluate import evaluate_cases
from fedgin.train.model import model_for_modality

Tests = dict  # test set name -> (modality, cases)


class Ledger:
    """The bookkeeping of one run in the run directory ``rd``, starting from the global ``weights``.

    The state saved after each round (``state.pt``): ``round`` (rounds done), ``global``, ``best``, ``best_round``
    (0-based), ``best_score``, ``best_local`` (FedBN: site -> its layers of the best round), ``history`` (the metrics
    rows), ``sampler`` (the site sampler's RNG), ``torch_rng``, ``clients`` (name -> the engine's state of that
    client or site) and ``sites_left`` (site -> why it left the run; Flower's only).
    """

    def __init__(self, cfg: RunConfig, rd: RunDir, weights: Weights) -> None:
        self.cfg, self.rd, self.weights = cfg, rd, weights
        self.sampler = torch.Generator().manual_seed(cfg.seed)  # the sites each round trains
        self.history: list[dict] = []
        self.best, self.best_round, self.best_score = weights, -1, -math.inf
        self.best_local: dict[str, Weights] = {}

    @property
    def done(self) -> int:
        """Rounds finished (before a resume: those of the run it continues)."""
        return len(self.history)

    def restore(self) -> dict:
        """Continue from the state the run saved after its last finished round; returns the state (the engine
        restores its ``clients`` and ``sites_left``)."""
        state = self.rd.load_state()
        self.history = state["history"]
        self.weights, self.best = to_arrays(state["global"]), to_arrays(state["best"])
        self.best_round, self.best_score = state["best_round"], state["best_score"]
        # states saved before 2026-12-05 may lack these (best-round FedBN layers; the Flower server's RNG)
        self.best_local = {name: to_arrays(t) for name, t in state.get("best_local", {}).items()}
        self.sampler.set_state(state["sampler"])
        if "torch_rng" in state:
            torch.set_rng_state(state["torch_rng"])
        return state

    def last_checkpoint(self) -> str:
        """Where a failed run's last good state is, for its error message."""
        kept = f"after round {self.history[-1]['round']}" if self.history else "none yet"
        return f"{self.rd.state} ({kept})"

    def end_round(self, weights: Weights, row: dict, sites, started: float, clients: dict,
                  sites_left: dict | None = None) -> None:
        """The round ``row`` (its number, training and validation metrics) ended with the global ``weights``: the
        best round, the history, the round's checkpoint and the state. ``sites``: those whose FedBN layers a best
        round keeps; ``started``: the round's ``time.perf_counter()`` at its start."""
        r = self.done
        self.weights = weights
        score = row.get("val/score", float(r))  # no validation cases: keep the last round
        if score > self.best_score:
            self.best, self.best_round, self.best_score = weights, r, score
            self.best_local = {s.name: dict(s.local_state) for s in sites if s.local_state}
        row.update({"best_round": self.best_round + 1, "time_s": time.perf_counter() - started})
        self.history.append(row)
        if self.cfg.eval.keep_round_checkpoints:
            self.rd.save_round(r, weights)
        self.rd.write_history(self.history)
        self.rd.save_state({
            "round": r + 1, "global": to_tensors(weights), "best": to_tensors(self.best), "best_round": self.best_round,
            "best_score": self.best_score, "best_local": {n: to_tensors(w) for n, w in self.best_local.items()},
            "history": self.history, "sampler": self.sampler.get_state(), "torch_rng": torch.get_rng_state(),
            "clients": clients, "sites_left": dict(sites_left or {}),
        })

    def finish(self, sites, tests: Tests, device: torch.device) -> dict:
        """The best model on the held-out test sets: ``best_model.pt`` (under FedBN also each site's), the test
        metrics, ``table.md``, the plots and ``test_metrics.json`` (last: it marks the run finished)."""
        cfg, rd = self.cfg, self.rd
        save_best(rd, sites, self.best, self.best_local)
        test = evaluate_tests(cfg, sites, tests, self.best, device)
        atomic_write(rd.table, run_table(test, cfg.data.organs, title=f"{cfg.name}: best round {self.best_round + 1}"))
        write_plots(rd, cfg, self.history, test, tests, lambda mod: model_for(cfg, sites, self.best, mod, device))
        atomic_write(rd.test, json.dumps({"best_round": self.best_round + 1, "test": test}, indent=1))
        return test


def save_best(rd: RunDir, sites, best: Weights, best_local: dict[str, Weights]) -> None:
    """``best_model.pt``; under FedBN also each site's model of the best round, shared weights and its own
    normalization layers (``best_model_<site>.pt``), which the sites take back for the test evaluation."""
    rd.save_weights(rd.best, best)
    for s in sites:
        s.local_state = best_local.get(s.name, {})
        if s.local_state:
            rd.save_weights(rd.site_best(s.name), {**best, **s.local_state})


def model_for(cfg: RunConfig, sites, weights: Weights, modality: str, device: torch.device):
    """The global model for a modality: under FedBN with the normalization state of a site of that modality,
    under DSBN with that modality's normalization selected."""
    model = model_for_modality(cfg, modality).to(device)
    local = next((s.local_state for s in sites if s.modality == modality and s.local_state), {})
    set_weights(model, {**weights, **local})
    return model


def evaluate_tests(cfg: RunConfig, sites, tests: Tests, weights: Weights, device: torch.device) -> dict:
    """Test metrics per test set of the model ``weights`` (:func:`model_for` its modality)."""
    d, prepare = cfg.data, recipe(cfg).eval_input
    return {name: evaluate_cases(model_for(cfg, sites, weights, mod, device), cases, d.organs, d.channels, d.dims,
                                 prepare=prepare)
            for name, (mod, cases) in tests.items()}
