"""The ClientApp: one SuperNode is one site, and runs fedgin's :class:`~fedgin.fl.client.Client` on the weights
the server sends.

A SuperNode names its site in its node config (``--node-config "site='ct-a' data-dir='/data/ct-a'
modality='ct'"``; ``device='cuda:0'`` optional); the rest (cases, label map, seed, model, training) comes from
the run's fedgin config. Flower starts a process per message, so the site's RNG and its local normalization
state (FedBN) live in the node's ``context.state`` between rounds.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import flwr
import torch
from flwr.app import ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import fixedclipping_mod
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from fedgin.config import RunConfig, SiteConfig
from fedgin.fl.client import Client
from fedgin.fl.engine import resolve_device
from fedgin.fl.flower.records import fedgin_version, run_config, to_record, to_weights
from fedgin.train.data import list_cases, load_source, split

STATE_KEY = "fedgin.client"  # context.state: the site's RNG and local normalization state


def clipping_mod(msg: Message, context: Context, call_next):
    """Flower's ``fixedclipping_mod`` on the train messages of runs with differential privacy (they carry the
    clipping norm); other messages pass through."""
    config = msg.content.config_records.get("config")
    if msg.metadata.message_type == MessageType.TRAIN and config is not None and KEY_CLIPPING_NORM in config:
        return fixedclipping_mod(msg, context, call_next)
    return call_next(msg, context)


app = ClientApp(mods=[clipping_mod])


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


def make_client(context: Context, prox_mu: float | None = None) -> Client:
    """This node's :class:`Client`, with its state from earlier messages of the run."""
    cfg, index, site = node_site(context)
    if prox_mu is not None:  # Flower's FedProx sends mu; the client adds the proximal term
        cfg = dataclasses.replace(cfg, fed=dataclasses.replace(cfg.fed, prox_mu=prox_mu))
    train, val = split(load_source(site, cfg.data), site.val_cases, f"site {site.name} ({site.data_dir or 'phantom'})")
    device = resolve_device(str(context.node_config.get("device", cfg.device)))
    client = Client(site.name, site.modality, train, val, cfg, device=device, seed=cfg.seed * 1000 + index)
    if STATE_KEY in context.state.array_records:
        saved = context.state.array_records[STATE_KEY]
        client.load_state_dict({
            "generator": torch.from_numpy(saved["generator"].numpy()),
            "local_state": {k.removeprefix("local/"): torch.from_numpy(v.numpy())
                            for k, v in saved.items() if k.startswith("local/")}})
    return client


def save_client(client: Client, context: Context) -> None:
    state = client.state_dict()
    arrays = {"generator": state["generator"].numpy(), **{f"local/{k}": v.numpy()
                                                          for k, v in state["local_state"].items()}}
    context.state.array_records[STATE_KEY] = to_record(arrays)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """The handshake: which site this node serves, with which versions; checks the site's data is there."""
    _, _, site = node_site(context)
    if site.data_dir is not None:
        list_cases(site.data_dir)  # the MSD layout and its files, before any round
    info = ConfigRecord({"site": site.name, "modality": site.modality, "fedgin": fedgin_version(),
                         "flwr": flwr.__version__})
    return Message(RecordDict({"site": info}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    config = msg.content["config"]
    client = make_client(context, float(config.get("proximal-mu", 0.0)))
    result = client.fit(to_weights(msg.content["arrays"]), int(config["server-round"]) - 1)
    save_client(client, context)
    content = RecordDict({
        "arrays": to_record(result.weights),
        "metrics": MetricRecord({"num-examples": result.num_samples, **result.metrics}),
        "fedgin": ConfigRecord({"local-keys": "\n".join(sorted(client.local_keys))}),
    })
    return Message(content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    client = make_client(context)
    result = client.evaluate(to_weights(msg.content["arrays"]), bool(msg.content["config"].get("hd95", True)))
    metrics = MetricRecord({"num-examples": result.num_samples, **result.metrics})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)

