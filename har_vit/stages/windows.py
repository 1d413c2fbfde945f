"""Windows stage: records -> fixed-length windows inside bouts.

A bout is a run of consecutive records of one source file, one user and one activity
whose timestamps increase with no step over ``gap_s``. Windows never cross a bout, so
never a user, an activity, a gap or a timestamp that goes backward.

>>> bout_windows(np.array([0, 300]), np.array([300, 100]), window=128, step=64)
array([  0,  64, 128])
"""
from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Any

import numpy as np

from har_vit.core import schema
from har_vit.core.errors import ArtefactError, DataError
from har_vit.core.io import (
    file_entry,
    load_npz,
    read_manifest,
    save_npz,
    staged_folder,
    verify_outputs,
    write_bytes,
    write_manifest,
)
from har_vit.core.schema import as_dict

WINDOWS = "windows.npz"
INDEX = "index.csv"
ARRAYS = ("X", "y", "subject", "bout", "start", "timestamp", "class_names")


@schema.config("windows")
class WindowConfig:
    """How records become windows: the ``windows`` options of :mod:`har_vit.core.schema`."""


def find_bouts(user: np.ndarray, activity: np.ndarray, timestamp: np.ndarray, source: np.ndarray,
               max_gap: float) -> tuple[np.ndarray, np.ndarray]:
    """``(starts, lengths)`` of bouts in record order (vectorised)."""
    n = timestamp.shape[0]
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    dt = np.diff(timestamp)
    brk = ((user[1:] != user[:-1]) | (activity[1:] != activity[:-1]) | (source[1:] != source[:-1])
           | (dt <= 0) | (dt > max_gap))
    starts = np.concatenate(([0], np.flatnonzero(brk) + 1)).astype(np.int64)
    lengths = np.diff(np.concatenate((starts, [n]))).astype(np.int64)
    return starts, lengths


