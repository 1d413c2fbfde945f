"""Helpers shared by the training benchmarks: the machine a figure was measured on, data, output."""
from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
if str(ROOT) not in sys.path:  # run as `python bench/x.py` from anywhere
    sys.path.insert(0, str(ROOT))

from har_vit.core.efficiency import cpu_model_name  # noqa: E402
from har_vit.stages.windows import WindowConfig, import_npz  # noqa: E402


def machine() -> dict[str, Any]:
    """What a timing depends on: CPU, cores, torch threads, GPU, versions, and the load at the time."""
    return {
        "cpu": cpu_model_name(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__, "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "python": platform.python_version(),
    }


def synthetic_windows(folder: Path, n: int, window: int = 128, channels: int = 3, classes: int = 6,
                      users: int = 36, seed: int = 0) -> Path:
    """A WISDM-shaped windows folder (class-dependent sines plus noise), built once and reused."""
    if (folder / "windows" / "manifest.json").is_file():
        return folder / "windows"
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    t = np.arange(window) / window
    X = np.sin(2 * np.pi * (y[:, None, None] + 1) * t[None, :, None] + rng.uniform(0, 2 * np.pi, (n, 1, channels)))
    X = (X + 0.5 * rng.standard_normal((n, window, channels))).astype(np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "input.npz", X=X, y=y, subject=rng.integers(1, users + 1, n),
             class_names=np.array([f"class{k}" for k in range(classes)]))
    import_npz(WindowConfig(), folder / "input.npz", folder / "windows")
    (folder / "input.npz").unlink()
    return folder / "windows"
