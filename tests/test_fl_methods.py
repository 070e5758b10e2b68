"""The comparison methods inside the trainer: one tiny round per method through the Client, DSBN in a real
federated round, config errors, and ``fedgin experiment --methods``."""
import argparse
import csv
import math
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fedgin.augment import AUGMENTATIONS, dsbn_state_keys, kl_consistency
from fedgin.cli import build_parser
from fedgin.commands import experiment
from fedgin.commands.train import config_from_args
from fedgin.config import MODALITIES, dump, load_config, recipe
from fedgin.fl import engine
from fedgin.fl.client import Client, get_weights
from fedgin.fl.experiment import METHODS, arm_config, augmentation_cost, method_config, method_names
from fedgin.train.data import Case
from fedgin.train.model import ReconstructionBranch, make_model

TINY = ["data.size=16", "model.channels=[4, 8]", "model.strides=[2]", "train.batch_size=4", "train.local_steps=2"]
PHANTOM = [
    "data.size=32", "data.depth=8", "model.channels=[4, 8]", "model.strides=[2]", "train.batch_size=8",
    "data.sites=[{name: ct-a, modality: ct, cases: 3, seed: 1}, {name: mri-a, modality: mri-t1, cases: 2, seed: 2}]",
    "data.test=[{modality: ct, cases: 1, seed: 3}, {modality: mri-t1, cases: 1, seed: 4}]",
    "eval.overlays=0", "eval.hd95_every_round=false", "eval.keep_round_checkpoints=false",
]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("phantom")


def cases(n=2, size=16, depth=4, seed=0):
    """Bright squares (organ 1) and a dimmer one (organ 2) on a dark background, [1, X, Y, Z] per case."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        y = torch.zeros(1, size, size, depth, dtype=torch.uint8)
        r, c = torch.randint(0, size - 6, (2,), generator=g).tolist()
        y[0, r:r + 5, c:c + 5] = 1
        y[0, 1:4, 1:4] = 2
        x = y.float() * 0.4 + 0.1 * torch.rand(y.shape, generator=g)
        out.append(Case(f"c{i}", x, y))
    return out


def method_cfg(method, *over):
    return method_config(load_config(overrides=[*TINY, *over]), method, "federated")


def fit_once(cfg, modality="ct", seed=3):
    client = Client("site", modality, cases(), cases(1, seed=9), cfg, seed=seed)
    torch.manual_seed(0)
    return client, client.fit(get_weights(make_model(cfg)))


def test_methods_cover_every_augmentation_and_dsbn():
    assert set(METHODS) == set(AUGMENTATIONS) | {"dsbn"} and METHODS[0] == "none"
    assert method_names(["gin", "all", "gin"]) == ["gin", *(m for m in METHODS if m != "gin")]
    with pytest.raises(ValueError, match="unknown method 'gn'"):
        method_names(["gn"])


@pytest.mark.parametrize("method", METHODS)
def test_each_method_trains_a_round_through_the_client_deterministically(method):
    cfg = method_cfg(method)
    client, first = fit_once(cfg)
    _, again = fit_once(cfg)
    _, other = fit_once(cfg, seed=4)
    extra = {"domain"} if method == "dsbn" else set()
    assert set(first.metrics) == {"loss", "step_time", "gin_share", "steps"} | extra
    assert all(type(v) is float for v in first.metrics.values())
    assert math.isfinite(first.metrics["loss"]) and first.metrics["loss"] > 0 and first.metrics["steps"] == 2
    assert (first.metrics["gin_share"] > 0) == (method not in ("none", "dsbn"))
    assert first.num_samples == 2 * 4  # two cases of 4 slices
    assert list(first.weights) == list(make_model(cfg).state_dict())
    for key in first.weights:
        np.testing.assert_array_equal(first.weights[key], again.weights[key], err_msg=key)
    assert any(not np.array_equal(first.weights[k], other.weights[k]) for k in first.weights)
    ev = client.evaluate(first.weights, hd95=False)
    assert ev.num_samples == 1 and 0 <= ev.metrics["dice/mean"] <= 1


def test_recipes_follow_the_papers():
    n_classes = 5  # background + the 4 default organs
    ipa = recipe(method_cfg("gin_ipa"))
    assert ipa.n_forward == 3 and ipa.reverse_kl and ipa.consistency_weight == pytest.approx(10 / n_classes)
    gin3 = recipe(method_cfg("gin", "aug.method=gin", "aug.views=3"))  # the original GIN without IPA: same loss
    assert gin3.n_forward == 3 and gin3.reverse_kl and gin3.consistency_weight == pytest.approx(10 / n_classes)
    rc = recipe(method_cfg("randconv"))
    assert (rc.n_forward, rc.clean_view, rc.reverse_kl, rc.consistency_weight) == (3, True, False, 10.0)
    x = torch.rand(2, 1, 16, 16)
    views = rc.views(x, torch.zeros(2, 1, 16, 16, dtype=torch.long), torch.Generator().manual_seed(0))
    assert len(views) == 3 and views[0] is x and not torch.equal(views[1], views[2])
    assert recipe(method_cfg("raffesdg")).reconstruction_weight == 1.0
    assert recipe(method_cfg("pro_randconv")).consistency_weight == 0  # one view: no consistency term
    semantic = recipe(method_cfg("semantic_randconv")).augmentation
    assert semantic.needs_label and semantic.n_classes == n_classes


def test_raffesdg_trains_its_reconstruction_head():
    cfg = method_cfg("raffesdg")
    start = get_weights(make_model(cfg))
    head = [k for k in start if k.startswith("reconstruction.")]
    assert head
    torch.manual_seed(0)
    client = Client("site", "ct", cases(), [], cfg, seed=0)
    result = client.fit(start)
    assert all(not np.array_equal(start[k], result.weights[k]) for k in head if k.endswith("weight"))


@pytest.mark.parametrize("method", ["fmaug", "raffesdg"])
def test_validation_test_and_overlays_read_the_methods_eval_input(method, cache, tmp_path, monkeypatch):
    """A network trained only on high-passed images is evaluated on high-passed images: every evaluation (site
    validation, test sets, overlay plots) goes through the method's ``eval_input``; training never does."""
    cls = AUGMENTATIONS[method]
    seen = []
    eval_input = cls.eval_input

    def spy(self, x):
        seen.append(tuple(x.shape))
        return eval_input(self, x)

    monkeypatch.setattr(cls, "eval_input", spy)
    cfg = method_config(load_config(overrides=[*PHANTOM, f"data.cache_dir={cache}", "fed.rounds=1",
                                               "eval.overlays=1"]), method, "federated")
    engine.run(cfg, tmp_path / "run", progress=False)
    depth, size = 8, 32
    val_cases = sum(len(s.val) for s in engine.build_federation(cfg, torch.device("cpu")).sites)
    # one batch a case (2D: the case's slices): validation cases, the two test cases, one overlay case a test set
    assert seen == [(depth, 1, size, size)] * (val_cases + 2 + 2)
    seen.clear()
    fit_once(method_cfg(method))
    assert seen == []


