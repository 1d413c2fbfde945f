#!/usr/bin/env python
"""How much each activity moves, in the units the networks see: ``bench/results/motion.json``.

The trainer standardises every channel by its std over the training windows, and the
jitter augmentation adds noise in those units. For each activity this prints the median, over
its windows, of a window's own std per axis divided by the dataset's std of that axis (the
mean over the 3 axes), and the share of its windows whose ratio is below 0.05, the jitter
that was the default until 2026-12-02. Read from the shared WISDM 2019 phone logs (cut 128/64 by the pipeline) and the
shared v1.1 windows, as ``bench_accuracy.py`` reads them; the dataset's std is over all
windows, not one training split; nothing is trained.

    python bench/bench_motion.py
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, ROOT  # noqa: E402

from bench_accuracy import RECIPES, V11, W2019, windows_for  # noqa: E402
from har_vit.core.io import write_json  # noqa: E402
from har_vit.stages.windows import load_windows  # noqa: E402

OLD_JITTER = RECIPES["jitter"]["jitter"]  # the default noise until 2026-12-02


def motion(w: dict[str, Any]) -> list[dict[str, Any]]:
    """Per activity: windows, median relative std (mean over axes) and the share below OLD_JITTER."""
    X = w["X"].astype(np.float64)
    rel = (X.std(axis=1) / X.reshape(-1, X.shape[2]).std(axis=0)).mean(axis=1)  # (N,)
    rows = []
    for k, name in enumerate(w["class_names"]):
        r = rel[w["y"] == k]
        if r.size == 0:  # a class the windows do not hold: nothing to measure
            continue
        rows.append({"activity": str(name), "windows": int(r.size), "median_rel_std": round(float(np.median(r)), 4),
                     "share_below_jitter": round(float((r < OLD_JITTER).mean()), 4)})
    return sorted(rows, key=lambda d: d["median_rel_std"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default=str(ROOT / "bench" / "out" / "accuracy"), help="cache of windows")
    ap.add_argument("--out", default=str(RESULTS / "motion.json"))
    a = ap.parse_args()
    missing = [p for p in (V11, W2019) if not p.exists()]
    if missing:
        print(f"bench_motion: SKIPPED: {', '.join(map(str, missing))} not found (see ../shared/data/README.md)")
        return
    out: dict[str, Any] = {"how": __doc__.split("\n\n")[1].replace("\n", " "), "jitter_compared": OLD_JITTER,
                           "command": "python bench/bench_motion.py"}
    for name, protocol in (("wisdm2019_phone", "w2019-subject"), ("wisdm_v1.1", "users29-36")):
        rows = motion(load_windows(windows_for(protocol, Path(a.work))))
        out[name] = rows
        print(f"== {name}: activity, windows, median window std / dataset std, share of windows below {OLD_JITTER}")
        for r in rows:
            print(f"  {r['activity']:22s} {r['windows']:6d}  {r['median_rel_std']:.4f}  {r['share_below_jitter']:.2f}")
    write_json(Path(a.out), out)
    print(f"-> {a.out}")


if __name__ == "__main__":
    main()
