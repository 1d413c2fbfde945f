#!/usr/bin/env python
"""How much patience early stopping needs: replayed on the validation curves of cached runs.

Every run folder that ``bench_accuracy.py`` cached holds its per-epoch validation macro F1
(``history.json``). For each patience P up to the one the runs were trained with, this replays
early stopping on those curves: the epoch a run would have stopped at, and how much validation
macro F1 the stop would have cost against the run's own best. Nothing is trained and no test
score is used. Writes ``bench/results/patience.json``.

    python bench/bench_patience.py --recipes default rot180 rot30
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, ROOT, machine  # noqa: E402

from har_vit.core.io import write_json  # noqa: E402


def replay(curve: list[float], patience: int) -> tuple[int, float]:
    """(the epoch early stopping with ``patience`` ends at, the best validation score it kept)."""
    best, best_epoch = float("-inf"), 0
    for epoch, score in enumerate(curve, 1):
        if score > best:
            best, best_epoch = score, epoch
        if epoch - best_epoch >= patience:
            return epoch, best
    return len(curve), best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny_ws")
    ap.add_argument("--recipes", nargs="+", default=["default", "rot180", "rot30"],
                    help="run folders named <model>-<recipe>-... (default and rot30 share folders on v1.1)")
    ap.add_argument("--patience", nargs="+", type=int, default=[3, 5, 7, 10])
    ap.add_argument("--work", default=str(ROOT / "bench" / "out" / "accuracy"), help="bench_accuracy.py's cache")
    ap.add_argument("--out", default=str(RESULTS / "patience.json"))
    a = ap.parse_args()
    curves: dict[str, list[dict[str, Any]]] = {"v1.1": [], "wisdm2019": []}
    for d in sorted(Path(a.work, "runs").glob(f"{a.model}-*/run")):
        tag = d.parent.name
        if not any(tag.startswith(f"{a.model}-{r}-") for r in a.recipes) or not (d / "manifest.json").is_file():
            continue
        config = json.loads((d / "manifest.json").read_text()).get("config", {})
        history = json.loads((d / "history.json").read_text())
        if config.get("members", 1) != 1 or not history or "val_macro_f1" not in history[0]:
            continue
        curve = [float(r["val_macro_f1"]) for r in history]
        curves["wisdm2019" if "-w2019-" in tag else "v1.1"].append(
            {"tag": tag, "trained_patience": config.get("patience"), "epochs": config.get("epochs"), "curve": curve})
    summary = []
    for data, runs in curves.items():
        if not runs:
            continue
        trained = min(r["trained_patience"] or 10**9 for r in runs)  # a replay cannot wait longer than training did
        best_epochs = [r["curve"].index(max(r["curve"])) + 1 for r in runs]
        line = {"data": data, "runs": len(runs), "epochs": max(r["epochs"] for r in runs), "trained_patience": trained,
                "best_epoch_mean": statistics.fmean(best_epochs), "best_epoch_median": statistics.median(best_epochs),
                "epochs_run_mean": statistics.fmean(len(r["curve"]) for r in runs), "replays": []}
        for p in sorted(x for x in a.patience if x <= trained):
            stops = [replay(r["curve"], p) for r in runs]
            loss = [max(r["curve"]) - kept for r, (_, kept) in zip(runs, stops, strict=True)]
            line["replays"].append({"patience": p, "stop_epoch_mean": statistics.fmean(s for s, _ in stops),
                                    "runs_losing_val_f1": sum(x > 0 for x in loss),
                                    "val_f1_loss_mean": statistics.fmean(loss), "val_f1_loss_max": max(loss)})
            print(f"{data:9s} patience {p:2d}: stops at epoch {line['replays'][-1]['stop_epoch_mean']:.1f} on average; "
                  f"{line['replays'][-1]['runs_losing_val_f1']} of {len(runs)} runs stop before their best epoch, "
                  f"losing {100 * statistics.fmean(loss):.2f} points of validation macro F1 on average "
                  f"({100 * max(loss):.2f} at most)")
        print(f"{data:9s} best validation epoch: mean {line['best_epoch_mean']:.1f}, median {line['best_epoch_median']} "
              f"of {line['epochs']}; runs trained with patience {trained} ran {line['epochs_run_mean']:.1f} epochs")
        summary.append(line)
    write_json(Path(a.out), {
        "what": "early stopping replayed on the per-epoch validation macro F1 of cached bench_accuracy runs "
                "(validation users only; no test score used, nothing trained)",
        "model": a.model, "recipes": a.recipes, "summary": summary,
        "runs": {k: [r["tag"] for r in v] for k, v in curves.items()}, "machine": machine(),
        "measured": time.strftime("%Y-%m-%d"), "command": " ".join(["python", "bench/bench_patience.py", *sys.argv[1:]])})
    print(f"-> {a.out}")


if __name__ == "__main__":
    main()
