#!/usr/bin/env python
"""What int8 weights cost in accuracy: trained runs scored on their own test windows in float32
(eager PyTorch) and with ``predict --runtime onnxruntime-int8`` (onnxruntime, MatMul/Gemm weights
quantised to int8), side by side.

Per run: accuracy and macro F1 both ways, the share of windows whose label is unchanged, and
the largest logit difference relative to the largest logit (what ``INT8_TOLERANCE`` bounds).
Writes ``bench/results/int8_accuracy.json`` with the machine. Latency is ``bench_latency.py``'s.

    # the article's network on the 6 cv6 folds of seed 2 (made by bench_accuracy.py, 30 epochs each)
    python bench/bench_accuracy.py --models seed --recipe article --protocols cv6 --seeds 2 --threads 1
    python bench/bench_int8.py bench/out/accuracy/runs/seed-article-cv6-e30-s2-f*-auto/run
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, ROOT, machine  # noqa: E402

from har_vit.core.checkpoint import load_model  # noqa: E402
from har_vit.core.io import read_manifest, write_json  # noqa: E402
from har_vit.core.runtime import INT8_TOLERANCE, eager, onnxruntime_session, relative_diff  # noqa: E402
from har_vit.stages.export import INPUT_NAME  # noqa: E402
from har_vit.stages.windows import load_windows  # noqa: E402


def shown(p: Path) -> str:
    p = p.resolve()
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p)


def score_run(run_dir: Path, threads: int) -> dict[str, Any]:
    from sklearn.metrics import accuracy_score, f1_score

    man = read_manifest(run_dir, "train")
    model, ckpt = load_model(run_dir, "best")
    w = load_windows(man["inputs"]["upstream"])
    test = np.load(run_dir / "split.npz")["test"]
    X, y = np.ascontiguousarray(w["X"][test], dtype=np.float32), w["y"][test]
    ref = eager(model, ckpt["norm"])
    sess, name = onnxruntime_session(model, ckpt["norm"], X.shape[1], X.shape[2], threads, int8=True)
    # Batches of 256, as committed: dynamic quantisation scales each call's activations by that
    # call's range, so int8 answers for a window move a little with the windows batched beside it.
    f32 = np.concatenate([ref(X[i:i + 256]) for i in range(0, len(X), 256)])
    i8 = np.concatenate([sess.run(None, {INPUT_NAME: X[i:i + 256]})[0] for i in range(0, len(X), 256)])
    p32, p8 = f32.argmax(1), i8.argmax(1)
    cfg = man["config"]
    return {"run": shown(run_dir), "model": man["model"], "seed": cfg["seed"], "test_users": cfg.get("test_users"),
            "test_windows": int(len(X)), "int8_runtime": name,
            "float32": {"accuracy": float(accuracy_score(y, p32)), "macro_f1": float(f1_score(y, p32, average="macro"))},
            "int8": {"accuracy": float(accuracy_score(y, p8)), "macro_f1": float(f1_score(y, p8, average="macro"))},
            "label_agreement": float((p32 == p8).mean()), "max_relative_logit_diff": relative_diff(i8, f32)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="train run folders (best.pt, split.npz, manifest.json)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=RESULTS / "int8_accuracy.json")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    rows = []
    for run_dir in a.runs:
        r = score_run(run_dir, a.threads)
        rows.append(r)
        print(f"{r['run']}: macro F1 float32 {r['float32']['macro_f1']:.4f}, int8 {r['int8']['macro_f1']:.4f}; "
              f"labels unchanged {r['label_agreement']:.2%}; max relative logit diff {r['max_relative_logit_diff']:.3f}",
              flush=True)
    delta = [r["int8"]["macro_f1"] - r["float32"]["macro_f1"] for r in rows]
    summary = {"runs": len(rows), "macro_f1_delta_mean": float(np.mean(delta)), "macro_f1_delta_min": float(min(delta)),
               "macro_f1_delta_max": float(max(delta)), "label_agreement_min": min(r["label_agreement"] for r in rows),
               "max_relative_logit_diff": max(r["max_relative_logit_diff"] for r in rows),
               "int8_tolerance": INT8_TOLERANCE}
    print(f"{len(rows)} runs: macro F1 int8 - float32 mean {summary['macro_f1_delta_mean']:+.4f} "
          f"(min {summary['macro_f1_delta_min']:+.4f}, max {summary['macro_f1_delta_max']:+.4f}); "
          f"labels unchanged >= {summary['label_agreement_min']:.2%}")
    write_json(a.out, {"benchmark": "bench_int8", "machine": machine(), "threads": a.threads,
                       "float32": "eager PyTorch", "int8": "onnxruntime dynamic quantisation of MatMul/Gemm weights "
                                                           "(predict --runtime onnxruntime-int8)",
                       "command": "python bench/bench_int8.py " + " ".join(r["run"] for r in rows),
                       "summary": summary, "rows": rows})
    print(f"-> {a.out}")


if __name__ == "__main__":
    main()
