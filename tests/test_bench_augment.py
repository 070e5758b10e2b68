"""The comparison augmentations as benchmark rows: registered, timed, reported as not GIN (no reference check)."""
import torch

from fedgin.augment import AUGMENTATIONS
from fedgin.bench import IMPLEMENTATIONS, Case, run_suite
from fedgin.bench.augment_impls import N_CLASSES, synthetic_label
from fedgin.bench.report import markdown
from fedgin.bench.suite import NO_CHECK


def test_every_augmentation_is_a_row_without_reference_check():
    names = {f"aug-{n}" for n in AUGMENTATIONS if n != "none"}
    assert names <= set(IMPLEMENTATIONS)
    assert all(not IMPLEMENTATIONS[n].reference_check and not IMPLEMENTATIONS[n].graphable for n in names)
    assert IMPLEMENTATIONS["reference"].reference_check and IMPLEMENTATIONS["triton"].reference_check


def test_synthetic_label_covers_every_class():
    label = synthetic_label(Case(2, 1, (10, 8, 6)), torch.device("cpu"))
    assert label.shape == (2, 1, 10, 8, 6) and label.unique().tolist() == list(range(N_CLASSES))


def test_augmentation_rows_are_timed_and_marked_not_gin():
    names = ["aug-randconv", "aug-semantic_randconv", "aug-gin_ipa-unfused"]
    report = run_suite("quick", names, max_cases=1, e2e=False, progress=False)
    rows = {r["impl"]: r for r in report["rows"]}
    assert rows["reference"]["status"] == "ok" and rows["reference"]["reason"] is None
    for name in names:
        r = rows[name]
        assert r["status"] == "ok" and r["reason"] == NO_CHECK and r["rel_error"] is None
        assert r["ms"] > 0 and r["gpix_s"] > 0 and r["speedup"] > 0
    table = markdown(report)
    assert "| aug-randconv | ok [1] |" in table and f"[1] {NO_CHECK}" in table
