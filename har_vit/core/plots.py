"""Figures of the evaluate and report stages, as PNG files written atomically.

Matplotlib runs on the Agg backend (no display, no GUI toolkit): this module is
used by CLI stages and scheduled jobs on headless machines. Each function draws
one figure from numbers it is given, writes it and returns the path.
"""
from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # before pyplot: headless, and no backend probing on import

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from har_vit.core.io import write_bytes  # noqa: E402

DPI = 110


def save_png(fig: plt.Figure, path: str | os.PathLike) -> Path:
    """Render ``fig`` to PNG bytes, write them atomically and close the figure."""
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    finally:
        plt.close(fig)
    return write_bytes(path, buf.getvalue())


def confusion_heatmap(cm: np.ndarray, class_names: Sequence[str], path: str | os.PathLike,
                      normalized: bool = False, title: str = "") -> Path:
    """Heatmap of a confusion matrix, rows true and columns predicted, labelled by class name."""
    k = len(class_names)
    side = max(5.0, 0.55 * k + 2.5)
    fig, ax = plt.subplots(figsize=(side + 1.0, side))
    sns.heatmap(cm, ax=ax, annot=k <= 24, fmt=".2f" if normalized else "d", cmap="Blues", square=True,
                vmin=0.0, vmax=1.0 if normalized else None, xticklabels=class_names, yticklabels=class_names,
                annot_kws={"fontsize": 9 if k <= 8 else 6}, cbar_kws={"shrink": 0.7})
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    plt.setp(ax.get_xticklabels(), rotation=45, ha="right", rotation_mode="anchor")
    plt.setp(ax.get_yticklabels(), rotation=0)
    ax.set_title(title or ("confusion matrix, row-normalised (recall on the diagonal)" if normalized
                           else "confusion matrix (window counts)"))
    return save_png(fig, path)


def per_class_bars(values: Mapping[str, float | None], path: str | os.PathLike,
                   title: str = "per-class accuracy (recall)") -> Path:
    """Horizontal bars of a per-class score in [0, 1]; ``None`` (no test windows) is marked, not drawn as 0."""
    names = list(values)
    scores = [np.nan if values[n] is None else float(values[n]) for n in names]
    fig, ax = plt.subplots(figsize=(7.0, max(2.5, 0.35 * len(names) + 1.2)))
    y = np.arange(len(names))
    ax.barh(y, np.nan_to_num(scores), color=sns.color_palette("deep")[0])
    for yi, s in zip(y, scores):
        if math.isnan(s):
            ax.text(0.01, yi, "no test windows", va="center", ha="left", fontsize=8)
        elif s > 0.15:  # the label fits inside the bar
            ax.text(s - 0.01, yi, f"{s:.3f}", va="center", ha="right", fontsize=8, color="white")
        else:
            ax.text(s + 0.01, yi, f"{s:.3f}", va="center", ha="left", fontsize=8)
    ax.set_yticks(y, names)
    ax.invert_yaxis()  # first class on top, as in the tables
    ax.set_xlim(0, 1)
    ax.set_xlabel("score")
    ax.set_title(title)
    return save_png(fig, path)


def training_curves(history: Sequence[Mapping[str, Any]], path: str | os.PathLike,
                    best_epoch: int | None = None) -> Path:
    """Train/validation loss and accuracy per epoch (history.json rows); the best epoch is marked."""
    epochs = [h["epoch"] for h in history]

    def series(key: str) -> list[float]:
        return [np.nan if h.get(key) is None else float(h[key]) for h in history]

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11.0, 4.0), layout="constrained")
    for ax, keys, ylabel in ((ax_loss, ("train_loss", "val_loss"), "loss"),
                             (ax_acc, ("train_acc", "val_acc", "val_macro_f1"), "accuracy / F1")):
        for key in keys:
            ax.plot(epochs, series(key), marker="o", markersize=3, label=key.replace("_", " "))
        if best_epoch is not None:
            ax.axvline(best_epoch, color="grey", linestyle="--", linewidth=1, label=f"best epoch ({best_epoch})")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax_loss.set_title("loss")
    ax_acc.set_title("accuracy")
    return save_png(fig, path)


def class_distribution(windows_per_class: Mapping[str, int], path: str | os.PathLike,
                       records_per_class: Mapping[str, int] | None = None) -> Path:
    """Bars of windows per class and, when the chain had an ingest stage, of records per class."""
    panels = [("windows per class", windows_per_class)]
    if records_per_class:
        panels.insert(0, ("records per class (ingest)", records_per_class))
    n = max(len(counts) for _, counts in panels)
    fig, axes = plt.subplots(1, len(panels), figsize=(6.0 * len(panels), max(2.5, 0.35 * n + 1.2)), squeeze=False,
                             layout="constrained")
    for ax, (title, counts) in zip(axes[0], panels):
        names = list(counts)
        ax.barh(np.arange(len(names)), [int(counts[k]) for k in names], color=sns.color_palette("deep")[1])
        ax.set_yticks(np.arange(len(names)), names)
        ax.invert_yaxis()
        ax.set_xlabel("count")
        ax.set_title(title)
    return save_png(fig, path)


def trend(runs: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """Accuracy and macro F1 over runs in time order; runs on a leaky split are ringed in red."""
    x = np.arange(len(runs))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(runs) + 3.0), 4.0))
    for key, label in (("accuracy", "accuracy"), ("macro_f1", "macro F1")):
        ax.plot(x, [np.nan if r.get(key) is None else r[key] for r in runs], marker="o", label=label)
    leaky = [i for i, r in enumerate(runs) if r.get("leaky")]
    if leaky:
        ax.scatter(x[leaky], [runs[i]["accuracy"] for i in leaky], s=160, facecolors="none", edgecolors="red",
                   linewidths=1.5, label="leaky split (users shared)", zorder=3)
    ax.set_xticks(x, [str(r["run_id"]) for r in runs], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("test score")
    ax.set_title("test accuracy and macro F1 over runs")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_png(fig, path)
