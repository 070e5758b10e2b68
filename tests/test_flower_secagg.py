"""Secure aggregation on Flower (``flower.secagg``): the vector SecAgg+ sums, its weights, the sites' range check,
config errors, and the whole protocol in one process (Flower's workflow and mod around fedgin's bridge). The real
run through a SuperLink and two SuperNodes is in test_flower.py."""
import copy
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("flwr")

from flwr.app import ConfigRecord, Context, Error, Message, MessageType, MetricRecord, RecordDict  # noqa: E402
from flwr.common import parameters_to_ndarrays  # noqa: E402
from flwr.common.constant import ErrorCode  # noqa: E402
from flwr.compat.common.recorddict_compat import recorddict_to_fitres  # noqa: E402
from flwr.supercore.task_identity import TaskIdentity  # noqa: E402

from fedgin.config import dump, load_config  # noqa: E402
from fedgin.fl.aggregate import fedavg  # noqa: E402
from fedgin.fl.flower import server_app  # noqa: E402
from fedgin.fl.flower.records import to_record, to_weights  # noqa: E402
from fedgin.fl.flower.secagg import check_range, max_weight, pack, secagg_mod, to_fitres, unpack  # noqa: E402
from fedgin.fl.rundir import RunDir  # noqa: E402

SITES = "data.sites=[{name: ct-a, modality: ct, cases: 3, seed: 1}, {name: mri-a, modality: mri-t1, cases: 2, seed: 2}]"
STEP = 2 * 8.0 / 2**22  # one quantization level of the default ranges (2 * clipping_range / quantization_range)


def cfg_with(*over):
    return load_config(overrides=[SITES, "engine=flower", "model.channels=[4, 8]", "model.strides=[2]",
                                  "flower.secagg.enabled=true", *over])


def model(seed, scale=1.0):
    g = np.random.default_rng(seed)
    return {"w": (scale * g.uniform(-1, 1, size=(3, 4))).astype(np.float32), "steps": np.array(seed, np.int64),
            "b": g.uniform(-1, 1, size=(2,)).astype(np.float32)}


def test_the_vector_holds_the_float_entries_in_order_and_integers_stay_global():
    new, previous = model(1), model(0)
    vector = pack(new)
    assert [v.shape for v in vector] == [(3, 4), (2,)] and all(v.dtype == np.float64 for v in vector)
    out = unpack([v + 0.5 for v in vector], previous)
    assert list(out) == ["w", "steps", "b"]
    assert out["w"].dtype == np.float32 and np.array_equal(out["w"], new["w"] + np.float32(0.5))
    assert np.array_equal(out["b"], new["b"] + np.float32(0.5))
    assert out["steps"] == previous["steps"] and out["steps"].dtype == np.int64
    with pytest.raises(ValueError, match="returned 1 arrays for the model's 2 float entries"):
        unpack(vector[:1], previous)
    with pytest.raises(ValueError, match=r"shape \(12,\) for w"):
        unpack([vector[0].ravel(), vector[1]], previous)


def test_max_weight_gives_the_largest_site_the_ratio_1():
    assert max_weight(cfg_with(), [16, 8]) == 16.0
    assert max_weight(cfg_with("fed.weighting=uniform"), [16, 8]) == 1.0


def test_a_site_refuses_a_model_secagg_would_clip():
    check_range(model(0, scale=8.0), 8.0, "ct-a")  # within: fine
    big = model(0)
    big["w"][1, 2] = -9.5
    with pytest.raises(ValueError, match=r"site ct-a: w holds -9\.5, outside \+-flower\.secagg\.clipping_range = 8,"):
        check_range(big, 8.0, "ct-a")
    big["w"][1, 2] = np.nan
    with pytest.raises(ValueError, match="w holds nan"):
        check_range(big, 8.0, "ct-a")
    reply = RecordDict({"arrays": to_record(model(0, scale=20.0)), "metrics": MetricRecord({"num-examples": 5})})
    with pytest.raises(ValueError, match=r"site mri-a: w holds .*flower\.secagg\.clipping_range = 8"):
        to_fitres(reply, cfg_with(), "mri-a")
    assert to_fitres(reply, cfg_with("flower.secagg.clipping_range=20"), "mri-a")  # a wider range takes it


@pytest.mark.parametrize("weighting, examples", [("samples", 5), ("uniform", 1)])
def test_the_fitres_carries_the_vector_the_weight_and_the_metrics(weighting, examples):
    w = model(3)
    reply = RecordDict({"arrays": to_record(w), "metrics": MetricRecord({"num-examples": 5, "loss": 0.25})})
    fitres = recorddict_to_fitres(to_fitres(reply, cfg_with(f"fed.weighting={weighting}"), "ct-a"), keep_input=True)
    assert fitres.num_examples == examples and fitres.metrics == {"loss": 0.25}
    assert all(np.array_equal(a, b) for a, b in zip(parameters_to_ndarrays(fitres.parameters), pack(w), strict=True))


