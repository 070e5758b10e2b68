"""The Flower apps' parts without processes: aggregation and round failures, DP clipping and noise, the handshake,
node configs, certificates and the app project."""
import math
import os
import shutil
import socket
import stat
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import tomli
import torch
import yaml

pytest.importorskip("flwr")

from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key  # noqa: E402
from flwr.app import ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict  # noqa: E402
from flwr.common.config import validate_config  # noqa: E402
from flwr.serverapp.strategy import DifferentialPrivacyClientSideFixedClipping  # noqa: E402
from flwr.supercore.task_identity import TaskIdentity  # noqa: E402

from fedgin.config import build, dump, load_config  # noqa: E402
from fedgin.data.msd import read_dataset  # noqa: E402
from fedgin.fl.aggregate import fedavg  # noqa: E402
from fedgin.fl.client import get_weights  # noqa: E402
from fedgin.fl.experiment import METHODS, method_config  # noqa: E402
from fedgin.fl.flower import client_app, server_app  # noqa: E402
from fedgin.fl.flower.certs import write_node_keys, write_server_certificates  # noqa: E402
from fedgin.fl.flower.launcher import free_port  # noqa: E402
from fedgin.fl.flower.project import write_project  # noqa: E402
from fedgin.fl.flower.reach import check_superlink  # noqa: E402
from fedgin.fl.flower.records import (  # noqa: E402
    CONFIG_KEY,
    OUT_KEY,
    RUN_KEY,
    error_text,
    fedgin_version,
    to_record,
    to_weights,
)
from fedgin.fl.rundir import RunDir  # noqa: E402
from fedgin.train.data import phantom_dir  # noqa: E402
from fedgin.train.model import domain_index, make_model  # noqa: E402

SITES = "data.sites=[{name: ct-a, modality: ct, cases: 3, seed: 1}, {name: mri-a, modality: mri-t1, cases: 2, seed: 2}]"


DP = ("model.norm=instance", "fed.weighting=uniform")  # what differential privacy needs


def cfg_with(*over):
    return load_config(overrides=[SITES, "engine=flower", "model.channels=[4, 8]", "model.strides=[2]", *over])


def weights(seed, n=3):
    g = np.random.default_rng(seed)
    return {"w": g.normal(size=(n, n)).astype(np.float32), "steps": np.array(seed, dtype=np.int64)}


def reply(node, w=None, n=4, error=None, loss=1.0, local_keys="", **metrics):
    content = None
    if error is None:
        content = RecordDict({"arrays": to_record(w),
                              "metrics": MetricRecord({"num-examples": n, "loss": loss, **metrics}),
                              "fedgin": ConfigRecord({"local-keys": local_keys})})
    return SimpleNamespace(metadata=SimpleNamespace(src_node_id=node), content=content,
                           has_error=lambda: error is not None, error=SimpleNamespace(reason=error))


STATE_KEYS = {"round", "global", "best", "best_round", "best_score", "best_local", "history", "sampler", "torch_rng",
              "clients", "sites_left"}  # fedgin.fl.ledger's one schema (tests/test_fl_engine.py asserts it too)


def server_run(tmp_path, *over):
    cfg = cfg_with(*over)
    sites = [server_app.SiteNode("ct-a", "ct", 0, 11), server_app.SiteNode("mri-a", "mri-t1", 1, 22)]
    return server_app.ServerRun(cfg, RunDir(tmp_path / "run"), sites, weights(0))


def test_error_reasons_read_plainly():
    assert error_text("<class 'FileNotFoundError'>:<'site a: data directory /x does not exist'>") == \
        "FileNotFoundError: site a: data directory /x does not exist"
    assert error_text("node unavailable") == "node unavailable"


def test_rounds_aggregate_with_fedavg_in_site_order(tmp_path):
    run = server_run(tmp_path)
    assert run.start_round(1, to_record(weights(0))) == [11, 22]
    w1, w2 = weights(1), weights(2)
    arrays, metrics = run.aggregate([reply(22, w2, n=8, loss=2.0), reply(11, w1, n=4)])
    expected = fedavg([(w1, 4), (w2, 8)], weights(0))
    got = to_weights(arrays)
    assert np.array_equal(got["w"], expected["w"])
    assert got["steps"].dtype == np.int64 and got["steps"].shape == ()  # 0-d arrays keep their shape
    assert run.row["train/ct-a/loss"] == 1.0 and run.row["train/mri-a/loss"] == 2.0
    assert list(run.row)[1:] == ["train/ct-a/loss", "train/mri-a/loss"]  # site order, as the built-in engine


