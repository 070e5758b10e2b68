"""Domain-specific batch normalization (Chang et al., "Domain-Specific Batch Normalization for Unsupervised
Domain Adaptation", CVPR 2019): every normalization layer keeps one set of statistics and affine parameters per
domain (here: per modality), while all other weights are shared.

In federated training each site holds every domain's copy but trains (and updates the statistics of) only its
own domain's; :func:`aggregate_dsbn` averages the shared weights over all sites and each domain's normalization
entries only over the sites of that domain, so statistics never mix across modalities.
"""
from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn


class DomainSpecificNorm(nn.Module):
    """One normalization layer per domain (``norms[d]``); the layer of ``domain`` normalizes the input."""

    def __init__(self, norms: Iterable[nn.Module]) -> None:
        super().__init__()
        self.norms = nn.ModuleList(norms)
        if len(self.norms) < 1:
            raise ValueError("DomainSpecificNorm needs at least one domain")
        self.domain: int | None = None

    @property
    def n_domains(self) -> int:
        return len(self.norms)

    @classmethod
    def from_norm(cls, norm: nn.Module, n_domains: int) -> DomainSpecificNorm:
        """``n_domains`` copies of ``norm`` (its statistics and affine parameters included)."""
        if isinstance(n_domains, bool) or not isinstance(n_domains, int) or n_domains < 1:
            raise ValueError(f"n_domains must be an integer >= 1, got {n_domains!r}")
        return cls(copy.deepcopy(norm) for _ in range(n_domains))

    def forward(self, x: Tensor) -> Tensor:
        if self.domain is None:
            raise RuntimeError("domain-specific normalization has no domain selected; run the model inside "
                               "use_domain(model, d) or call set_domain(model, d) first")
        return self.norms[self.domain](x)

    def extra_repr(self) -> str:
        return f"n_domains={self.n_domains}, domain={self.domain}"


class DomainSpecificBatchNorm2d(DomainSpecificNorm):
    """``n_domains`` ``nn.BatchNorm2d(num_features, **kwargs)``."""

    def __init__(self, num_features: int, n_domains: int, **kwargs: Any) -> None:
        if isinstance(n_domains, bool) or not isinstance(n_domains, int) or n_domains < 1:
            raise ValueError(f"n_domains must be an integer >= 1, got {n_domains!r}")
        super().__init__(nn.BatchNorm2d(num_features, **kwargs) for _ in range(n_domains))


class DomainSpecificBatchNorm3d(DomainSpecificNorm):
    """``n_domains`` ``nn.BatchNorm3d(num_features, **kwargs)``."""

    def __init__(self, num_features: int, n_domains: int, **kwargs: Any) -> None:
        if isinstance(n_domains, bool) or not isinstance(n_domains, int) or n_domains < 1:
            raise ValueError(f"n_domains must be an integer >= 1, got {n_domains!r}")
        super().__init__(nn.BatchNorm3d(num_features, **kwargs) for _ in range(n_domains))


def _domain_specific(module: nn.Module) -> bool:
    """BatchNorm of any rank, or InstanceNorm with affine parameters or running statistics."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return True
    return isinstance(module, nn.modules.instancenorm._InstanceNorm) and (module.affine or
                                                                         module.track_running_stats)


def convert_to_dsbn(model: nn.Module, n_domains: int) -> nn.Module:
    """Replace, in place, every BatchNorm and every InstanceNorm with affine parameters (or running statistics)
    of ``model`` by a :class:`DomainSpecificNorm` of ``n_domains`` copies; returns ``model``."""
    if isinstance(n_domains, bool) or not isinstance(n_domains, int) or n_domains < 1:
        raise ValueError(f"n_domains must be an integer >= 1, got {n_domains!r}")
    if any(isinstance(m, DomainSpecificNorm) for m in model.modules()):
        raise ValueError("model already has domain-specific normalization layers")
    if _domain_specific(model):
        raise ValueError("convert_to_dsbn takes a network that contains normalization layers, not one")
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if _domain_specific(child):
                setattr(parent, name, DomainSpecificNorm.from_norm(child, n_domains))
                replaced += 1
    if not replaced:
        raise ValueError("model has no BatchNorm or affine InstanceNorm layer to make domain-specific "
                         "(a MONAI UNet with norm='instance' has no affine parameters: use norm='batch')")
    return model


def _dsbn_layers(model: nn.Module) -> list[DomainSpecificNorm]:
    layers = [m for m in model.modules() if isinstance(m, DomainSpecificNorm)]
    if not layers:
        raise ValueError("model has no domain-specific normalization layers; call convert_to_dsbn first")
    return layers


def set_domain(model: nn.Module, domain: int | None) -> None:
    """Select ``domain`` in every domain-specific normalization layer of ``model`` (None: none selected)."""
    layers = _dsbn_layers(model)
    n = min(layer.n_domains for layer in layers)
    if domain is not None and (isinstance(domain, bool) or not isinstance(domain, int) or not 0 <= domain < n):
        raise ValueError(f"domain must be an integer in [0, {n}), got {domain!r}")
    for layer in layers:
        layer.domain = domain


@contextmanager
def use_domain(model: nn.Module, domain: int) -> Iterator[nn.Module]:
    """Within the block, ``model``'s domain-specific layers use ``domain``; the previous choice is restored."""
    layers = _dsbn_layers(model)
    previous = [layer.domain for layer in layers]
    set_domain(model, domain)
    try:
        yield model
    finally:
        for layer, d in zip(layers, previous, strict=True):
            layer.domain = d


