#!/usr/bin/env python
"""Inference latency of each runtime side by side, in one run: eager PyTorch, frozen TorchScript,
onnxruntime (as ``predict`` uses it; ``evaluate`` fixes the batch dimension, a row of its own),
onnxruntime with int8 weights (``predict --runtime onnxruntime-int8``: not the same logits,
its ``dtype`` says so; its accuracy is ``bench/bench_int8.py``'s), and a CUDA graph when a GPU is present.

Each model and batch size is timed in a fresh process (batch-1 figures were about 1.5x worse
after batch-256 runs in the same process); there every runtime gets the same random windows, ``--warmup``
untimed calls and ``--repeats`` timed ones (median and p90 of per-call wall time; CUDA
calls synchronised), interleaved in ``--rounds`` rounds (each round times every runtime in
turn), so that a drift in the VM's speed during the run touches every runtime alike; each
row keeps its ``round_medians_ms``. Runtimes other than eager are first held to eager's logits (relative
difference, as in ``har_vit.core.runtime``). Writes ``bench/results/latency_<device>.json``
with the machine, versions, threads, batch sizes and repeats.

    python bench/bench_latency.py                                  # tiny_ws, tiny, seed; batch 1 and 256; torch's threads
    python bench/bench_latency.py --threads 1 --out bench/results/latency_cpu_threads1.json
    python bench/bench_latency.py --batches 1 --threads 1 2 --out bench/results/latency_cpu_batch1_threads.json
    python bench/bench_latency.py --models tiny_ws --members 1 3 --batches 1 --threads 1 --out bench/results/latency_cpu_ensemble.json

``--threads`` takes several counts: each model and batch is then timed at each count, one fresh
process after another, and every row names its ``threads`` (side by side in one run: at batch 1 a
small model can answer sooner on one thread than on two, whose hand-offs cost more than they save).
``--members`` likewise: each model is also timed as an ensemble of that many (``train --members``),
rows named ``MODEL x K``.
"""
from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine  # noqa: E402

from har_vit.core.io import write_json  # noqa: E402
from har_vit.core.runtime import cuda_graph_runtime, eager, onnxruntime_session, relative_diff  # noqa: E402
from har_vit.model import create_model  # noqa: E402
from har_vit.stages.export import INPUT_NAME, RawInputModel  # noqa: E402

# Batch-1 targets: the default model's (tiny_ws; tiny until 2026-12-02) and the article's network.
TARGETS_MS = {("cpu", "tiny_ws"): 0.25, ("cpu", "tiny"): 0.25, ("cpu", "seed"): 1.0,
              ("cuda", "tiny_ws"): 0.15, ("cuda", "tiny"): 0.15, ("cuda", "seed"): 0.15}
