"""Helpers shared by the training benchmarks: the machine a figure was measured on, data, output."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
if str(ROOT) not in sys.path:  # run as `python bench/x.py` from anywhere
    sys.path.insert(0, str(ROOT))

from har_vit.core.efficiency import machine  # noqa: E402,F401 - the benchmarks' import
from har_vit.stages.windows import WindowConfig, import_npz  # noqa: E402


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