def test_a_missing_site_stops_the_round_and_keeps_the_checkpoint(tmp_path):
    run = server_run(tmp_path)
    run.start_round(1, to_record(weights(0)))
    arrays, _ = run.aggregate([reply(11, weights(1)), reply(22, weights(2))])
    run.end_round(1, arrays)
    saved = run.rd.state.read_bytes()
    run.start_round(2, arrays)
    failed = r"round 2: 1 of 2 sites replied, 2 needed.*site mri-a \(SuperNode 22\): no training reply"
    with pytest.raises(server_app.RoundFailed, match=failed + r".*state.pt \(after round 1\)"):
        run.aggregate([reply(11, weights(3))])
    assert run.rd.state.read_bytes() == saved
    assert torch.load(run.rd.state, weights_only=True)["round"] == 1


def test_min_fit_clients_lets_the_round_finish_without_a_failed_site(tmp_path):
    run = server_run(tmp_path, "flower.min_fit_clients=1")
    run.start_round(1, to_record(weights(0)))
    arrays, _ = run.aggregate([reply(11, weights(1)), reply(22, error="<class 'RuntimeError'>:<'disk full'>")])
    assert np.array_equal(to_weights(arrays)["w"], weights(1)["w"])
    assert run.dropped == {"mri-a": "RuntimeError: disk full"}
    assert run.start_round(2, arrays) == [11]  # the failed site gets no more work


def test_fedbn_keeps_each_sites_layers_of_the_best_round_across_a_resume(tmp_path):
    fedbn = ("fed.norm=local", "data.test=[{modality: ct, cases: 1}, {modality: mri-t1, cases: 1}]")
    run = server_run(tmp_path, *fedbn)
    arrays = to_record(weights(0))
    for r, score in ((1, 0.9), (2, 0.5)):  # round 1 validates best
        run.start_round(r, arrays)
        arrays, _ = run.aggregate([reply(11, weights(10 * r + 1), local_keys="w"),
                                   reply(22, weights(10 * r + 2), local_keys="w")])
        run.row["val/score"] = score
        run.end_round(r, arrays)
    assert np.array_equal(run.sites[0].local_state["w"], weights(21)["w"])  # the last round's, live
    expected = {"ct-a": weights(11)["w"].tolist(), "mri-a": weights(12)["w"].tolist()}
    assert {name: w["w"].tolist() for name, w in run.ledger.best_local.items()} == expected
    assert set(torch.load(run.rd.state, weights_only=True)) == STATE_KEYS  # the built-in engine's schema
    again = server_run(tmp_path, *fedbn)
    again.restore()
    assert {name: w["w"].tolist() for name, w in again.ledger.best_local.items()} == expected
    assert again.done == 2 and [s.local_state["w"].tolist() for s in again.sites] == [
        weights(21)["w"].tolist(), weights(22)["w"].tolist()]


def test_dsbn_averages_each_modality_s_normalization_among_its_sites(tmp_path):
    cfg = cfg_with("fed.norm=dsbn", "data.test=[{modality: ct, cases: 1}, {modality: mri-t1, cases: 1}]")
    torch.manual_seed(0)
    base = get_weights(make_model(cfg))
    sites = [server_app.SiteNode("ct-a", "ct", 0, 11), server_app.SiteNode("mri-a", "mri-t1", 1, 22)]
    run = server_app.ServerRun(cfg, RunDir(tmp_path / "run"), sites, base)
    run.start_round(1, to_record(base))
    g = np.random.default_rng(1)
    trained = [{k: (v + g.normal(size=v.shape)).astype(v.dtype) if v.dtype.kind == "f" else v + 5
                for k, v in base.items()} for _ in range(2)]
    ct, mri = domain_index("ct"), domain_index("mri-t1")
    arrays, _ = run.aggregate([reply(22, trained[1], n=8, domain=mri), reply(11, trained[0], n=4, domain=ct)])
    got = to_weights(arrays)
    assert got.keys() == base.keys()
    for key, domain in run.domain_keys.items():  # each modality's entries come from its own site only
        assert np.array_equal(got[key], trained[[ct, mri].index(domain)][key]) if domain in (ct, mri) else \
            np.array_equal(got[key], base[key]), key
    shared = next(k for k in base if k not in run.domain_keys and base[k].dtype.kind == "f")
    np.testing.assert_allclose(got[shared], (4 * trained[0][shared] + 8 * trained[1][shared]) / 12, rtol=1e-5)
    assert run.row["train/mri-a/domain"] == mri


