"""Figures of the evaluate and report stages, as PNG files written atomically.

Matplotlib runs on the Agg backend (no display, no GUI toolkit): this module is
used by CLI stages and scheduled jobs on headless machines. Each function draws
one figure from numbers it is given, writes it and returns the path.
"""
from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot: headless, and no backend probing on import

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
from matplotlib.ticker import MaxNLocator

from har_vit.core.io import write_bytes

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
    """Train/validation loss and accuracy per epoch (history.json rows); the best epoch is marked.

    An ensemble's rows carry ``member``: each member gets its own lines, in one colour per curve.
    """
    members = sorted({h["member"] for h in history if "member" in h}) or [None]

    def series(rows: Sequence[Mapping[str, Any]], key: str) -> list[float]:
        return [np.nan if h.get(key) is None else float(h[key]) for h in rows]

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11.0, 4.0), layout="constrained")
    for ax, keys, ylabel in ((ax_loss, ("train_loss", "val_loss"), "loss"),
                             (ax_acc, ("train_acc", "val_acc", "val_macro_f1"), "accuracy / F1")):
        for j, key in enumerate(keys):
            for k, member in enumerate(members):
                rows = [h for h in history if h.get("member") == member]
                label = key.replace("_", " ") + (f" (member {member})" if member is not None else "")
                ax.plot([h["epoch"] for h in rows], series(rows, key), marker="o", markersize=3, color=f"C{j}",
                        alpha=1.0 if k == 0 else 0.5, label=label if len(members) < 4 or k == 0 else None)
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


def trend(runs: Sequence[Mapping[str, Any]], path: str | os.PathLike,
          group_of: Any = lambda r: "all runs") -> Path:
    """Test accuracy and macro F1 over runs in training order, one line per group (dataset and class set).

    Runs of different groups are not comparable, so each group gets its own line and colour;
    the x axis is the training order of all runs. Runs on a leaky split are ringed in red.
    """
    x = np.arange(len(runs))
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(runs):
        groups.setdefault(str(group_of(r)), []).append(i)
    colours = sns.color_palette("deep", max(1, len(groups)))
    fig, axes = plt.subplots(1, 2, figsize=(max(10.0, 0.5 * len(runs) + 6.0), 4.2), layout="constrained",
                             sharey=True)
    for ax, (key, title) in zip(axes, (("accuracy", "test accuracy"), ("macro_f1", "test macro F1"))):
        for colour, (name, idx) in zip(colours, groups.items()):
            ax.plot(x[idx], [np.nan if runs[i].get(key) is None else runs[i][key] for i in idx], marker="o",
                    color=colour, label=name)
        leaky = [i for i, r in enumerate(runs) if r.get("leaky") and r.get(key) is not None]
        if leaky:
            ax.scatter(x[leaky], [runs[i][key] for i in leaky], s=160, facecolors="none", edgecolors="red",
                       linewidths=1.5, label="leaky split (users shared)", zorder=3)
        ax.set_xticks(x, [str(r["run_id"]) for r in runs], rotation=45, ha="right", fontsize=7)
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test score")
    axes[1].legend(fontsize=8, loc="best")
    return save_png(fig, path)


def per_user(per_user: Mapping[str, Mapping[str, Any]], class_names: Sequence[str],
             path: str | os.PathLike) -> Path:
    """Heatmap of test users (rows, weakest first) x (all windows, then each class): accuracy / recall.

    A blank cell: that user has no test windows of that class.
    """
    users = sorted(per_user, key=lambda u: (per_user[u]["accuracy"], u))
    cols = ["all"] + list(class_names)
    grid = np.array([[per_user[u]["accuracy"]] + [np.nan if per_user[u]["recall"].get(c) is None
                                                   else per_user[u]["recall"][c] for c in class_names]
                     for u in users], dtype=float)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.62 * len(cols) + 2.5), max(2.5, 0.42 * len(users) + 1.6)))
    sns.heatmap(grid, ax=ax, annot=len(cols) <= 24, fmt=".2f", cmap="RdYlGn", vmin=0.0, vmax=1.0,
                xticklabels=cols, yticklabels=[f"user {u} ({per_user[u]['windows']})" for u in users],
                annot_kws={"fontsize": 8 if len(cols) <= 8 else 6}, cbar_kws={"shrink": 0.7}, linewidths=0.5)
    ax.axvline(1, color="black", linewidth=2)
    plt.setp(ax.get_xticklabels(), rotation=45, ha="right", rotation_mode="anchor")
    plt.setp(ax.get_yticklabels(), rotation=0)
    ax.set_xlabel("")
    ax.set_ylabel("test user (windows)")
    ax.set_title("accuracy per test user (all), and recall of each activity (blank: not performed)")
    return save_png(fig, path)


def saliency_grid(examples: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """Each example's three axes over time with the model's saliency as a strip beneath.

    ``examples``: dicts with ``x`` (T, C) raw signal, ``saliency`` (T,) in [0, 1], ``title``
    and ``correct``; laid out two per row (a correct window, then a mistake, per class).
    """
    cols = 2
    rows = (len(examples) + cols - 1) // cols
    fig = plt.figure(figsize=(12.0, 2.3 * rows + 0.4), layout="constrained")
    grid = fig.add_gridspec(rows * 2, cols, height_ratios=[4, 1] * rows)
    axis_names = ("x", "y", "z")
    for i, ex in enumerate(examples):
        r, c = divmod(i, cols)
        ax = fig.add_subplot(grid[2 * r, c])
        strip = fig.add_subplot(grid[2 * r + 1, c], sharex=ax)
        x = np.asarray(ex["x"])
        t = np.arange(x.shape[0])
        for k in range(x.shape[1]):
            ax.plot(t, x[:, k], linewidth=1, label=axis_names[k] if k < 3 else f"ch{k}")
        ax.set_title(ex["title"], fontsize=9, color="#1a7f37" if ex["correct"] else "#cf222e", loc="left")
        ax.tick_params(labelbottom=False, labelsize=7)
        ax.margins(x=0)
        if i == 0:
            ax.legend(fontsize=7, ncol=3, loc="upper right")
        strip.imshow(np.asarray(ex["saliency"])[None, :], aspect="auto", cmap="magma", vmin=0, vmax=1,
                     extent=(-0.5, x.shape[0] - 0.5, 0, 1))
        strip.set_yticks([])
        strip.tick_params(labelsize=7)
        if r == rows - 1:
            strip.set_xlabel("sample (20 Hz)", fontsize=8)
    fig.suptitle("What the model looks at: raw axes, and beneath them the gradient saliency of the predicted "
                 "class (bright = the samples that moved its score most)", fontsize=10)
    return save_png(fig, path)
