"""The run configuration: a typed schema read from YAML, presets, and ``key=value`` overrides.

Unknown keys are errors that name the key (and the file), never ignored. A preset is a partial config
merged over the defaults; a YAML file and ``--set`` overrides are merged over the preset.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from fedgin.augment import AUGMENTATIONS
from fedgin.augment.recipes import Recipe, make_recipe, reserved_options
from fedgin.gin import make_config

MODALITIES = ("ct", "mri-t1", "mri-t2")
ORGANS = ("liver", "spleen", "right_kidney", "left_kidney", "pancreas", "gallbladder")


@dataclass
class SiteConfig:
    """One hospital: its modality, its data (MSD layout; ``None``: the built-in phantom) and a label map."""

    name: str
    modality: str
    data_dir: str | None = None
    cases: int = 8  # phantom cases to generate; for a data_dir, 0 means all, n the first n (with a warning)
    val_cases: int = 1  # cases held out for validation (per patient)
    seed: int = 0  # phantom seed
    label_map: dict[int, str] | None = None  # data set label id -> organ name or "background"


@dataclass
class TestSetConfig:
    """A held-out test set of one modality."""

    modality: str
    name: str | None = None  # table column group; default: the modality
    data_dir: str | None = None
    cases: int = 4  # as SiteConfig.cases
    seed: int = 1000
    label_map: dict[int, str] | None = None


def _default_sites() -> list[SiteConfig]:
    return [SiteConfig("ct-a", "ct", cases=8, seed=1), SiteConfig("ct-b", "ct", cases=8, seed=2),
            SiteConfig("mri-a", "mri-t2", cases=3, seed=3)]


def _default_tests() -> list[TestSetConfig]:
    return [TestSetConfig("ct", seed=1001), TestSetConfig("mri-t2", seed=1002)]


@dataclass
class DataConfig:
    sites: list[SiteConfig] = field(default_factory=_default_sites)
    test: list[TestSetConfig] = field(default_factory=_default_tests)
    organs: list[str] = field(default_factory=lambda: list(ORGANS[:4]))
    size: int = 64  # in-plane size after resizing
    depth: int = 16  # phantom depth, and the depth 3D volumes are resized to
    dims: str = "2d"  # "2d": train on axial slices; "3d": on volumes
    channels: int = 1  # grayscale replicated to this many channels (the original GIN uses 3)
    ct_window: list[float] = field(default_factory=lambda: [-200.0, 300.0])
    mri_percentiles: list[float] = field(default_factory=lambda: [1.0, 99.0])
    cache_dir: str | None = None  # phantom cache; default ~/.cache/fedgin/phantom


@dataclass
class ModelConfig:
    channels: list[int] = field(default_factory=lambda: [16, 32, 64, 128])
    strides: list[int] = field(default_factory=lambda: [2, 2, 2])
    num_res_units: int = 1
    norm: str = "batch"
    dropout: float = 0.0


@dataclass
class TrainConfig:
    loss: str = "dice_ce"  # or "dice_focal"
    optimizer: str = "adam"  # or "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 16
    local_epochs: int = 1
    local_steps: int = 0  # > 0: this many steps per round instead of epochs


@dataclass
class FedConfig:
    mode: str = "federated"  # or "centralized" (one model on the pooled data)
    rounds: int = 20
    fraction: float = 1.0  # share of clients sampled each round
    weighting: str = "samples"  # or "uniform"
    prox_mu: float = 0.0  # > 0: FedProx
    norm: str = "average"  # "local": FedBN (normalization stays at each site); "dsbn": one per modality


@dataclass
class AugConfig:
    """The augmentation: any ``fedgin.augment`` method, trained as its paper does (fedgin/augment/recipes.py)."""

    method: str = "none"  # none gin gin_ipa randconv pro_randconv fmaug raffesdg semantic_randconv
    views: int | None = None  # augmented views per batch (None: the method's); > 1 adds the consistency loss
    consistency_weight: float | None = None  # None: the method's (10; gin_ipa 10 / classes)
    backend: str = "auto"  # GIN backend of gin, gin_ipa, semantic_randconv
    gin: dict = field(default_factory=dict)  # GINConfig options (in_channels, spatial_dims come from data)
    options: dict = field(default_factory=dict)  # the method's own options, e.g. {kernel_sizes: [1, 3]}
    reconstruction_weight: float = 1.0  # raffesdg's high-frequency reconstruction loss


@dataclass
class EvalConfig:
    hd95_every_round: bool = True
    keep_round_checkpoints: bool = True
    overlays: int = 2  # sample cases per test set in the overlay plot


@dataclass
class DPConfig:
    """Client-side differential privacy on Flower: each site clips its update, the server adds Gaussian noise."""

    clip: float = 0.0  # > 0: L2 norm each site's model update is clipped to (Flower's fixedclipping_mod)
    noise_multiplier: float = 0.0  # noise std = noise_multiplier * clip / sampled sites


@dataclass
class SecAggConfig:
    """Secure aggregation on Flower (SecAgg+): the server only learns the sum of the sites' masked updates.

    Defaults: shares and threshold as Flower's flower-secure-aggregation example, the ranges as Flower 1.42's
    ``SecAggPlusWorkflow``. A value > 1 is a count, <= 1 a fraction (Flower's int/float semantics).
    """

    enabled: bool = False
    num_shares: float = 3.0  # shares of each site's mask secrets: a count (>= 3), or a fraction of the sampled sites
    reconstruction_threshold: float = 2.0  # shares that recover a secret: a count, or a fraction of num_shares
    clipping_range: float = 8.0  # every float entry of the model must lie within +-clipping_range
    quantization_range: int = 2**22  # integer levels over [-clipping_range, clipping_range]


@dataclass
class FlowerConfig:
    """``engine: flower``: who must take part, how long to wait, transport security, privacy."""

    min_available_clients: int = 0  # SuperNodes that must join before round 1; 0: one per site
    min_fit_clients: int = 0  # replies a round needs to go on; 0: every sampled site (else the run stops)
    round_timeout: float = 600.0  # seconds to wait for the sites' replies in a round
    join_timeout: float = 300.0  # seconds to wait for the SuperNodes to join
    insecure: bool = False  # no TLS, no SuperNode authentication: only for trials on one machine
    dp: DPConfig = field(default_factory=DPConfig)
    secagg: SecAggConfig = field(default_factory=SecAggConfig)


@dataclass
class RunConfig:
    name: str = "fedgin"
    seed: int = 0
    device: str = "auto"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    fed: FedConfig = field(default_factory=FedConfig)
    aug: AugConfig = field(default_factory=AugConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    engine: str = "builtin"  # or "flower": the sites as Flower SuperNodes
    flower: FlowerConfig = field(default_factory=FlowerConfig)


_CHOICES = {
    "data.dims": ("2d", "3d"), "model.norm": ("batch", "instance"), "train.loss": ("dice_ce", "dice_focal"),
    "train.optimizer": ("adam", "adamw"), "fed.mode": ("federated", "centralized"),
    "fed.weighting": ("samples", "uniform"), "fed.norm": ("average", "local", "dsbn"),
    "aug.method": tuple(AUGMENTATIONS), "aug.backend": ("auto", "reference", "triton"),
}

PRESETS: dict[str, dict] = {
    # The README's main command: the default scenario (2 CT sites, 1 small MRI site) sized for a 2-core CPU.
    "demo": {"name": "demo", "fed": {"rounds": 40}, "train": {"local_epochs": 2}},
    # The same scenario, smaller: the demo's test.
    "demo-fast": {
        "name": "demo-fast",
        "data": {"size": 48, "depth": 12,
                 "sites": [{"name": "ct-a", "modality": "ct", "cases": 4, "seed": 1},
                           {"name": "ct-b", "modality": "ct", "cases": 4, "seed": 2},
                           {"name": "mri-a", "modality": "mri-t2", "cases": 2, "seed": 3}],
                 "test": [{"modality": "ct", "cases": 2, "seed": 1001},
                          {"modality": "mri-t2", "cases": 2, "seed": 1002}]},
        "model": {"channels": [8, 16, 32], "strides": [2, 2]},
        "train": {"local_epochs": 4, "batch_size": 8, "lr": 2e-3},
        "fed": {"rounds": 30},
        "eval": {"hd95_every_round": False, "keep_round_checkpoints": False, "overlays": 1},
    },
    # As the FedGIN authors' released code: one CT and one MRI client, 100 rounds of 1 epoch, FedAvg by
    # sample count, AdamW 5e-4, batch 8, focal + soft Dice, 2D UNet 32-64-128-256, 1-channel batch-shared GIN.
    "fedgin-paper": {
        "name": "fedgin-paper",
        "data": {"size": 192, "depth": 32,
                 "sites": [{"name": "ct", "modality": "ct", "cases": 20, "val_cases": 4, "seed": 1},
                           {"name": "mri", "modality": "mri-t2", "cases": 20, "val_cases": 4, "seed": 2}]},
        "model": {"channels": [32, 64, 128, 256], "strides": [2, 2, 2], "num_res_units": 0},
        "train": {"loss": "dice_focal", "optimizer": "adamw", "lr": 5e-4, "batch_size": 8, "local_epochs": 1},
        "fed": {"rounds": 100, "weighting": "samples"},
        "aug": {"method": "gin", "gin": {"per_sample": False}},
    },
    # The original GIN training: 3-channel GIN, three views, supervised loss on the first, KL consistency.
    "gin-original": {
        "name": "gin-original",
        "data": {"channels": 3},
        "aug": {"method": "gin", "views": 3},  # the recipe's weight: 10 / classes, the original's 10 (recipes.py)
    },
}


def deep_merge(base: dict, over: dict) -> dict:
    """``over`` merged into a copy of ``base`` (dicts recursively, but a ``label_map`` whole; lists and scalars
    replaced)."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "label_map":
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def to_dict(cfg) -> dict:
    """The config as plain YAML-able data."""
    return dataclasses.asdict(cfg)


def build(raw: dict, source: str = "config") -> RunConfig:
    """A validated :class:`RunConfig` from plain data; errors name ``source`` and the dotted key."""
    cfg = _build(RunConfig, raw, "", source)
    validate(cfg, source)
    return cfg


def load_config(path: str | Path | None = None, preset: str | None = None,
                overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Defaults < ``preset`` (or the file's ``preset:`` key) < the YAML file < ``key=value`` overrides."""
    raw: dict = {}
    source = "config"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        source = str(path)
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ValueError(f"{path}: not valid YAML ({err})") from None
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: the top level must be a mapping of keys")
    preset = preset or raw.pop("preset", None)
    raw.pop("preset", None)
    merged = {}
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
        merged = copy.deepcopy(PRESETS[preset])
    merged = deep_merge(merged, raw)
    for item in overrides:
        merged = deep_merge(merged, parse_override(item))
    return build(merged, source)


def parse_override(item: str) -> dict:
    """``"fed.rounds=5"`` -> ``{"fed": {"rounds": 5}}`` (the value is read as YAML)."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"override {item!r} must look like key.sub=value")
    out: dict = {}
    node = out
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = yaml.safe_load(value)
    return out


def dump(cfg: RunConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def _build(cls, raw, prefix: str, source: str):
    where = prefix.rstrip(".") or "top level"
    if not isinstance(raw, dict):
        raise ValueError(f"{source}: {where} must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ValueError(f"{source}: unknown key {prefix}{unknown[0]!s}; known keys here: {sorted(fields)}")
    kwargs = {}
    for name, value in raw.items():
        kwargs[name] = _convert(hints[name], value, f"{prefix}{name}", source)
    missing = [n for n, f in fields.items() if n not in kwargs
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ValueError(f"{source}: missing key {prefix}{missing[0]}")
    return cls(**kwargs)


def _convert(hint, value, key: str, source: str):
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (hint,) = [a for a in args if a is not type(None)]
        return _convert(hint, value, key, source)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key + ".", source)
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ValueError(f"{source}: {key} must be a list, got {value!r}")
        return [_convert(args[0], v, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{source}: {key} must be a mapping, got {value!r}")
        if not args:
            return dict(value)
        return {_convert(args[0], k, f"{key}.{k}", source): _convert(args[1], v, f"{key}.{k}", source)
                for k, v in value.items()}
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{source}: {key} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int) and not (isinstance(value, str) and value.isdigit()):
            raise ValueError(f"{source}: {key} must be an integer, got {value!r}")
        return int(value)
    if hint is float:
        try:
            if isinstance(value, bool) or not math.isfinite(float(value)):
                raise TypeError
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{source}: {key} must be a finite number, got {value!r}") from None
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"{source}: {key} must be a string, got {value!r}")
        return value
    raise TypeError(f"config schema: unsupported type {hint} for {key}")  # pragma: no cover


def validate(cfg: RunConfig, source: str = "config") -> None:
    """Check choices, ranges and names; raise a ``ValueError`` naming ``source`` and the key."""
    def err(key: str, msg: str) -> ValueError:
        return ValueError(f"{source}: {key}: {msg}")

    for dotted, choices in _CHOICES.items():
        section, name = dotted.split(".")
        value = getattr(getattr(cfg, section), name)
        if value not in choices:
            raise err(dotted, f"{value!r} is not one of {list(choices)}")
    d = cfg.data
    if not d.sites:
        raise err("data.sites", "no sites")
    names = [s.name for s in d.sites]
    if len(set(names)) != len(names):
        raise err("data.sites", f"site names must be unique, got {names}")
    if not d.organs:
        raise err("data.organs", "no organs")
    keys = [organ_key(o) for o in d.organs]
    if len(set(keys)) != len(keys):
        raise err("data.organs", f"organs must be unique, got {d.organs}")
    if any(src.data_dir is None for src in (*d.sites, *d.test)):
        unknown = [o for o in d.organs if organ_key(o) not in {organ_key(k) for k in ORGANS}]
        if unknown:
            raise err("data.organs", f"the phantom has no {unknown}; its organs are {list(ORGANS)}")
    for i, s in enumerate(d.sites):
        _check_source(s, f"data.sites[{i}] ({s.name})", err, d.organs)
        if s.val_cases < 0:
            raise err(f"data.sites[{i}].val_cases", "must be >= 0")
        if s.data_dir is None and s.cases - s.val_cases < 1:
            raise err(f"data.sites[{i}]", f"site {s.name} has no training cases (cases={s.cases}, "
                                          f"val_cases={s.val_cases})")
    for i, t in enumerate(d.test):
        _check_source(t, f"data.test[{i}]", err, d.organs)
    tnames = [t.name or t.modality for t in d.test]
    if len(set(tnames)) != len(tnames):
        raise err("data.test", f"test set names must be unique, got {tnames}")
    for key in ("size", "depth", "channels"):
        if getattr(d, key) < 1:
            raise err(f"data.{key}", "must be >= 1")
    if len(d.ct_window) != 2 or d.ct_window[0] >= d.ct_window[1]:
        raise err("data.ct_window", f"must be [low, high] with low < high, got {d.ct_window}")
    if len(d.mri_percentiles) != 2 or not 0 <= d.mri_percentiles[0] < d.mri_percentiles[1] <= 100:
        raise err("data.mri_percentiles", f"must be [low, high] within 0..100, got {d.mri_percentiles}")
    m = cfg.model
    if len(m.channels) < 2 or len(m.strides) != len(m.channels) - 1:
        raise err("model.strides", f"needs len(channels) - 1 = {len(m.channels) - 1} entries, got {m.strides}")
    if any(s < 1 for s in m.strides):
        raise err("model.strides", f"must be >= 1, got {m.strides}")
    for key in ("size", "depth") if d.dims == "3d" else ("size",):
        if getattr(d, key) % math.prod(m.strides):
            raise err(f"data.{key}", f"{getattr(d, key)} must be a multiple of {math.prod(m.strides)}, the product "
                                     f"of model.strides {m.strides}, for the UNet's skip connections")
    if not 0 <= m.dropout < 1:
        raise err("model.dropout", f"must be in [0, 1), got {m.dropout}")
    t = cfg.train
    if t.lr <= 0 or t.batch_size < 1 or t.local_epochs < 0 or t.local_steps < 0 or t.weight_decay < 0:
        raise err("train", "lr, batch_size must be > 0; local_epochs, local_steps, weight_decay >= 0")
    if t.local_epochs == 0 and t.local_steps == 0:
        raise err("train.local_epochs", "either local_epochs or local_steps must be > 0")
    f = cfg.fed
    if f.rounds < 1:
        raise err("fed.rounds", "must be >= 1")
    if not 0 < f.fraction <= 1:
        raise err("fed.fraction", f"must be in (0, 1], got {f.fraction}")
    if f.prox_mu < 0:
        raise err("fed.prox_mu", "must be >= 0")
    _check_flower(cfg, err)
    if f.norm == "dsbn" and m.norm != "batch":
        raise err("fed.norm", f"dsbn needs batch normalization (model.norm: batch), got {m.norm!r}")
    if f.norm == "local" and f.mode == "centralized":
        raise err("fed.norm", "local (FedBN) keeps normalization layers at each site, but centralized training has "
                              "one pooled model: use average")
    if f.norm in ("local", "dsbn"):
        trained = {s.modality for s in d.sites}
        for i, t in enumerate(d.test):
            if t.modality not in trained:
                raise err(f"data.test[{i}]", f"fed.norm: {f.norm} has no normalization statistics for {t.modality}: "
                                             "no site has it")
    a = cfg.aug
    if a.views is not None and not 1 <= a.views <= 3:
        raise err("aug.views", f"must be 1, 2 or 3, got {a.views}")
    if a.views not in (None, 1) and a.method == "none":
        raise err("aug.views", "several views need an augmentation (aug.method)")
    for key in ("in_channels", "out_channels", "spatial_dims"):
        if key in a.gin:
            raise err(f"aug.gin.{key}", "is set from data.channels and data.dims")
    try:
        gin_config(cfg)
    except (ValueError, TypeError) as e:
        raise err("aug.gin", str(e)) from None
    if a.method != "none":
        known, reserved = AUGMENTATIONS[a.method].option_names(), reserved_options(a.method)
        for key in a.options:
            if key in reserved:
                raise err(f"aug.options.{key}", f"is set by {reserved[key]}")
            if key not in known:
                allowed = sorted(set(known) - set(reserved))
                raise err(f"aug.options.{key}", f"unknown option of {a.method}; known: {allowed}")
    elif a.options:
        raise err(f"aug.options.{next(iter(a.options))}", "aug.method: none takes no options")
    try:
        recipe(cfg)
    except (ValueError, TypeError) as e:
        raise err("aug", str(e)) from None



def _check_flower(cfg: RunConfig, err) -> None:
    fl = cfg.flower
    if cfg.engine not in ("builtin", "flower"):
        raise err("engine", f"{cfg.engine!r} is not one of ['builtin', 'flower']")
    if cfg.engine == "flower" and cfg.fed.mode == "centralized":
        raise err("engine", "fed.mode: centralized pools the data in one process; run it with engine: builtin")
    for key in ("min_available_clients", "min_fit_clients"):
        if not 0 <= getattr(fl, key) <= len(cfg.data.sites):
            raise err(f"flower.{key}", f"must be within 0..{len(cfg.data.sites)} (the number of sites)")
    if fl.round_timeout <= 0 or fl.join_timeout <= 0:
        raise err("flower", "round_timeout and join_timeout must be > 0")
    if fl.dp.clip < 0 or fl.dp.noise_multiplier < 0 or fl.dp.noise_multiplier > 0 and fl.dp.clip == 0:
        raise err("flower.dp", "clip and noise_multiplier must be >= 0; noise needs a clip > 0")
    if fl.dp.clip > 0 and cfg.model.norm == "batch":
        raise err("flower.dp.clip", "differential privacy needs model.norm: instance: BatchNorm's running statistics "
                                    "and step counters travel with each update, so the clipping would shrink the "
                                    "weights' change by theirs and the noise would reach them")
    if fl.dp.clip > 0 and cfg.fed.weighting != "uniform":
        raise err("flower.dp.clip", "differential privacy needs fed.weighting: uniform: the noise, noise_multiplier "
                                    "* clip / sampled sites, covers each site's share of an unweighted mean")
    if fl.secagg.enabled:
        _check_secagg(cfg, err)


def _check_secagg(cfg: RunConfig, err) -> None:
    """``flower.secagg``: what Flower's SecAgg+ accepts, and what it cannot be combined with."""
    sa, n = cfg.flower.secagg, len(cfg.data.sites)
    if cfg.engine != "flower":
        raise err("flower.secagg.enabled", "secure aggregation runs on engine: flower only")
    sampled = max(1, round(cfg.fed.fraction * (cfg.flower.min_available_clients or n)))
    if sampled < 2:
        raise err("flower.secagg.enabled", f"SecAgg+ needs >= 2 sampled sites a round; data.sites, fed.fraction "
                                           f"and flower.min_available_clients allow {sampled}")
    if cfg.fed.norm != "average":
        raise err("fed.norm", f"{cfg.fed.norm!r} keeps normalization layers per site or modality, but under "
                              "flower.secagg the server only sees the average of all sites: use fed.norm: average")
    if cfg.flower.dp.clip > 0:
        raise err("flower.dp.clip", "differential privacy and flower.secagg cannot be combined yet; turn one off")
    shares, threshold = sa.num_shares, sa.reconstruction_threshold
    if shares <= 0 or shares > 1 and (shares != int(shares) or shares < 3):
        raise err("flower.secagg.num_shares", f"must be an integer >= 3 (a count) or within (0, 1] (a fraction of "
                                              f"the sampled sites), got {shares:g}")
    if threshold <= 0 or threshold > 1 and (threshold != int(threshold) or threshold > sampled):
        raise err("flower.secagg.reconstruction_threshold", f"must be an integer within 2..{sampled} (the sampled "
                                                            f"sites; a count) or within (0, 1] (a fraction of "
                                                            f"num_shares), got {threshold:g}")
    if 1 < shares <= threshold:
        raise err("flower.secagg.reconstruction_threshold", f"must be below flower.secagg.num_shares ({shares:g})")
    if sa.clipping_range <= 0:
        raise err("flower.secagg.clipping_range", f"must be > 0, got {sa.clipping_range:g}")
    most = (2**32 - 1) // n  # Flower's modulus_range 2**32 must exceed the sum of n sites' quantized values
    if not 2 <= sa.quantization_range <= most:
        raise err("flower.secagg.quantization_range", f"must be within 2..{most} ({n} sites' quantized values "
                                                      f"must sum below 2**32), got {sa.quantization_range}")


def _check_source(src, key: str, err, organs: list[str]) -> None:
    if src.modality not in MODALITIES:
        raise err(f"{key}.modality", f"unknown modality {src.modality!r}; choose one of {list(MODALITIES)}")
    if src.data_dir is None and src.cases < 1:
        raise err(f"{key}.cases", "a phantom data set needs cases >= 1")
    if src.data_dir is not None and src.cases < 0:
        raise err(f"{key}.cases", "must be >= 0 (0: all cases)")
    known = {organ_key(o) for o in organs}
    for lid, organ in (src.label_map or {}).items():
        if lid < 0:
            raise err(f"{key}.label_map.{lid}", "label ids are >= 0")
        if organ_key(organ) != "background" and organ_key(organ) not in known:
            raise err(f"{key}.label_map.{lid}", f"{organ!r} is not in data.organs {organs} (or 'background')")


def organ_key(name: str) -> str:
    """An organ name for matching: ``"Right Kidney"``, ``"right_kidney"`` and ``"right-kidney"`` are one."""
    return " ".join(name.lower().replace("_", " ").replace("-", " ").split())


def recipe(cfg: RunConfig) -> Recipe:
    """How the run augments and which losses it adds (:func:`fedgin.augment.recipes.make_recipe`)."""
    a = cfg.aug
    return make_recipe(a.method, n_classes=len(cfg.data.organs) + 1, views=a.views,
                       consistency_weight=a.consistency_weight, options=a.options, gin=a.gin, backend=a.backend,
                       reconstruction_weight=a.reconstruction_weight)


def gin_config(cfg: RunConfig):
    """The :class:`~fedgin.params.GINConfig` of a run (channels and dims from the data config)."""
    dims = 2 if cfg.data.dims == "2d" else 3
    return make_config(in_channels=cfg.data.channels, spatial_dims=dims, **cfg.aug.gin)
