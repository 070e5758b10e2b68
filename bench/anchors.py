"""Figures measured before the suite (``anchors.json``): a run on the same kind of card reports measured vs anchor."""
from __future__ import annotations

import json
from pathlib import Path

ANCHORS = Path(__file__).with_name("anchors.json")


def load_anchors(path: Path = ANCHORS) -> list[dict]:
    return json.loads(path.read_text())["anchors"]


def _measured(anchor: dict, report: dict) -> float | None:
    metric = anchor["metric"]
    if metric == "copy_gb_s":
        return report["copy"]["gb_s"]
    if metric == "step_ms":
        rows = [r for r in report["e2e"] if r["gin_case_id"] == anchor["e2e_case_id"] and r["impl"] == anchor["impl"]]
        key = "step_ms"
    else:
        rows = [r for r in report["rows"] if r["case_id"] == anchor["case_id"]
                and (metric == "floor_ms" or r["impl"] == anchor["impl"])]
        key = "floor_ms" if metric == "floor_ms" else "ms"
    values = [r[key] for r in rows if r.get(key) is not None and (key == "floor_ms" or r["status"] == "ok")]
    return values[0] if values else None


def compare_anchors(report: dict, anchors: list[dict] | None = None) -> list[dict]:
    """Every anchor of this run's kind of device with the run's figure beside it (None: not measured here)."""
    device = report["environment"]["device"]
    out = []
    for anchor in load_anchors() if anchors is None else anchors:
        if anchor["match"] not in device:
            continue
        measured = _measured(anchor, report)
        out.append({**anchor, "measured": measured, "ratio": measured / anchor["value"] if measured else None})
    return out
