"""The README's Python examples run as written, its two commands are what CI runs, and its result tables are the
committed results' figures."""
import csv
import re
from pathlib import Path

import pytest

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)


def test_readme_has_examples():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index):
    exec(compile(BLOCKS[index], f"README.md[python block {index}]", "exec"), {})


def test_ci_runs_the_readme_test_command_then_the_slow_tier_then_nnunet():
    ci = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()
    command = 'bash scripts/setup.sh && .venv/bin/python -m pytest -q -m "not slow"'
    nnunet = "bash scripts/setup-nnunet.sh && .venv-nnunet/bin/python -m pytest -q -m nnunet tests/test_nnunet.py"
    assert command in README and command in ci and nnunet in README and nnunet in ci
    assert ci.index(command) < ci.index(".venv/bin/python -m pytest -q -m slow") < ci.index(nnunet)


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip("|").split("|")]


def _block(name: str) -> list[list[str]]:
    """Rows of the README table between `<!-- name -->` and `<!-- /name -->`, header and rule dropped."""
    text = README.split(f"<!-- {name} -->\n")[1].split(f"<!-- /{name} -->")[0]
    return [_cells(line) for line in text.strip().splitlines()[2:]]


def _results(folder: str) -> dict[tuple[str, str, str], dict[str, float]]:
    """comparison.csv of docs/comparison/<folder>, keyed by (test set, method, setting)."""
    path = Path(__file__).resolve().parents[1] / "docs" / "comparison" / folder / "comparison.csv"
    with path.open() as f:
        rows = list(csv.DictReader(f))
    numbers = ("dice", "pct", "aug", "step")
    return {(r["test_set"], r["method"], r["setting"]): {k: float(v) for k, v in r.items() if k.startswith(numbers)}
            for r in rows}


# Centralized arms whose timing cells the README marks ‡: they shared the CPU with another arm (the folder's README).
SHARED_CPU = {192: {"dsbn", "semantic_randconv"}}


@pytest.mark.parametrize("px", [96, 192])
def test_readme_comparison_is_the_committed_table(px):
    """Every figure of the README's comparison at `px` is the committed comparison.csv's, as rounded there; ‡ marks
    exactly the timing cells of the centralized arms that shared the CPU."""
    results = _results(f"paper-{px}px")
    rows = _block(f"comparison-{px}px")
    assert len(rows) == 9
    for row in rows:
        method = row[0].split(" ")[0]
        fed, central = (results[("mri-t2", method, s)] for s in ("federated", "centralized"))
        ct_fed, ct_central = (results[("ct", method, s)] for s in ("federated", "centralized"))
        expected = [f"{fed['dice/mean']:.3f}", f"{fed['dice/pancreas']:.3f}", f"{fed['dice/gallbladder']:.3f}",
                    f"{central['dice/mean']:.3f}", f"{fed['pct_of_centralized']:.1f}", f"{ct_fed['dice/mean']:.3f}",
                    f"{ct_central['dice/mean']:.3f}", f"{central['aug_ms']:.1f}", f"{central['step_ms']:.0f}"]
        assert [cell.removesuffix(" ‡") for cell in row[1:]] == expected, method
        marked = [i for i, cell in enumerate(row[1:]) if cell.endswith(" ‡")]
        shared = method in SHARED_CPU.get(px, set())
        timings = [i for i in (7, 8) if shared and float(expected[i]) > 0]
        assert marked == timings, method


def test_readme_paper_protocol_is_the_committed_table():
    """The README's FedAvg / FedGIN / centralized GIN rows are docs/paper-protocol/<px>px/table.md's."""
    names = {"FedAvg": "fedavg", "FedGIN": "fedgin", "centralized GIN": "central-gin",
             "FedGIN % of centralized GIN": "fedgin / central-gin (%)"}
    rows = _block("paper-protocol")
    assert len(rows) == 12
    for row in rows:
        label, px, *figures = (cell.strip("*") for cell in row)
        table = (Path(__file__).resolve().parents[1] / "docs" / "paper-protocol" / f"{px}px" / "table.md").read_text()
        committed = {cells[0]: cells[1:] for cells in map(_cells, table.splitlines()[4:])}
        ct_mean, mri = committed[names[label]][6], committed[names[label]][7:]
        assert figures == [ct_mean, mri[6], mri[4], mri[5]], (label, px)
