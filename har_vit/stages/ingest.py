"""Ingest stage: raw WISDM logs -> ``records.npz`` + ``quarantine.csv`` + manifest.

Every input record is kept or quarantined with a reason; the manifest's
``records_kept + sum(records_quarantined.values()) == records_total``.
"""
from __future__ import annotations

import csv
import io
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import numpy as np

from har_vit.core import schema
from har_vit.core.errors import DataError, UsageError
from har_vit.core.io import (
    file_entry,
    read_manifest,
    save_npz,
    staged_folder,
    write_bytes,
    write_manifest,
)
from har_vit.core.schema import as_dict
from har_vit.core.workspace import Workspace
from har_vit.datasets import DatasetOptions, Source, resolve
from har_vit.datasets.parse import Parsed, parse_file

RECORDS = "records.npz"
QUARANTINE = "quarantine.csv"


@schema.config("ingest")
class IngestConfig:
    """Which dataset to read and from where: the ``ingest`` options of :mod:`har_vit.core.schema`."""

    def dataset_options(self) -> DatasetOptions:
        data_dir = Path(self.data_dir) if self.data_dir else Workspace.at().data
        return DatasetOptions(Path(self.data_path) if self.data_path else None, data_dir,
                              self.sensor_device, self.sensor, tuple(int(s) for s in self.subjects), self.progress)


def ingest_files(files: tuple[Path, ...] | list[Path], labels: dict[str, int],
                 parse: Callable[[Path, dict[str, int]], Parsed] = parse_file) -> tuple[list[Parsed], list[Path], list[Path]]:
    """Parse each file: ``(parsed, files, empty files)``.

    A file with no record at all (0 bytes, or blank lines only) is reported as empty and
    the others go on; only inputs with no record anywhere are a DataError. A missing file,
    or one whose every record is quarantined (the wrong kind of file), is a DataError naming it.
    """
    parsed, used, empty = [], [], []
    for f in files:
        f = Path(f)
        if not f.is_file():
            raise DataError(f"{f}: file not found; check --data-path")
        p = parse(f, labels) if f.stat().st_size else None
        if p is None or p.total == 0:
            empty.append(f)
            continue
        if p.kept == 0:
            line, reason, raw = p.quarantine[0]
            raise DataError(f"{f}: all {p.total} records quarantined (line {line}: {reason}: {raw[:60]!r}); "
                            "is this a WISDM accelerometer log (user,activity,timestamp,x,y,z;)?")
        parsed.append(p)
        used.append(f)
    if not parsed:
        names = ", ".join(str(f) for f in empty[:3]) + (f" and {len(empty) - 3} more" if len(empty) > 3 else "")
        raise DataError(f"{names}: no records found (empty or blank files only); is this a WISDM log?")
    return parsed, used, empty


def run(cfg: IngestConfig, out_dir: str | Path, source: Source | None = None) -> dict[str, Any]:
    """Ingest a dataset into ``out_dir``; returns the manifest dict."""
    t0 = time.perf_counter()
    source = source or resolve(cfg.dataset, cfg.dataset_options())
    if source.prewindowed:
        raise UsageError(f"dataset {source.dataset!r} is already windowed: run 'pipeline.py windows --dataset npz "
                         "--data-path FILE' instead of ingest")
    parsed, files, empty = ingest_files(source.files, source.labels, source.parse)
    with staged_folder(out_dir) as out:  # a failed ingest leaves an earlier good one as it was
        n = [p.kept for p in parsed]
        cols = {
            "user": np.concatenate([p.user for p in parsed]),
            "activity": np.concatenate([p.activity for p in parsed]),
            "timestamp": np.concatenate([p.timestamp for p in parsed]),
            "xyz": np.concatenate([p.xyz for p in parsed]),
            "source": np.repeat(np.arange(len(parsed), dtype=np.int64), n),
            "line": np.concatenate([p.line for p in parsed]),
        }
        if cols["xyz"].ndim != 2 or cols["xyz"].shape[1] != source.channels:  # a reader bug, not user input
            raise AssertionError(f"reader of {source.dataset} gave {cols['xyz'].shape[1:]} values per record, "
                                 f"declared {source.channels}")
        save_npz(out / RECORDS, **cols, class_names=np.array(source.class_names))
        write_bytes(out / QUARANTINE, _quarantine_csv(parsed, files))

        reasons: Counter = Counter()
        for p in parsed:
            reasons.update(p.reasons())
        total = sum(p.total for p in parsed)
        kept = int(sum(n))
        assert kept + sum(reasons.values()) == total, "ingest lost records"  # invariant, not user input
        users, ucount = np.unique(cols["user"], return_counts=True)
        acts = np.bincount(cols["activity"], minlength=len(source.class_names))
        return_manifest = {
            "dataset": source.dataset,
            "config": as_dict(cfg),
            "inputs": [file_entry(f) | {"records": p.total, "kept": p.kept} for f, p in zip(files, parsed)],
            "outputs": [file_entry(out / RECORDS), file_entry(out / QUARANTINE)],
            "records_total": int(total),
            "records_kept": kept,
            "records_quarantined": dict(sorted(reasons.items())),
            "records_merged_lines": int(sum(p.merged_lines for p in parsed)),
            "empty_files": [str(f) for f in empty],
            "class_names": list(source.class_names),
            "channels": source.channels,
            "per_user": {str(int(u)): int(c) for u, c in zip(users, ucount)},
            "per_activity": {name: int(c) for name, c in zip(source.class_names, acts)},
            "seconds": round(time.perf_counter() - t0, 3),
        }
        write_manifest(out, "ingest", **return_manifest)
    return read_manifest(out_dir, "ingest")


def _quarantine_csv(parsed: list[Parsed], files: list[Path]) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["source", "line", "reason", "raw"])
    for f, p in zip(files, parsed):
        for line, reason, raw in p.quarantine:
            w.writerow([str(f), line, reason, raw])
    return buf.getvalue().encode("utf-8")
