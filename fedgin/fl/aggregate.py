"""Aggregation of client weights: FedAvg (by sample count or uniform), with keys that stay local (FedBN), and
with domain-specific normalization averaged per modality (DSBN)."""
from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import numpy as np

from fedgin.augment.dsbn import aggregate_dsbn

Weights = dict[str, np.ndarray]


def fedavg(results: Sequence[tuple[Weights, float]], previous: Weights, local_keys: Collection[str] = ()) -> Weights:
    """The weighted mean of client weights; ``local_keys`` keep ``previous``'s value (they never leave a site).

    Integer entries (BatchNorm's step counters) are averaged and rounded.
    """
    if not results:
        raise ValueError("no client results to aggregate")
    total = float(sum(w for _, w in results))
    if total <= 0:
        raise ValueError("client weights sum to zero (no training samples)")
    out: Weights = {}
    for key, prev in previous.items():
        if key in local_keys:
            out[key] = prev
            continue
        mean = sum(np.asarray(weights[key], dtype=np.float64) * (w / total) for weights, w in results)
        out[key] = (np.rint(mean) if np.issubdtype(prev.dtype, np.integer) else mean).astype(prev.dtype)
    return out


def fedavg_dsbn(results: Sequence[tuple[Weights, float]], previous: Weights, domains: Sequence[int],
                domain_keys: Mapping[str, int]) -> Weights:
    """FedAvg where each domain-specific entry (``domain_keys``: :func:`fedgin.augment.dsbn_state_keys`) is
    averaged only over the sites of its domain (``domains``: each result's site domain, the ``domain`` metric);
    a domain no site trained this round keeps ``previous``. Other entries as :func:`fedavg`."""
    if not results:
        raise ValueError("no client results to aggregate")
    out = aggregate_dsbn([w for w, _ in results], [n for _, n in results], [int(d) for d in domains], domain_keys)
    trained = {int(d) for d in domains}
    for key, domain in domain_keys.items():
        if domain not in trained:
            out[key] = previous[key]
    return {k: np.asarray(v, dtype=previous[k].dtype) for k, v in out.items()}
