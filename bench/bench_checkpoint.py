#!/usr/bin/env python
"""Which checkpoint to test: ``best.pt`` (highest validation macro F1) against ``last.pt``.

Every run folder that ``bench_accuracy.py`` trained and cached in ``--work`` holds both. This
scores each on its own test split as ``bench_accuracy.py`` scores ``best.pt`` (the same windows,
normalisation and test-time augmentation of the recipe; each best.pt score is checked against
the runs log, ``matches_log``), and writes the pairs and their mean difference to
``bench/results/checkpoint_choice.json``. Nothing is trained: a run folder missing from
``--work``, or trained with other settings than its recipe's today, is listed under ``missing``
(rerun its ``bench_accuracy.py`` command).

The question it answers: with 2 validation users (WISDM 2019) or 2-3 (v1.1), is the epoch that
validation picks a better model for unseen test users than the one training ended on (early
stopping ends a run ``--patience`` epochs after its best one, or at ``--epochs``)?

    python bench/bench_checkpoint.py --recipes default rot180 --protocols users29-36 w2019-subject --seeds 0 1 2 3 4 5
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_accuracy import (PROTOCOLS, RECIPES, RUNS_LOG, config_of, jobs, predict_test,  # noqa: E402
                            read_runs_log, run_dir_of, scored_tag, scores, settings_differ, tta_of, windows_for)
from common import RESULTS, ROOT, machine  # noqa: E402

from har_vit.core.io import MANIFEST, write_json  # noqa: E402
from har_vit.stages.windows import load_windows  # noqa: E402


def score_checkpoint(run_dir: Path, which: str, w: dict[str, np.ndarray], n_tta: int) -> dict[str, Any]:
    pred, y, ckpt = predict_test(run_dir, which, w, n_tta)
    return {**scores(y, pred.log_proba.argmax(1).numpy()), "epoch": int(ckpt["epoch"])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny_ws")
    ap.add_argument("--recipes", nargs="+", default=["default"], choices=sorted(RECIPES))
    ap.add_argument("--protocols", nargs="+", default=["users29-36", "w2019-subject"], choices=PROTOCOLS)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=None, help="the rows' --epochs, when they had one")
    ap.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"], help="the rows' --device")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", default=str(ROOT / "bench" / "out" / "accuracy"), help="bench_accuracy.py's cache")
    ap.add_argument("--runs-log", default=str(RUNS_LOG))
    ap.add_argument("--out", default=str(RESULTS / "checkpoint_choice.json"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    work = Path(a.work)
    logged = read_runs_log(Path(a.runs_log))
    pairs: list[dict[str, Any]] = []
    missing: list[str] = []
    for protocol in a.protocols:
        w = load_windows(windows_for(protocol, work))
        for recipe in a.recipes:
            for job in jobs(protocol, a.seeds):
                tag = scored_tag(a.model, recipe, protocol, job, a.epochs, a.device)
                run_dir = run_dir_of(a.model, recipe, protocol, job, a, work)
                if not (run_dir / MANIFEST).is_file() or not (run_dir / "last.pt").is_file() or settings_differ(
                        run_dir, config_of(a.model, recipe, protocol, job, a, work)):
                    missing.append(tag)
                    continue
                best, last = (score_checkpoint(run_dir, k, w, tta_of(recipe)) for k in ("best", "last"))
                same = tag in logged and all(logged[tag][k] == best[k] for k in ("accuracy", "macro_f1"))
                pairs.append({"recipe": recipe, "protocol": protocol, "seed": job["seed"], "fold": job["fold"],
                              "best": best, "last": last, "matches_log": same,
                              "last_minus_best_macro_f1": last["macro_f1"] - best["macro_f1"]})
                print(f"{protocol:13s} {recipe:10s} seed {job['seed']} fold {job['fold']}: best.pt (epoch "
                      f"{best['epoch']}) {best['macro_f1']:.4f}{'' if same else ' (NOT the logged score)'}  last.pt "
                      f"(epoch {last['epoch']}) {last['macro_f1']:.4f}  {last['macro_f1'] - best['macro_f1']:+.4f}",
                      flush=True)
    summary = []
    for key in sorted({(p["recipe"], p["protocol"]) for p in pairs}):
        d = [p["last_minus_best_macro_f1"] for p in pairs if (p["recipe"], p["protocol"]) == key]
        summary.append({"recipe": key[0], "protocol": key[1], "runs": len(d), "mean_last_minus_best_macro_f1":
                        statistics.fmean(d), "last_better": sum(x > 0 for x in d), "best_better": sum(x < 0 for x in d)})
        print(f"== {key[1]} {key[0]}: last.pt - best.pt macro F1 {statistics.fmean(d):+.4f} mean over {len(d)} runs "
              f"(last better in {summary[-1]['last_better']}, best better in {summary[-1]['best_better']})")
    if missing:
        print(f"not in {work} (train them with bench_accuracy.py first): {', '.join(missing)}")
    write_json(Path(a.out), {
        "what": "test macro F1 of each cached bench_accuracy run's best.pt (validation pick) and last.pt (where "
                "training ended), scored as bench_accuracy.py scores best.pt; nothing retrained",
        "model": a.model, "summary": summary, "pairs": pairs, "missing": missing,
        "device": "cpu", "dtype": "float32", "threads": a.threads, "machine": machine(),
        "measured": time.strftime("%Y-%m-%d"), "command": " ".join(["python", "bench/bench_checkpoint.py", *sys.argv[1:]])})
    print(f"-> {a.out}")


if __name__ == "__main__":
    main()
