"""What a run's scores mean, in words: the end-of-command summary and the report's headline.

A score alone says little (0.40 is poor for six activities and good for eighteen phone-only
ones across unseen people), so every summary puts it beside the classical baseline fitted on
the same split and beside chance, and says in one sentence what that means.

>>> m = {"accuracy": 0.9, "macro_f1": 0.85, "class_names": list("abcdef"),
...      "split": {"protocol": "subject", "test_users": [1, 2]},
...      "baseline": {"accuracy": 0.8, "macro_f1": 0.78}, "chance": {"uniform_accuracy": 1 / 6}}
>>> verdict(m)
'Beats the random-forest baseline by 0.07 macro F1; 5.4x the chance level of 6 classes; scored on 2 people the model never saw.'
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

MARGIN = 0.02  # macro F1: closer than this to the baseline is "on par"
LEAKY_PROTOCOLS = ("per-stream", "random")


def is_leaky(split: Mapping[str, Any]) -> bool:
    """Leaky: the same users are in train and test (``leaky`` flag, or the per-stream/random protocols)."""
    return bool(split.get("leaky")) or split.get("protocol") in LEAKY_PROTOCOLS


def verdict(m: Mapping[str, Any]) -> str:
    """One sentence: the model against the baseline and chance, and on whom it was scored."""
    split = m.get("split") or {}
    k = len(m.get("class_names") or [])
    parts = []
    base = m.get("baseline")
    if base:
        d = m["macro_f1"] - base["macro_f1"]
        if d >= MARGIN:
            parts.append(f"beats the random-forest baseline by {d:.2f} macro F1")
        elif d > -MARGIN:
            parts.append(f"on par with the random-forest baseline (macro F1 within {MARGIN:.2f})")
        else:
            parts.append(f"LOSES to the random-forest baseline by {-d:.2f} macro F1 (use the baseline, or a "
                         "stronger recipe)")
    chance = m.get("chance")
    if chance and k:
        parts.append(f"{m['accuracy'] / chance['uniform_accuracy']:.1f}x the chance level of {k} classes")
    if is_leaky(split):
        parts.append("scored on windows of the same people it trained on (leaky split), so expect less on new people")
    else:
        users = split.get("test_users") or []
        who = "person" if len(users) == 1 else "people"
        parts.append(f"scored on {len(users)} {who} the model never saw" if users else "scored on held-out windows")
        if k > 6:
            parts.append(f"{k} activities from one sensor across unseen people are hard for any method: compare "
                         "with the baseline, not with 1.0")
    text = "; ".join(parts) + "."
    return text[0].upper() + text[1:]


def score_lines(m: Mapping[str, Any], dataset: str | None = None) -> list[str]:
    """The model, the baseline and chance, one line each, aligned."""
    split = m.get("split") or {}
    users = ", ".join(map(str, split.get("test_users") or [])) or "-"
    where = f"{m.get('model')}" + (f" on {dataset}" if dataset else "") + \
        f", {split.get('protocol', '?')} split{' (LEAKY)' if is_leaky(split) else ''}, test users {users}"
    lines = [f"  accuracy {m['accuracy']:.4f}  macro F1 {m['macro_f1']:.4f}  {where}"]
    base = m.get("baseline")
    if base:
        lines.append(f"  baseline {base['accuracy']:.4f}  macro F1 {base['macro_f1']:.4f}  random forest on window "
                     "statistics, same train and test windows")
    chance = m.get("chance")
    if chance:
        k = len(m.get("class_names") or [])
        lines.append(f"  chance   {chance['uniform_accuracy']:.4f} (uniform over {k} classes), "
                     f"{chance['majority_accuracy']:.4f} (always the most frequent test class)")
    return lines


def link(path: str | Path) -> str:
    """A ``file://`` URL a terminal can open."""
    return Path(path).resolve().as_uri()


def command_summary(what: str, metrics: Mapping[str, Any] | None = None, run_dir: str | Path | None = None,
                    report: str | Path | None = None, dataset: str | None = None,
                    extra: tuple[str, ...] = (), next_step: str | None = None) -> list[str]:
    """The lines printed at the end of a command: what ran, the scores in context, where things went.

    ``run:``, ``report:`` and ``next:`` lines hold bare paths and commands, so scripts can pick them up.
    """
    lines = [f"summary: {what}"]
    if metrics:
        lines += score_lines(metrics, dataset)
        lines.append("  " + verdict(metrics))
    lines += [f"  {e}" for e in extra]
    if run_dir is not None:
        lines.append(f"run: {run_dir}")
    if report is not None:
        lines.append(f"report: {report}")
        lines.append(f"open: {link(report)}")
    if next_step:
        lines.append(f"next: {next_step}")
    return lines


def run_folder(model_dir: str | Path) -> Path:
    """The folder a user thinks of as the run: ``runs/<id>`` for a run made by ``pipeline.py run``
    (its ``model/`` beside ``config.json``), else the train folder itself."""
    model_dir = Path(model_dir)
    if model_dir.name == "model" and (model_dir.parent / "config.json").is_file():
        return model_dir.parent
    return model_dir


def evaluated(model_dir: str | Path) -> tuple[dict[str, Any] | None, str | None]:
    """``(metrics, dataset name)`` of an evaluated train folder, or ``(None, None)`` before evaluate."""
    from har_vit.core.errors import HarVitError
    from har_vit.stages.report import dataset_name, load_chain

    try:
        chain = load_chain(model_dir)
    except HarVitError:
        return None, None
    return chain.metrics, dataset_name(chain)
