"""What a model costs: parameters, FLOPs, weights size, latency and throughput.

Every figure is returned with how it was measured, because a latency without its
device, threads, batch and repeat count is not a figure anyone can compare:

- params: ``numel`` summed over ``model.parameters()`` (trainable: ``requires_grad``).
- FLOPs: fvcore ``FlopCountAnalysis`` of one window (batch 1) in eval mode. fvcore
  counts one multiply-add as one FLOP, so these are MACs; element-wise ops it has no
  handle for (add, GELU, padding...) are skipped and listed.
- weights: bytes of every tensor in ``state_dict()`` (parameters and buffers), in MB
  of 10^6 bytes; the checkpoint file adds pickling overhead on top.
- latency: wall time of ``model(x)`` under ``torch.inference_mode``, ``warmup``
  untimed calls, then ``repeats`` timed calls; median and p90 in ms. On CUDA the
  device is synchronised before and after every timed call, so a call's time
  includes its kernels rather than only their launch.
- throughput: ``batch / median latency`` in windows per second.

>>> from har_vit.model import create_model
>>> eff = measure(create_model("tiny"), window=128, channels=3, repeats=100, batch_sizes=(1,))  # doctest: +SKIP
>>> sorted(eff["latency_ms"]["cpu"]["batch_1"])                                                 # doctest: +SKIP
['mean', 'median', 'p90']
"""
from __future__ import annotations

import copy
import os
import platform
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from har_vit.core.errors import UsageError

MIN_REPEATS = 100  # fewer timed runs make the p90 a statement about two or three samples


def count_params(model: nn.Module) -> tuple[int, int]:
    """``(total, trainable)`` parameter counts (a model's own ``num_params`` first: a forest's are buffers)."""
    if hasattr(model, "num_params"):
        return int(model.num_params()), int(model.num_params(trainable_only=True))
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable


def weights_mb(model: nn.Module) -> float:
    """Bytes of the ``state_dict`` tensors (parameters and buffers) in MB (10^6 bytes)."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 1e6


def count_flops(model: nn.Module, window: int, channels: int) -> tuple[int, dict[str, int], str]:
    """``(flops, skipped ops -> calls, note)`` for one ``(1, window, channels)`` window.

    Uses the model package's fvcore counter, which also counts the fused attention op
    fvcore itself does not know. Runs on a CPU copy so that the caller's model stays put.
    """
    from har_vit.model import count_flops as fvcore_flops

    cpu_model = copy.deepcopy(model).cpu()
    flops, skipped = fvcore_flops(cpu_model, torch.zeros(1, window, channels))
    note = (f"fvcore FlopCountAnalysis at batch 1, input (1, {window}, {channels}), eval mode; "
            "one multiply-add counted as one FLOP (i.e. MACs)")
    if skipped:
        note += "; ops not counted: " + ", ".join(f"{op} x{n}" for op, n in sorted(skipped.items()))
    return flops, skipped, note


def cpu_model_name() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def machine() -> dict[str, Any]:
    """What a timing depends on: CPU, cores, torch threads, GPU, versions, and the load at the time."""
    return {
        "cpu": cpu_model_name(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__, "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "python": platform.python_version(),
    }


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; asking for absent CUDA is a UsageError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("device 'cuda' requested but torch sees no CUDA GPU; use --device cpu or auto")
    if name not in ("cpu", "cuda"):
        raise UsageError(f"device '{name}' is not one of auto, cuda, cpu")
    return torch.device(name)


def device_label(device: torch.device) -> str:
    """Human name of a device: the GPU's name on CUDA, the CPU model otherwise."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model_name()


def time_forward(model: nn.Module, x: torch.Tensor, repeats: int, warmup: int) -> np.ndarray:
    """Milliseconds of each of ``repeats`` timed ``model(x)`` calls after ``warmup`` untimed ones."""
    cuda = x.device.type == "cuda"
    times = np.empty(repeats)
    with torch.inference_mode():
        for _ in range(warmup):
            model(x)
        for i in range(repeats):
            if cuda:
                torch.cuda.synchronize(x.device)  # do not time work queued before this call
            t0 = time.perf_counter()
            model(x)
            if cuda:
                torch.cuda.synchronize(x.device)  # wait for the kernels, not only their launch
            times[i] = (time.perf_counter() - t0) * 1e3
    return times


def latency_on(model: nn.Module, device: torch.device, window: int, channels: int, batch_sizes: Sequence[int],
               repeats: int, warmup: int) -> tuple[dict[str, Any], dict[str, float]]:
    """Latency stats and throughput of ``model`` on ``device`` for each batch size."""
    model = copy.deepcopy(model).to(device).eval()
    gen = torch.Generator().manual_seed(0)
    latency: dict[str, Any] = {}
    throughput: dict[str, float] = {}
    for batch in batch_sizes:
        x = torch.randn(batch, window, channels, generator=gen).to(device)
        ms = time_forward(model, x, repeats, warmup)
        median = float(np.median(ms))
        latency[f"batch_{batch}"] = {"median": median, "p90": float(np.percentile(ms, 90)), "mean": float(ms.mean())}
        throughput[f"batch_{batch}"] = batch / (median / 1e3)
    latency.update(device_name=device_label(device), repeats=repeats, warmup=warmup)
    return latency, throughput


