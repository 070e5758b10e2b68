"""The ServerApp: the sites join (a handshake checks versions and data), then Flower's FedAvg or FedProx runs
the rounds with fedgin's sampling, :func:`~fedgin.fl.aggregate.fedavg` and bookkeeping, and the run directory
gets what the built-in engine writes (config, metrics per round, checkpoints, best model, test table, plots).

Held-out test sets are evaluated on the server (they are the coordinator's); each site validates the global
model on its own validation cases.
"""
from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterable
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import DifferentialPrivacyClientSideFixedClipping, FedAvg, FedProx, Strategy

from fedgin.augment import dsbn_state_keys
from fedgin.config import RunConfig, dump
from fedgin.environment import environment, resolve_device
from fedgin.fl.aggregate import Weights, fedavg, fedavg_dsbn
from fedgin.fl.client import EvalResult, get_weights
from fedgin.fl.engine import sample_clients, validate_sites
from fedgin.fl.flower.records import (
    OUT_KEY,
    RESUME_KEY,
    RUN_KEY,
    error_text,
    fedgin_version,
    run_config,
    run_token,
    to_record,
    to_weights,
)
from fedgin.fl.flower.secagg import secure_round
from fedgin.fl.flower.sites import SiteNode
from fedgin.fl.ledger import Ledger
from fedgin.fl.rundir import RunDir, atomic_write, to_arrays, to_tensors
from fedgin.train.data import load_source
from fedgin.train.model import make_model

log = logging.getLogger("fedgin.flower")
app = ServerApp()


class RoundFailed(RuntimeError):
    """Too few sites replied in a round (``flower.min_fit_clients``)."""


