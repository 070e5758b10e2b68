"""A site as a plain class: fit on the global weights, return new weights + scalars; evaluate.

Only weights (arrays of the model's state) and scalar metrics leave a client: a Flower ``ClientApp``
wraps this same class. The run's method lives here too: the augmentation and its losses (``train_local``), and
under ``fed.norm: dsbn`` the site's domain (its modality), used in training and evaluation and sent as the
``domain`` metric so that the server averages domain-specific entries only among sites of one modality
(:func:`fedgin.fl.aggregate.fedavg_dsbn`).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch

from fedgin.augment import dsbn_state_keys, use_domain
from fedgin.config import RunConfig, recipe
from fedgin.fl.aggregate import Weights
from fedgin.train.data import Case, training_tensors
from fedgin.train.evaluate import evaluate_cases
from fedgin.train.local import train_local
from fedgin.train.model import domain_index, make_model, norm_keys


@dataclass(frozen=True)
class FitResult:
    weights: Weights
    num_samples: int
    metrics: dict[str, float]


@dataclass(frozen=True)
class EvalResult:
    num_samples: int
    metrics: dict[str, float]


def get_weights(model: torch.nn.Module) -> Weights:
    """The model's state as numpy arrays (copies)."""
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def set_weights(model: torch.nn.Module, weights: Weights) -> None:
    model.load_state_dict({k: torch.as_tensor(np.asarray(v)) for k, v in weights.items()})


class Client:
    """One site: its training cases (may be empty: evaluation only), validation cases and RNG.

    ``case_modalities``: the modality of each training case, for a client pooling several modalities
    (centralized training); default: all ``modality``.
    """

    def __init__(self, name: str, modality: str, train: list[Case], val: list[Case], cfg: RunConfig,
                 *, device: torch.device | str = "cpu", seed: int = 0,
                 case_modalities: list[str] | None = None) -> None:
        self.name, self.modality, self.cfg = name, modality, cfg
        self.model = make_model(cfg).to(device)
        self.images, self.labels = training_tensors(train, cfg.data.dims) if train else (None, None)
        self.val = val
        self.eval_input = recipe(cfg).eval_input
        self.generator = torch.Generator().manual_seed(seed)
        self.local_keys = norm_keys(self.model) if cfg.fed.norm == "local" else set()
        self.local_state: Weights = {}
        dsbn = cfg.fed.norm == "dsbn"
        self.domain = domain_index(modality) if dsbn and case_modalities is None else None
        self.domains = None  # each training sample's domain (dsbn)
        if dsbn and train:
            mods = case_modalities or [modality] * len(train)
            per_case = [1 if cfg.data.dims == "3d" else c.image.shape[-1] for c in train]
            self.domains = torch.repeat_interleave(torch.tensor([domain_index(m) for m in mods]),
                                                   torch.tensor(per_case))
        # domain-specific keys to average per modality; empty for a pooled client (it trains every domain)
        self.domain_keys = dsbn_state_keys(self.model) if self.domain is not None else {}

    @property
    def num_samples(self) -> int:
        return 0 if self.images is None else len(self.images)

    def load(self, weights: Weights) -> None:
        """The global weights, with this site's own normalization layers under FedBN."""
        set_weights(self.model, {**weights, **self.local_state})

    def fit(self, weights: Weights, round_idx: int = 0, progress: bool = False) -> FitResult:
        if self.images is None:
            raise ValueError(f"site {self.name} has no training cases")
        self.load(weights)
        # FedProx pulls the shared weights towards the global model; a site's own normalization layers (FedBN) have
        # no global value to be pulled to
        anchor = ({k: torch.as_tensor(v) for k, v in weights.items() if k not in self.local_keys}
                  if self.cfg.fed.prox_mu > 0 else None)
        metrics = train_local(self.model, self.images, self.labels, self.cfg, self.generator, anchor=anchor,
                              domains=self.domains, desc=f"round {round_idx + 1} {self.name}", progress=progress)
        if self.domain is not None:
            metrics["domain"] = self.domain
        new = get_weights(self.model)
        self.local_state = {k: new[k] for k in self.local_keys}
        return FitResult(new, self.num_samples, {k: float(v) for k, v in metrics.items()})

    def evaluate(self, weights: Weights, hd95: bool = True) -> EvalResult:
        """Dice (and HD95) of ``weights`` on this site's validation cases."""
        if not self.val:
            return EvalResult(0, {})
        self.load(weights)
        d = self.cfg.data
        with use_domain(self.model, self.domain) if self.domain is not None else contextlib.nullcontext():
            return EvalResult(len(self.val), evaluate_cases(self.model, self.val, d.organs, d.channels, d.dims, hd95,
                                                            self.eval_input))

    def state_dict(self) -> dict:
        """What a resumed run needs: the RNG and the local normalization state."""
        return {"generator": self.generator.get_state(),
                "local_state": {k: torch.as_tensor(v) for k, v in self.local_state.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.local_state = {k: v.numpy() for k, v in state["local_state"].items()}
