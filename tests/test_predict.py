"""Predict: unlabelled logs -> one row per window, windowed exactly as the model was trained.

The run folder is built by hand to the contract in docs/architecture.md (windows
folder via ``import_npz``, a checkpoint from ``create_model``, a train manifest and
``split.npz``), so these tests depend on neither the trainer nor the ingest stage.
``build_run`` is imported by test_export.py too.
"""
from __future__ import annotations

import csv
import gzip
import json
import math
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from har_vit.core.checkpoint import normalise, save_checkpoint
from har_vit.core.errors import ArtefactError, DataError, UsageError
from har_vit.core.io import file_entry, save_npz, sha256_file, write_json, write_manifest
from har_vit.model import create_model
from har_vit.stages.predict import PredictConfig, run, sidecar
from har_vit.stages.windows import WindowConfig, import_npz

CLASSES = ("Downstairs", "Jogging", "Sitting", "Standing", "Upstairs", "Walking")
T, C = 32, 3
GAP_S = 2.0  # the windows manifest's gap: not the fallback's 1 s, so a test can tell which was used
STEP_NS = 50_000_000  # 20 Hz
CPU = PredictConfig(device="cpu", step=T)  # step = the run's window, as its windows had


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: these models are tiny, and on a busy shared CPU torch's
    worker threads spin-wait on each other (several times slower than one thread)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def build_run(root: Path, model_name: str = "tiny", seed: int = 0, augment: dict | None = None) -> Path:
    """A finished train run folder (best.pt, split.npz, manifest) over a tiny imported windows folder.

    The imported windows folder has step == window (32) and gap 2 s, both unlike the
    fallback (step 16, gap 1 s). Linear weights are re-drawn with std 1/sqrt(fan_in) so
    the logits are O(1), not the near-zero ones of a ViT init: export parity then
    compares numbers of a realistic size.
    """
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(1, 5), len(CLASSES) * 4)
    y = np.tile(np.repeat(np.arange(len(CLASSES)), 4), 4)
    t = np.arange(T)[None, :, None] / 20.0
    X = (np.array([0.5, 9.8, -1.0]) + np.sin(2 * np.pi * (1 + y)[:, None, None] * t)
         + rng.normal(0, 1.5, (len(y), T, C))).astype(np.float32)  # (N, T, C)
    src = root / "win.npz"
    np.savez(src, X=X, y=y, subject=users, class_names=np.array(CLASSES))
    windows_dir = root / "windows"
    import_npz(WindowConfig(gap_s=GAP_S), src, windows_dir)

    torch.manual_seed(seed)
    model = create_model(model_name, window=T, channels=C, num_classes=len(CLASSES)).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear):
                m.weight.normal_(0.0, 1.0 / math.sqrt(m.in_features))
    train, val, test = (np.flatnonzero(users == u) for u in (1, 2, 3))
    train = np.concatenate([train, np.flatnonzero(users == 4)])
    norm = {"mean": X[train].mean(axis=(0, 1)).tolist(), "std": X[train].std(axis=(0, 1)).tolist()}
    run_dir = root / "run"
    run_dir.mkdir()
    save_checkpoint(run_dir / "best.pt", {
        "model": model.state_dict(), "model_name": model_name, "model_kwargs": model.kwargs,
        "class_names": list(CLASSES), "norm": norm, "train_config": {"model": model_name, **(augment or {})}, "epoch": 1})
    save_npz(run_dir / "split.npz", train=train, val=val, test=test)
    write_manifest(run_dir, "train", inputs={"upstream": str(windows_dir)}, run_id="t", model=model_name,
                   split={"protocol": "subject", "leaky": False, "n_train": int(train.size), "n_val": int(val.size),
                          "n_test": int(test.size), "test_users": [3]},
                   class_names=list(CLASSES), norm=norm,
                   outputs=[file_entry(run_dir / n) for n in ("best.pt", "split.npz")])
    return run_dir


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return build_run(tmp_path_factory.mktemp("predict"))


def _bout(user: int, n: int, t0: int, label: str | None = None) -> tuple[list[str], list[tuple]]:
    """``n`` records ``(user, timestamp, x, y, z)`` of one user at 20 Hz from ``t0`` and their WISDM
    lines, with or without an activity column."""
    rng = np.random.default_rng(user * 1000 + n)
    recs = [(user, t0 + i * STEP_NS, *np.round(rng.normal([0.5, 9.8, -1.0], 2.0), 4).tolist()) for i in range(n)]
    mid = f"{label}," if label else ""
    return [f"{u},{mid}{ts},{x},{y},{z};" for u, ts, x, y, z in recs], recs


