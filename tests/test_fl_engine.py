"""The built-in engine on tiny phantom data: outputs, the client boundary, resume, divergence, FedBN."""
import json
import os
import pickle
import stat

import numpy as np
import pytest
import torch

from fedgin.config import load_config
from fedgin.environment import git_state
from fedgin.fl.client import Client, FitResult, get_weights
from fedgin.fl.engine import build_federation, run
from fedgin.train import local
from fedgin.train.model import make_model

TINY = [
    "data.size=32", "data.depth=8", "model.channels=[4, 8]", "model.strides=[2]", "train.batch_size=8",
    "data.sites=[{name: ct-a, modality: ct, cases: 3, seed: 1}, {name: mri-a, modality: mri-t1, cases: 2, seed: 2}]",
    "data.test=[{modality: ct, cases: 1, seed: 3}, {modality: mri-t1, cases: 1, seed: 4}]",
    "eval.overlays=1",
]


STATE_KEYS = {"round", "global", "best", "best_round", "best_score", "best_local", "history", "sampler", "torch_rng",
              "clients", "sites_left"}  # fedgin.fl.ledger's one schema (tests/test_flower_units.py asserts it too)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("phantom")


def tiny(cache, *over):
    return load_config(overrides=[*TINY, f"data.cache_dir={cache}", *over])


def test_run_writes_the_run_directory(cache, tmp_path):
    cfg = tiny(cache, "fed.rounds=2", "aug.method=gin")
    result = run(cfg, tmp_path / "run", progress=False)
    d = result.run_dir
    umask = os.umask(0)
    os.umask(umask)
    for name in ("config.yaml", "metrics.jsonl", "metrics.csv", "state.pt", "best_model.pt", "table.md",
                 "test_metrics.json", "checkpoints/global_round_0001.pt", "checkpoints/global_round_0002.pt",
                 "plots/val_dice.png", "plots/test_dice_per_organ.png", "plots/overlays.png"):
        assert (d / name).is_file(), name
        assert stat.S_IMODE((d / name).stat().st_mode) == 0o666 & ~umask, name  # readable as any new file
    assert not list(d.rglob(".*"))  # no temporary file left
    rows = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2]
    assert {"val/ct/dice/mean", "val/mri-t1/hd95/liver", "train/ct-a/gin_share", "val/score"} <= set(rows[0])
    assert len((d / "metrics.csv").read_text().splitlines()) == 3
    assert set(result.test) == {"ct", "mri-t1"} and 0 <= result.test["ct"]["dice/mean"] <= 1
    assert "| liver |" in (d / "table.md").read_text()
    with pytest.raises(ValueError, match="already holds a run"):
        run(cfg, d, progress=False)


def test_only_weights_and_scalars_leave_a_client(cache):
    cfg = tiny(cache, "aug.method=gin", "train.local_steps=1")
    fed = build_federation(cfg, torch.device("cpu"))
    client = fed.sites[0]
    model = make_model(cfg)
    result = client.fit(get_weights(model), 0)
    assert isinstance(result, FitResult) and set(vars(result)) == {"weights", "num_samples", "metrics"}
    reference = model.state_dict()
    assert list(result.weights) == list(reference)
    for key, value in result.weights.items():
        assert isinstance(value, np.ndarray) and value.shape == tuple(reference[key].shape), key
        assert not np.shares_memory(value, client.images.numpy()), key
    assert type(result.num_samples) is int and result.num_samples == len(client.images)
    assert all(type(k) is str and type(v) is float for k, v in result.metrics.items())
    assert set(result.metrics) == {"loss", "step_time", "gin_share", "steps"}
    sent = pickle.loads(pickle.dumps(result))  # what a transport carries: nothing beyond those fields
    assert set(vars(sent)) == set(vars(result)) and sent.metrics == result.metrics
    ev = client.evaluate(result.weights)
    assert ev.num_samples == len(client.val) and all(type(v) is float for v in ev.metrics.values())


