"""Predict: a trained run + raw WISDM-format logs (labels optional) -> per-window predictions.

The logs are cut with the model's window and the gap of its training windows (from the
windows manifest that the run's train manifest names; when that folder is gone, the
checkpoint's window and a 1 s gap, and the summary says so), and each window is
normalised with the checkpoint's train statistics. The step between windows is
``--step`` (default 64, the design's step for raw logs), whatever step the training
windows had: a model trained on non-overlapping windows (step 128) still answers every
64 samples. The manifest records the step used and the training step.

Without labels a bout is a run of consecutive records of one source file and one user
whose timestamps increase with no step over ``gap_s``; windows never cross a bout.

Outputs, beside ``out_csv`` (``preds.csv`` below), each written atomically, manifest last:

- ``preds.csv``: one row per window, in input order: ``window``, ``source`` (file,
  relative to a data folder), ``user``, ``first_timestamp``, ``last_timestamp``,
  ``first_line`` (1-based line of the window's first record in its file), ``predicted``
  (class name), ``confidence`` (its probability), then ``p_<class name>`` per class.
- ``preds.quarantine.csv``: ``source, line, reason, raw`` of every quarantined record.
- ``preds.manifest.json``: stage ``predict``, counts (``records_total == records_kept +
  sum(records_quarantined.values())``), model run id and folder, window settings and
  where they came from, input files with sha256, outputs with sha256.

>>> summary = run(PredictConfig(), Path("runs/tiny"), Path("my_logs/"), Path("preds.csv"))  # doctest: +SKIP
>>> summary["windows_total"], summary["records_quarantined"]                                 # doctest: +SKIP
(5120, {'wrong number of fields': 3})
"""
from __future__ import annotations

import csv
import dataclasses
import io
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from har_vit.core import inference, schema, tta
from har_vit.core.efficiency import device_label, resolve_device
from har_vit.core.errors import DataError, UsageError
from har_vit.core.io import (
    file_entry,
    now_iso,
    versions,
    write_json,
    write_text,
)
from har_vit.core.runs import WindowSettings, find_model_dir, load_run, window_settings
from har_vit.core.runtime import CHECK_WINDOWS, fast_runtime
from har_vit.core.schema import as_dict
from har_vit.datasets.parse import Parsed, parse_file
from har_vit.model.ensemble import ensemble_info
from har_vit.stages.windows import bout_windows, find_bouts

LOG_SUFFIXES = (".txt", ".txt.gz")


@schema.config("predict")
class PredictConfig:
    """How to run a model over new logs: the ``predict`` options of :mod:`har_vit.core.schema`."""


# --- inputs ---------------------------------------------------------------------------------------


def log_files(data_path: str | Path) -> list[Path]:
    """The log a path names, or every ``.txt`` / ``.txt.gz`` under a folder (recursive, sorted, no hidden files)."""
    p = Path(data_path)
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise DataError(f"{p}: not found; pass a WISDM log (.txt/.txt.gz) or a folder of them")
    files = sorted(f for f in p.rglob("*") if f.is_file() and f.name.lower().endswith(LOG_SUFFIXES)
                   and not any(part.startswith(".") for part in f.relative_to(p).parts))
    if not files:
        raise DataError(f"{p}: no .txt or .txt.gz logs in this folder; pass a WISDM log or a folder of them")
    return files


@dataclass
class Records:
    """Kept records of every used file, concatenated in input order, and what was left out."""

    user: np.ndarray
    timestamp: np.ndarray
    xyz: np.ndarray  # (N, 3) float32
    line: np.ndarray
    source: np.ndarray  # index into files
    files: list[Path]
    parsed: list[Parsed]
    skipped: list[dict[str, str]]  # files of a folder that hold no WISDM records


