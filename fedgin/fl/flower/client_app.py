"""The ClientApp: one SuperNode is one site, and runs fedgin's :class:`~fedgin.fl.client.Client` on the weights
the server sends.

A SuperNode names its site in its node config (``--node-config "site='ct-a' data-dir='/data/ct-a'
modality='ct'"``; ``device='cuda:0'`` and ``state-dir='/var/lib/fedgin/ct-a'`` optional); the rest (cases,
label map, seed, model, training) comes from the run's fedgin config. Flower starts a process per message, so the
site's RNG and its local normalization state (FedBN) live in the node's ``context.state`` between rounds, and,
with a ``state-dir``, in a file per round there, from which a resumed run (a new Flower run) continues.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import re
from pathlib import Path

import flwr
import torch
from flwr.app import ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import fixedclipping_mod
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from fedgin.config import RunConfig, SiteConfig
from fedgin.data.msd import DATASET_JSON, read_dataset
from fedgin.environment import resolve_device
from fedgin.fl.client import Client
from fedgin.fl.flower.records import RUN_KEY, fedgin_version, run_config, to_record, to_weights
from fedgin.fl.flower.secagg import secagg_mod
from fedgin.fl.rundir import atomic_write
from fedgin.train.data import Case, list_cases, load_source, split

STATE_KEY = "fedgin.client"  # context.state: the site's RNG and local normalization state
KEEP_ROUNDS = 3  # state files a site keeps per run


def clipping_mod(msg: Message, context: Context, call_next):
    """Flower's ``fixedclipping_mod`` on the train messages of runs with differential privacy (they carry the
    clipping norm); other messages pass through."""
    config = msg.content.config_records.get("config")
    if msg.metadata.message_type == MessageType.TRAIN and config is not None and KEY_CLIPPING_NORM in config:
        return fixedclipping_mod(msg, context, call_next)
    return call_next(msg, context)


app = ClientApp(mods=[clipping_mod, secagg_mod])


def node_site(context: Context) -> tuple[RunConfig, int, SiteConfig]:
    """The run's config, and this node's site (its index in ``data.sites``, its config with the node's data)."""
    cfg = run_config(context)
    node = context.node_config
    name = node.get("site")
    if not name:
        raise ValueError("the SuperNode's node config has no site: start it with --node-config "
                         "\"site='<name>' data-dir='/path/to/msd' modality='ct'\"")
    names = [s.name for s in cfg.data.sites]
    if name not in names:
        raise ValueError(f"site {name!r} (node config) is not one of the run's sites {names}")
    index = names.index(name)
    site = cfg.data.sites[index]
    modality = node.get("modality", site.modality)
    if modality != site.modality:
        raise ValueError(f"site {name}: node config modality {modality!r} differs from the run's {site.modality!r}")
    data_dir = node.get("data-dir") or site.data_dir
    if data_dir is not None and not Path(str(data_dir)).is_dir():
        raise FileNotFoundError(f"site {name}: data directory {data_dir} (node config data-dir) does not exist")
    return cfg, index, dataclasses.replace(site, data_dir=None if data_dir is None else str(data_dir))


def state_files(context: Context, config: ConfigRecord) -> Path | None:
    """The folder of this site's saved state for the run (node config ``state-dir``), or None."""
    root = context.node_config.get("state-dir")
    return Path(str(root)) / str(config[RUN_KEY]) if root and RUN_KEY in config else None


def saved_state(folder: Path | None, before: int) -> dict | None:
    """The newest state the site saved in ``folder`` after a round before ``before`` (1-based), if any."""
    if folder is None or not folder.is_dir():
        return None
    rounds = [int(m[1]) for p in folder.iterdir() if (m := re.fullmatch(r"round_(\d+)\.pt", p.name))]
    done = [r for r in rounds if r < before]
    return torch.load(folder / f"round_{max(done):04d}.pt", weights_only=True) if done else None


def site_cases(context: Context, cfg: RunConfig, site: SiteConfig) -> list[Case]:
    """The site's cases, loaded and prepared once per data set and settings into its ``state-dir`` (Flower starts
    a process per message: without one, every message loads the NIfTI files again)."""
    root = context.node_config.get("state-dir")
    if not root or site.data_dir is None:
        return load_source(site, cfg.data)
    data_dir = Path(site.data_dir)
    files = [data_dir / DATASET_JSON] + [Path(c[k]) for c in read_dataset(data_dir) for k in ("image", "label")]
    settings = {"site": dataclasses.asdict(site), "fedgin": fedgin_version(),
                "data": {k: v for k, v in dataclasses.asdict(cfg.data).items() if k not in ("sites", "test")},
                "files": [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files]}
    key = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]
    path = Path(str(root)) / f"prepared-{key}.pt"
    if path.is_file():
        return [Case(**case) for case in torch.load(path, weights_only=True)]
    cases = load_source(site, cfg.data)
    buf = io.BytesIO()
    torch.save([dataclasses.asdict(c) for c in cases], buf)
    atomic_write(path, buf.getvalue())
    for old in path.parent.glob("prepared-*.pt"):  # an earlier version of the data or the settings
        if old != path:
            old.unlink()
    return cases


