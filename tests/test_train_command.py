"""``fedgin train`` and ``fedgin experiment`` through their argument parsers, on tiny phantom data."""
import argparse

import pytest
import torch

from fedgin.commands import experiment, train

TINY = [
    "data.size=32", "data.depth=8", "model.channels=[4, 8]", "model.strides=[2]", "eval.overlays=0",
    "data.sites=[{name: ct-a, modality: ct, cases: 2, seed: 1}, {name: mri-a, modality: mri-t1, cases: 2, seed: 2}]",
    "data.test=[{modality: ct, cases: 1, seed: 3}, {modality: mri-t1, cases: 1, seed: 4}]",
]


def parse(module, argv):
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return parser.parse_args(argv)


def sets(tmp_path):
    return [a for s in [*TINY, f"data.cache_dir={tmp_path / 'cache'}"] for a in ("--set", s)]


def test_train_then_resume_a_finished_run(tmp_path, capsys):
    argv = [*sets(tmp_path), "--rounds", "1", "--out", str(tmp_path / "run"), "--quiet"]
    assert train.run(parse(train, argv)) == 0
    out = capsys.readouterr().out
    assert "| liver |" in out and str(tmp_path / "run") in out
    assert (tmp_path / "run/config.yaml").read_text().count("rounds: 1") == 1
    assert train.run(parse(train, [*argv, "--resume"])) == 0  # finished: reports again, trains nothing


def test_config_typo_is_an_error_naming_the_key(tmp_path):
    cfg = tmp_path / "typo.yaml"
    cfg.write_text("fed:\n  rounds: 1\ntrain:\n  lr: 0.001\n  batchsize: 4\n")
    with pytest.raises(ValueError, match=r"typo.yaml: unknown key train.batchsize"):
        train.run(parse(train, [str(cfg), "--out", str(tmp_path / "run")]))
    assert not (tmp_path / "run").exists()


def test_experiment_runs_the_protocol_arms(tmp_path, capsys, interrupted_at):
    argv = [*sets(tmp_path), "--rounds", "1", "--out", str(tmp_path / "exp"), "--quiet", "--arms", "fedavg",
            "local-mri-a"]
    with interrupted_at("local-mri-a"):
        experiment.run(parse(experiment, argv))
    partial = (tmp_path / "exp/table.md").read_text()  # the finished arm's row survives the interruption
    assert "**Partial: 1 of 2 arms finished**; still to run: local-mri-a" in partial and "| fedavg |" in partial
    assert experiment.run(parse(experiment, [*argv, "--resume"])) == 0
    out = capsys.readouterr().out
    assert "Partial" not in (tmp_path / "exp/table.md").read_text()
    assert "| fedavg |" in out and "| local-mri-a |" in out
    assert (tmp_path / "exp/table.md").is_file() and (tmp_path / "exp/local-mri-a/test_metrics.json").is_file()
    assert "mri-a" in (tmp_path / "exp/local-mri-a/config.yaml").read_text()
    assert "ct-a" not in (tmp_path / "exp/local-mri-a/config.yaml").read_text()
    before = (tmp_path / "exp/fedavg/test_metrics.json").stat().st_mtime_ns
    argv = [a for a in argv if a != "local-mri-a"] + ["fedgin", "--resume"]
    assert experiment.run(parse(experiment, argv)) == 0  # fedavg kept, fedgin started
    assert (tmp_path / "exp/fedavg/test_metrics.json").stat().st_mtime_ns == before
    assert "| fedgin - fedavg |" in capsys.readouterr().out
    changed = [*sets(tmp_path), "--rounds", "2", "--out", str(tmp_path / "exp"), "--quiet", "--resume", "--arms",
               "central", "fedavg"]
    with pytest.raises(ValueError, match="the config differs"):  # fedavg's finished run, checked before training
        experiment.run(parse(experiment, changed))
    assert not (tmp_path / "exp/central").exists()


@pytest.mark.parametrize("command", ["demo", "train", "experiment"])
def test_a_device_this_machine_lacks_is_a_one_line_error_before_any_work(tmp_path, capsys, monkeypatch, command):
    from fedgin import cli

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "run"
    argv = [command, "--preset", "demo-fast", "--device", "cuda", "--out", str(out), "--set",
            f"data.cache_dir={tmp_path / 'cache'}"]
    assert cli.main([a for a in argv if not (command == "demo" and a in ("--preset", "demo-fast"))]) == 2
    err = capsys.readouterr().err
    assert "sees no CUDA GPU" in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and not (tmp_path / "cache").exists()