@pytest.fixture
def in_a_run(monkeypatch):
    """Messages are made inside a run (Flower reads the run id of the process)."""
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 1)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


def test_dp_clips_each_update_and_the_server_adds_noise(tmp_path, in_a_run):
    run = server_run(tmp_path, "flower.dp.clip=0.5", "flower.dp.noise_multiplier=2.0", *DP)
    strategy = server_app.make_strategy(run.cfg, run)
    assert isinstance(strategy, DifferentialPrivacyClientSideFixedClipping)
    assert strategy.clipping_norm == 0.5 and strategy.num_sampled_clients == 2

    # client side: the clipping mod bounds the L2 norm of the update to the clipping norm
    start = {"w": np.zeros((3, 3), np.float32)}
    msg = Message(RecordDict({"arrays": to_record(start), "config": ConfigRecord({"clipping_norm": 0.5})}),
                  dst_node_id=1, message_type=MessageType.TRAIN)
    big = {"w": np.full((3, 3), 10.0, np.float32)}
    out = client_app.clipping_mod(msg, None, lambda m, c: Message(RecordDict({"arrays": to_record(big)}), reply_to=m))
    assert np.linalg.norm(to_weights(out.content["arrays"])["w"]) == pytest.approx(0.5, rel=1e-5)
    plain = Message(RecordDict({"arrays": to_record(start), "config": ConfigRecord({})}), dst_node_id=1,
                    message_type=MessageType.TRAIN)
    same = client_app.clipping_mod(plain, None, lambda m, c: Message(RecordDict({"arrays": to_record(big)}),
                                                                     reply_to=m))
    assert np.array_equal(to_weights(same.content["arrays"])["w"], big["w"])  # no DP in the run: untouched

    # server side: Gaussian noise of std noise_multiplier * clip / sampled sites on the aggregate
    cfg_messages = list(strategy.configure_train(1, to_record(weights(0)), ConfigRecord(), grid=None))
    assert all(m.content["config"]["clipping_norm"] == 0.5 for m in cfg_messages)
    w = {"w": np.zeros((200, 200), np.float32), "steps": np.array(0, np.int64)}
    arrays, _ = strategy.aggregate_train(1, [reply(11, w), reply(22, w)])
    assert np.std(to_weights(arrays)["w"]) == pytest.approx(2.0 * 0.5 / 2, rel=0.05)


class Grid:
    def __init__(self, replies):
        self.replies = replies

    def get_node_ids(self):
        return [r.metadata.src_node_id for r in self.replies]

    def send_and_receive(self, messages, timeout=None):
        assert all(m.metadata.message_type == MessageType.QUERY for m in messages)
        return self.replies


def hello(node, site, version=None):
    info = ConfigRecord({"site": site, "modality": "ct", "fedgin": version or fedgin_version(), "flwr": "1.42.0"})
    return SimpleNamespace(metadata=SimpleNamespace(src_node_id=node), content=RecordDict({"site": info}),
                           has_error=lambda: False)


def test_handshake_maps_nodes_to_sites_and_names_bad_nodes(in_a_run):
    cfg = cfg_with()
    sites = server_app.join(Grid([hello(7, "mri-a"), hello(5, "ct-a")]), cfg)
    assert [(s.name, s.node_id, s.index) for s in sites] == [("ct-a", 5, 0), ("mri-a", 7, 1)]
    with pytest.raises(ValueError, match=r"SuperNode 7 \(site mri-a\) runs fedgin 0\.0\.1, the server fedgin "):
        server_app.join(Grid([hello(5, "ct-a"), hello(7, "mri-a", "0.0.1")]), cfg)
    missing = reply(9, error="<class 'FileNotFoundError'>:<'site mri-a: data directory /gone (node config "
                             "data-dir) does not exist'>")
    with pytest.raises(ValueError, match=r"SuperNode 9: FileNotFoundError: site mri-a: data directory /gone"):
        server_app.join(Grid([hello(5, "ct-a"), missing]), cfg)