NORM = {"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}
ROWS_MARK = "bench_latency rows: "


def torchscript(model: torch.nn.Module, window: int, channels: int) -> Callable[[np.ndarray], np.ndarray]:
    traced = torch.jit.freeze(torch.jit.trace(RawInputModel(model, NORM).eval(), torch.zeros(1, window, channels),
                                              check_trace=False))

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return traced(torch.from_numpy(x)).numpy()
    return run


def time_calls(runs: dict[str, Callable[[Any], Any]], x: Any, repeats: int, warmup: int, cuda: bool,
               rounds: int = 1) -> dict[str, dict[str, Any]]:
    """Per-call wall time of every runtime in ``runs`` on ``x``, interleaved: median, p90, mean and each round's median.

    Every runtime gets ``warmup`` untimed calls, then ``rounds`` rounds in turn, each of
    ``repeats / rounds`` timed calls of every runtime. A VM whose speed drifts during the
    run (this project's moves by up to 2x within minutes) then slows every runtime alike,
    instead of whichever happened to be timed in the slow minute, so the ratios stay fair;
    ``round_medians_ms`` shows the drift.
    """
    for run in runs.values():
        for _ in range(warmup):
            run(x)
    per_round = -(-repeats // rounds)
    ms: dict[str, list[float]] = {name: [] for name in runs}
    rounds_ms: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            got = np.empty(per_round)
            for i in range(per_round):
                if cuda:
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                run(x)
                if cuda:
                    torch.cuda.synchronize()
                got[i] = (time.perf_counter() - t0) * 1e3
            ms[name].extend(got.tolist())
            rounds_ms[name].append(round(float(np.median(got)), 4))
    out = {}
    for name, values in ms.items():
        a = np.asarray(values)
        out[name] = {"median_ms": float(np.median(a)), "p90_ms": float(np.percentile(a, 90)), "mean_ms": float(a.mean()),
                     "timed_calls": len(a), "round_medians_ms": rounds_ms[name]}
    return out


def ort_call(sess: Any) -> Callable[[Any], Any]:
    return lambda x: sess.run(None, {INPUT_NAME: x})[0]


def measure(name: str, batch: int, threads: int, repeats: int, warmup: int, device: str,
            members: int = 1, rounds: int = 1) -> list[dict[str, Any]]:
    """Every runtime of model ``name`` (an ensemble of ``members``) at ``batch``, timed on the same windows: one row each."""
    cuda = device == "cuda"
    torch.manual_seed(0)
    model = create_model(name, members=members).eval()
    T, C = model.cfg.window, model.cfg.channels
    runtimes: dict[str, Callable[[], Callable[[Any], Any]]] = {}
    if cuda:
        ref = eager(model, NORM, torch.device("cuda"))
        runtimes["eager PyTorch (CUDA)"] = lambda: ref
        # What predict and evaluate use on a GPU: numpy in and out, so both rows include the copies.
        runtimes["CUDA graph (batch fixed)"] = lambda: cuda_graph_runtime(model, NORM, torch.device("cuda"), batch)
    else:
        ref = eager(model, NORM)
        runtimes["eager PyTorch"] = lambda: ref
        runtimes["TorchScript (traced, frozen)"] = lambda: torchscript(model, T, C)
        try:
            sess, ort_name = onnxruntime_session(model, NORM, T, C, threads)
            runtimes[ort_name] = lambda: ort_call(sess)
            # What evaluate's latency table uses: a session whose batch dimension is fixed to the batch.
            runtimes[ort_name + ", batch fixed"] = lambda: ort_call(
                onnxruntime_session(model, NORM, T, C, threads, batch=batch)[0])
            int8_sess, int8_name = onnxruntime_session(model, NORM, T, C, threads, batch=batch, int8=True)
            runtimes[int8_name] = lambda: ort_call(int8_sess)
        except ImportError:
            print("bench_latency: onnxruntime not installed; its rows are missing (pip install -e '.[export]')")
    x = np.random.default_rng(batch).standard_normal((batch, T, C)).astype(np.float32)
    want = ref(x)
    runs, parity = {}, {}
    for rt_name, make in runtimes.items():
        runs[rt_name] = make()
        got = runs[rt_name](x)
        got = got.float().cpu().numpy() if isinstance(got, torch.Tensor) else np.asarray(got)
        parity[rt_name] = relative_diff(got, want)
    timed = time_calls(runs, x, repeats, warmup, cuda, rounds)
    rows = []
    for rt_name, stats in timed.items():
        target = TARGETS_MS.get((device, name)) if batch == 1 else None
        rows.append({"model": name if members == 1 else f"{name} x {members}", "members": members, "params": sum(p.numel() for p in model.parameters()), "batch": batch, "threads": threads,
                     "runtime": rt_name, "dtype": "int8 weights" if "int8" in rt_name else "float32", **stats,
                     "windows_per_s": batch / stats["median_ms"] * 1e3,
                     "parity_vs_eager": parity[rt_name], "target_ms": target,
                     "meets_target": None if target is None else stats["median_ms"] <= target})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["tiny_ws", "tiny", "seed"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 256])
    ap.add_argument("--threads", type=int, nargs="+", default=None,
                    help="torch and onnxruntime intra-op threads, one count or several [torch's]")
    ap.add_argument("--members", type=int, nargs="+", default=[1], help="also time ensembles of this many")
    ap.add_argument("--repeats", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=10,
                    help="interleave the runtimes in this many rounds of repeats/rounds calls each (fair under a drifting VM)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--out", default=None)
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: "MODEL:BATCH:MEMBERS", rows as JSON
    a = ap.parse_args()
    counts = a.threads or [torch.get_num_threads()]
    if len(counts) == 1:
        torch.set_num_threads(counts[0])
    if a.device == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_latency: --device cuda but torch sees no GPU")
    if a.one:
        name, batch, k = a.one.split(":")
        print(ROWS_MARK + json.dumps(measure(name, int(batch), counts[0], a.repeats, a.warmup, a.device, int(k), a.rounds)))
        return
    rows = []
    for name, k, batch, threads in itertools.product(a.models, a.members, a.batches, counts):
        # A fresh process per (model, batch, threads): measured here, batch-1 latency of every runtime was
        # about 1.5x worse when batch-256 runs had gone before it in the same process.
        cmd = [sys.executable, __file__, "--one", f"{name}:{batch}:{k}", "--threads", str(threads), "--repeats",
               str(a.repeats), "--warmup", str(a.warmup), "--rounds", str(a.rounds), "--device", a.device]
        done = subprocess.run(cmd, capture_output=True, text=True)
        found = [ln for ln in done.stdout.splitlines() if ln.startswith(ROWS_MARK)]
        if done.returncode or not found:
            sys.exit(f"bench_latency: {name} at batch {batch} failed:\n{done.stderr[-2000:]}")
        for row in json.loads(found[-1].removeprefix(ROWS_MARK)):
            rows.append(row)
            target = row["target_ms"]
            print(f"{row['model']:11s} batch {batch:4d}  {threads} thr  {row['runtime']:66s} median {row['median_ms']:8.3f} ms  "
                  f"p90 {row['p90_ms']:8.3f} ms  parity {row['parity_vs_eager']:.1e}"
                  + ("" if target is None else f"  target {target} ms: {'met' if row['meets_target'] else 'NOT met'}"),
                  flush=True)
    out = Path(a.out) if a.out else RESULTS / f"latency_{a.device}.json"
    write_json(out, {"benchmark": "bench_latency", "machine": machine(), "device": a.device,
                     "threads": counts[0] if len(counts) == 1 else counts,
                     "repeats": a.repeats, "warmup": a.warmup, "rounds": a.rounds, "batches": a.batches,
                     "dtype": "float32, except the rows whose dtype is int8 weights",
                     "input": "random windows (batch, 128, 3); normalisation inside every runtime",
                     "process": "a fresh process per model, batch size and thread count", "rows": rows})
    print(f"-> {out}")


if __name__ == "__main__":
    main()
