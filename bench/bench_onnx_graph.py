#!/usr/bin/env python
"""The onnxruntime graph at batch 1: the model's current layer forms against the previous ones, side by side in one run.

Two layers were rewritten so that their ONNX export needs fewer onnxruntime nodes, with the
same eager numbers:

- ``Attention`` cuts q, k and v from a ``(B, 3H, N, hd)`` view with one ``split`` (it
  unbound a ``(3, B, H, N, hd)`` permute before: a Split and three Squeeze nodes);
- ``PatchMerge1d`` inside a model knows its patch count and pads only an odd one (it padded
  by ``N % 2`` always: a Pad node even for an even count).

The previous forms are kept here, and only here, as the baseline. For each model (random
weights, seed 0) both graphs are exported the way ``fast_runtime`` exports them (train
normalisation inside, opset 17), run by onnxruntime with the batch fixed, and:

- held to eager PyTorch's logits (relative difference, as ``har_vit.core.runtime``);
- counted in nodes after onnxruntime's optimiser;
- timed at ``--batch`` with ``--threads`` intra-op threads, interleaved in ``--rounds`` rounds
  (``bench_latency.time_calls``), so that the VM's drifting speed touches both alike.

Writes ``bench/results/onnx_graph_cpu.json``.

    python bench/bench_onnx_graph.py                    # tiny_ws, tiny, seed; batch 1; 1 thread
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_latency import NORM, time_calls  # noqa: E402
from common import RESULTS, machine  # noqa: E402

from har_vit.core.io import write_json  # noqa: E402
from har_vit.core.runtime import eager, onnxruntime_session, relative_diff  # noqa: E402
from har_vit.model import create_model, layers  # noqa: E402
from har_vit.model.layers import Attention, PatchMerge1d, _fed_attention, noise  # noqa: E402
from har_vit.stages.export import INPUT_NAME  # noqa: E402


def previous_attention(self: Attention, x: torch.Tensor) -> torch.Tensor:
    """``Attention.forward`` before the rewrite (q, k, v unbound from a permuted 5-D view)."""
    B, N, D = x.shape
    qkv = self.qkv(x).reshape(B, N, 3, self.heads, D // self.heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    if noise.current() is not None:
        x = _fed_attention(q, k, v, self.attn_drop if self.training else 0.0)
    else:
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
    return self.proj_drop(self.proj(x.transpose(1, 2).reshape(B, N, D)))


def previous_merge(self: PatchMerge1d, x: torch.Tensor) -> torch.Tensor:
    """``PatchMerge1d.forward`` before the rewrite (a pad by ``N % 2`` whatever ``N``)."""
    B, N, D = x.shape
    x = F.pad(x, (0, 0, 0, N % 2)).reshape(B, -1, 2 * D)
    return self.reduction(self.norm(x)) if self.norm_first else F.relu(self.norm(self.reduction(x)))


@contextmanager
def previous_forms() -> Iterator[None]:
    saved = layers.Attention.forward, layers.PatchMerge1d.forward
    layers.Attention.forward, layers.PatchMerge1d.forward = previous_attention, previous_merge
    try:
        yield
    finally:
        layers.Attention.forward, layers.PatchMerge1d.forward = saved


def session(model: torch.nn.Module, batch: int, threads: int, tmp: Path, tag: str) -> tuple[Any, int]:
    """The session ``fast_runtime`` makes (batch fixed), and its node count after onnxruntime's optimiser."""
    import onnx

    optimised = tmp / f"{tag}.opt.onnx"
    sess, _ = onnxruntime_session(model, NORM, model.cfg.window, model.cfg.channels, threads, batch, optimised_to=optimised)
    return sess, len(onnx.load(str(optimised)).graph.node)


def measure(name: str, batch: int, threads: int, repeats: int, warmup: int, rounds: int) -> dict[str, Any]:
    torch.manual_seed(0)
    model = create_model(name).eval()
    x = np.random.default_rng(batch).standard_normal((batch, model.cfg.window, model.cfg.channels)).astype(np.float32)
    want = eager(model, NORM)(x)
    with tempfile.TemporaryDirectory(prefix="har-vit-graph-") as tmp:
        with previous_forms():
            before, before_nodes = session(model, batch, threads, Path(tmp), "previous")
        after, after_nodes = session(model, batch, threads, Path(tmp), "current")
    runs = {"previous": lambda v: before.run(None, {INPUT_NAME: v})[0],
            "current": lambda v: after.run(None, {INPUT_NAME: v})[0]}
    parity = {k: relative_diff(run(x), want) for k, run in runs.items()}
    timed = time_calls(runs, x, repeats, warmup, cuda=False, rounds=rounds)
    return {"model": name, "batch": batch, "threads": threads,
            "nodes": {"previous": before_nodes, "current": after_nodes},
            "parity_vs_eager": parity, **{f"{k}_ms": v for k, v in timed.items()},
            "speedup": timed["previous"]["median_ms"] / timed["current"]["median_ms"],
            "rounds_current_faster": sum(a > b for a, b in zip(timed["previous"]["round_medians_ms"],
                                                               timed["current"]["round_medians_ms"]))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["tiny_ws", "tiny", "seed"])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2000)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--out", default=str(RESULTS / "onnx_graph_cpu.json"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    rows = []
    for name in a.models:
        row = measure(name, a.batch, a.threads, a.repeats, a.warmup, a.rounds)
        rows.append(row)
        print(f"{name:8s} batch {a.batch}  {a.threads} thr  nodes {row['nodes']['previous']} -> {row['nodes']['current']}  "
              f"median {row['previous_ms']['median_ms']:.4f} -> {row['current_ms']['median_ms']:.4f} ms "
              f"({row['speedup']:.3f}x; current faster in {row['rounds_current_faster']} of {a.rounds} rounds)  "
              f"parity {row['parity_vs_eager']['previous']:.1e} / {row['parity_vs_eager']['current']:.1e}", flush=True)
    write_json(Path(a.out), {"benchmark": "bench_onnx_graph", "machine": machine(), "device": "cpu",
                             "dtype": "float32", "batch": a.batch, "threads": a.threads, "repeats": a.repeats,
                             "warmup": a.warmup, "rounds": a.rounds,
                             "input": "random windows (batch, 128, 3), random weights (seed 0); normalisation inside",
                             "rows": rows})
    print(f"-> {a.out}")


if __name__ == "__main__":
    main()