GARBAGE = [("1,2,3;", "wrong number of fields"), ("7,1000,abc,1.0,2.0;", "non-numeric value"),
           ("7,1000,1.0,,2.0;", "missing value"), ("7,0,1.0,2.0,3.0;", "zero timestamp"),
           ("\x01\x02 binary", "wrong number of fields")]


def make_unlabelled_log(path: Path) -> dict:
    """A log without activity column (one bout has an unknown one), garbage sprinkled in.

    Returns the expected bouts (record lists), the quarantine counts and each record's
    line number. Garbage lines sit inside bouts too: they are not records, so they
    must not split a bout.
    """
    lines: list[str] = []
    bouts: list[list[tuple]] = []
    line_of: dict[tuple[int, int], int] = {}
    q: Counter = Counter()
    t = 10**12
    plan = [(1, 40, None), (1, 100, None), (2, 31, None), (2, 64, "Dancing"), (3, 200, None), (3, 95, None)]
    for k, (user, n, label) in enumerate(plan):
        text, recs = _bout(user, n, t, label)
        for i, (line, rec) in enumerate(zip(text, recs)):
            if i == n // 2:  # garbage in the middle of the bout
                g, reason = GARBAGE[k % len(GARBAGE)]
                lines.append(g)
                q[reason] += 1
            lines.append(line)
            line_of[(rec[0], rec[1])] = len(lines)
        bouts.append(recs)
        # Gaps between bouts: 5 s (over the 2 s gap), except a 1.5 s one inside user 3's
        # stream, which the run's 2 s gap keeps as one bout and a 1 s gap would split.
        t += n * STEP_NS + (1_500_000_000 if k == 4 else 5_000_000_000)
        lines.append("")
    # The 1.5 s gap joins plan[4] and plan[5] (same user) into one bout.
    bouts = bouts[:4] + [bouts[4] + bouts[5]]
    path.write_text("\n".join(lines) + "\n")
    return {"bouts": bouts, "quarantined": q, "line_of": line_of, "kept": sum(len(b) for b in bouts)}


