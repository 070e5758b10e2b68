"""The README's main command, reduced (``fedgin demo --fast``): FedGIN must beat FedAvg on MRI.

Margin measured with this preset over seeds 0-2 (see MARGIN); the test runs seed 0 and asserts less than the smallest.
"""
import argparse
import json

from fedgin.commands import demo

MARGIN = 0.02  # FedGIN - FedAvg, MRI mean test Dice; measured +0.050 (seed 0, this test), +0.025, +0.045 (seeds 1, 2)


def test_demo_fast_fedgin_beats_fedavg_on_mri(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    demo.add_arguments(parser)
    out = tmp_path / "demo"
    args = parser.parse_args(["--fast", "--out", str(out), "--set", f"data.cache_dir={tmp_path / 'cache'}", "--quiet"])
    assert demo.run(args) == 0
    printed = capsys.readouterr().out
    assert "| fedgin - fedavg |" in printed and "| fedgin / central-gin (%) |" in printed
    test = {arm: json.loads((out / arm / "test_metrics.json").read_text())["test"]
            for arm in ("fedavg", "fedgin", "central-gin")}
    gain = test["fedgin"]["mri-t2"]["dice/mean"] - test["fedavg"]["mri-t2"]["dice/mean"]
    assert gain > MARGIN, f"FedGIN - FedAvg on MRI mean Dice: {gain:+.3f}"
