"""The latency benchmarks' method: interleaved timing, and a baseline that computes what the model computes."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from bench_latency import time_calls  # noqa: E402
from bench_onnx_graph import previous_attention, previous_forms  # noqa: E402

from har_vit.model import create_model, layers  # noqa: E402


def test_runtimes_are_timed_in_interleaved_rounds():
    calls: list[str] = []
    runs = {name: (lambda x, name=name: calls.append(name)) for name in ("a", "b")}
    timed = time_calls(runs, None, repeats=10, warmup=2, cuda=False, rounds=3)
    # Warm-up first, then rounds of ceil(10 / 3) = 4 calls of each runtime in turn.
    assert calls == ["a"] * 2 + ["b"] * 2 + (["a"] * 4 + ["b"] * 4) * 3
    for stats in timed.values():
        assert stats["timed_calls"] == 12 and len(stats["round_medians_ms"]) == 3
        assert 0 <= stats["median_ms"] <= stats["p90_ms"]


@pytest.mark.parametrize("name", ["tiny_ws", "seed"])
def test_the_previous_layer_forms_compute_the_same_tensors(name):
    """The onnx-graph benchmark's baseline (the layers before their rewrite) gives the same outputs
    and gradients, bit for bit, in training (dropout on) and in eval: only the exported graph differs."""
    torch.manual_seed(0)
    model = create_model(name, window=40)  # 10 patches -> 5 (odd: padded) -> 3
    x = torch.randn(4, 40, 3)

    def outputs(train: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.train(train)
        model.zero_grad()
        torch.manual_seed(1)
        y = model(x)
        y.square().sum().backward()
        return y.detach(), [p.grad.clone() for p in model.parameters()]

    for train in (True, False):
        now_y, now_g = outputs(train)
        with previous_forms():
            assert layers.Attention.forward is previous_attention
            then_y, then_g = outputs(train)
        assert torch.equal(now_y, then_y)
        assert all(torch.equal(a, b) for a, b in zip(now_g, then_g))