def n_windows(lengths, window: int, step: int) -> int:
    return sum((n - window) // step + 1 for n in lengths if n >= window)


def reference_proba(run_dir: Path, bouts, step: int) -> np.ndarray:
    """Slow, obvious reference: loop over bouts and window starts, normalise, softmax."""
    ckpt = torch.load(run_dir / "best.pt", weights_only=True)
    model = create_model(ckpt["model_name"], **ckpt["model_kwargs"]).eval()
    model.load_state_dict(ckpt["model"])
    X = []
    for b in bouts:
        xyz = np.array([r[2:] for r in b], np.float32)
        for s in range(0, len(b) - T + 1, step):
            X.append(xyz[s:s + T])
    with torch.no_grad():
        logits = model(normalise(torch.from_numpy(np.stack(X)), ckpt["norm"]))
    return torch.softmax(logits, 1).numpy()


def test_unlabelled_log_rows_probabilities_and_quarantine(run_dir, tmp_path):
    log = tmp_path / "phone.txt"
    exp = make_unlabelled_log(log)
    out = tmp_path / "out" / "preds.csv"
    summary = run(CPU, run_dir, log, out)

    lengths = [len(b) for b in exp["bouts"]]
    want = n_windows(lengths, T, T)
    df = pd.read_csv(out)
    assert len(df) == want == summary["windows_total"]
    assert (summary["window"], summary["step"], summary["gap_s"]) == (T, T, GAP_S)  # gap from the windows manifest
    assert summary["window_settings_from"].startswith("windows manifest") and summary["training_step"] == T
    assert summary["bouts_total"] == len(lengths) and summary["bouts_windowed"] == sum(n >= T for n in lengths)
    assert summary["warnings"] == []

    p = df[[f"p_{c}" for c in CLASSES]].to_numpy()
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)
    assert (df["predicted"].to_numpy() == np.array(CLASSES)[p.argmax(1)]).all()
    np.testing.assert_allclose(df["confidence"], p.max(1), rtol=1e-5)
    np.testing.assert_allclose(p, reference_proba(run_dir, exp["bouts"], T), atol=2e-5)

    # Each row locates its window: user, first and last timestamps, the first record's line.
    spans = [(b[s], b[s + T - 1]) for b in exp["bouts"] for s in range(0, len(b) - T + 1, T)]
    assert df["user"].tolist() == [first[0] for first, _ in spans]
    assert df["first_timestamp"].tolist() == [first[1] for first, _ in spans]
    assert df["last_timestamp"].tolist() == [last[1] for _, last in spans]
    assert df["first_line"].tolist() == [exp["line_of"][first[:2]] for first, _ in spans]
    # One window straddles the 1.5 s pause that the run's 2 s gap allows; the rest are 31 steps long.
    assert ((df["last_timestamp"] - df["first_timestamp"]) > (T - 1) * STEP_NS).sum() == 1
    assert (df["source"] == "phone.txt").all()

    # Quarantine: counted by reason, adding up, and written beside the CSV.
    assert summary["records_quarantined"] == dict(exp["quarantined"])
    assert summary["records_kept"] == exp["kept"]
    assert summary["records_total"] == exp["kept"] + sum(exp["quarantined"].values())
    with open(sidecar(out, "quarantine.csv"), newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert Counter(r["reason"] for r in rows) == exp["quarantined"]

    manifest = json.loads(sidecar(out, "manifest.json").read_text())
    assert manifest["stage"] == "predict" and manifest["run_id"] == "t"
    assert manifest["inputs"]["files"][0]["sha256"] == sha256_file(log)
    assert {Path(e["path"]).name: e["sha256"] for e in manifest["outputs"]} == {
        "preds.csv": sha256_file(out), "preds.quarantine.csv": sha256_file(sidecar(out, "quarantine.csv"))}
    assert manifest["records_in_windows"] == sum((n - T) // T * T + T for n in lengths if n >= T)


def test_default_step_is_64_whatever_the_training_windows_had(run_dir, tmp_path):
    # The run's windows were cut with step 32 (= its window); new logs are cut every 64 samples by
    # default, every 8 when asked, and the manifest says which step was used and which the run had.
    log = tmp_path / "phone.txt"
    exp = make_unlabelled_log(log)
    lengths = [len(b) for b in exp["bouts"]]
    for cfg, step in ((PredictConfig(device="cpu"), 64), (PredictConfig(device="cpu", step=8), 8)):
        summary = run(cfg, run_dir, log, tmp_path / f"s{step}.csv")
        assert (summary["step"], summary["training_step"], summary["window"]) == (step, T, T)
        assert summary["windows_total"] == len(pd.read_csv(tmp_path / f"s{step}.csv")) == n_windows(lengths, T, step)
    starts = pd.read_csv(tmp_path / "s8.csv")
    np.testing.assert_allclose(starts.filter(like="p_"), reference_proba(run_dir, exp["bouts"], 8), atol=2e-5)


def test_batch_size_does_not_change_predictions(run_dir, tmp_path):
    log = tmp_path / "phone.txt"
    make_unlabelled_log(log)
    run(PredictConfig(device="cpu", predict_batch_size=512), run_dir, log, tmp_path / "a.csv")
    run(PredictConfig(device="cpu", predict_batch_size=3), run_dir, log, tmp_path / "b.csv")
    a, b = pd.read_csv(tmp_path / "a.csv"), pd.read_csv(tmp_path / "b.csv")
    pd.testing.assert_frame_equal(a.drop(columns=a.filter(like="p_").columns.tolist() + ["confidence"]),
                                  b.drop(columns=b.filter(like="p_").columns.tolist() + ["confidence"]))
    np.testing.assert_allclose(a.filter(like="p_"), b.filter(like="p_"), atol=1e-6)


def test_fallback_without_windows_folder_and_folder_input(tmp_path):
    run_dir = build_run(tmp_path)
    shutil.rmtree(tmp_path / "windows")
    data = tmp_path / "logs"
    (data / "day2").mkdir(parents=True)
    exp1 = make_unlabelled_log(data / "a.txt")
    text, recs = _bout(9, 50, 10**12)
    with gzip.open(data / "day2" / "b.txt.gz", "wt") as fh:  # gzipped logs are read too
        fh.write("\n".join(text) + "\n")
    (data / "readme.txt").write_text("This folder holds phone logs.\nRecorded in 2024.\n")

    summary = run(PredictConfig(device="cpu", step=T // 2), run_dir, data, tmp_path / "preds.csv")
    # Fallback: the checkpoint's window and a 1 s gap; and it says so.
    assert (summary["window"], summary["step"], summary["gap_s"]) == (T, T // 2, 1.0)
    assert summary["window_settings_from"].startswith("fallback")
    assert any("fallback" in w for w in summary["warnings"])
    # With a 1 s gap, the 1.5 s pause splits user 3's stream back into two bouts.
    lengths = [len(b) for b in exp1["bouts"][:4]] + [200, 95] + [50]
    df = pd.read_csv(tmp_path / "preds.csv")
    assert len(df) == n_windows(lengths, T, T // 2)
    assert Counter(df["source"]) == {"a.txt": n_windows(lengths[:-1], T, T // 2), "day2/b.txt.gz": 2}
    # The readme is not a log: skipped and listed, not an error and not counted.
    assert [Path(s["path"]).name for s in summary["inputs"]["skipped"]] == ["readme.txt"]
    assert summary["records_total"] == exp1["kept"] + sum(exp1["quarantined"].values()) + 50


def test_too_short_recording_is_a_data_error(run_dir, tmp_path):
    log = tmp_path / "short.txt"
    text, _ = _bout(1, T - 1, 10**12)
    log.write_text("\n".join(text) + "\n")
    with pytest.raises(DataError, match=rf"short\.txt.*longest {T - 1} records.*windows of {T}"):
        run(CPU, run_dir, log, tmp_path / "preds.csv")
    assert not (tmp_path / "preds.csv").exists()
    assert not sidecar(tmp_path / "preds.csv", "manifest.json").exists()


def test_bad_inputs_are_clear_errors(run_dir, tmp_path):
    log = tmp_path / "phone.txt"
    make_unlabelled_log(log)
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(UsageError, match="no trained model .*best.pt"):
        run(CPU, tmp_path / "empty_run", log, tmp_path / "p.csv")
    junk = tmp_path / "junk.txt"
    junk.write_text("hello world\nnot a log\n")
    with pytest.raises(DataError, match="junk.txt.*quarantined"):
        run(CPU, run_dir, junk, tmp_path / "p.csv")
    with pytest.raises(UsageError, match="predict_batch_size"):
        PredictConfig(predict_batch_size=0)
    with pytest.raises(UsageError, match="is a folder"):
        run(CPU, run_dir, log, tmp_path)


def test_windows_folder_rebuilt_with_another_window_is_refused(tmp_path):
    run_dir = build_run(tmp_path)
    m = json.loads((tmp_path / "windows" / "manifest.json").read_text())
    write_json(tmp_path / "windows" / "manifest.json", {**m, "window": 2 * T})
    log = tmp_path / "phone.txt"
    make_unlabelled_log(log)
    with pytest.raises(ArtefactError, match=f"window {2 * T} but the model .* takes {T}"):
        run(CPU, run_dir, log, tmp_path / "p.csv")


def beside_eager(run_dir, tmp_path, runtime):
    """``predict`` of the same log with ``runtime`` and with eager PyTorch: (its summary, eager's, their CSVs)."""
    pytest.importorskip("onnxruntime", reason="onnxruntime not installed: pip install -e '.[export]'")
    log = tmp_path / "phone.txt"
    make_unlabelled_log(log)
    fast = run(PredictConfig(device="cpu", step=8, runtime=runtime), run_dir, log, tmp_path / "fast.csv")
    slow = run(PredictConfig(device="cpu", step=8, runtime="eager"), run_dir, log, tmp_path / "slow.csv")
    assert slow["runtime"] == "eager PyTorch" and slow["runtime_parity"] is None
    return fast, slow, pd.read_csv(tmp_path / "fast.csv"), pd.read_csv(tmp_path / "slow.csv")


def test_onnxruntime_answers_like_eager_pytorch_and_says_which_ran(run_dir, tmp_path):
    fast, slow, a, b = beside_eager(run_dir, tmp_path, "onnxruntime")
    assert fast["runtime"].startswith("onnxruntime ") and fast["runtime_parity"] <= 1e-4
    assert (a["predicted"] == b["predicted"]).all()
    np.testing.assert_allclose(a.filter(like="p_"), b.filter(like="p_"), atol=1e-4)


def test_int8_weights_answer_when_asked_and_the_output_says_so(run_dir, tmp_path):
    q, _, a, b = beside_eager(run_dir, tmp_path, "onnxruntime-int8")
    assert "int8 weights" in q["runtime"] and 0 < q["runtime_parity"] <= 0.1  # quantised, so not eager's logits
    assert len(a) == len(b) and (a["first_line"] == b["first_line"]).all()
    np.testing.assert_allclose(a.filter(like="p_").sum(axis=1), 1.0, atol=1e-5)