def context(cfg, **node):
    return Context(run_id=1, node_id=1, node_config=node, state=RecordDict(),
                   run_config={CONFIG_KEY: dump(cfg), OUT_KEY: "/tmp/x"})


def test_node_config_errors_name_the_site_and_the_problem(tmp_path):
    cfg = cfg_with()
    with pytest.raises(FileNotFoundError, match=f"site ct-a: data directory {tmp_path / 'gone'}"):
        client_app.node_site(context(cfg, site="ct-a", **{"data-dir": str(tmp_path / "gone")}))
    with pytest.raises(ValueError, match=r"site 'x' \(node config\) is not one of the run's sites"):
        client_app.node_site(context(cfg, site="x"))
    with pytest.raises(ValueError, match="node config modality 'mri-t2' differs from the run's 'ct'"):
        client_app.node_site(context(cfg, site="ct-a", modality="mri-t2"))
    with pytest.raises(ValueError, match="no site"):
        client_app.node_site(context(cfg))
    _, index, site = client_app.node_site(context(cfg, site="mri-a", **{"data-dir": str(tmp_path)}))
    assert index == 1 and site.data_dir == str(tmp_path) and site.cases == 2


def test_certificates_chain_and_node_keys(tmp_path):
    certs = write_server_certificates(tmp_path, ["127.0.0.1", "superlink.example.org"])
    ca = x509.load_pem_x509_certificate(certs.ca.read_bytes())
    cert = x509.load_pem_x509_certificate(certs.cert.read_bytes())
    cert.verify_directly_issued_by(ca)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert san.get_values_for_type(x509.DNSName) == ["superlink.example.org"]
    assert stat.S_IMODE(os.stat(certs.key).st_mode) == 0o600
    keys = write_node_keys(tmp_path, "ct-a")
    private = load_ssh_private_key(keys.private.read_bytes(), None)
    assert private.curve.name == "secp384r1"
    assert load_ssh_public_key(keys.public.read_bytes()).public_numbers() == private.public_key().public_numbers()
    with pytest.raises(ValueError, match="needs at least one"):
        write_server_certificates(tmp_path, [])


def test_the_app_project_carries_the_config(tmp_path):
    cfg = cfg_with("fed.rounds=3")
    path = write_project(tmp_path / "app", cfg, tmp_path / "run")
    doc = tomli.loads(path.read_text())
    ok, errors, _ = validate_config(doc, check_module=True)
    assert ok, errors
    run_config = doc["tool"]["flwr"]["app"]["config"]
    assert build(yaml.safe_load(run_config[CONFIG_KEY])) == cfg
    assert run_config[OUT_KEY] == str(tmp_path / "run")


@pytest.mark.parametrize("over, match", [
    (["engine=ray"], "engine"), (["fed.mode=centralized"], "centralized"),
    (["flower.dp.noise_multiplier=1.0"], "noise needs a clip"), (["flower.min_fit_clients=3"], "within 0..2"),
    (["flower.dp.clip=1.0", "fed.weighting=uniform"], "differential privacy needs model.norm: instance"),
    (["flower.dp.clip=1.0", "model.norm=instance"], "differential privacy needs fed.weighting: uniform"),
])
def test_flower_config_errors(over, match):
    with pytest.raises(ValueError, match=match):
        cfg_with(*over)


def test_an_unreachable_superlink_is_named_with_its_problem(tmp_path):
    port = free_port()
    with pytest.raises(ConnectionError, match=f"SuperLink 127.0.0.1:{port} is unreachable: nothing listens on port"):
        check_superlink(f"127.0.0.1:{port}")
    with pytest.raises(ValueError, match="expected host:port"):
        check_superlink("superlink.example.org")
    certs = write_server_certificates(tmp_path, ["127.0.0.1"])
    with socket.create_server(("127.0.0.1", 0)) as plain:  # a port that speaks no TLS
        address = f"127.0.0.1:{plain.getsockname()[1]}"
        assert "port open" in check_superlink(address)
        closer = threading.Thread(target=lambda: [plain.accept()[0].close() for _ in range(2)])  # both checks
        closer.start()
        with pytest.raises(ConnectionError, match="TLS handshake failed.*--insecure"):
            check_superlink(address, certs.ca, timeout=5)
        closer.join()


@pytest.fixture(scope="module")
def phantom_site(tmp_path_factory):
    """A tiny phantom CT site as a SuperNode's data directory."""
    cache = tmp_path_factory.mktemp("phantom")
    cfg = cfg_with(f"data.cache_dir={cache}", "data.size=16", "data.depth=4")
    return cache, str(phantom_dir(cfg.data, "ct", 3, 1))


@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_through_the_client_app(method, phantom_site, tmp_path, in_a_run):
    """Each comparison method, selected in the run's config, through the ClientApp's train handler (the site's
    state-dir written) and the ServerApp's aggregation."""
    cache, data_dir = phantom_site
    cfg = method_config(cfg_with(f"data.cache_dir={cache}", "data.size=16", "data.depth=4", "train.local_steps=1",
                                 "train.batch_size=4", "data.test=[{modality: ct, cases: 1}]"), method, "federated")
    torch.manual_seed(0)
    start = get_weights(make_model(cfg))
    ctx = context(cfg, site="ct-a", modality="ct", **{"data-dir": data_dir, "state-dir": str(tmp_path)})
    config = ConfigRecord({"server-round": 1, RUN_KEY: "run0"})
    msg = Message(RecordDict({"arrays": to_record(start), "config": config}), dst_node_id=1,
                  message_type=MessageType.TRAIN)
    out = client_app.train(msg, ctx)
    trained, metrics = to_weights(out.content["arrays"]), out.content["metrics"]
    assert list(trained) == list(start)
    assert metrics["num-examples"] > 0 and math.isfinite(metrics["loss"])
    assert (metrics["gin_share"] > 0) == (method not in ("none", "dsbn"))
    assert ("domain" in metrics) == (method == "dsbn")
    assert (tmp_path / "run0" / "round_0001.pt").is_file()
    run = server_app.ServerRun(cfg, RunDir(tmp_path / "run"), [server_app.SiteNode("ct-a", "ct", 0, 11)], start)
    run.start_round(1, to_record(start))
    arrays, _ = run.aggregate([SimpleNamespace(metadata=SimpleNamespace(src_node_id=11), content=out.content,
                                               has_error=lambda: False)])
    for key, value in to_weights(arrays).items():  # one site: the global model is its model
        np.testing.assert_array_equal(value, trained[key], err_msg=key)


def test_a_site_prepares_its_cases_once_per_data_set_and_settings(phantom_site, tmp_path, monkeypatch):
    cache, source = phantom_site
    data_dir = shutil.copytree(source, tmp_path / "data")
    state = tmp_path / "state"
    loads = []
    real = client_app.load_source
    monkeypatch.setattr(client_app, "load_source", lambda *a, **k: loads.append(a[1].size) or real(*a, **k))

    def cases(*over):
        cfg = cfg_with(f"data.cache_dir={cache}", "data.depth=4", *over)
        ctx = context(cfg, site="ct-a", **{"data-dir": str(data_dir), "state-dir": str(state)})
        return client_app.site_cases(ctx, cfg, client_app.node_site(ctx)[2])

    first, again = cases("data.size=16"), cases("data.size=16")
    assert loads == [16] and len(list(state.glob("prepared-*.pt"))) == 1
    for a, b in zip(first, again, strict=True):
        assert a.name == b.name and torch.equal(a.image, b.image) and torch.equal(a.label, b.label)
    assert first[0].image.shape[1] == 16 and cases("data.size=32")[0].image.shape[1] == 32  # settings changed
    image = Path(read_dataset(data_dir)[0]["image"])
    os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 10**9))  # the data set changed
    cases("data.size=32")
    assert loads == [16, 32, 32] and len(list(state.glob("prepared-*.pt"))) == 1  # older versions removed