def read_logs(data_path: str | Path) -> Records:
    """Parse the logs without labels. A single file that yields no record is a DataError;
    inside a folder such a file (a readme, say) is skipped and listed instead."""
    data_path = Path(data_path)
    single = data_path.is_file()
    files, parsed, skipped = [], [], []
    for f in log_files(data_path):
        why = None
        if f.stat().st_size == 0:
            why = "empty file"
        else:
            p = parse_file(f, labels=None)
            if p.total == 0:
                why = "no records (only blank lines)"
            elif p.kept == 0:
                line, reason, raw = p.quarantine[0]
                why = f"all {p.total} records quarantined (line {line}: {reason}: {raw[:60]!r})"
        if why is None:
            files.append(f)
            parsed.append(p)
        elif single:
            raise DataError(f"{f}: {why}; is this a WISDM accelerometer log (user,[activity,]timestamp,x,y,z;)?")
        else:
            skipped.append({"path": str(f), "reason": why})
    if not files:
        raise DataError(f"{data_path}: none of its {len(skipped)} .txt/.txt.gz files holds WISDM records "
                        f"(first: {skipped[0]['path']}: {skipped[0]['reason']})")
    n = [p.kept for p in parsed]
    return Records(
        user=np.concatenate([p.user for p in parsed]),
        timestamp=np.concatenate([p.timestamp for p in parsed]),
        xyz=np.concatenate([p.xyz for p in parsed]).astype(np.float32, copy=False),
        line=np.concatenate([p.line for p in parsed]),
        source=np.repeat(np.arange(len(parsed), dtype=np.int64), n),
        files=files, parsed=parsed, skipped=skipped,
    )


def _too_short(rec: Records, lengths: np.ndarray, starts: np.ndarray, ws: WindowSettings) -> DataError:
    """The DataError for logs in which no bout reaches one window: names each file and its longest bout."""
    longest = np.zeros(len(rec.files), np.int64)
    np.maximum.at(longest, rec.source[starts], lengths)
    per_file = "; ".join(f"{f}: longest {int(n)} records" for f, n in list(zip(rec.files, longest))[:5])
    more = f" (and {len(rec.files) - 5} more files)" if len(rec.files) > 5 else ""
    return DataError(f"{per_file}{more}: no window possible - the model takes windows of {ws.window} consecutive "
                     f"records (one user, rising timestamps, gaps <= {ws.gap_s:g} s); record for longer "
                     f"(>= {ws.window / 20:g} s at 20 Hz) or use a model trained with a smaller --window")


# --- inference ------------------------------------------------------------------------------------


# --- the stage ------------------------------------------------------------------------------------


def sidecar(out_csv: str | Path, kind: str) -> Path:
    """``preds.csv`` -> ``preds.<kind>`` beside it (``quarantine.csv``, ``manifest.json``)."""
    out_csv = Path(out_csv)
    stem = out_csv.name[: -len(out_csv.suffix)] if out_csv.suffix else out_csv.name
    return out_csv.with_name(f"{stem}.{kind}")