def make_client(context: Context, config: ConfigRecord, prox_mu: float | None = None, before: int = 0) -> Client:
    """This node's :class:`Client`, with its state from earlier messages of the run, or else from the newest file
    in its ``state-dir`` saved after a round before ``before``."""
    cfg, index, site = node_site(context)
    if prox_mu is not None:  # Flower's FedProx sends mu; the client adds the proximal term
        cfg = dataclasses.replace(cfg, fed=dataclasses.replace(cfg.fed, prox_mu=prox_mu))
    where = f"site {site.name} ({site.data_dir or 'phantom'})"
    train, val = split(site_cases(context, cfg, site), site.val_cases, where)
    device = resolve_device(str(context.node_config.get("device", cfg.device)))
    client = Client(site.name, site.modality, train, val, cfg, device=device, seed=cfg.seed * 1000 + index)
    if STATE_KEY in context.state.array_records:
        saved = context.state.array_records[STATE_KEY]
        client.load_state_dict({
            "generator": torch.from_numpy(saved["generator"].numpy()),
            "local_state": {k.removeprefix("local/"): torch.from_numpy(v.numpy())
                            for k, v in saved.items() if k.startswith("local/")}})
    elif (state := saved_state(state_files(context, config), before)) is not None:
        client.load_state_dict(state)
    return client


def save_client(client: Client, context: Context, config: ConfigRecord) -> None:
    """The client's state into ``context.state``, and into its ``state-dir`` (the last few rounds kept)."""
    state = client.state_dict()
    arrays = {"generator": state["generator"].numpy(), **{f"local/{k}": v.numpy()
                                                          for k, v in state["local_state"].items()}}
    context.state.array_records[STATE_KEY] = to_record(arrays)
    folder = state_files(context, config)
    if folder is None:
        return
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write(folder / f"round_{int(config['server-round']):04d}.pt", buf.getvalue())
    for old in sorted(folder.glob("round_*.pt"))[:-KEEP_ROUNDS]:
        old.unlink()


@app.query()
def query(msg: Message, context: Context) -> Message:
    """The handshake: which site this node serves, with which versions; checks the site's data is there."""
    cfg, _, site = node_site(context)
    if site.data_dir is not None:
        list_cases(site.data_dir)  # the MSD layout and its files, before any round
    info = ConfigRecord({"site": site.name, "modality": site.modality, "fedgin": fedgin_version(),
                         "flwr": flwr.__version__})
    if cfg.flower.secagg.enabled:  # the server sets SecAgg+'s max_weight from the sites' training examples
        info["train-examples"] = make_client(context, ConfigRecord()).num_samples
    return Message(RecordDict({"site": info}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    config = msg.content["config"]
    server_round = int(config["server-round"])
    client = make_client(context, config, float(config.get("proximal-mu", 0.0)), before=server_round)
    result = client.fit(to_weights(msg.content["arrays"]), server_round - 1)
    save_client(client, context, config)
    content = RecordDict({
        "arrays": to_record(result.weights),
        "metrics": MetricRecord({"num-examples": result.num_samples, **result.metrics}),
        "fedgin": ConfigRecord({"local-keys": "\n".join(sorted(client.local_keys))}),
    })
    return Message(content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    config = msg.content["config"]
    client = make_client(context, config, before=int(config["server-round"]) + 1)
    result = client.evaluate(to_weights(msg.content["arrays"]), bool(config.get("hd95", True)))
    metrics = MetricRecord({"num-examples": result.num_samples, **result.metrics})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)