class ServerRun:
    """One run's server side: sampling, aggregation, validation rows, and its :class:`~fedgin.fl.ledger.Ledger`
    (best round, state, finish) as the built-in engine keeps it."""

    def __init__(self, cfg: RunConfig, rd: RunDir, sites: list[SiteNode], weights: Weights) -> None:
        self.cfg, self.rd, self.sites = cfg, rd, sites
        self.ledger = Ledger(cfg, rd, weights)
        self.token = run_token(rd.path, cfg)  # names the sites' saved state of this run
        self.done = 0  # rounds finished before this Flower run (a resumed run)
        self.dropped: dict[str, str] = {}  # site -> why it left the run
        self.sent: list[SiteNode] = []
        self.row: dict = {}
        self.t0 = time.perf_counter()
        # DSBN: the domain-specific entries, averaged only among the sites of one modality
        self.domain_keys = dsbn_state_keys(make_model(cfg)) if cfg.fed.norm == "dsbn" else {}

    @property
    def weights(self) -> Weights:
        return self.ledger.weights

    def restore(self) -> None:
        """Continue from the state an interrupted run saved after its last finished round."""
        state = self.ledger.restore()
        self.done = self.ledger.done
        clients = state.get("clients") or {n: {"local_state": t} for n, t in state["local_states"].items()}  # or
        for site in self.sites:  # a state saved before 2026-12-05
            site.local_state = to_arrays(clients.get(site.name, {}).get("local_state", {}))
        if state["sites_left"]:
            log.info("resuming after round %d; sites that had left the run may take part again: %s", self.done,
                     state["sites_left"])

    def config(self, config: ConfigRecord, server_round: int) -> ConfigRecord:
        """A message's config: the round of the whole run (Flower counts from 1 in each Flower run) and the run."""
        config["server-round"] = server_round + self.done
        config[RUN_KEY] = self.token
        return config

    def active(self) -> list[SiteNode]:
        return [s for s in self.sites if s.name not in self.dropped]

    def start_round(self, server_round: int, arrays: ArrayRecord) -> list[int]:
        """The node ids to train this round (the built-in engine's sampling over the sites still in the run)."""
        self.t0 = time.perf_counter()
        self.row = {"round": server_round + self.done}
        self.ledger.weights = to_weights(arrays)
        self.sent = sample_clients(self.active(), self.cfg.fed.fraction, self.ledger.sampler) if self.active() else []
        return [s.node_id for s in self.sent]

    def _replies(self, sent: list[SiteNode], replies: Iterable[Message], what: str):
        by_node = {m.metadata.src_node_id: m for m in replies}
        ok, failed = [], []
        for site in sent:
            msg = by_node.get(site.node_id)
            if msg is None:
                why = f"no {what} reply within flower.round_timeout = {self.cfg.flower.round_timeout:g} s"
            elif msg.has_error():
                why = error_text(msg.error.reason)
            else:
                ok.append((site, msg.content))
                continue
            failed.append(f"site {site.name} (SuperNode {site.node_id}): {why}")
            self.dropped[site.name] = why
            log.warning("round %d: site %s leaves the run: %s", self.row["round"], site.name, why)
        return ok, failed

    def aggregate(self, replies: Iterable[Message]) -> tuple[ArrayRecord, MetricRecord]:
        """fedgin's FedAvg of the sites' replies, in site order; too few replies stop the run."""
        r = self.row["round"]
        ok, failed = self._replies(self.sent, replies, "training")
        need = max(1, self.cfg.flower.min_fit_clients or len(self.sent))
        if len(ok) < need:
            raise RoundFailed(f"round {r}: {len(ok)} of {len(self.sent)} sites replied, {need} needed "
                              f"(flower.min_fit_clients); {'; '.join(failed)}. Last checkpoint: "
                              f"{self.ledger.last_checkpoint()}")
        local_keys = {k for _, c in ok for k in str(c["fedgin"]["local-keys"]).split()}
        results, domains, train = [], [], {}
        for site, content in ok:
            weights = to_weights(content["arrays"])
            metrics = content["metrics"]
            results.append((weights, metrics["num-examples"] if self.cfg.fed.weighting == "samples" else 1))
            domains.append(metrics.get("domain"))
            site.local_state = {k: weights[k] for k in local_keys}
            train.update({f"train/{site.name}/{k}": float(v) for k, v in metrics.items() if k != "num-examples"})
        self.row.update(train)
        if self.domain_keys:
            return to_record(fedavg_dsbn(results, self.weights, domains, self.domain_keys)), MetricRecord(train)
        return to_record(fedavg(results, self.weights, local_keys)), MetricRecord(train)

    def evaluation_nodes(self) -> list[int]:
        """The sites with validation cases."""
        return [s.node_id for s in self.active() if self.cfg.data.sites[s.index].val_cases > 0]

    def validate(self, replies: Iterable[Message]) -> MetricRecord:
        """The sites' validation, combined per modality as the built-in engine does."""
        asked = set(self.evaluation_nodes())
        ok, _ = self._replies([s for s in self.active() if s.node_id in asked], replies, "validation")
        for site in self.sites:
            site.result = None
        for site, content in ok:
            metrics = dict(content["metrics"])
            n = int(metrics.pop("num-examples"))
            site.result = EvalResult(n, {k: float(v) for k, v in metrics.items()})
        val = validate_sites([s for s, _ in ok], self.weights, self.cfg.eval.hd95_every_round)
        self.row.update(val)
        return MetricRecord(val)

    def end_round(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """After a round's validation (Flower's ``evaluate_fn``): best round, checkpoints, metrics."""
        if server_round == 0:
            return None
        ledger = self.ledger
        ledger.end_round(to_weights(arrays), self.row, self.sites, self.t0,
                         {s.name: {"local_state": to_tensors(s.local_state)} for s in self.sites}, self.dropped)
        log.info("round %d/%d: val score %.3f (best round %d)", ledger.done, self.cfg.fed.rounds,
                 self.row.get("val/score", math.nan), ledger.best_round + 1)
        return MetricRecord({"best_round": ledger.best_round + 1})

    def finish(self, tests: dict, device: torch.device) -> dict:
        """The best model on the held-out test sets: best_model.pt, table.md, plots, test_metrics.json."""
        return self.ledger.finish(self.sites, tests, device)


class FedGIN(FedAvg):
    """Flower's FedAvg driven by a :class:`ServerRun` (set as ``.run``): fedgin's sampling and aggregation."""

    run: ServerRun
    secure_replies: list[Message]  # flower.secagg: the round's replies, from configure_train

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        nodes = self.run.start_round(server_round, arrays)
        config = self.run.config(config, server_round)
        if self.run.cfg.flower.secagg.enabled:  # the round's training runs here; aggregate_train gets its replies
            self.secure_replies = secure_round(grid, self.run.cfg, self.run.sent, self.run.weights, config)
            return []
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        return self._construct_messages(record, nodes, MessageType.TRAIN)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        return self.run.aggregate(self.secure_replies if self.run.cfg.flower.secagg.enabled else replies)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        config = self.run.config(config, server_round)
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        return self._construct_messages(record, self.run.evaluation_nodes(), MessageType.EVALUATE)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord:
        return self.run.validate(replies)


class FedGINProx(FedProx, FedGIN):
    """Flower's FedProx (it sends ``proximal-mu``; each site's Client adds the proximal term) over :class:`FedGIN`."""


def make_strategy(cfg: RunConfig, run: ServerRun) -> Strategy:
    """FedAvg, or FedProx when ``fed.prox_mu > 0``; wrapped in Flower's client-side-clipping DP when
    ``flower.dp.clip > 0``."""
    n = len(run.sites)
    kw = {"fraction_train": cfg.fed.fraction, "min_train_nodes": 1, "min_evaluate_nodes": 1,
          "min_available_nodes": cfg.flower.min_available_clients or n}
    strategy = FedGINProx(proximal_mu=cfg.fed.prox_mu, **kw) if cfg.fed.prox_mu > 0 else FedGIN(**kw)
    strategy.run = run
    dp = cfg.flower.dp
    if dp.clip > 0:
        sampled = max(1, round(cfg.fed.fraction * n))
        return DifferentialPrivacyClientSideFixedClipping(strategy, dp.noise_multiplier, dp.clip, sampled)
    return strategy


def join(grid: Grid, cfg: RunConfig) -> list[SiteNode]:
    """Wait for the SuperNodes, then the handshake: each names its site; versions and data are checked."""
    fl, n_sites = cfg.flower, len(cfg.data.sites)
    need = fl.min_available_clients or n_sites
    deadline = time.monotonic() + fl.join_timeout
    while len(ids := list(grid.get_node_ids())) < n_sites:
        if time.monotonic() > deadline:
            if len(ids) >= need:
                break
            raise TimeoutError(f"{len(ids)} of {need} SuperNodes joined within flower.join_timeout = "
                               f"{fl.join_timeout:g} s: check that each site's flower-supernode runs and reaches "
                               "the SuperLink")
        time.sleep(1)
    version = fedgin_version()
    hello = [Message(RecordDict({"config": ConfigRecord({"fedgin": version})}), dst_node_id=i,
                     message_type=MessageType.QUERY) for i in ids]
    replies = {m.metadata.src_node_id: m for m in grid.send_and_receive(hello, timeout=fl.join_timeout)}
    problems, sites = [], {}
    index = {s.name: i for i, s in enumerate(cfg.data.sites)}
    for node in ids:
        msg = replies.get(node)
        if msg is None:
            problems.append(f"SuperNode {node}: no reply to the handshake within {fl.join_timeout:g} s")
            continue
        if msg.has_error():
            problems.append(f"SuperNode {node}: {error_text(msg.error.reason)}")
            continue
        info = msg.content["site"]
        name = str(info["site"])
        if info["fedgin"] != version:
            problems.append(f"SuperNode {node} (site {name}) runs fedgin {info['fedgin']}, the server fedgin "
                            f"{version}: install the same fedgin version at every site")
        elif name in sites:
            problems.append(f"SuperNodes {sites[name].node_id} and {node} both serve site {name}")
        else:
            sites[name] = SiteNode(name, str(info["modality"]), index[name], node, int(info.get("train-examples", 0)))
    if problems:
        raise ValueError("the sites cannot start: " + "; ".join(problems))
    if len(sites) < need:
        raise ValueError(f"{len(sites)} of {need} sites joined (flower.min_available_clients)")
    missing = [s.name for s in cfg.data.sites if s.name not in sites]
    if missing:
        log.warning("sites %s did not join; training without them", missing)
    return sorted(sites.values(), key=lambda s: s.index)


def run_on_grid(grid: Grid, cfg: RunConfig, out: str | Path, resume: bool = False) -> dict:
    """The whole run on a Flower grid into the run directory ``out``; returns the test metrics. ``resume``
    continues an interrupted run from its last finished round (the sites' RNG and local state come from their
    ``state-dir``, so the result is the uninterrupted run's)."""
    rd, text = RunDir(out), dump(cfg)
    if rd.check_start(text, resume):
        return json.loads(rd.test.read_text())["test"]
    device = resolve_device(cfg.device)
    tests = {t.name or t.modality: (t.modality, load_source(t, cfg.data)) for t in cfg.data.test}
    sites = join(grid, cfg)
    atomic_write(rd.config, text)  # once the sites joined: a run that cannot start leaves nothing behind
    torch.manual_seed(cfg.seed)
    weights = get_weights(make_model(cfg))
    run = ServerRun(cfg, rd, sites, weights)
    if resume and rd.state.is_file():
        run.restore()
    rd.log_start(environment(device), run.done + 1)
    if run.done < cfg.fed.rounds:
        make_strategy(cfg, run).start(grid, to_record(run.weights), cfg.fed.rounds - run.done,
                                      timeout=cfg.flower.round_timeout,
                                      evaluate_config=ConfigRecord({"hd95": cfg.eval.hd95_every_round}),
                                      evaluate_fn=run.end_round)
    return run.finish(tests, device)


@app.main()
def main(grid: Grid, context: Context) -> None:
    run_on_grid(grid, run_config(context), str(context.run_config[OUT_KEY]), bool(context.run_config.get(RESUME_KEY)))
