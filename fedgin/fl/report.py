"""Markdown tables: one run's test metrics, and the experiment's comparison of methods."""
from __future__ import annotations

import math


def _f(value: float, digits: int = 3) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def run_table(test: dict[str, dict[str, float]], organs: list[str], title: str = "") -> str:
    """Organs as rows, Dice and HD95 per test set as columns."""
    names = list(test)
    head = "| organ | " + " | ".join(f"{n} DSC | {n} HD95" for n in names) + " |"
    lines = [f"### {title}", ""] if title else []
    lines += [head, "|" + "---|" * (1 + 2 * len(names))]
    for organ in [*organs, "mean"]:
        cells = [f"{_f(test[n].get(f'dice/{organ}', math.nan))} | {_f(test[n].get(f'hd95/{organ}', math.nan), 1)}"
                 for n in names]
        lines.append(f"| {organ} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def experiment_table(results: dict[str, dict[str, dict[str, float]]], organs: list[str],
                     baseline: str = "fedavg", method: str = "fedgin", reference: str = "central-gin") -> str:
    """DSC per organ and mean for each test set, one row per method; then the change of ``method`` from
    ``baseline`` and ``method`` as a percentage of ``reference`` when those were run."""
    sets = list(next(iter(results.values())))
    cols = [(s, o) for s in sets for o in [*organs, "mean"]]
    lines = ["| method | " + " | ".join(f"{s} {o}" for s, o in cols) + " |", "|" + "---|" * (1 + len(cols))]

    def dsc(arm: str, s: str, o: str) -> float:
        return results[arm][s].get(f"dice/{o}", math.nan)

    for arm in results:
        lines.append(f"| {arm} | " + " | ".join(_f(dsc(arm, s, o)) for s, o in cols) + " |")
    if baseline in results and method in results:
        diffs = [dsc(method, s, o) - dsc(baseline, s, o) for s, o in cols]
        lines.append(f"| {method} - {baseline} | " + " | ".join("-" if math.isnan(d) else f"{d:+.3f}" for d in diffs)
                     + " |")
    if reference in results and method in results:
        lines.append(f"| {method} / {reference} (%) | " + " | ".join(
            _f(100 * dsc(method, s, o) / dsc(reference, s, o), 1) if dsc(reference, s, o) else "-"
            for s, o in cols) + " |")
    return "\n".join(lines) + "\n"
