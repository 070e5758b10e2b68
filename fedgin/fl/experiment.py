"""The paper's protocol: the same scenario trained as several arms (methods), compared in one table."""
from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

from fedgin.config import RunConfig
from fedgin.fl.engine import run
from fedgin.fl.report import experiment_table
from fedgin.fl.rundir import atomic_write

# arm: (fed.mode, aug.method)
PROTOCOL = {"fedavg": ("federated", "none"), "fedgin": ("federated", "gin"), "central-gin": ("centralized", "gin")}
BASELINES = {"central": ("centralized", "none")}


def arm_names(cfg: RunConfig, all_baselines: bool = False) -> list[str]:
    """The paper's three arms; with ``all_baselines`` also centralized without GIN and each site alone."""
    names = list(PROTOCOL)
    if all_baselines:
        names += list(BASELINES) + [f"local-{s.name}" for s in cfg.data.sites]
    return names


def arm_config(cfg: RunConfig, arm: str) -> RunConfig:
    """``cfg`` turned into one arm (``local-<site>``: that site alone, without augmentation)."""
    out = copy.deepcopy(cfg)
    if arm.startswith("local-"):
        site = arm.removeprefix("local-")
        sites = [s for s in cfg.data.sites if s.name == site]
        if not sites:
            raise ValueError(f"unknown arm {arm!r}: no site named {site!r}")
        out.data = dataclasses.replace(out.data, sites=sites)
        mode, method = "federated", "none"
    elif arm in PROTOCOL or arm in BASELINES:
        mode, method = {**PROTOCOL, **BASELINES}[arm]
    else:
        raise ValueError(f"unknown arm {arm!r}; choose from {list(PROTOCOL) + list(BASELINES)} or local-<site>")
    out.name = f"{cfg.name}/{arm}"
    out.fed = dataclasses.replace(out.fed, mode=mode)
    out.aug = dataclasses.replace(out.aug, method=method, views=out.aug.views if method == "gin" else 1)
    return out


def run_experiment(cfg: RunConfig, out: str | Path, arms: list[str], *, resume: bool = False,
                   progress: bool = True) -> tuple[dict[str, dict], str]:
    """Run every arm into ``out/<arm>``; with ``resume``, finished arms are kept, an interrupted one continues and
    the rest start. Writes and returns the table."""
    out = Path(out)
    results = {}
    for arm in arms:
        started = (out / arm / "config.yaml").is_file()
        results[arm] = run(arm_config(cfg, arm), out / arm, resume=resume and started, progress=progress).test
    table = experiment_table(results, cfg.data.organs)
    atomic_write(out / "table.md", f"# {cfg.name}: test Dice (DSC) per organ\n\n{table}")
    return results, table
