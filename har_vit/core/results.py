"""Accuracy rows: many models' test scores summarised in the one format of ``bench/results/accuracy.json``.

A row is ``{model, recipe, protocol, leaky, device, device_name, dtype, epochs, seeds,
per_seed, accuracy_mean, accuracy_std, macro_f1_mean, macro_f1_std, tta_views,
train_seconds_mean, command, measured, machine}``; ``per_seed`` lists ``{seed, fold,
accuracy, macro_f1}`` of every model (``fold`` null outside cross-validation). With
test-time augmentation (``tta_views`` > 1) the scores are those of the averaged views, and
``without_tta`` (in the row and in each ``per_seed`` entry) holds the window-alone scores. ``bench/bench_accuracy.py`` and
``pipeline.py cv`` both write it, so a ``cv`` result can be merged into the results file.

>>> runs = [{"seed": s, "fold": 0, "accuracy": a, "macro_f1": a - 0.1, "train_seconds": 1.0, "device": "cpu",
...          "device_name": "x"} for s, a in ((0, 0.8), (1, 0.9))]
>>> r = summarise("tiny", "default", "cv2", runs, 30, "python pipeline.py cv", {})
>>> round(r["accuracy_mean"], 2), r["seeds"], r["leaky"]
(0.85, [0, 1], False)
"""
from __future__ import annotations

import statistics
import time
from typing import Any, Mapping, Sequence

LEAKY = {"random", "per-stream"}


def summarise(model: str, recipe: str, protocol: str, runs: Sequence[Mapping[str, Any]], epochs: int | None,
              command: str, machine: Mapping[str, Any]) -> dict[str, Any]:
    """One row from the results of every model it covers (see the module docstring)."""
    acc, f1 = [r["accuracy"] for r in runs], [r["macro_f1"] for r in runs]

    def sd(v: list[float]) -> float:
        return statistics.stdev(v) if len(v) > 1 else 0.0

    plain = [r["without_tta"] for r in runs if "without_tta" in r]
    return {
        "model": model, "recipe": recipe, "protocol": protocol, "leaky": protocol in LEAKY,
        "device": runs[0]["device"], "device_name": runs[0]["device_name"], "dtype": "float32",
        "epochs": epochs, "seeds": sorted({r["seed"] for r in runs}),
        "per_seed": [{k: r[k] for k in ("seed", "fold", "accuracy", "macro_f1")} | (
            {k: r[k] for k in ("best_epoch", "epochs_run", "without_tta") if k in r}) for r in runs],
        "accuracy_mean": statistics.fmean(acc), "accuracy_std": sd(acc),
        "macro_f1_mean": statistics.fmean(f1), "macro_f1_std": sd(f1),
        # test-time augmentation: views per window (1 = the window alone), and the plain scores beside
        "tta_views": max(int(r.get("tta_views", 1)) for r in runs),
        **({"without_tta": {"accuracy_mean": statistics.fmean(p["accuracy"] for p in plain),
                            "macro_f1_mean": statistics.fmean(p["macro_f1"] for p in plain)}}
           if len(plain) == len(runs) else {}),
        "train_seconds_mean": statistics.fmean(r["train_seconds"] for r in runs),
        "command": command, "measured": time.strftime("%Y-%m-%d"), "machine": dict(machine),
    }
