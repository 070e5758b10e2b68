"""The run config: defaults, presets, YAML files, overrides and the errors that name the bad key."""
import pytest
import yaml

from fedgin.config import PRESETS, RunConfig, build, deep_merge, dump, load_config, parse_override, recipe


def test_defaults_are_the_papers_scenario():
    cfg = load_config()
    assert isinstance(cfg, RunConfig)
    mods = [s.modality for s in cfg.data.sites]
    assert mods.count("ct") == 2 and sum(m.startswith("mri") for m in mods) == 1
    mri = next(s for s in cfg.data.sites if s.modality.startswith("mri"))
    assert all(mri.cases < s.cases for s in cfg.data.sites if s.modality == "ct")
    assert {t.modality for t in cfg.data.test} == {"ct", mri.modality}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds(name):
    assert load_config(preset=name).name == name


def test_fedgin_paper_preset_matches_the_released_code():
    cfg = load_config(preset="fedgin-paper")
    assert [s.modality for s in cfg.data.sites] == ["ct", "mri-t2"]
    assert (cfg.fed.rounds, cfg.train.local_epochs, cfg.fed.weighting) == (100, 1, "samples")
    assert (cfg.train.optimizer, cfg.train.lr, cfg.train.batch_size, cfg.train.loss) == ("adamw", 5e-4, 8, "dice_focal")
    assert cfg.model.channels == [32, 64, 128, 256]
    assert (cfg.aug.method, cfg.aug.gin, cfg.data.channels) == ("gin", {"per_sample": False}, 1)


def test_gin_original_preset():
    cfg = load_config(preset="gin-original")
    assert (cfg.aug.method, cfg.aug.views, cfg.data.channels) == ("gin", 3, 3)
    assert recipe(cfg).consistency_weight == pytest.approx(10 / (len(cfg.data.organs) + 1))  # the original's 10


def test_yaml_file_preset_key_and_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("preset: fedgin-paper\nfed:\n  rounds: 7\naug:\n  method: gin\n")
    cfg = load_config(path, overrides=["train.lr=0.01", "seed=3"])
    assert (cfg.fed.rounds, cfg.train.lr, cfg.seed, cfg.aug.method) == (7, 0.01, 3, "gin")
    assert cfg.train.optimizer == "adamw"  # from the preset
    assert build(yaml.safe_load(dump(cfg))) == cfg  # the resolved config round-trips


@pytest.mark.parametrize("text, needle", [
    ("fed:\n  roundz: 3\n", "fed.roundz"),
    ("data:\n  sites:\n    - {name: a, modality: ct, colour: red}\n", "data.sites[0].colour"),
    ("data:\n  sites:\n    - {name: a, modality: pet}\n", "unknown modality 'pet'"),
    ("fed:\n  rounds: many\n", "fed.rounds must be an integer"),
    ("aug:\n  method: gin\n  gin: {n_layerz: 3}\n", "n_layerz"),
    ("aug:\n  gin: {in_channels: 3}\n", "aug.gin.in_channels"),
    ("data:\n  sites:\n    - {name: a, modality: ct, cases: 1, val_cases: 1}\n", "no training cases"),
    ("data:\n  sites:\n    - {name: a, modality: ct, label_map: {1: heart}}\n", "label_map.1"),
    ("data:\n  sites:\n    - {name: a, modality: ct, label_map: {-1: liver}}\n", "label_map.-1: label ids are >= 0"),
    ("fed:\n  mode: gossip\n", "fed.mode"),
    ("train:\n  lr: .nan\n", "train.lr must be a finite number"),
    ("data:\n  ct_window: [-.inf, 300]\n", "data.ct_window[0] must be a finite number"),
    ("model:\n  dropout: 1.5\n", "model.dropout"),
    ("train:\n  weight_decay: -1\n", "weight_decay >= 0"),
    ("data:\n  organs: [livr, spleen]\n", "the phantom has no ['livr']"),
    ("data:\n  organs: [liver, Liver]\n", "organs must be unique"),
    ("data:\n  size: 20\n", "data.size: 20 must be a multiple of 8"),
    ("data:\n  dims: 3d\n  size: 32\n  depth: 6\n", "data.depth: 6 must be a multiple of 8"),
])
def test_bad_config_names_file_and_key(tmp_path, text, needle):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError) as err:
        load_config(path)
    assert needle in str(err.value) and str(path) in str(err.value)


def test_missing_file_and_unknown_preset(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ValueError, match="unknown preset"):
        load_config(preset="fedgin-papr")


def test_an_override_inside_aug_gin_keeps_the_presets_other_gin_options():
    cfg = load_config(preset="fedgin-paper", overrides=["aug.gin.n_layers=3"])
    assert cfg.aug.gin == {"per_sample": False, "n_layers": 3}
    # a label map is replaced whole: a merged one would keep ids the new map dropped
    maps = deep_merge({"label_map": {1: "liver", 2: "spleen"}}, {"label_map": {1: "liver"}})
    assert maps == {"label_map": {1: "liver"}}


def test_parse_override():
    assert parse_override("a.b.c=[1, 2]") == {"a": {"b": {"c": [1, 2]}}}
    with pytest.raises(ValueError, match="key.sub=value"):
        parse_override("rounds")


def test_the_shipped_two_site_config_loads_as_the_readme_shows():
    from pathlib import Path

    cfg = load_config(Path(__file__).resolve().parent.parent / "configs" / "two-sites.yaml")
    assert [(s.name, s.modality, s.cases) for s in cfg.data.sites] == [("hospital-ct", "ct", 0),
                                                                      ("hospital-mri", "mri-t2", 0)]
    assert cfg.data.sites[0].label_map is None and cfg.data.sites[1].label_map == cfg.data.test[1].label_map
    assert cfg.fed.rounds == 100 and cfg.train.optimizer == "adamw"  # its own keys over the fedgin-paper preset's