def bout_windows(starts: np.ndarray, lengths: np.ndarray, window: int, step: int) -> np.ndarray:
    """First record of every window, ``(L - window) // step + 1`` per bout of length L >= window."""
    per = np.where(lengths >= window, (lengths - window) // step + 1, 0)
    total = int(per.sum())
    # Offset of each window inside its bout: arange restarted per bout.
    first = np.repeat(np.cumsum(per) - per, per)
    k = np.arange(total, dtype=np.int64) - first
    return np.repeat(starts, per) + k * step


def run(cfg: WindowConfig, in_dir: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """Cut the records of an ingest folder into windows; returns the manifest dict."""
    t0 = time.perf_counter()
    ing = read_manifest(in_dir, "ingest")
    verify_outputs(in_dir, ing)
    r = load_npz(Path(in_dir) / "records.npz", ("user", "activity", "timestamp", "xyz", "source", "class_names"))
    starts, lengths = find_bouts(r["user"], r["activity"], r["timestamp"], r["source"], cfg.gap_s * cfg.ts_per_s)
    first = bout_windows(starts, lengths, cfg.window, cfg.step)
    if first.size == 0:
        raise DataError(f"{in_dir}: no bout has {cfg.window} records (longest: {int(lengths.max(initial=0))}); "
                        "the recording is too short for one window: lower --window or --gap-s larger")
    bout_of = np.repeat(np.arange(starts.shape[0]), lengths)
    idx = first[:, None] + np.arange(cfg.window)  # (N, T) record indices
    arrays = {
        "X": r["xyz"][idx].astype(np.float32),  # (N, T, 3)
        "y": r["activity"][first].astype(np.int64),
        "subject": r["user"][first].astype(np.int64),
        "bout": bout_of[first].astype(np.int64),
        "start": first.astype(np.int64),
        "timestamp": r["timestamp"][first].astype(np.int64),
        "class_names": r["class_names"],
    }
    in_windows = np.zeros(r["timestamp"].shape[0], bool)
    in_windows[idx.ravel()] = True
    extra = {"bouts_total": int(starts.shape[0]), "bouts_windowed": int((lengths >= cfg.window).sum()),
             "records_in_windows": int(in_windows.sum()), "records_total": int(in_windows.shape[0])}
    return write_windows(cfg, arrays, Path(out_dir), {"upstream": str(Path(in_dir).resolve()), "dataset": ing.get("dataset")},
                  extra, t0)


def import_npz(cfg: WindowConfig, path: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """Bring-your-own windows: validate an ``.npz`` (X [N,T,C], y, subject, class_names) into a windows folder."""
    t0 = time.perf_counter()
    path = Path(path)
    z = load_npz(path, ("X", "y", "subject", "class_names"))
    X, y, subject = z["X"], z["y"], z["subject"]
    names = z["class_names"]
    if X.ndim != 3 or X.shape[0] == 0:
        raise DataError(f"{path}: X must be a non-empty array [N, T, C], got shape {X.shape}")
    if y.shape != (X.shape[0],) or subject.shape != (X.shape[0],):
        raise DataError(f"{path}: y and subject must have shape ({X.shape[0]},), got {y.shape} and {subject.shape}")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= len(names):
        raise DataError(f"{path}: y must be integer class indices into class_names (0..{len(names) - 1})")
    if not np.isfinite(X).all():
        raise DataError(f"{path}: X holds NaN or inf values; clean them before importing")
    # Without timestamps, a window's place is its rank inside its (subject, class) stream;
    # windows are assumed non-overlapping and in recording order (true of the v1.1 copy).
    stream = np.unique(np.stack([subject, y], 1), axis=0, return_inverse=True)[1].ravel()
    order = np.argsort(stream, kind="stable")
    rank = np.empty_like(order)
    counts = np.bincount(stream)
    rank[order] = np.arange(order.shape[0]) - np.repeat(np.cumsum(counts) - counts, counts)
    arrays = {"X": X.astype(np.float32), "y": y.astype(np.int64), "subject": subject.astype(np.int64),
              "bout": stream.astype(np.int64), "start": (rank * X.shape[1]).astype(np.int64),
              "timestamp": np.full(X.shape[0], -1, np.int64), "class_names": names.astype(str)}
    cfg = WindowConfig(window=X.shape[1], step=X.shape[1], gap_s=cfg.gap_s, ts_per_s=cfg.ts_per_s)
    return write_windows(cfg, arrays, Path(out_dir), {"upstream": None, "dataset": "npz", **file_entry(path)},
                  {"bouts_total": int(counts.shape[0]), "prewindowed": True}, t0)


def write_windows(cfg: WindowConfig, a: dict[str, np.ndarray], out: Path, inputs: dict, extra: dict,
                  t0: float) -> dict[str, Any]:
    """Write a windows folder (npz, index, manifest last) from arrays in the contract's layout."""
    final = out
    with staged_folder(final) as out:  # a failed stage leaves an earlier good folder as it was
        save_npz(out / WINDOWS, **a)
        names = [str(c) for c in a["class_names"]]
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["window", "user", "activity", "bout", "first_record", "first_timestamp"])
        for i, (u, c, b, s, t) in enumerate(zip(a["subject"].tolist(), a["y"].tolist(), a["bout"].tolist(),
                                                a["start"].tolist(), a["timestamp"].tolist())):
            w.writerow([i, u, names[c], b, s, t])
        write_bytes(out / INDEX, buf.getvalue().encode("utf-8"))
        users, uc = np.unique(a["subject"], return_counts=True)
        manifest = {
            "config": as_dict(cfg), "window": cfg.window, "step": cfg.step, "gap_s": cfg.gap_s,
            "channels": int(a["X"].shape[2]),
            "inputs": inputs,
            "outputs": [file_entry(out / WINDOWS), file_entry(out / INDEX)],
            "windows_total": int(a["X"].shape[0]),
            "class_names": names,
            "per_class": {n: int(c) for n, c in zip(names, np.bincount(a["y"], minlength=len(names)))},
            "per_user": {str(int(u)): int(c) for u, c in zip(users, uc)},
            **extra,
            "seconds": round(time.perf_counter() - t0, 3),
        }
        write_manifest(out, "windows", **manifest)
    return read_manifest(final, "windows")


def load_windows(folder: str | Path, verify: bool = True) -> dict[str, Any]:
    """Arrays of a windows folder (see docs/architecture.md) plus its ``manifest``."""
    m = read_manifest(folder, "windows")
    if verify:
        verify_outputs(folder, m)
    w: dict[str, Any] = load_npz(Path(folder) / WINDOWS, ARRAYS)
    if w["X"].ndim != 3 or w["X"].shape[0] != m["windows_total"]:
        raise ArtefactError(f"{folder}/{WINDOWS}: shape {w['X'].shape} does not match its manifest; re-run windows")
    w["manifest"] = m
    return w