def measure(model: nn.Module, window: int, channels: int, *, devices: Sequence[str] = ("cpu",),
            batch_sizes: Sequence[int] = (1, 256), repeats: int = MIN_REPEATS, warmup: int = 10,
            threads: int | None = None, latency: bool = True) -> dict[str, Any]:
    """Params, FLOPs, weights size and (unless ``latency=False``) latency/throughput per device.

    ``threads`` sets torch's intra-op CPU threads for the CPU timing only (restored
    afterwards); ``None`` keeps torch's current count. The count used is recorded.
    Returned keys: ``params``, ``trainable_params``, ``flops``, ``flops_note``,
    ``flops_unsupported``, ``weights_mb``, ``latency_ms`` ({device: {"batch_<n>":
    {median, p90, mean}, threads?, device_name, repeats, warmup}}),
    ``throughput_windows_per_s`` ({device: {"batch_<n>": windows/s}}), ``measured_with``.
    """
    if repeats < 1 or warmup < 0 or not batch_sizes or min(batch_sizes) < 1:
        raise UsageError(f"bad timing set-up: repeats {repeats}, warmup {warmup}, batch sizes {tuple(batch_sizes)}; "
                         "use repeats >= 1, warmup >= 0 and positive batch sizes")
    params, trainable = count_params(model)
    flops, skipped, note = count_flops(model, window, channels)
    out: dict[str, Any] = {
        "params": params, "trainable_params": trainable, "flops": flops, "flops_note": note,
        "flops_unsupported": skipped, "weights_mb": weights_mb(model),
        "latency_ms": {}, "throughput_windows_per_s": {},
        "measured_with": {"torch": torch.__version__, "cpu_model": cpu_model_name(),
                          "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                          "latency_measured": latency},
    }
    if not latency:
        return out
    for name in devices:
        device = resolve_device(name)
        saved = torch.get_num_threads()
        if device.type == "cpu" and threads is not None:
            torch.set_num_threads(threads)
        try:
            lat, thr = latency_on(model, device, window, channels, batch_sizes, repeats, warmup)
            if device.type == "cpu":
                lat["threads"] = torch.get_num_threads()
        finally:
            torch.set_num_threads(saved)
        out["latency_ms"][device.type] = lat
        out["throughput_windows_per_s"][device.type] = thr
    return out


def time_runtime(run: Any, window: int, channels: int, batch_sizes: Sequence[int], repeats: int,
                 warmup: int) -> tuple[dict[str, Any], dict[str, float]]:
    """Latency stats and throughput of a NumPy runtime (:mod:`har_vit.core.runtime`) on random windows."""
    rng = np.random.default_rng(0)
    latency: dict[str, Any] = {}
    throughput: dict[str, float] = {}
    for batch in batch_sizes:
        x = rng.standard_normal((batch, window, channels)).astype(np.float32)
        for _ in range(warmup):
            run(x)
        ms = np.empty(repeats)
        for i in range(repeats):
            t0 = time.perf_counter()
            run(x)
            ms[i] = (time.perf_counter() - t0) * 1e3
        median = float(np.median(ms))
        latency[f"batch_{batch}"] = {"median": median, "p90": float(np.percentile(ms, 90)), "mean": float(ms.mean())}
        throughput[f"batch_{batch}"] = batch / (median / 1e3)
    latency.update(device_name=cpu_model_name(), repeats=repeats, warmup=warmup)
    return latency, throughput


def efficiency_rows(eff: dict[str, Any]) -> list[dict[str, Any]]:
    """One ``{metric, value, unit, how}`` row per figure of :func:`measure`, for CSV and reports."""
    rows = [
        dict(metric="params", value=eff["params"], unit="count", how="numel summed over model.parameters()"),
        dict(metric="trainable_params", value=eff["trainable_params"], unit="count",
             how="parameters with requires_grad"),
        dict(metric="flops", value=eff["flops"], unit="FLOPs per window", how=eff["flops_note"]),
        dict(metric="weights_mb", value=round(eff["weights_mb"], 4), unit="MB (10^6 bytes)",
             how="bytes of all state_dict tensors (parameters and buffers)"),
    ]
    torch_v = eff["measured_with"]["torch"]
    for dev, lat in eff["latency_ms"].items():
        setting = f"{dev.split('_')[0].upper()} {lat['device_name']}"
        if "threads" in lat:
            setting += f", {lat['threads']} thread{'s' if lat['threads'] != 1 else ''}"
        if lat.get("runtime"):  # a runtime other than eager PyTorch, held to its logits
            setting += (f", {lat['runtime']}, normalisation inside, logits within {lat['parity']:.1e} of eager "
                        f"PyTorch, {lat['repeats']} timed runs after {lat['warmup']} warm-up")
        else:
            setting += f", eager PyTorch {torch_v}, {lat['repeats']} timed runs after {lat['warmup']} warm-up, " \
                       "inference_mode"
        if dev == "cuda":
            setting += ", cuda.synchronize around each call"
        for key, stats in lat.items():
            if not key.startswith("batch_"):
                continue
            batch = key.removeprefix("batch_")
            for stat in ("median", "p90"):
                rows.append(dict(metric=f"latency_{dev}_{key}_{stat}", value=round(stats[stat], 4), unit="ms",
                                 how=f"{stat} of per-call wall time at batch {batch}; {setting}"))
            throughput = eff["throughput_windows_per_s"][dev][key]
            rows.append(dict(metric=f"throughput_{dev}_{key}", value=round(throughput, 1), unit="windows/s",
                             how=f"batch {batch} / median latency; {setting}"))
    return rows