def dsbn_state_keys(model: nn.Module) -> dict[str, int]:
    """The state-dict keys of the domain-specific entries of ``model``, each mapped to its domain index."""
    keys: dict[str, int] = {}
    for name, module in model.named_modules():
        if isinstance(module, DomainSpecificNorm):
            for key in module.state_dict():
                domain = int(key.split(".")[1])  # "norms.<d>.<entry>"
                keys[f"{name}.{key}" if name else key] = domain
    if not keys:
        raise ValueError("model has no domain-specific normalization layers; call convert_to_dsbn first")
    return keys


def aggregate_dsbn(states: Sequence[Mapping[str, Any]], weights: Sequence[float], domains: Sequence[int],
                   domain_keys: Mapping[str, int]) -> dict[str, Any]:
    """Weighted FedAvg of site states with domain-specific normalization.

    ``states``: one state dict per site (torch tensors or numpy arrays); ``weights``: their FedAvg weights (e.g.
    sample counts); ``domains``: each site's domain; ``domain_keys``: :func:`dsbn_state_keys` of the model.
    Shared keys are averaged over all sites; a key of domain d only over the sites of domain d (weights
    renormalized among them). A domain with no site keeps the first site's value (the last broadcast, which no
    site trained). Integer entries (BatchNorm's step counter) are rounded.
    """
    if not states:
        raise ValueError("aggregate_dsbn: no site states")
    if not len(states) == len(weights) == len(domains):
        raise ValueError(f"aggregate_dsbn: {len(states)} states, {len(weights)} weights, {len(domains)} domains")
    w = np.asarray(weights, dtype=np.float64)
    if (w < 0).any() or not w.sum() > 0:
        raise ValueError(f"aggregate_dsbn: weights must be >= 0 with a positive sum, got {list(weights)}")
    n_domains = max(domain_keys.values(), default=-1) + 1
    bad = [d for d in domains if isinstance(d, bool) or not isinstance(d, int) or not 0 <= d < n_domains]
    if bad:
        raise ValueError(f"aggregate_dsbn: site domains {bad} are not in [0, {n_domains})")
    keys = list(states[0])
    for i, state in enumerate(states[1:], 1):
        if set(state) != set(keys):
            diff = sorted(set(state) ^ set(keys))
            raise ValueError(f"aggregate_dsbn: site {i} has different state keys than site 0: {diff[:5]}")
    missing = sorted(set(domain_keys) - set(keys))
    if missing:
        raise ValueError(f"aggregate_dsbn: domain-specific keys missing from the states: {missing[:5]}")
    out: dict[str, Any] = {}
    for key in keys:
        if key not in domain_keys:
            out[key] = _weighted_mean([s[key] for s in states], w)
            continue
        members = [i for i, d in enumerate(domains) if d == domain_keys[key]]
        if not members:
            out[key] = states[0][key]
        elif not w[members].sum() > 0:
            raise ValueError(f"aggregate_dsbn: the sites of domain {domain_keys[key]} all have weight 0")
        else:
            out[key] = _weighted_mean([states[i][key] for i in members], w[members])
    return out


def _weighted_mean(values: Sequence[Any], weights: np.ndarray) -> Any:
    """The weighted mean of tensors or arrays, in float64, returned in the first value's type and dtype."""
    weights = weights / weights.sum()
    first = values[0]
    if isinstance(first, Tensor):
        acc = sum(v.detach().to(torch.float64) * float(wi) for v, wi in zip(values, weights, strict=True))
        return (acc if first.is_floating_point() else acc.round()).to(dtype=first.dtype, device=first.device)
    arrays = [np.asarray(v) for v in values]
    acc = sum(a.astype(np.float64) * wi for a, wi in zip(arrays, weights, strict=True))
    return (acc if np.issubdtype(arrays[0].dtype, np.floating) else np.rint(acc)).astype(arrays[0].dtype)