def test_reconstruction_branch_predicts_at_the_image_size():
    torch.manual_seed(0)
    model = make_model(method_cfg("raffesdg")).train()
    x = torch.rand(3, 1, 32, 32)
    logits = model(x)
    pred = model.reconstruction.reconstruct((32, 32), 2)
    assert logits.shape[2:] == pred.shape[2:] and pred.shape[:2] == (2, 1) and pred.abs().max() < 1
    with pytest.raises(RuntimeError, match="no features kept"):
        model.reconstruction.reconstruct((32, 32), 2)  # each forward's features are used once
    # a network that resamples after its final convolution: the prediction is resized to the image
    class Upsampling(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 2, 1), nn.Upsample(scale_factor=2))

        def forward(self, x):
            return self.layers(x)

    net = Upsampling().train()
    branch = ReconstructionBranch.attach(net, 1)
    net(torch.rand(2, 1, 8, 8))
    assert branch.reconstruct((16, 16), 2).shape == (2, 1, 16, 16)


def test_dsbn_never_averages_domain_statistics_across_modalities(cache, tmp_path, monkeypatch):
    cfg = load_config(overrides=[*PHANTOM, f"data.cache_dir={cache}", "fed.norm=dsbn", "fed.rounds=1"])
    fits = {}
    fit = Client.fit

    def record(self, weights, round_idx=0, progress=False):
        fits[self.name] = (weights, fit(self, weights, round_idx, progress))
        return fits[self.name][1]

    monkeypatch.setattr(Client, "fit", record)
    result = engine.run(cfg, tmp_path / "run", progress=False)
    final = torch.load(result.run_dir / "state.pt", weights_only=True)["global"]
    keys = dsbn_state_keys(make_model(cfg))
    sent = fits["ct-a"][0]
    ct, mri = fits["ct-a"][1], fits["mri-a"][1]
    assert (ct.metrics["domain"], mri.metrics["domain"]) == (MODALITIES.index("ct"), MODALITIES.index("mri-t1"))
    by_domain = {MODALITIES.index("ct"): ct.weights, MODALITIES.index("mri-t1"): mri.weights}
    for key, domain in keys.items():
        want = by_domain.get(domain, sent)  # one site per modality: its own values; mri-t2 (no site): untouched
        np.testing.assert_array_equal(final[key].numpy(), want[key], err_msg=key)
    stat = next(k for k, d in keys.items() if d == 0 and k.endswith("running_mean"))
    assert not np.allclose(ct.weights[stat], mri.weights[stat.replace(".norms.0.", ".norms.1.")])
    shared = next(k for k in final if k not in keys and k.endswith("conv.weight"))
    n_ct, n_mri = ct.num_samples, mri.num_samples
    mean = (ct.weights[shared] * n_ct + mri.weights[shared] * n_mri) / (n_ct + n_mri)
    np.testing.assert_allclose(final[shared].numpy(), mean, rtol=1e-5, atol=1e-7)
    assert 0 <= result.test["mri-t1"]["dice/mean"] <= 1


