"""The paper's protocol: the same scenario trained as several arms (methods), compared in one table.

Two ways to name arms: the paper's three (``fedavg``, ``fedgin``, ``central-gin``) and baselines, or a method
comparison (:func:`run_comparison`): every method of :data:`METHODS` trained federated (``fed-<method>``) and
centralized (``central-<method>``) with the same budget, reported as DSC per organ, % of centralized and the
augmentation cost per batch (markdown, CSV, PNG).
"""
from __future__ import annotations

import copy
import dataclasses
import math
import statistics
from pathlib import Path

from fedgin.config import RunConfig, validate
from fedgin.environment import resolve_device
from fedgin.fl.engine import RunResult, run
from fedgin.fl.report import comparison_csv, comparison_rows, comparison_table, experiment_table
from fedgin.fl.rundir import RunDir, atomic_write

# arm: (fed.mode, aug.method)
PROTOCOL = {"fedavg": ("federated", "none"), "fedgin": ("federated", "gin"), "central-gin": ("centralized", "gin")}
BASELINES = {"central": ("centralized", "none")}
# the comparison's methods: every augmentation, then domain-specific batch normalization (aug none, fed.norm dsbn)
METHODS = ("none", "gin", "gin_ipa", "randconv", "pro_randconv", "fmaug", "raffesdg", "semantic_randconv", "dsbn")
MODES = {"fed": "federated", "central": "centralized"}


def arm_names(cfg: RunConfig, all_baselines: bool = False) -> list[str]:
    """The paper's three arms; with ``all_baselines`` also centralized without GIN and each site alone."""
    names = list(PROTOCOL)
    if all_baselines:
        names += list(BASELINES) + [f"local-{s.name}" for s in cfg.data.sites]
    return names


def arm_config(cfg: RunConfig, arm: str) -> RunConfig:
    """``cfg`` turned into one arm (``local-<site>``: that site alone, without augmentation; ``fed-<method>`` /
    ``central-<method>``: a method of :data:`METHODS`, federated or centralized)."""
    mode_name, _, method_name = arm.partition("-")
    if mode_name in MODES and method_name in METHODS:
        return method_config(cfg, method_name, MODES[mode_name], arm)
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
    out.fed = dataclasses.replace(out.fed, mode=mode, norm=_pooled_norm(cfg.fed.norm, mode))
    out.aug = _aug_for(cfg, method)
    validate(out, f"arm {arm}")
    return out


def _pooled_norm(norm: str, mode: str) -> str:
    """``norm`` for an arm in ``mode``: a pooled model has no sites to keep normalization layers at (FedBN)."""
    return "average" if norm == "local" and mode == "centralized" else norm


def _aug_for(cfg: RunConfig, method: str):
    """``cfg.aug`` with ``method``: the config's views, weights and options are kept for its own method only."""
    if method == cfg.aug.method:
        return copy.deepcopy(cfg.aug)
    return dataclasses.replace(cfg.aug, method=method, views=None, consistency_weight=None, options={})


