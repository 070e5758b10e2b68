"""Secure aggregation on Flower (``flower.secagg``): a round's training through Flower's SecAgg+ protocol, so that
the server learns only the weighted mean of the sites' models, never one site's.

Flower 1.42 has SecAgg+ only in its legacy form (``SecAggPlusWorkflow`` driving a legacy ``Strategy`` with
FitIns/FitRes records; ``secaggplus_mod`` at the sites). This module bridges it to fedgin's apps:

- server: :func:`secure_round` runs the workflow for one round and returns the replies the plain round would get,
  each carrying the secure mean (as Flower's workflow hands it to ``Strategy.aggregate_fit``), so that
  :meth:`~fedgin.fl.flower.server_app.ServerRun.aggregate` does the bookkeeping (rows, failures) unchanged;
- sites: :func:`secagg_mod` runs ``secaggplus_mod`` on SecAgg+ messages; its training stage calls fedgin's train
  handler with the FitIns turned into a fedgin train message, and turns the reply into the FitRes it masks.

The protocol sums the float entries of the model (:func:`pack`, in the model's order), each scaled by the site's
training examples / ``max_weight`` (the largest sampled site's: its ratio is 1, the finest precision), clipped to
+-``clipping_range`` (a site refuses a model beyond it rather than have it clipped) and quantized to
``quantization_range`` levels with stochastic rounding. Integer entries (BatchNorm's ``num_batches_tracked``) would
not survive the clipping: they keep the global model's values; they carry no data, and BatchNorm with a momentum
(fedgin's models) does not read them. The server still sees each site's number of training examples and its scalar
training metrics.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np
from flwr.app import ConfigRecord, Context, Error, Message, MessageType, MetricRecord, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.common import Code, FitIns, FitRes, Parameters, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.constant import ErrorCode
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.compat.common.recorddict_compat import fitres_to_recorddict, recorddict_to_fitins
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import Strategy
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key
from flwr.serverapp import Grid

from fedgin.config import RunConfig, SecAggConfig
from fedgin.fl.aggregate import Weights
from fedgin.fl.flower.records import run_config, to_record, to_weights

if TYPE_CHECKING:
    from fedgin.fl.flower.sites import SiteNode

KEYS = "fedgin-keys"  # FitIns config: the model's entry names, in the order of the FitIns parameters
MODULUS_RANGE = 2**32  # Flower's default: the range of the masks; config validation keeps the sums below it


def float_keys(weights: Weights) -> list[str]:
    """The entries that go through SecAgg+: the floating-point ones, in the model's order."""
    return [k for k, v in weights.items() if np.issubdtype(v.dtype, np.floating)]


def pack(weights: Weights) -> list[np.ndarray]:
    """The float entries as the vector SecAgg+ sums, in float64 (Flower quantizes in the arrays' precision)."""
    return [np.asarray(weights[k], dtype=np.float64) for k in float_keys(weights)]


def unpack(vector: Sequence[np.ndarray], previous: Weights) -> Weights:
    """``previous`` with its float entries from ``vector`` (:func:`pack`'s order and shapes); integer entries keep
    their values."""
    keys = float_keys(previous)
    if len(vector) != len(keys):
        raise ValueError(f"SecAgg+ returned {len(vector)} arrays for the model's {len(keys)} float entries")
    out = dict(previous)
    for key, value in zip(keys, vector, strict=True):
        if value.shape != previous[key].shape:
            raise ValueError(f"SecAgg+ returned shape {value.shape} for {key}, the model's is {previous[key].shape}")
        out[key] = value.astype(previous[key].dtype)
    return out


def check_range(weights: Weights, clipping_range: float, site: str) -> None:
    """Refuse a model SecAgg+ would clip: every float entry must lie within +-``clipping_range``."""
    for key in float_keys(weights):
        arr = weights[key]
        if not arr.size:
            continue
        value = float(arr.flat[np.abs(arr).argmax()])  # NaN first
        if not abs(value) <= clipping_range:
            raise ValueError(f"site {site}: {key} holds {value:g}, outside +-flower.secagg.clipping_range = "
                             f"{clipping_range:g}, which SecAgg+ would clip; raise flower.secagg.clipping_range")


def max_weight(cfg: RunConfig, examples: Sequence[int]) -> float:
    """SecAgg+'s ``max_weight``: the largest sampled site's training examples (its weight ratio is 1; a smaller
    ratio magnifies the quantization error), or 1 under ``fed.weighting: uniform`` (every site weighs 1)."""
    return float(max([1, *examples])) if cfg.fed.weighting == "samples" else 1.0


def flower_count(value: float) -> int | float:
    """A config value > 1 as Flower's count (int), <= 1 as its fraction (float)."""
    return int(value) if value > 1 else float(value)


def workflow(sa: SecAggConfig, weight: float, timeout: float) -> SecAggPlusWorkflow:
    """Flower's SecAgg+ workflow with ``flower.secagg``'s settings; ``timeout`` applies to each of its stages."""
    return SecAggPlusWorkflow(flower_count(sa.num_shares), flower_count(sa.reconstruction_threshold),
                              max_weight=weight, clipping_range=sa.clipping_range,
                              quantization_range=sa.quantization_range, modulus_range=MODULUS_RANGE, timeout=timeout)


# --- sites ---------------------------------------------------------------------------------------------------------

