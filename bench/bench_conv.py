#!/usr/bin/env python
"""A CPU training step with the MLP's depthwise conv run in 2D (now) against 1D (before), side by side in one run.

``Mlp`` keeps an ``nn.Conv1d`` (its parameters and checkpoints are unchanged) but runs its
weights through ``F.conv2d`` over ``(B, H, N, 1)``: oneDNN has a fast 2D depthwise kernel
for the backward pass, where PyTorch's 1D depthwise backward is a slow generic one. The
previous form (``self.conv(x.transpose(1, 2))``) is kept here, and only here, as the baseline.

For each model: one model in training mode (dropout and drop-path on), AdamW, cross-entropy
on a fixed random batch; the two forms take turns in ``--rounds`` rounds of ``--steps``
timed steps each (after one untimed step per round), so that the VM's drifting speed touches
both alike. Reported: the median step time of each, its rounds, and the ratio. The two
forms compute the same convolution; their gradients differ only by float rounding (the
largest difference after one step is in the JSON).

Writes ``bench/results/conv_cpu.json``.

    python bench/bench_conv.py                      # tiny_ws and tiny, batch 128, 1 thread
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine  # noqa: E402

from har_vit.core.io import write_json  # noqa: E402
from har_vit.model import create_model, layers  # noqa: E402
from har_vit.model.layers import Mlp  # noqa: E402


def previous_mlp(self: Mlp, x: torch.Tensor) -> torch.Tensor:
    """``Mlp.forward`` before the change: the depthwise conv as a Conv1d over ``(B, H, N)``."""
    x = self.fc1(x)
    if self.conv is not None:
        x = x + self.conv(x.transpose(1, 2)).transpose(1, 2)
    return self.drop(self.fc2(self.drop(self.act(x))))


@contextmanager
def previous_form() -> Iterator[None]:
    saved = layers.Mlp.forward
    layers.Mlp.forward = previous_mlp
    try:
        yield
    finally:
        layers.Mlp.forward = saved


def measure(name: str, batch: int, steps: int, rounds: int) -> dict[str, Any]:
    torch.manual_seed(0)
    model = create_model(name).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(batch, model.cfg.window, model.cfg.channels)
    y = torch.randint(0, model.cfg.num_classes, (batch,))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    def grads() -> list[torch.Tensor]:
        model.eval()  # no dropout: both forms see the same network
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        model.train()
        return [p.grad.clone() for p in model.parameters()]

    now = grads()
    with previous_form():
        then = grads()
    diff = max(float((a - b).abs().max()) for a, b in zip(now, then))
    per_round: dict[str, list[float]] = {"previous": [], "current": []}
    for _ in range(rounds):
        for form in ("previous", "current"):
            with previous_form() if form == "previous" else nullcontext():
                step()
                t0 = time.perf_counter()
                for _ in range(steps):
                    step()
                per_round[form].append((time.perf_counter() - t0) / steps * 1e3)
    med = {k: statistics.median(v) for k, v in per_round.items()}
    return {"model": name, "batch": batch, "steps_per_round": steps, "rounds": rounds,
            "step_ms": {k: round(v, 2) for k, v in med.items()},
            "round_step_ms": {k: [round(a, 2) for a in v] for k, v in per_round.items()},
            "windows_per_s": {k: round(batch / v * 1e3, 1) for k, v in med.items()},
            "speedup": med["previous"] / med["current"],
            "rounds_current_faster": sum(a > b for a, b in zip(per_round["previous"], per_round["current"])),
            "largest_gradient_difference": diff}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["tiny_ws", "tiny"])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(RESULTS / "conv_cpu.json"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    rows = []
    for name in a.models:
        r = measure(name, a.batch, a.steps, a.rounds)
        rows.append(r)
        print(f"{name:8s} batch {a.batch}  {a.threads} thr  step {r['step_ms']['previous']:.1f} -> {r['step_ms']['current']:.1f} ms "
              f"({r['speedup']:.3f}x; current faster in {r['rounds_current_faster']} of {a.rounds} rounds)  "
              f"largest gradient difference {r['largest_gradient_difference']:.1e}", flush=True)
    write_json(Path(a.out), {"benchmark": "bench_conv", "machine": machine(), "device": "cpu", "dtype": "float32",
                             "threads": a.threads, "batch": a.batch, "steps": a.steps, "rounds": a.rounds,
                             "input": "a fixed random batch (batch, 128, 3), random weights (seed 0), training mode",
                             "rows": rows})
    print(f"-> {a.out}")


if __name__ == "__main__":
    main()