def method_config(cfg: RunConfig, method: str, mode: str, arm: str | None = None) -> RunConfig:
    """``cfg`` trained with ``method`` (of :data:`METHODS`) in ``mode`` (federated or centralized); validated."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {list(METHODS)} (or all)")
    out = copy.deepcopy(cfg)
    out.name = f"{cfg.name}/{arm or method}"
    norm = "dsbn" if method == "dsbn" else ("average" if cfg.fed.norm == "dsbn" else cfg.fed.norm)
    out.fed = dataclasses.replace(out.fed, mode=mode, norm=_pooled_norm(norm, mode))
    out.aug = _aug_for(cfg, "none" if method == "dsbn" else method)
    validate(out, f"method {method}")
    return out


def method_names(names: list[str]) -> list[str]:
    """``names`` checked against :data:`METHODS`, ``all`` expanded, order kept, duplicates dropped."""
    out: list[str] = []
    for name in names:
        for n in METHODS if name == "all" else (name,):
            if n not in METHODS:
                raise ValueError(f"unknown method {n!r}; choose from {list(METHODS)} or all")
            out.append(n)
    return list(dict.fromkeys(out))


def comparison_arms(methods: list[str]) -> list[str]:
    """``fed-<m>`` and ``central-<m>`` for every method."""
    return [f"{mode}-{m}" for m in methods for mode in MODES]


def run_experiment(cfg: RunConfig, out: str | Path, arms: list[str], *, resume: bool = False,
                   progress: bool = True) -> tuple[dict[str, dict], str]:
    """Run every arm into ``out/<arm>``; with ``resume``, finished arms are kept, an interrupted one continues and
    the rest start. Writes the table after each arm (an interrupted run leaves its finished arms') and returns it."""
    out = Path(out)
    resolve_device(cfg.device)  # before any arm starts: an unusable device is an error, not an arm's traceback
    configs = {arm: arm_config(cfg, arm) for arm in arms}
    done = {arm: r.test for arm, r in _finished_arms(configs, out, resume, progress).items()}
    for arm, arm_cfg in configs.items():
        if arm not in done:
            started = (out / arm / "config.yaml").is_file()
            done[arm] = run(arm_cfg, out / arm, resume=resume and started, progress=progress).test
        results = {a: done[a] for a in arms if a in done}  # in the arms' order
        table = _partial_note(results, arms) + experiment_table(results, cfg.data.organs)
        atomic_write(out / "table.md", f"# {cfg.name}: test Dice (DSC) per organ\n\n{table}")
    return results, table


def _finished_arms(configs: dict[str, RunConfig], out: Path, resume: bool, progress: bool) -> dict[str, RunResult]:
    """With ``resume``, the arms of ``configs`` that finished under ``out`` already, each checked against its config
    before anything trains, so a table written mid-way names them, and a changed config fails at once."""
    if not resume:
        return {}
    return {arm: run(arm_cfg, out / arm, resume=True, progress=progress) for arm, arm_cfg in configs.items()
            if RunDir(out / arm).finished}


def _partial_note(results: dict, arms: list[str]) -> str:
    """The line a table of an unfinished experiment starts with: the ``arms`` not yet in ``results`` (none when
    every arm finished)."""
    pending = [arm for arm in arms if arm not in results]
    if not pending:
        return ""
    return (f"**Partial: {len(results)} of {len(results) + len(pending)} arms finished**; still to run: "
            f"{', '.join(pending)} (the same command with `--resume` continues).\n\n")


def run_comparison(cfg: RunConfig, out: str | Path, methods: list[str], *, resume: bool = False,
                   progress: bool = True) -> tuple[list[dict], str]:
    """Train every method federated and centralized into ``out/<arm>``; write ``comparison.md``,
    ``comparison.csv`` and ``comparison.png`` (and ``table.md``, the same markdown) after each arm, so an
    interrupted comparison leaves the table of its finished arms. Returns the rows and the markdown. ``resume``
    keeps finished arms (read first: the table names them all along) and continues an interrupted one."""
    out = Path(out)
    methods = method_names(methods)
    configs = {arm: arm_config(cfg, arm) for arm in comparison_arms(methods)}  # all checked before any training
    results = _finished_arms(configs, out, resume, progress)
    rows, table = _write_comparison(cfg, out, methods, results, list(configs)) if results else ([], "")
    for arm, arm_cfg in configs.items():
        if arm not in results:
            started = (out / arm / "config.yaml").is_file()
            results[arm] = run(arm_cfg, out / arm, resume=resume and started, progress=progress)
            rows, table = _write_comparison(cfg, out, methods, results, list(configs))
    return rows, table


def _write_comparison(cfg: RunConfig, out: Path, methods: list[str], results: dict[str, RunResult],
                      arms: list[str]) -> tuple[list[dict], str]:
    """The comparison of the finished arms ``results`` (of ``arms``) as markdown, CSV and PNG; the title names the
    arms still to run."""
    from fedgin.fl.plots import comparison_plot

    costs = {arm: augmentation_cost(r.history) for arm, r in results.items()}
    rows = comparison_rows({arm: r.test for arm, r in results.items()}, costs, methods)
    title = (f"# {cfg.name}: method comparison, test DSC per organ\n\n{cfg.fed.rounds} rounds, "
             f"{len(cfg.data.sites)} sites ({', '.join(s.modality for s in cfg.data.sites)}); data "
             f"{'phantom' if all(s.data_dir is None for s in cfg.data.sites) else 'user'}, {cfg.data.dims} "
             f"{cfg.data.size}px\n\n")
    table = title + _partial_note(results, arms) + comparison_table(rows, cfg.data.organs)
    atomic_write(out / "comparison.md", table)
    atomic_write(out / "table.md", table)
    atomic_write(out / "comparison.csv", comparison_csv(rows, cfg.data.organs))
    comparison_plot(rows, out / "comparison.png", title=f"{cfg.name}: {cfg.fed.rounds} rounds"
                    + (f" ({len(results)} of {len(arms)} arms)" if len(results) < len(arms) else ""))
    return rows, table


def augmentation_cost(history: list[dict]) -> dict[str, float]:
    """From a run's history: median augmentation ms per batch and step ms (over rounds and trainers: a round slowed
    by other work on the machine does not move it), and the summed train seconds."""
    aug, step = [], []
    for row in history:
        for key, value in row.items():
            if key.endswith("/step_time") and key.startswith("train/"):
                share = row.get(key.removesuffix("step_time") + "gin_share", math.nan)
                step.append(value)
                aug.append(value * share)
    return {"aug_ms": 1000 * _median(aug), "step_ms": 1000 * _median(step),
            "train_s": sum(row.get("time_s", 0.0) for row in history)}


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan
