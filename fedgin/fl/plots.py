"""Plots of a run: validation curves per modality, test Dice per organ, prediction overlays."""
from __future__ import annotations

import io
from collections.abc import Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from fedgin.config import recipe  # noqa: E402
from fedgin.fl.rundir import RunDir, atomic_write  # noqa: E402
from fedgin.train.evaluate import predict  # noqa: E402


def _save(fig, path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    atomic_write(path, buf.getvalue())


def write_plots(rd: RunDir, cfg, history: list[dict], test: dict, tests: dict, model_of: Callable) -> None:
    """Validation Dice per round, test Dice per organ, and overlays of the first test cases (``tests``: name ->
    (modality, cases); ``model_of(modality)``: the model to predict them with)."""
    organs = cfg.data.organs
    mods = list(dict.fromkeys(s.modality for s in cfg.data.sites))
    fig, ax = plt.subplots(figsize=(6, 4))
    for mod in mods:
        ys = [row.get(f"val/{mod}/dice/mean", np.nan) for row in history]
        ax.plot([row["round"] for row in history], ys, marker="o", label=mod)
    ax.set(xlabel="round", ylabel="validation mean Dice", title=cfg.name, ylim=(0, 1))
    ax.legend()
    _save(fig, rd.plots / "val_dice.png")

    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / max(len(test), 1)
    for i, (name, metrics) in enumerate(test.items()):
        ax.bar(np.arange(len(organs)) + i * width, [metrics.get(f"dice/{o}", np.nan) for o in organs],
               width, label=name)
    ax.set_xticks(np.arange(len(organs)) + width * (len(test) - 1) / 2, organs)
    ax.set(ylabel="test Dice", title=f"{cfg.name}: test Dice per organ", ylim=(0, 1))
    ax.legend()
    _save(fig, rd.plots / "test_dice_per_organ.png")

    n = cfg.eval.overlays
    if n < 1:
        return
    prepare = recipe(cfg).eval_input
    fig, axes = plt.subplots(len(tests), n, figsize=(3 * n, 3 * len(tests)), squeeze=False)
    for row, (name, (mod, cases)) in enumerate(tests.items()):
        model = model_of(mod)
        for col in range(n):
            ax = axes[row][col]
            ax.axis("off")
            if col >= len(cases):
                continue
            case = cases[col]
            image = case.image[0].numpy()
            pred = predict(model, case, cfg.data.channels, cfg.data.dims, prepare=prepare).numpy()
            label = case.label[0].numpy()
            z = int(np.argmax((label > 0).sum((0, 1))))
            # RAS axes shown as radiologists do: patient right on the left, anterior up
            ax.imshow(image[::-1, :, z].T, cmap="gray", origin="lower")
            for seg, colour in ((label, "lime"), (pred, "red")):
                if seg[:, :, z].any():
                    ax.contour(seg[::-1, :, z].T, levels=np.arange(len(organs)) + 0.5, colors=colour,
                               linewidths=0.8)
            ax.set_title(f"{name} {case.name} z={z}", fontsize=8)
    fig.suptitle(f"{cfg.name}: ground truth (green), prediction (red)", fontsize=9)
    _save(fig, rd.plots / "overlays.png")


def comparison_plot(rows: list[dict], path, title: str = "") -> None:
    """Per test set, mean DSC of every method federated (bars) and centralized (markers); last panel, the
    augmentation cost per batch of both arms ("0" where a method augments nothing)."""
    sets = list(dict.fromkeys(r["test_set"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    x = np.arange(len(methods))
    fig, axes = plt.subplots(1, len(sets) + 1, figsize=(4.5 * (len(sets) + 1), 4.2), squeeze=False)
    for ax, test_set in zip(axes[0], sets, strict=False):
        value = {(r["method"], r["setting"]): r["dice/mean"] for r in rows if r["test_set"] == test_set}
        ax.bar(x, [value.get((m, "federated"), np.nan) for m in methods], 0.6, label="federated")
        ax.plot(x, [value.get((m, "centralized"), np.nan) for m in methods], "k_", ms=18, mew=2,
                label="centralized")
        ax.set(title=f"test {test_set}: mean DSC", ylim=(0, 1.12))
        ax.set_xticks(x, methods, rotation=45, ha="right", fontsize=8)
        ax.legend(fontsize=8, loc="upper center", ncol=2)
    ax = axes[0][-1]
    cost = {(r["method"], r["setting"]): r["aug_ms"] for r in rows}
    for i, setting in enumerate(("federated", "centralized")):
        ms = np.array([cost.get((m, setting), np.nan) for m in methods], dtype=float)
        ax.bar(x + (i - 0.5) * 0.4, np.where(ms > 0, ms, np.nan), 0.4, color=f"C{i + 1}", label=setting)
        for xi in x[ms == 0]:
            ax.text(xi + (i - 0.5) * 0.4, 0.01, "0", transform=ax.get_xaxis_transform(), ha="center", fontsize=8)
    positive = [v for v in cost.values() if v > 0]
    if positive:
        ax.set_yscale("log")
        ax.set_ylim(bottom=min(positive) / 3)
        ax.legend(fontsize=8, loc="upper left")
    ax.set(title="augmentation per batch", ylabel="ms")
    ax.set_xticks(x, methods, rotation=45, ha="right", fontsize=8)
    fig.suptitle(title, fontsize=9)
    _save(fig, path)