@pytest.mark.parametrize("over, match", [
    (["engine=builtin"], "flower.secagg.enabled: secure aggregation runs on engine: flower only"),
    (["fed.fraction=0.5"], r"flower.secagg.enabled: SecAgg\+ needs >= 2 sampled sites a round.* allow 1"),
    (["flower.min_available_clients=1"], r"needs >= 2 sampled sites"),
    (["fed.norm=local"], r"fed.norm: 'local' keeps normalization layers per site"),
    (["fed.norm=dsbn"], r"fed.norm: 'dsbn' keeps normalization layers per site or modality"),
    (["flower.dp.clip=1.0", "model.norm=instance", "fed.weighting=uniform"],
     "flower.dp.clip: differential privacy and flower.secagg cannot be combined"),
    (["flower.secagg.num_shares=2"], r"flower.secagg.num_shares: must be an integer >= 3 .* got 2"),
    (["flower.secagg.num_shares=3.5"], "got 3.5"), (["flower.secagg.num_shares=0"], "num_shares"),
    (["flower.secagg.reconstruction_threshold=3"], r"reconstruction_threshold: must be an integer within 2\.\.2"),
    (["flower.secagg.reconstruction_threshold=0"], "reconstruction_threshold"),
    ([SITES.replace("]", ", {name: c, modality: ct, cases: 2}]"), "flower.secagg.num_shares=3",
      "flower.secagg.reconstruction_threshold=3"], "reconstruction_threshold: must be below flower.secagg.num_shares"),
    (["flower.secagg.clipping_range=0"], "clipping_range: must be > 0"),
    (["flower.secagg.quantization_range=2147483648"], r"quantization_range: must be within 2\.\.2147483647"),
])
def test_secagg_config_errors(over, match):
    with pytest.raises(ValueError, match=match):
        cfg_with(*over)


def test_secagg_config_accepts_flower_counts_and_fractions():
    cfg = cfg_with("flower.secagg.num_shares=1.0", "flower.secagg.reconstruction_threshold=0.5",
                   "fed.weighting=uniform", "fed.prox_mu=0.1")
    assert cfg.flower.secagg.num_shares == 1.0
    tests = "data.test=[{modality: ct}, {modality: mri-t1}]"  # FedBN needs a site of each test modality
    assert not load_config(overrides=[SITES, tests, "fed.norm=local"]).flower.secagg.enabled  # off by default


@pytest.fixture
def in_a_run(monkeypatch):
    """Messages are made inside a run (Flower reads the run id of the process)."""
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 1)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


class Loopback:
    """A grid whose nodes are ClientApps in this process: fedgin's ``secagg_mod`` around a train handler, each with
    its own context (the mod keeps its protocol state there). An exception becomes Flower's error reply."""

    def __init__(self, handlers: dict, cfg) -> None:
        self.handlers = handlers
        self.contexts = {n: Context(run_id=1, node_id=n, node_config={"site": site}, state=RecordDict(),
                                    run_config={"fedgin-config": dump(cfg)})
                         for n, (site, _) in handlers.items()}
        self.stages = 0

    def send_and_receive(self, messages, timeout=None):
        self.stages += 1
        replies = []
        for msg in messages:
            node, msg = msg.metadata.dst_node_id, copy.deepcopy(msg)  # as sent: the node's own copy
            try:
                replies.append(secagg_mod(msg, self.contexts[node], self.handlers[node][1]))
            except Exception as err:  # as a SuperNode reports a ClientApp's exception
                replies.append(Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, f"{err.__class__}:<'{err}'>"),
                                       reply_to=msg))
        return replies


def site_training(trained: dict, seen: list, examples: int, steps: int = 3):
    """A train handler that notes what it got and returns ``trained`` (its counters advanced by ``steps``)."""
    def handler(msg: Message, context: Context) -> Message:
        seen.append((to_weights(msg.content["arrays"]), dict(msg.content["config"])))
        out = dict(trained, steps=seen[-1][0]["steps"] + steps)
        metrics = MetricRecord({"num-examples": examples, "loss": float(examples)})
        return Message(RecordDict({"arrays": to_record(out), "metrics": metrics,
                                   "fedgin": ConfigRecord({"local-keys": ""})}), reply_to=msg)
    return handler


def secure_run(tmp_path, *over, mri_scale=1.0):
    cfg = cfg_with(*over)
    sites = [server_app.SiteNode("ct-a", "ct", 0, 11, train_examples=8),
             server_app.SiteNode("mri-a", "mri-t1", 1, 22, train_examples=4)]
    run = server_app.ServerRun(cfg, RunDir(tmp_path / "run"), sites, model(0))
    strategy = server_app.make_strategy(cfg, run)
    seen = {"ct-a": [], "mri-a": []}
    trained = {"ct-a": model(1), "mri-a": model(2, scale=mri_scale)}
    grid = Loopback({11: ("ct-a", site_training(trained["ct-a"], seen["ct-a"], 8)),
                     22: ("mri-a", site_training(trained["mri-a"], seen["mri-a"], 4))}, cfg)
    return run, strategy, grid, seen, trained


