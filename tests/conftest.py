"""Shared fixtures: synthetic logs on disk and the real data folder when present."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from synthetic import ACTIVITIES, make_log

# The real data lies beside the checkout (../shared/data); HAR_VIT_SHARED_DATA points elsewhere.
SHARED = Path(os.environ.get("HAR_VIT_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
WISDM2019 = SHARED / "wisdm2019"
V11_NPZ = SHARED / "wisdm_v1.1" / "wisdm_v1.1_windows128.npz"


def need(path: Path) -> Path:
    """Skip (with the reason) when a real-data path is absent."""
    if not path.exists():
        pytest.skip(f"real data not present at {path} (see README: Real data)")
    return path


@pytest.fixture
def synth_log(tmp_path):
    """A quirky synthetic WISDM v1.1-format log on disk: (path, SynthLog)."""
    log = make_log(0)
    p = tmp_path / "WISDM_ar_v1.1_raw.txt"
    p.write_bytes(log.text)
    return p, log


@pytest.fixture
def windows_npz(tmp_path):
    """A small pre-windowed dataset: 6 users x 6 classes x 8 windows of 32 x 3, class-dependent signal."""
    return make_windows_npz(tmp_path / "win.npz")


def make_windows_npz(p: Path) -> Path:
    """Write the ``windows_npz`` dataset to ``p``."""
    rng = np.random.default_rng(0)
    X, y, s = [], [], []
    for u in range(1, 7):
        for c in range(len(ACTIVITIES)):
            t = np.arange(32)[None, :, None] / 32
            X.append(np.sin(2 * np.pi * (c + 1) * t + rng.normal(size=(8, 1, 3))) + 0.1 * rng.normal(size=(8, 32, 3)))
            y += [c] * 8
            s += [u] * 8
    np.savez(p, X=np.concatenate(X).astype(np.float32), y=np.array(y), subject=np.array(s), class_names=np.array(ACTIVITIES))
    return p
