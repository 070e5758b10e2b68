"""Aggregation of client weights: FedAvg (by sample count or uniform), with keys that stay local (FedBN)."""
from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np

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