def secagg_mod(msg: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
    """Flower's ``secaggplus_mod`` on SecAgg+ messages (train messages with its config record); other messages pass
    through."""
    if msg.metadata.message_type != MessageType.TRAIN or RECORD_KEY_CONFIGS not in msg.content.config_records:
        return call_next(msg, context)
    return secaggplus_mod(msg, context, lambda m, c: _train_legacy(m, c, call_next))


def _train_legacy(msg: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
    """SecAgg+'s training stage: the FitIns as fedgin's train message (named weights, config) to the train handler,
    its reply as the FitRes that ``secaggplus_mod`` masks."""
    fitins = recorddict_to_fitins(msg.content, keep_input=True)
    config = dict(fitins.config)
    weights = dict(zip(str(config.pop(KEYS)).split("\n"), parameters_to_ndarrays(fitins.parameters), strict=True))
    msg.content = RecordDict({"arrays": to_record(weights), "config": ConfigRecord(config)})  # fedgin's records
    reply = call_next(msg, context)
    return Message(to_fitres(reply.content, run_config(context), str(context.node_config.get("site"))), reply_to=msg)


def to_fitres(content: RecordDict, cfg: RunConfig, site: str) -> RecordDict:
    """fedgin's train reply as a legacy FitRes: the float entries (:func:`pack`), the weight (training examples, or
    1 under ``fed.weighting: uniform``) and the scalar metrics."""
    weights = to_weights(content["arrays"])
    check_range(weights, cfg.flower.secagg.clipping_range, site)
    metrics = {k: float(v) for k, v in content["metrics"].items()}
    examples = int(metrics.pop("num-examples"))
    fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(pack(weights)),
                    examples if cfg.fed.weighting == "samples" else 1, metrics)
    return fitres_to_recorddict(fitres, keep_input=False)


# --- server --------------------------------------------------------------------------------------------------------

class _Watch:
    """The grid as the workflow uses it, noting each node's last request and its first failure (its error reply,
    or None: no reply within the timeout)."""

    def __init__(self, grid: Grid) -> None:
        self.grid = grid
        self.asked: dict[int, Message] = {}
        self.failed: dict[int, Message | None] = {}

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        messages = list(messages)
        replies = list(self.grid.send_and_receive(messages, timeout=timeout))
        by_node = {r.metadata.src_node_id: r for r in replies}
        for msg in messages:
            node = msg.metadata.dst_node_id
            self.asked[node] = msg
            reply = by_node.get(node)
            if (reply is None or reply.has_error()) and node not in self.failed:
                self.failed[node] = reply
        return replies


class _Round(Strategy):
    """The legacy strategy the workflow drives for one round: the sampled nodes get the model and fedgin's config;
    the results (whose parameters the workflow replaced with the secure mean) are kept."""

    def __init__(self, grid: Grid, nodes: Sequence[int], config: dict) -> None:
        self.grid, self.nodes, self.config = grid, nodes, config
        self.results: list[tuple[ClientProxy, FitRes]] = []

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return None

    def configure_fit(self, server_round: int, parameters: Parameters,
                      client_manager: ClientManager) -> list[tuple[ClientProxy, FitIns]]:
        fitins = FitIns(parameters, self.config)
        return [(GridClientProxy(node, self.grid, 0), fitins) for node in self.nodes]

    def aggregate_fit(self, server_round: int, results, failures) -> tuple[Parameters | None, dict]:
        self.results = list(results)
        return (self.results[0][1].parameters if self.results else None), {}

    def configure_evaluate(self, server_round: int, parameters: Parameters, client_manager: ClientManager) -> list:
        return []

    def aggregate_evaluate(self, server_round: int, results, failures) -> tuple[float | None, dict]:
        return None, {}

    def evaluate(self, server_round: int, parameters: Parameters) -> None:
        return None


def secure_round(grid: Grid, cfg: RunConfig, sites: Sequence[SiteNode], weights: Weights,
                 config: ConfigRecord) -> list[Message]:
    """One round's training of ``sites`` through Flower's SecAgg+ workflow. Returns what the plain round's
    ``send_and_receive`` would: per site in the secure mean a reply with that mean (integer entries: ``weights``'),
    its training examples and metrics; per failed site its error reply (none if it did not answer in time)."""
    server_round = int(config["server-round"])
    if len(sites) < 2:
        raise ValueError(f"round {server_round}: SecAgg+ needs at least 2 sampled sites, {len(sites)} left in the "
                         "run (flower.secagg)")
    watch = _Watch(grid)
    strategy = _Round(grid, [s.node_id for s in sites], {**config, KEYS: "\n".join(weights)})
    context = LegacyContext(Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config={}),
                            strategy=strategy)
    context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({Key.CURRENT_ROUND: server_round})
    context.state.array_records[MAIN_PARAMS_RECORD] = to_record(weights)
    weight = max_weight(cfg, [s.train_examples for s in sites])
    workflow(cfg.flower.secagg, weight, cfg.flower.round_timeout)(watch, context)
    return _replies(watch, strategy.results, sites, weights)


def _replies(watch: _Watch, results: list[tuple[ClientProxy, FitRes]], sites: Sequence[SiteNode],
             weights: Weights) -> list[Message]:
    """The replies of :func:`secure_round`; a site that answered every request of a halted protocol gets an
    error reply saying so."""
    done = {proxy.node_id: fitres for proxy, fitres in results}
    mean = to_record(unpack(parameters_to_ndarrays(results[0][1].parameters), weights)) if results else None
    replies = []
    for site in sites:
        node = site.node_id
        if node in done:
            metrics = MetricRecord({"num-examples": done[node].num_examples, **done[node].metrics})
            content = RecordDict({"arrays": mean, "metrics": metrics, "fedgin": ConfigRecord({"local-keys": ""})})
            replies.append(Message(content, reply_to=watch.asked[node]))
        elif node in watch.failed:
            if watch.failed[node] is not None:
                replies.append(watch.failed[node])
        elif node in watch.asked:
            why = "SecAgg+ stopped before this site's update was unmasked: too few other sites took part"
            replies.append(Message(Error(ErrorCode.UNKNOWN, why), reply_to=watch.asked[node]))
    return replies