def run(cfg: PredictConfig, model_dir: str | Path, data_path: str | Path, out_csv: str | Path) -> dict[str, Any]:
    """Predict every window of the logs at ``data_path`` with the run in ``model_dir``.

    Writes ``out_csv`` and its quarantine CSV and manifest (see the module docstring);
    returns the manifest dict. A recording too short for one window is a DataError.
    """
    t0 = time.perf_counter()
    out_csv, data_path = Path(out_csv), Path(data_path)
    if out_csv.is_dir():
        raise UsageError(f"{out_csv}: is a folder; pass the CSV file to write, e.g. {out_csv / 'predictions.csv'}")
    device = resolve_device(cfg.device)  # UsageError for cuda without a GPU, before any work
    run_info = load_run(find_model_dir(model_dir), cfg.which)
    trained = window_settings(run_info)
    ws = dataclasses.replace(trained, step=int(cfg.step))
    channels = int(run_info.model.cfg.channels)
    if channels != 3:
        raise UsageError(f"{run_info.ckpt_path}: the model takes {channels} channels but WISDM logs carry 3 "
                         "accelerometer axes; use a model trained on WISDM logs")

    rec = read_logs(data_path)
    starts, lengths = find_bouts(rec.user, np.zeros_like(rec.user), rec.timestamp, rec.source, ws.max_gap)
    first = bout_windows(starts, lengths, ws.window, ws.step)  # (N,) first record of each window
    if first.size == 0:
        raise _too_short(rec, lengths, starts, ws)

    windows = inference.Strided(rec.xyz, first, ws.window)
    rt = fast_runtime(run_info.model, run_info.ckpt["norm"], cfg.runtime, device, check=windows[:CHECK_WINDOWS])
    A, tta_note = tta.views_for(run_info.ckpt, cfg.tta, channels)
    predict_fn = tta.wrap(rt, A) if len(A) > 1 else rt  # all views of a batch in one call
    t_inf = time.perf_counter()
    logits = np.concatenate([predict_fn(windows[i:i + cfg.predict_batch_size])
                             for i in range(0, len(windows), cfg.predict_batch_size)])
    inf_seconds = time.perf_counter() - t_inf
    proba = _softmax(logits)
    names = run_info.class_names
    pred = proba.argmax(axis=1)

    root = data_path if data_path.is_dir() else data_path.parent
    src_names = np.array([str(f.relative_to(root)) for f in rec.files], dtype=object)
    last = first + ws.window - 1
    table = pd.DataFrame({
        "window": np.arange(first.shape[0]),
        "source": src_names[rec.source[first]],
        "user": rec.user[first],
        "first_timestamp": rec.timestamp[first],
        "last_timestamp": rec.timestamp[last],
        "first_line": rec.line[first],
        "predicted": np.array(names, dtype=object)[pred],
        "confidence": proba[np.arange(pred.shape[0]), pred],
        **{f"p_{n}": proba[:, k] for k, n in enumerate(names)},
    })

    quarantine_csv, manifest_path = sidecar(out_csv, "quarantine.csv"), sidecar(out_csv, "manifest.json")
    # An old manifest would vouch for a half-replaced set of files if we crash below.
    manifest_path.unlink(missing_ok=True)
    # %.6g keeps small probabilities (1e-7 is not 0.000000) and sums to 1 within ~1e-5.
    write_text(out_csv, table.to_csv(index=False, float_format="%.6g", lineterminator="\n"))
    write_text(quarantine_csv, _quarantine_csv(rec))

    reasons: Counter = Counter()
    for p in rec.parsed:
        reasons.update(p.reasons())
    total, kept = sum(p.total for p in rec.parsed), int(rec.timestamp.shape[0])
    assert kept + sum(reasons.values()) == total, "predict lost records"  # invariant of the parser, not user input
    covered = _covered(first, ws.window, kept)
    windows_per_file = np.bincount(rec.source[first], minlength=len(rec.files))
    users, per_user = np.unique(rec.user[first], return_counts=True)
    summary = {
        "stage": "predict", "created": now_iso(), "versions": versions(),
        "config": as_dict(cfg),
        "model_dir": str(Path(model_dir)), "run_id": run_info.run_id, "model": run_info.ckpt["model_name"],
        **ensemble_info(run_info.ckpt),
        "checkpoint": file_entry(run_info.ckpt_path), "epoch": run_info.ckpt.get("epoch"),
        "window": ws.window, "step": ws.step, "gap_s": ws.gap_s, "ts_per_s": ws.ts_per_s,
        "window_settings_from": ws.source, "training_step": trained.step if trained.source.startswith("windows manifest") else None,
        "inputs": {"upstream": str(Path(model_dir)), "data_path": str(data_path),
                   "files": [file_entry(f) | {"records": p.total, "kept": p.kept, "windows": int(n)}
                             for f, p, n in zip(rec.files, rec.parsed, windows_per_file)],
                   "skipped": rec.skipped},
        "outputs": [file_entry(out_csv), file_entry(quarantine_csv)],
        "records_total": int(total), "records_kept": kept,
        "records_quarantined": dict(sorted(reasons.items())),
        "bouts_total": int(starts.shape[0]), "bouts_windowed": int((lengths >= ws.window).sum()),
        "records_in_windows": int(covered.sum()),
        "windows_total": int(first.shape[0]),
        "per_predicted": {n: int(c) for n, c in zip(names, np.bincount(pred, minlength=len(names)))},
        "per_user": {str(int(u)): int(c) for u, c in zip(users, per_user)},
        "class_names": names,
        "device": device.type, "device_name": device_label(device),
        "runtime": rt.name, "runtime_parity": rt.parity, "runtime_note": rt.note,
        "tta": {"views": len(A), "description": tta_note},
        "windows_per_s": round(first.shape[0] / inf_seconds, 1) if inf_seconds > 0 else None,
        "warnings": list(run_info.notes) + [f"skipped {s['path']}: {s['reason']}" for s in rec.skipped]
        + ([rt.note] if rt.note and "differs" in rt.note else []),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    write_json(manifest_path, summary)
    return summary


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (z / z.sum(axis=1, keepdims=True)).astype(np.float32)


def _covered(first: np.ndarray, window: int, n: int) -> np.ndarray:
    """Boolean mask of the ``n`` records inside at least one window (difference array, O(n + N))."""
    delta = np.zeros(n + 1, np.int64)
    np.add.at(delta, first, 1)
    np.add.at(delta, first + window, -1)
    return np.cumsum(delta[:-1]) > 0


def _quarantine_csv(rec: Records) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["source", "line", "reason", "raw"])
    for f, p in zip(rec.files, rec.parsed):
        for line, reason, raw in p.quarantine:
            w.writerow([str(f), line, reason, raw])
    return buf.getvalue()


__all__ = ["PredictConfig", "log_files", "read_logs", "run", "sidecar"]
