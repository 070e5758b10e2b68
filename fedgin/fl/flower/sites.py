"""The server's view of a joined SuperNode (shared by the ServerApp and its SecAgg+ round)."""
from __future__ import annotations

from dataclasses import dataclass, field

from fedgin.fl.aggregate import Weights
from fedgin.fl.client import EvalResult


@dataclass
class SiteNode:
    """A joined SuperNode as the server sees it: its site, and what it last sent. Stands in for a
    :class:`~fedgin.fl.client.Client` where the engine's validation and test code reads one."""

    name: str
    modality: str
    index: int  # in data.sites: the order of aggregation and sampling
    node_id: int
    train_examples: int = 0  # its training examples, from the handshake under flower.secagg
    local_state: Weights = field(default_factory=dict)  # FedBN: its normalization layers after its last fit
    result: EvalResult | None = None  # its last validation

    def evaluate(self, weights: Weights, hd95: bool = True) -> EvalResult:
        return self.result or EvalResult(0, {})
