"""Ingest: every record kept or quarantined; manifests add up; bad input is one clear error."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from conftest import WISDM2019, need

from har_vit.core.errors import DataError, UsageError
from har_vit.core.io import load_npz, read_manifest
from har_vit.datasets import DatasetOptions, resolve
from har_vit.stages import ingest


def _cfg(path, dataset="wisdm"):
    return ingest.IngestConfig(dataset=dataset, data_path=str(path), progress=False)


def test_manifest_adds_up_and_quarantine_lists_reasons(synth_log, tmp_path):
    path, log = synth_log
    out = tmp_path / "ing"
    m = ingest.run(_cfg(path), out)
    assert m["records_total"] == log.total
    assert m["records_kept"] == log.kept
    assert m["records_quarantined"] == dict(log.quarantined)
    assert m["records_kept"] + sum(m["records_quarantined"].values()) == m["records_total"]
    assert sum(m["per_user"].values()) == sum(m["per_activity"].values()) == log.kept
    disk = read_manifest(out, "ingest")
    assert disk["records_total"] == log.total and disk["inputs"][0]["sha256"]
    rows = list(csv.DictReader((out / "quarantine.csv").open()))
    assert len(rows) == sum(log.quarantined.values())
    assert {r["reason"] for r in rows} == set(log.quarantined)
    assert all(r["source"] == str(path) and int(r["line"]) > 0 for r in rows)
    rec = load_npz(out / "records.npz")
    assert rec["xyz"].shape == (log.kept, 3) and rec["xyz"].dtype == np.float32
    assert list(rec["class_names"]) == m["class_names"]


@pytest.mark.parametrize("content,msg", [
    (b"", "empty"),
    (b"hello world\nthis is not wisdm\n", "all 2 records quarantined"),
    (b"\n\n  \n", "no records"),
])
def test_bad_files_are_one_clear_error_and_no_artefact(tmp_path, content, msg):
    p = tmp_path / "bad.txt"
    p.write_bytes(content)
    with pytest.raises(DataError, match=msg) as e:
        ingest.run(_cfg(p), tmp_path / "out")
    assert str(p) in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_missing_path_and_unknown_dataset(tmp_path):
    with pytest.raises(DataError, match="no such file|not found"):
        ingest.run(_cfg(tmp_path / "nope.txt"), tmp_path / "out")
    with pytest.raises(UsageError, match="unknown dataset 'foo'.*npz, wisdm, wisdm2019"):
        resolve("foo", DatasetOptions())


def test_wisdm2019_layout_and_subject_subset(tmp_path):
    root = tmp_path / "wisdm-dataset"
    acc = root / "raw" / "phone" / "accel"
    acc.mkdir(parents=True)
    (root / "activity_key.txt").write_text("walking = A\njogging = B\n\nsitting = D\n")
    for sid in (1600, 1601):
        (acc / f"data_{sid}_accel_phone.txt").write_text(
            "".join(f"{sid},{'A' if i < 200 else 'D'},{1000 + i * 50_000_000},0.1,9.8,0.2;\n" for i in range(400)))
    m = ingest.run(ingest.IngestConfig(dataset="wisdm2019", data_path=str(root), subjects=(1601,)), tmp_path / "o")
    assert m["class_names"] == ["walking", "jogging", "sitting"]
    assert m["per_user"] == {"1601": 400} and m["per_activity"] == {"walking": 200, "jogging": 0, "sitting": 200}
    with pytest.raises(DataError, match=r"subjects \[1700\]"):
        ingest.run(ingest.IngestConfig(dataset="wisdm2019", data_path=str(root), subjects=(1700,)), tmp_path / "p")


@pytest.mark.realdata
def test_real_wisdm2019_phone_accel(tmp_path):
    root = need(WISDM2019)
    m = ingest.run(ingest.IngestConfig(dataset="wisdm2019", data_path=str(root), progress=False), tmp_path / "o")
    assert m["records_total"] == 1_433_489
    assert m["records_kept"] + sum(m["records_quarantined"].values()) == m["records_total"]
    assert len(m["per_user"]) == 22 and len(m["class_names"]) == 18
    assert json.loads((tmp_path / "o" / "manifest.json").read_text())["records_kept"] == m["records_kept"]
