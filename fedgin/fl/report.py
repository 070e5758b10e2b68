"""Markdown tables: one run's test metrics, and the experiment's comparison of methods (also as CSV)."""
from __future__ import annotations

import csv
import io
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


SETTINGS = {"fed": "federated", "central": "centralized"}


def comparison_rows(tests: dict[str, dict[str, dict[str, float]]], costs: dict[str, dict[str, float]],
                    methods: list[str]) -> list[dict]:
    """One row per method, setting and test set from the arms ``fed-<m>`` / ``central-<m>``: DSC per organ
    (``dice/<organ>``, ``dice/mean``), the federated mean as % of the centralized one, the arm's costs."""
    rows = []
    sets = list(next(iter(tests.values())))
    for test_set in sets:
        for method in methods:
            central = tests.get(f"central-{method}", {}).get(test_set, {}).get("dice/mean", math.nan)
            for prefix, setting in SETTINGS.items():
                arm = f"{prefix}-{method}"
                if arm not in tests:
                    continue
                metrics = tests[arm][test_set]
                mean = metrics.get("dice/mean", math.nan)
                pct = 100 * mean / central if central and not math.isnan(central) else math.nan
                rows.append({"test_set": test_set, "method": method, "setting": setting,
                             **{k: v for k, v in metrics.items() if k.startswith("dice/")},
                             "pct_of_centralized": pct, **costs[arm]})
    return rows


def comparison_table(rows: list[dict], organs: list[str]) -> str:
    """A markdown table per test set: methods x (federated, centralized), DSC per organ and mean, % of
    centralized, augmentation ms per batch, step ms, training seconds."""
    lines = []
    for test_set in dict.fromkeys(r["test_set"] for r in rows):
        lines += [f"### test set {test_set}", "",
                  "| method | setting | " + " | ".join(organs) + " | mean | % of centralized | aug ms/batch | "
                  "step ms | train s |", "|---|---|" + "---:|" * (len(organs) + 5)]
        for r in (r for r in rows if r["test_set"] == test_set):
            dsc = " | ".join(_f(r.get(f"dice/{o}", math.nan)) for o in [*organs, "mean"])
            lines.append(f"| {r['method']} | {r['setting']} | {dsc} | {_f(r['pct_of_centralized'], 1)} | "
                         f"{_f(r['aug_ms'], 2)} | {_f(r['step_ms'], 1)} | {_f(r['train_s'], 0)} |")
        lines.append("")
    return "\n".join(lines)


def comparison_csv(rows: list[dict], organs: list[str]) -> str:
    """The comparison's rows as CSV (one row per test set, method and setting)."""
    columns = ["test_set", "method", "setting", *[f"dice/{o}" for o in [*organs, "mean"]], "pct_of_centralized",
               "aug_ms", "step_ms", "train_s"]
    out = io.StringIO()
    writer = csv.DictWriter(out, columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()
