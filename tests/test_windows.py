"""Windows stay inside bouts; the vectorised cut equals a slow reference loop."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import WISDM2019, need

from har_vit.core.errors import ArtefactError, DataError
from har_vit.core.io import load_npz
from har_vit.stages import ingest, windows


def slow_windows(user, act, ts, src, max_gap, T, step):
    """Obviously right reference: walk the records, cut bouts, slide the window."""
    out, bout = [], [0]
    for i in range(1, len(ts) + 1):
        if i == len(ts) or user[i] != user[i - 1] or act[i] != act[i - 1] or src[i] != src[i - 1] \
                or ts[i] - ts[i - 1] <= 0 or ts[i] - ts[i - 1] > max_gap:
            b0 = bout[0]
            s = b0
            while s + T <= i:
                out.append(s)
                s += step
            bout = [i]
    return np.array(out, dtype=np.int64)


@pytest.mark.parametrize("seed", range(5))
def test_vectorised_equals_reference(seed):
    rng = np.random.default_rng(seed)
    n = 3000
    user = np.repeat(rng.integers(1, 4, 12), n // 12)
    act = np.repeat(rng.integers(0, 3, 30), n // 30)
    ts = np.cumsum(rng.choice([50, 50, 50, 50, -10, 0, 5000], size=n)) + 10_000
    src = np.zeros(n, np.int64)
    for T, step in ((16, 8), (32, 32), (20, 7)):
        starts, lengths = windows.find_bouts(user, act, ts, src, 1000)
        got = windows.bout_windows(starts, lengths, T, step)
        np.testing.assert_array_equal(got, slow_windows(user, act, ts, src, 1000, T, step))
        per = np.where(lengths >= T, (lengths - T) // step + 1, 0)
        assert got.size == per.sum()  # the count formula, per bout


def test_stage_windows_never_cross_boundaries(synth_log, tmp_path):
    path, log = synth_log
    ingest.run(ingest.IngestConfig(data_path=str(path), progress=False), tmp_path / "ing")
    m = windows.run(windows.WindowConfig(window=64, step=32), tmp_path / "ing", tmp_path / "win")
    w = windows.load_windows(tmp_path / "win")
    rec = load_npz(tmp_path / "ing" / "records.npz")
    idx = w["start"][:, None] + np.arange(64)
    assert (rec["user"][idx] == w["subject"][:, None]).all()
    assert (rec["activity"][idx] == w["y"][:, None]).all()
    dt = np.diff(rec["timestamp"][idx], axis=1)
    assert (dt > 0).all() and (dt <= 1e9).all()
    np.testing.assert_array_equal(w["X"], rec["xyz"][idx])
    # Only the clean bouts are long enough here: the formula gives the count exactly.
    assert m["windows_total"] == sum((L - 64) // 32 + 1 for L in log.bouts if L >= 64)
    assert sum(m["per_class"].values()) == sum(m["per_user"].values()) == m["windows_total"]
    assert w["X"].dtype == np.float32 and (tmp_path / "win" / "index.csv").exists()


def test_too_short_recording_is_clear_error(tmp_path):
    p = tmp_path / "short.txt"
    p.write_text("".join(f"1,Walking,{1000 + i * 50_000_000},1,2,3;\n" for i in range(50)))
    ingest.run(ingest.IngestConfig(data_path=str(p), progress=False), tmp_path / "ing")
    with pytest.raises(DataError, match="too short for one window"):
        windows.run(windows.WindowConfig(), tmp_path / "ing", tmp_path / "win")
    assert not (tmp_path / "win" / "manifest.json").exists()


def test_corrupt_windows_file_named(windows_npz, tmp_path):
    windows.import_npz(windows.WindowConfig(), windows_npz, tmp_path / "w")
    f = tmp_path / "w" / "windows.npz"
    f.write_bytes(f.read_bytes()[:1000])
    with pytest.raises(ArtefactError, match="windows.npz"):
        windows.load_windows(tmp_path / "w")


def test_import_npz_validates(tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, X=np.zeros((4, 8)), y=np.zeros(4, int), subject=np.zeros(4, int), class_names=np.array(["a"]))
    with pytest.raises(DataError, match=r"X must be .*\[N, T, C\]"):
        windows.import_npz(windows.WindowConfig(), bad, tmp_path / "w")


@pytest.mark.realdata
def test_real_wisdm2019_end_to_end(tmp_path):
    root = need(WISDM2019)
    ingest.run(ingest.IngestConfig(dataset="wisdm2019", data_path=str(root), progress=False), tmp_path / "ing")
    m = windows.run(windows.WindowConfig(), tmp_path / "ing", tmp_path / "win")
    assert m["windows_total"] > 20_000 and len(m["per_class"]) == 18 and len(m["per_user"]) == 22
    assert m["records_in_windows"] <= m["records_total"]