@pytest.mark.parametrize("weighting", ["samples", "uniform"])
def test_rounds_through_secagg_give_fedavg_within_the_quantization_step(tmp_path, in_a_run, weighting):
    run, strategy, grid, seen, trained = secure_run(tmp_path, f"fed.weighting={weighting}", "fed.prox_mu=0.01")
    n = {"samples": (8, 4), "uniform": (1, 1)}[weighting]
    # each site's rounding is off by < 1 level of its weight-scaled value: |error| < 2 * STEP / (sum of the weight
    # ratios: 1 + 4/8 by samples, 1 + 1 uniform)
    bound = 2 * STEP / (1.5 if weighting == "samples" else 2.0)
    start = model(0)
    for server_round in (1, 2):  # the second round restarts the protocol from the sites' saved state
        assert list(strategy.configure_train(server_round, to_record(start), ConfigRecord(), grid)) == []  # ran
        assert grid.stages == 4 * server_round  # setup, share keys, collect masked vectors, unmask
        arrays, metrics = strategy.aggregate_train(server_round, [])
        for site in ("ct-a", "mri-a"):  # each site trained once, on the global model and fedgin's config
            got, config = seen[site][-1]
            assert len(seen[site]) == server_round and list(got) == ["w", "steps", "b"]
            assert all(np.array_equal(got[k], start[k]) for k in got)
            assert config["server-round"] == server_round and config["proximal-mu"] == 0.01
            assert "fedgin-keys" not in config
        expected = fedavg([(trained["ct-a"], n[0]), (trained["mri-a"], n[1])], start)
        got = to_weights(arrays)
        for key in ("w", "b"):
            err = np.abs(got[key].astype(np.float64) - expected[key]).max()
            assert 0 < err < bound + 1e-7, (key, err)  # 1e-7: float32 rounding of the result
        assert got["steps"] == model(0)["steps"]  # integer entries keep the global value
        assert dict(metrics) == {"train/ct-a/loss": 8.0, "train/mri-a/loss": 4.0}
        assert list(run.row)[1:] == ["train/ct-a/loss", "train/mri-a/loss"]  # site order, as the plain round
        start = got


def test_a_site_beyond_the_clipping_range_stops_the_round_and_names_itself(tmp_path, in_a_run):
    run, strategy, grid, _, _ = secure_run(tmp_path, mri_scale=20.0)
    strategy.configure_train(1, to_record(model(0)), ConfigRecord(), grid)
    failed = (r"round 1: 0 of 2 sites replied, 2 needed \(flower.min_fit_clients\); site ct-a \(SuperNode 11\): "
              r"SecAgg\+ stopped before this site's update was unmasked.*; site mri-a \(SuperNode 22\): ValueError: "
              r"site mri-a: w holds .* outside \+-flower.secagg.clipping_range = 8")
    with pytest.raises(server_app.RoundFailed, match=failed):
        strategy.aggregate_train(1, [])
    assert not run.rd.state.exists()


def test_a_site_without_reply_is_named_as_in_the_plain_round(tmp_path, in_a_run):
    run, strategy, grid, _, _ = secure_run(tmp_path, "flower.round_timeout=5")
    silent = grid.send_and_receive
    grid.send_and_receive = lambda messages, timeout=None: [
        r for r in silent(messages, timeout) if r.metadata.src_node_id != 22 or grid.stages < 3]
    strategy.configure_train(1, to_record(model(0)), ConfigRecord(), grid)
    with pytest.raises(server_app.RoundFailed, match=r"site mri-a \(SuperNode 22\): no training reply within "
                                                    r"flower.round_timeout = 5 s"):
        strategy.aggregate_train(1, [])


def test_the_handshake_reports_training_examples_under_secagg(tmp_path, in_a_run):
    from fedgin.fl.flower import client_app

    cfg = cfg_with(f"data.cache_dir={tmp_path}", "data.size=32", "data.depth=8")
    hello = Message(RecordDict({"config": ConfigRecord({"fedgin": "x"})}), dst_node_id=1,
                    message_type=MessageType.QUERY)
    replies = []
    for node, site in ((7, "mri-a"), (5, "ct-a")):
        context = Context(run_id=1, node_id=node, node_config={"site": site}, state=RecordDict(),
                          run_config={"fedgin-config": dump(cfg)})
        info = client_app.query(hello, context).content["site"]
        assert info["train-examples"] == client_app.make_client(context, ConfigRecord()).num_samples > 0
        replies.append(SimpleNamespace(metadata=SimpleNamespace(src_node_id=node), content=RecordDict({"site": info}),
                                       has_error=lambda: False))
    grid = SimpleNamespace(get_node_ids=lambda: [7, 5], send_and_receive=lambda messages, timeout=None: replies)
    sites = server_app.join(grid, cfg)
    assert [(s.name, s.train_examples) for s in sites] == [("ct-a", 16), ("mri-a", 8)]  # depth 8: 8 slices a case