@pytest.mark.parametrize("over, needle", [
    (["aug.method=gn"], "aug.method: 'gn' is not one of"),
    (["aug.method=randconv", "aug.options={kernel_size: 3}"], "aug.options.kernel_size: unknown option of randconv"),
    (["aug.method=randconv", "aug.options={n_views: 3}"], "aug.options.n_views: is set by aug.views"),
    (["aug.method=gin_ipa", "aug.options={n_layers: 3}"], "aug.options.n_layers: is set by aug.gin.n_layers"),
    (["aug.options={sigma: 1}"], "aug.options.sigma: aug.method: none takes no options"),
    (["aug.method=randconv", "aug.options={kernel_sizes: [2]}"], "odd positive integers"),
    (["aug.method=gin_ipa", "aug.views=2"], "gin_ipa always makes 3 views"),
    (["aug.method=none", "aug.views=2"], "aug.views"),
    (["fed.norm=dsbn", "model.norm=instance"], "fed.norm: dsbn needs batch normalization"),
    (["fed.norm=dsbn", "data.sites=[{name: a, modality: ct}]"], "data.test[1]: fed.norm: dsbn has no normalization"),
    (["fed.norm=local", "data.sites=[{name: a, modality: ct}]"], "data.test[1]: fed.norm: local has no normalization"),
    (["fed.norm=local", "fed.mode=centralized"], "fed.norm: local (FedBN) keeps normalization layers at each site"),
])
def test_bad_method_config_names_the_key(over, needle):
    with pytest.raises(ValueError) as err:
        load_config(overrides=over)
    assert needle in str(err.value)


def test_arms_keep_fedbn_at_the_sites_and_pool_one_normalization():
    fedbn = load_config(overrides=[*TINY, "fed.norm=local"])
    assert [arm_config(fedbn, a).fed.norm for a in ("fedgin", "central-gin", "fed-gin", "central-gin")] == \
        ["local", "average", "local", "average"]
    assert method_config(fedbn, "randconv", "centralized").fed.norm == "average"
    dsbn = load_config(overrides=[*TINY, "fed.norm=dsbn"])
    with pytest.raises(ValueError, match="arm local-ct-a: data.test\\[1\\]: fed.norm: dsbn has no normalization"):
        arm_config(dsbn, "local-ct-a")  # the site alone has no MRI statistics for the MRI test set


def test_method_options_reach_the_augmentation():
    cfg = load_config(overrides=["aug.method=randconv", "aug.options={kernel_sizes: [1, 3]}", "aug.views=1"])
    plan = recipe(cfg)
    assert plan.augmentation.kernel_sizes == (1, 3) and plan.n_forward == 2


