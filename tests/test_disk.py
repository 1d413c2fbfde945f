"""Disk full and unwritable paths: one line naming the path, nothing half-written, earlier results kept."""
from __future__ import annotations

import errno
import json

import pytest

from har_vit.core import io as har_io
from har_vit.core.errors import DiskError
from har_vit.stages import ingest, train, windows


def _fail_after(monkeypatch, n: int, code: int = errno.ENOSPC):
    """Make the n-th and later artefact writes fail as a full disk would."""
    real, calls = har_io._atomic_path, {"n": 0}

    def flaky(path):
        calls["n"] += 1
        if calls["n"] >= n:
            raise OSError(code, "No space left on device" if code == errno.ENOSPC else "Read-only file system",
                          str(path))
        return real(path)

    monkeypatch.setattr(har_io, "_atomic_path", flaky)
    return calls


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_a_failed_write_is_one_line_and_keeps_the_earlier_result(tmp_path, synth_log, monkeypatch, code):
    path, _ = synth_log
    cfg = ingest.IngestConfig(dataset="wisdm", data_path=str(path), progress=False)
    ingest.run(cfg, tmp_path / "i")
    before = {p.name: p.read_bytes() for p in (tmp_path / "i").iterdir()}
    _fail_after(monkeypatch, 2, code)  # records.npz is written, quarantine.csv is not
    with pytest.raises(DiskError) as e:
        ingest.run(cfg, tmp_path / "i")
    assert "quarantine.csv: cannot write" in str(e.value) and "\n" not in str(e.value)
    assert {p.name: p.read_bytes() for p in (tmp_path / "i").iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["i", synth_log[0].name])


def test_a_failed_checkpoint_write_stops_training_at_once(tmp_path, synth_log, monkeypatch):
    path, _ = synth_log
    ingest.run(ingest.IngestConfig(dataset="wisdm", data_path=str(path), progress=False), tmp_path / "i")
    windows.run(windows.WindowConfig(window=32, step=16), tmp_path / "i", tmp_path / "w")
    cfg = train.TrainConfig(model="tiny", epochs=20, batch_size=16, progress=False, threads=1, patience=0,
                            device="cpu", warmup_epochs=0)
    calls = _fail_after(monkeypatch, 5)  # epoch 1 writes 4 files (split, last, best, history x2); epoch 2 fails
    with pytest.raises(DiskError, match="cannot write"):
        train.run(cfg, tmp_path / "w", tmp_path / "m")
    history = json.loads((tmp_path / "m" / "history.json").read_text())
    assert len(history) == 1 and calls["n"] < 12  # stopped during epoch 3 at the latest, not after 20
    assert not (tmp_path / "m" / "manifest.json").exists()