def test_resume_continues_to_the_same_result(cache, tmp_path, monkeypatch):
    cfg = tiny(cache, "fed.rounds=3", "aug.method=gin", "fed.fraction=0.5", "eval.hd95_every_round=false")
    straight = run(cfg, tmp_path / "straight", progress=False)

    fit = Client.fit

    def crash_in_round_2(self, weights, round_idx=0, progress=False):
        if round_idx == 1:
            raise KeyboardInterrupt
        return fit(self, weights, round_idx, progress)

    monkeypatch.setattr(Client, "fit", crash_in_round_2)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, tmp_path / "resumed", progress=False)
    monkeypatch.setattr(Client, "fit", fit)
    assert len((tmp_path / "resumed/metrics.jsonl").read_text().splitlines()) == 1
    resumed = run(cfg, tmp_path / "resumed", resume=True, progress=False)
    a, b = (torch.load(r.run_dir / "state.pt", weights_only=True) for r in (straight, resumed))
    for key in a["global"]:
        assert torch.equal(a["global"][key], b["global"][key]), key
    assert [r["round"] for r in resumed.history] == [1, 2, 3]
    drop = ("time_s", "step_time", "gin_share")
    assert [{k: v for k, v in r.items() if not k.endswith(drop)} for r in resumed.history] == \
           [{k: v for k, v in r.items() if not k.endswith(drop)} for r in straight.history]
    assert resumed.test == straight.test
    starts = [json.loads(line) for line in (tmp_path / "resumed/environment.jsonl").read_text().splitlines()]
    assert [s["first_round"] for s in starts] == [1, 2]  # the start, then the resume after round 1
    assert all(s["device_type"] == "cpu" and s["torch"] == torch.__version__ and s["started"] for s in starts)
    assert starts[0]["git"] == git_state()  # this checkout's commit
    assert git_state(tmp_path) == {"commit": None, "dirty": None}  # not a checkout (an installed package)
    with pytest.raises(ValueError, match="config differs"):
        run(tiny(cache, "fed.rounds=4"), tmp_path / "resumed", resume=True, progress=False)


def test_diverging_loss_stops_and_keeps_the_last_good_checkpoint(cache, tmp_path, monkeypatch):
    cfg = tiny(cache, "fed.rounds=3")
    make_loss = local.make_loss
    calls = {"n": 0}

    def nan_in_round_2(name):
        calls["n"] += 1
        loss = make_loss(name)
        return (lambda logits, y: loss(logits, y) * float("nan")) if calls["n"] > 2 else loss

    monkeypatch.setattr(local, "make_loss", nan_in_round_2)
    with pytest.raises(local.TrainingDiverged, match=r"diverged \(nan\).*state.pt \(after round 1\)"):
        run(cfg, tmp_path / "run", progress=False)
    state = torch.load(tmp_path / "run/state.pt", weights_only=True)
    assert state["round"] == 1 and (tmp_path / "run/checkpoints/global_round_0001.pt").is_file()
    assert set(state) == STATE_KEYS and state["sites_left"] == {}  # the Flower ServerApp's schema too


def test_fedbn_keeps_normalization_local_and_centralized_pools(cache, tmp_path):
    cfg = tiny(cache, "fed.norm=local", "fed.rounds=1")
    result = run(cfg, tmp_path / "fedbn", progress=False)
    state = torch.load(result.run_dir / "state.pt", weights_only=True)
    locals_ = [state["clients"][n]["local_state"] for n in ("ct-a", "mri-a")]
    key = next(k for k in locals_[0] if k.endswith("running_mean"))
    assert not torch.equal(locals_[0][key], locals_[1][key])
    assert torch.equal(state["global"][key], torch.zeros_like(state["global"][key]))  # never averaged

    central = tiny(cache, "fed.mode=centralized")
    fed = build_federation(central, torch.device("cpu"))
    assert [c.name for c in fed.trainers] == ["pooled"]
    assert fed.trainers[0].num_samples == 8 * (2 + 1)  # 8 slices of each training case: ct 3 - 1, mri 2 - 1
    assert all(s.num_samples == 0 for s in fed.sites)
    for fraction, steps in ((1.0, 3 * 2), (0.5, 3)):  # the steps of the sites a federated round samples
        pooled = build_federation(tiny(cache, "fed.mode=centralized", "train.local_steps=3",
                                       f"fed.fraction={fraction}"), torch.device("cpu")).trainers[0]
        fit = pooled.fit(get_weights(pooled.model))
        assert fit.metrics["steps"] == steps


