#!/usr/bin/env python
"""Ingest speed against a bare ``pandas.read_csv`` of the same files, side by side.

Target (issue 2): parsing the 1,433,489 real WISDM 2019 phone-accelerometer records
takes at most 1.5x the time of ``pd.read_csv`` on the same files. Both are timed in
the same process, alternating, ``--repeats`` times each; the median is reported.
The har_vit side is the real ingest parse (``ingest_files``: every record checked,
quarantined with a reason or kept, duplicate timestamps resolved); writing the
artefacts (npz, sha256 of the inputs) is timed separately as ``ingest_stage_s``.

    python bench/bench_ingest.py [--data ../shared/data/wisdm2019] [--repeats 5]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd  # noqa: E402

from har_vit.core.efficiency import cpu_model_name  # noqa: E402
from har_vit.core.io import write_json  # noqa: E402
from har_vit.datasets import DatasetOptions, resolve  # noqa: E402
from har_vit.stages import ingest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "wisdm2019"))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "ingest.json"))
    a = ap.parse_args()
    if not Path(a.data).exists():
        sys.exit(f"bench_ingest: {a.data} not found; pass --data pointing at the WISDM 2019 release folder")
    src = resolve("wisdm2019", DatasetOptions(data_path=Path(a.data)))
    files = list(src.files)
    size = sum(f.stat().st_size for f in files)

    def bare() -> int:
        return sum(len(pd.read_csv(f, header=None)) for f in files)

    def ours() -> int:
        parsed, _, _ = ingest.ingest_files(files, src.labels)
        return sum(p.total for p in parsed)

    bare(), ours()  # warm the page cache and imports for both
    t_bare, t_ours = [], []
    for _ in range(a.repeats):
        for fn, acc in ((bare, t_bare), (ours, t_ours)):
            t0 = time.perf_counter()
            n = fn()
            acc.append(time.perf_counter() - t0)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        m = ingest.run(ingest.IngestConfig(dataset="wisdm2019", data_path=a.data, progress=False), Path(tmp) / "ing")
        stage_s = time.perf_counter() - t0
    med_b, med_o = statistics.median(t_bare), statistics.median(t_ours)
    result = {
        "benchmark": "ingest vs bare pandas.read_csv",
        "files": len(files), "bytes": size, "records_total": m["records_total"], "records_kept": m["records_kept"],
        "records_quarantined": m["records_quarantined"], "rows_read_csv": n,
        "repeats": a.repeats,
        "read_csv_s": {"median": med_b, "all": t_bare},
        "har_vit_parse_s": {"median": med_o, "all": t_ours},
        "ratio": med_o / med_b, "target_ratio": 1.5,
        "har_vit_records_per_s": m["records_total"] / med_o,
        "ingest_stage_s": stage_s,
        "machine": {"cpu": cpu_model_name(), "cores": os.cpu_count(), "python": platform.python_version(),
                    "pandas": pd.__version__},
    }
    print(f"files {len(files)}, {size / 2**20:.1f} MiB, {m['records_total']:,} records ({m['records_kept']:,} kept)")
    print(f"pandas.read_csv  median {med_b:.3f} s over {a.repeats}")
    print(f"har_vit parse    median {med_o:.3f} s over {a.repeats}  ({result['har_vit_records_per_s']:,.0f} records/s)")
    print(f"ratio {result['ratio']:.2f}x (target <= 1.5x); whole ingest stage incl. writing + sha256: {stage_s:.2f} s")
    write_json(a.out, result)
    print(f"-> {a.out}")


if __name__ == "__main__":
    main()