def test_experiment_methods_writes_markdown_csv_and_png(cache, tmp_path, capsys, interrupted_at):
    parser = argparse.ArgumentParser()
    experiment.add_arguments(parser)
    out = tmp_path / "cmp"
    sets = [a for item in [*PHANTOM, f"data.cache_dir={cache}", "train.local_steps=1"] for a in ("--set", item)]
    common = ["--rounds", "1", "--quiet", "--out", str(out), *sets]
    argv = ["--methods", "randconv", "dsbn", *common]
    assert experiment.run(parser.parse_args(["--methods", "dsbn", *common])) == 0  # the dsbn arms alone
    kept = (out / "fed-dsbn" / "test_metrics.json").read_text()
    with pytest.raises(ValueError, match="the config differs"):  # a finished arm's config, checked before training
        experiment.run(parser.parse_args([*argv, "--resume", "--rounds", "2"]))
    assert not (out / "fed-randconv").exists()
    with interrupted_at("central-randconv"):  # the finished dsbn arms are read, then fed-randconv trains
        experiment.run(parser.parse_args([*argv, "--resume"]))
    partial = (out / "comparison.md").read_text()  # the finished arms' table survives the interruption
    assert "**Partial: 3 of 4 arms finished**; still to run: central-randconv" in partial
    assert "| randconv | federated |" in partial and "| dsbn | centralized |" in partial
    assert "| randconv | centralized |" not in partial
    assert len(list(csv.DictReader((out / "comparison.csv").open()))) == 3 * 2
    assert experiment.run(parser.parse_args([*argv, "--resume"])) == 0
    assert (out / "fed-dsbn" / "test_metrics.json").read_text() == kept
    printed = capsys.readouterr().out
    md = (out / "comparison.md").read_text()
    assert md in printed and "### test set mri-t1" in md and "| randconv | centralized |" in md
    assert "Partial" not in md
    rows = list(csv.DictReader((out / "comparison.csv").open()))
    assert len(rows) == 2 * 2 * 2  # methods x settings x test sets
    assert {(r["method"], r["setting"]) for r in rows} == {(m, s) for m in ("randconv", "dsbn")
                                                           for s in ("federated", "centralized")}
    for r in rows:
        assert 0 <= float(r["dice/mean"]) <= 1 and float(r["step_ms"]) > 0
        assert (float(r["aug_ms"]) > 0) == (r["method"] == "randconv")
        if r["setting"] == "centralized":
            assert float(r["pct_of_centralized"]) == pytest.approx(100.0)
    fed, central = ({k: float(v) for k, v in r.items() if k.startswith(("dice", "pct"))} for r in rows
                    if r["method"] == "dsbn" and r["test_set"] == "ct")
    assert fed["pct_of_centralized"] == pytest.approx(100 * fed["dice/mean"] / central["dice/mean"])
    assert (out / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    assert {p.name for p in out.iterdir()} >= {"fed-randconv", "central-randconv", "fed-dsbn", "central-dsbn"}
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        experiment.run(parser.parse_args(["--methods", "nope", "--out", str(tmp_path / "x"), *sets]))


@pytest.mark.parametrize("reverse", [False, True])
def test_consistency_gradients_stay_finite_for_saturated_predictions(reverse):
    """A probability that underflows to 0 once made RandConv's KL gradient NaN (centralized randconv diverged)."""
    logits = [(torch.randn(2, 5, 4, 4, generator=torch.Generator().manual_seed(i)) * 200).requires_grad_()
              for i in range(3)]
    loss = kl_consistency(logits, reverse)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(t.grad).all() for t in logits)


def test_committed_192px_arms_are_kept_by_the_documented_command():
    """Each finished arm under docs/comparison/paper-192px was written by the command its README gives: resuming
    with that command keeps it (the config text matches) instead of refusing to continue."""
    root = Path(__file__).resolve().parents[1] / "docs" / "comparison" / "paper-192px"
    block = (root / "README.md").read_text().split("```")[1]
    argv = shlex.split(block.replace("\\\n", " "))
    assert argv[:2] == ["fedgin", "experiment"] and "--resume" in argv
    cfg = config_from_args(build_parser().parse_args(argv[1:]))
    arms = sorted(p.parent for p in root.glob("*/test_metrics.json"))
    assert len(arms) == 18  # every method, federated and centralized
    for arm in arms:
        assert (arm / "config.yaml").read_text() == dump(arm_config(cfg, arm.name)), arm.name
        assert {"metrics.csv", "metrics.jsonl", "table.md"} <= {p.name for p in arm.iterdir()}, arm.name


def test_augmentation_cost_is_the_median_over_rounds_and_trainers():
    """One round slowed by other work on the machine (a 3.5 s step) does not move the reported cost."""
    history = [{"train/ct/step_time": t, "train/ct/gin_share": 0.25, "train/mri/step_time": t + 0.01,
                "train/mri/gin_share": 0.25, "val/score": 0.5, "time_s": 20.0} for t in (0.12, 0.13, 0.14)]
    history.append({"train/ct/step_time": 3.5, "train/ct/gin_share": 0.25, "train/mri/step_time": 3.5,
                    "train/mri/gin_share": 0.25, "time_s": 400.0})
    cost = augmentation_cost(history)
    assert cost["step_ms"] == pytest.approx(140.0) and cost["aug_ms"] == pytest.approx(35.0)
    assert cost["train_s"] == pytest.approx(460.0)
    assert all(math.isnan(v) for k, v in augmentation_cost([{"time_s": 1.0}]).items() if k != "train_s")
