#!/usr/bin/env python
"""Accuracy on unseen people: 6-fold cross-validation grouped by user on the real WISDM v1.1 windows.

Protocol: the 36 users are split into 6 folds of 6 users (sorted user ids, fold k =
users 6k+1 .. 6k+6). For each fold and seed, the fold's users are the test set; the
trainer picks validation users among the other 30 by seed (``subject`` split with
``--test-users``), and model selection uses validation only. Reported: mean and std
over folds x seeds of test accuracy and macro F1.

Configurations (``--configs``): the article's network ``seed``, the best variant
``tiny`` alone, and ``tiny`` with one lever each (``aug``: rotation, scaling, jitter and
time warp; ``mix``: Mixup and CutMix; ``distill``: soft targets from the ``seed`` run
of the same fold and seed; ``pretrain``: initialised from a ``tiny`` trained on the
WISDM 2019 phone logs (18 activities, 22 other people), head replaced), and ``combo``.

Runs are ordered fold by fold so that a partial run covers every configuration on the
first folds; results are appended to the JSON after each run and finished runs are
reused, so the script resumes where it stopped.

    python bench/bench_cv.py --epochs 20 --seeds 0 1 2 --configs tiny aug mix pretrain combo
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from har_vit import evaluate, ingest, train, windows  # noqa: E402
from har_vit.efficiency import cpu_model_name  # noqa: E402
from har_vit.io import write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("HAR_VIT_SHARED_DATA", ROOT.parent / "shared" / "data"))
AUG = dict(rotate=180.0, scale=0.1, jitter=0.05, time_warp=0.1)
MIX = dict(mixup=0.2, cutmix=0.2)
CONFIGS = {
    "seed": dict(model="seed"),
    "tiny": dict(model="tiny"),
    "aug": dict(model="tiny", **AUG),
    "mix": dict(model="tiny", **MIX),
    "distill": dict(model="tiny", distill_alpha=0.5, distill_temperature=4.0),  # teacher: seed run of the fold
    "pretrain": dict(model="tiny"),  # init: the WISDM 2019 run
    "combo": dict(model="tiny", **AUG),  # + pretrain (see run_one)
}


def pretrain_run(work: Path, epochs: int, device: str) -> Path:
    """A tiny model trained on WISDM 2019 phone windows, z-scored per user like the v1.1 copy."""
    out = work / "pretrain" / "model"
    if (out / "manifest.json").is_file():
        return out
    ing, win = work / "pretrain" / "ingest", work / "pretrain" / "windows"
    if not (win / "manifest.json").is_file():
        ingest.run(ingest.IngestConfig(dataset="wisdm2019", data_path=str(SHARED / "wisdm2019"), progress=False), ing)
        windows.run(windows.WindowConfig(), ing, win)
    w = windows.load_windows(win)
    X = w["X"].copy()
    for u in np.unique(w["subject"]):  # per-user z-score, as the v1.1 windows were prepared
        m = w["subject"] == u
        X[m] = (X[m] - X[m].mean(axis=(0, 1))) / (X[m].std(axis=(0, 1)) + 1e-8)
    npz = work / "pretrain" / "zscored.npz"
    np.savez(npz, X=X, y=w["y"], subject=w["subject"], class_names=w["class_names"])
    windows.import_npz(windows.WindowConfig(), npz, work / "pretrain" / "wz")
    train.run(train.TrainConfig(model="tiny", epochs=epochs, progress=False, device=device, seed=0),
              work / "pretrain" / "wz", out)
    return out


def run_one(name: str, fold_users: list[int], seed: int, a: argparse.Namespace, wdir: Path, work: Path) -> dict:
    run_dir = work / name / f"fold{a.fold_ids[fold_users[0]]}-s{seed}"
    if (run_dir / "eval" / "metrics.json").is_file():
        met = json.loads((run_dir / "eval" / "metrics.json").read_text())
    else:
        opts = dict(CONFIGS[name])
        if name == "distill":
            teacher = work / "seed" / run_dir.name
            if not (teacher / "manifest.json").is_file():
                run_one("seed", fold_users, seed, a, wdir, work)
            opts["teacher"] = str(teacher)
        if name in ("pretrain", "combo"):
            opts["init"] = str(pretrain_run(work, a.epochs, a.device))
        cfg = train.TrainConfig(**opts, epochs=a.epochs, seed=seed, test_users=tuple(fold_users), progress=False,
                                device=a.device, threads=a.threads)
        train.run(cfg, wdir, run_dir, resume=(run_dir / "last.pt").is_file())
        met = evaluate.run(evaluate.EvalConfig(skip_latency=True, device=a.device), run_dir)
    return {"config": name, "fold_users": fold_users, "seed": seed, "accuracy": met["accuracy"],
            "macro_f1": met["macro_f1"], "params": met["params"], "flops": met["flops"], "dir": str(run_dir)}


def summarise(runs: list[dict]) -> dict:
    out = {}
    for name in dict.fromkeys(r["config"] for r in runs):
        rs = [r for r in runs if r["config"] == name]
        acc, f1 = np.array([r["accuracy"] for r in rs]), np.array([r["macro_f1"] for r in rs])
        out[name] = {"runs": len(rs), "folds": sorted({r["fold_users"][0] for r in rs}),
                     "seeds": sorted({r["seed"] for r in rs}), "accuracy_mean": acc.mean(), "accuracy_std": acc.std(),
                     "macro_f1_mean": f1.mean(), "macro_f1_std": f1.std(), "params": rs[0]["params"],
                     "flops": rs[0]["flops"]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(SHARED / "wisdm_v1.1" / "wisdm_v1.1_windows128.npz"))
    ap.add_argument("--configs", nargs="+", default=["tiny", "aug", "mix", "pretrain", "combo"], choices=list(CONFIGS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--folds", nargs="+", type=int, default=list(range(6)), help="which of the 6 folds to run")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--work", default=str(ROOT / "bench" / "out" / "cv"))
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "accuracy_cv.json"))
    a = ap.parse_args()
    if not Path(a.data).is_file():
        sys.exit(f"bench_cv: {a.data} not found; pass --data (the real v1.1 windows .npz)")
    work = Path(a.work)
    wdir = work / "windows"
    if not (wdir / "manifest.json").is_file():
        windows.import_npz(windows.WindowConfig(), a.data, wdir)
    users = sorted(int(u) for u in np.unique(np.load(a.data)["subject"]))
    folds = [users[6 * k:6 * k + 6] for k in range(6)]
    a.fold_ids = {f[0]: k for k, f in enumerate(folds)}
    machine = {"cpu": cpu_model_name(), "cores": os.cpu_count(), "torch": torch.__version__,
               "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
               "threads": a.threads or torch.get_num_threads(), "python": platform.python_version()}
    runs: list[dict] = []
    t0 = time.perf_counter()
    plan = [(k, s, c) for k in a.folds for s in a.seeds for c in a.configs]
    for i, (k, s, c) in enumerate(plan, 1):
        r = run_one(c, folds[k], s, a, wdir, work)
        runs.append(r)
        print(f"[{i}/{len(plan)}] fold {k} (users {folds[k][0]}-{folds[k][-1]}) seed {s} {c:9s}: "
              f"acc {r['accuracy']:.4f}  macro F1 {r['macro_f1']:.4f}", flush=True)
        write_json(a.out, {"benchmark": "6-fold grouped-by-user CV on real WISDM v1.1 windows",
                           "protocol": "6 folds of 6 users (sorted ids); fold users = test; validation users "
                                       "chosen by seed among the rest; selection on validation only",
                           "epochs": a.epochs, "planned_runs": len(plan), "finished_runs": len(runs),
                           "seconds": round(time.perf_counter() - t0, 1), "machine": machine,
                           "configs": {c: CONFIGS[c] for c in a.configs}, "summary": summarise(runs), "runs": runs})
    for name, s in summarise(runs).items():
        print(f"{name:9s} acc {s['accuracy_mean']:.4f} ± {s['accuracy_std']:.4f}  macro F1 {s['macro_f1_mean']:.4f} "
              f"± {s['macro_f1_std']:.4f}  ({s['runs']} runs, folds {s['folds']})")


if __name__ == "__main__":
    main()
