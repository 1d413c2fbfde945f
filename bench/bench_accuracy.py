#!/usr/bin/env python
"""Test accuracy and macro F1 on the real WISDM v1.1 windows, per variant, protocol and seed.

Every cell is the real trainer (``har_vit.train.run``: model selection on the
validation split only) followed by scikit-learn metrics of ``best.pt`` on the run's
test split:

- ``random``: random windows 70/10/20 (LEAKY: the same users on both sides);
- ``subject``: users 29-36 are the test set; validation users are drawn from the rest
  by the seed, the remaining users train.

Each (model, protocol) is repeated over ``--seeds`` (split, init, shuffling and
dropout all follow the seed) and reported as mean, std, min and max. Results are
written after every run, so an interrupted grid keeps what finished; ``--append``
adds this invocation's runs to an existing JSON (e.g. a second model with fewer
epochs), each run recording its own options.

Reference (the article's recipe: AdamW 5e-4, StepLR, batch 128, 30 epochs, CPU), seed
model: 0.933 accuracy / 0.916 macro F1 random, 0.827 / 0.760 with users 29-36 held out.
Targets for the best small variant: beat seed on both with <= 10% of its params and
FLOPs, >= 0.96 random, >= 0.87 on users 29-36.

    python bench/bench_accuracy.py --models tiny --seeds 0 1 2 --epochs 15 --threads 1
    python bench/bench_accuracy.py --models seed --seeds 0 --epochs 3 --append
    python bench/bench_accuracy.py --cv --configs tiny aug mix pretrain combo   # levers, 6-fold CV by user
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, ROOT, machine  # noqa: E402

from har_vit.checkpoint import load_model, normalise  # noqa: E402
from har_vit.io import write_json  # noqa: E402
from har_vit.model import create_model, list_models  # noqa: E402
from har_vit.model.vit import count_flops  # noqa: E402
from har_vit.train import SCHEDULES, TrainConfig, run  # noqa: E402
from har_vit.windows import WindowConfig, import_npz, load_windows  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "wisdm_v1.1" / "wisdm_v1.1_windows128.npz"
TEST_USERS = tuple(range(29, 37))
REFERENCE = {"model": "seed", "recipe": "article: AdamW 5e-4, StepLR, batch 128, 30 epochs, CPU",
             "random": {"accuracy": 0.933, "macro_f1": 0.916}, "subject": {"accuracy": 0.827, "macro_f1": 0.760}}
TARGETS = {"params_frac_of_seed": 0.10, "flops_frac_of_seed": 0.10, "random_accuracy": 0.96, "subject_accuracy": 0.87}


def test_metrics(run_dir: Path, w: dict[str, np.ndarray]) -> dict[str, float]:
    """Accuracy and macro F1 of the run's best.pt on its test split (scikit-learn)."""
    from sklearn.metrics import accuracy_score, f1_score

    model, ckpt = load_model(run_dir, "best")
    test = np.load(run_dir / "split.npz")["test"]
    with torch.inference_mode():
        x = normalise(torch.from_numpy(w["X"][test]), ckpt["norm"])
        pred = torch.cat([model(x[i:i + 1024]).argmax(1) for i in range(0, len(x), 1024)]).numpy()
    y = w["y"][test]
    return {"accuracy": float(accuracy_score(y, pred)), "macro_f1": float(f1_score(y, pred, average="macro")),
            "n_test": int(test.size), "best_epoch": int(ckpt["epoch"])}