def test_fedbn_tests_and_saves_each_sites_layers_of_the_best_round(cache, tmp_path, monkeypatch):
    from fedgin.fl import engine, ledger

    fitted = {}  # (site, round) -> its normalization layers after that round's fit
    fit = Client.fit

    def recording_fit(self, weights, round_idx=0, progress=False):
        out = fit(self, weights, round_idx, progress)
        fitted[self.name, round_idx] = {k: v.copy() for k, v in self.local_state.items()}
        return out

    scores = iter([0.9, 0.5])  # round 1 validates best, round 2 worse
    validate = engine.validate_sites
    monkeypatch.setattr(Client, "fit", recording_fit)
    monkeypatch.setattr(engine, "validate_sites", lambda *a: {**validate(*a), "val/score": next(scores)})
    tested = []
    evaluate = ledger.evaluate_tests
    monkeypatch.setattr(ledger, "evaluate_tests", lambda cfg, sites, tests, w, dev: tested.append(
        {s.name: dict(s.local_state) for s in sites}) or evaluate(cfg, sites, tests, w, dev))
    result = run(tiny(cache, "fed.norm=local", "fed.rounds=2", "eval.overlays=0"), tmp_path / "run", progress=False)
    assert result.best_round == 1
    best = torch.load(result.run_dir / "best_model.pt", weights_only=True)
    for site in ("ct-a", "mri-a"):
        first, last = fitted[site, 0], fitted[site, 1]
        key = next(k for k in first if k.endswith("running_mean"))
        assert not np.array_equal(first[key], last[key])
        assert all(np.array_equal(tested[0][site][k], v) for k, v in first.items())  # tested on round 1's layers
        saved = torch.load(result.run_dir / f"best_model_{site}.pt", weights_only=True)
        assert all(np.array_equal(saved[k].numpy(), v) for k, v in first.items())
        assert all(torch.equal(saved[k], v) for k, v in best.items() if k not in first)


def test_fedprox_under_fedbn_pulls_only_the_shared_weights(cache, monkeypatch):
    site = build_federation(tiny(cache, "fed.norm=local", "fed.prox_mu=0.1"), torch.device("cpu")).sites[0]
    anchors = []
    monkeypatch.setattr("fedgin.fl.client.train_local", lambda *a, anchor, **kw: anchors.append(anchor) or {})
    global_weights = get_weights(site.model)
    site.fit(global_weights)
    params = {n for n, _ in site.model.named_parameters()}
    assert site.local_keys & params and set(anchors[0]) == set(global_weights) - site.local_keys
    assert params - site.local_keys <= set(anchors[0])


def test_bad_site_data_names_the_problem(cache, tmp_path):
    cfg = tiny(cache, f"data.sites=[{{name: x, modality: ct, data_dir: {tmp_path / 'nothing'}}}]")
    with pytest.raises(FileNotFoundError, match="nothing"):
        run(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()  # nothing written: the fixed config can run into the same place


def test_3d_volumes(cache, tmp_path):
    cfg = tiny(cache, "data.dims=3d", "fed.rounds=1", "aug.method=gin", "eval.overlays=0")
    result = run(cfg, tmp_path / "run3d", progress=False)
    assert result.history[0]["train/ct-a/steps"] == 1  # 2 training volumes, batch 8
    assert 0 <= result.test["mri-t1"]["dice/mean"] <= 1