def spread(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "n": len(values)}


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and spread per (model, protocol, epochs, recipe)."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in runs:
        key = (r["model"], r["protocol"], r["config"]["epochs"], r["config"]["schedule"], r["config"]["lr"])
        groups.setdefault(key, []).append(r)
    out = []
    for (model, protocol, epochs, schedule, lr), rs in groups.items():
        out.append({"model": model, "protocol": protocol, "epochs": epochs, "schedule": schedule, "lr": lr,
                    "seeds": [r["seed"] for r in rs], "params": rs[0]["params"], "flops": rs[0]["flops"],
                    "accuracy": spread([r["test"]["accuracy"] for r in rs]),
                    "macro_f1": spread([r["test"]["macro_f1"] for r in rs]),
                    "train_seconds": spread([r["train_seconds"] for r in rs])})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DATA), help="the v1.1 windows .npz")
    ap.add_argument("--models", nargs="+", default=["seed", "tiny"], choices=list_models())
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--protocols", nargs="+", default=["random", "subject"], choices=["random", "subject"])
    ap.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--schedule", default="cosine", choices=SCHEDULES)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--warmup-epochs", type=float, default=2.0)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--work", default=None, help="folder for windows and run folders [a temporary one]")
    ap.add_argument("--out", default=None, help="JSON path [bench/results/accuracy_<models>.json]")
    ap.add_argument("--append", action="store_true", help="add to the runs already in --out")
    a = ap.parse_args()
    if not Path(a.data).is_file():
        print(f"bench_accuracy: SKIPPED: {a.data} not found; pass --data pointing at wisdm_v1.1_windows128.npz "
              "(see ../shared/data/README.md)")
        return
    if a.threads:
        torch.set_num_threads(a.threads)

    out = Path(a.out) if a.out else RESULTS / f"accuracy_{'_'.join(a.models)}.json"
    previous = json.loads(out.read_text()) if a.append and out.is_file() else {}
    runs: list[dict[str, Any]] = list(previous.get("runs", []))
    invocations = list(previous.get("invocations", [])) + [{"argv": sys.argv[1:], "machine": machine(),
                                                            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}]
    tmp = tempfile.TemporaryDirectory()
    work = Path(a.work or tmp.name)
    windows = work / "windows"
    if not (windows / "manifest.json").is_file():
        import_npz(WindowConfig(), a.data, windows)
    w = load_windows(windows)
    flops = {m: count_flops(create_model(m), torch.zeros(1, 128, 3))[0] for m in a.models}

    def save() -> None:
        write_json(out, {"benchmark": "test accuracy / macro F1 on real WISDM v1.1 windows (128 x 3, 7,292)",
                         "data": str(Path(a.data).resolve()), "reference": REFERENCE, "targets": TARGETS,
                         "invocations": invocations, "runs": runs, "summary": summarise(runs)})

    for protocol in a.protocols:
        for model in a.models:
            for seed in a.seeds:
                cfg = TrainConfig(model=model, epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, schedule=a.schedule,
                                  warmup_epochs=a.warmup_epochs, split=protocol, seed=seed,
                                  test_users=TEST_USERS if protocol == "subject" else (), device=a.device,
                                  threads=a.threads, progress=False)
                run_dir = work / f"{model}-{protocol}-s{seed}-e{a.epochs}-{time.time_ns()}"
                t0 = time.perf_counter()
                m = run(cfg, windows, run_dir)
                wall = time.perf_counter() - t0
                res = test_metrics(run_dir, w)
                runs.append({"model": model, "protocol": protocol, "seed": seed, "params": m["params"],
                             "flops": flops[model], "device": m["device"], "device_name": m["device_name"],
                             "config": m["config"], "split": m["split"], "epochs_run": m["epochs_run"],
                             "best_val_macro_f1": m["best_val_macro_f1"], "train_seconds": m["train_seconds"],
                             "wall_s": round(wall, 1), "windows_per_s": m["windows_per_s"], "test": res})
                save()
                print(f"{protocol:7s} {model:6s} seed {seed}: acc {res['accuracy']:.4f}  macro F1 {res['macro_f1']:.4f}  "
                      f"(best epoch {res['best_epoch']}/{a.epochs}, {wall:.0f} s)", flush=True)

    print("\nmodel  protocol epochs seeds   accuracy mean+-std     macro F1 mean+-std   params      FLOPs")
    for s in summarise(runs):
        print(f"{s['model']:6s} {s['protocol']:8s} {s['epochs']:>6d} {len(s['seeds']):>5d}   "
              f"{s['accuracy']['mean']:.4f} +- {s['accuracy']['std']:.4f}     "
              f"{s['macro_f1']['mean']:.4f} +- {s['macro_f1']['std']:.4f}   {s['params']:>9,} {s['flops']:>10,}")
    ref = REFERENCE
    print(f"reference seed ({ref['recipe']}): random {ref['random']['accuracy']} / {ref['random']['macro_f1']}, "
          f"users 29-36 {ref['subject']['accuracy']} / {ref['subject']['macro_f1']}")
    print(f"-> {out}")
    tmp.cleanup()


if __name__ == "__main__":
    if "--cv" in sys.argv:  # the levers on unseen people: 6-fold grouped-by-user CV (bench_cv.py)
        sys.argv.remove("--cv")
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import bench_cv

        bench_cv.main()
    else:
        main()
