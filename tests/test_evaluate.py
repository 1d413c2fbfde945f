"""Evaluate stage: metrics equal scikit-learn's on the test split, cost figures, clear errors.

The chain (ingest -> windows -> train run) is built by hand to the contract in
docs/architecture.md, with a tiny model trained for a few steps on separable
synthetic windows, so the tests do not depend on the ingest or train stages.
``build_run`` is imported by test_report.py too.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
)

from har_vit.core import efficiency
from har_vit.core.checkpoint import load_model, save_checkpoint
from har_vit.core.errors import ArtefactError, UsageError
from har_vit.core.io import (
    file_entry,
    read_manifest,
    save_npz,
    sha256_file,
    write_json,
    write_manifest,
    write_text,
)
from har_vit.core.schema import build
from har_vit.model import article, create_model
from har_vit.stages.evaluate import (
    EvalConfig,
    classification_metrics,
    normalize_rows,
    run,
)

CLASSES = ("Walking", "Jogging", "Upstairs", "Downstairs", "Sitting", "Standing")
USERS = (1, 2, 3, 4, 5, 6)
TRAIN_USERS, VAL_USERS, TEST_USERS = (1, 2, 3), (4,), (5, 6)
PER_STREAM = 6  # windows per (user, class)
T, C = 32, 3  # short windows keep the tiny model fast
DROPPED_FROM_TEST = 4  # test windows of class 0 left out, so the test class mix differs from the whole
FAST = EvalConfig(device="cpu", skip_latency=True)


def _synthetic_windows(class_names, seed=0):
    """Separable windows: each class its own mean per axis and its own oscillation frequency."""
    rng = np.random.default_rng(seed)
    k = len(class_names)
    rows = [(u, c, i) for u in USERS for c in range(k) for i in range(PER_STREAM)]
    subject = np.array([r[0] for r in rows], np.int64)
    y = np.array([r[1] for r in rows], np.int64)
    t = np.arange(T) / 20.0
    means = rng.normal(0, 2, size=(k, C))
    X = means[y][:, None, :] + np.sin(2 * np.pi * (1 + y)[:, None, None] * t[None, :, None]) \
        + rng.normal(0, 2.0, size=(len(rows), T, C))  # (N, T, C); noisy enough that some windows are missed
    return X.astype(np.float32), y, subject, np.array([r[2] for r in rows], np.int64)


def _write_ingest(folder: Path, class_names, n_windows: int) -> None:
    per_activity = {name: 1000 + 10 * i for i, name in enumerate(class_names)}
    quarantined = {"bad_number": 3, "missing_field": 2}
    write_text(folder / "records.npz", "stand-in: only the manifest is read downstream")
    write_manifest(folder, "ingest", config={"dataset": "wisdm"}, inputs=[], outputs=[file_entry(folder / "records.npz")],
                   dataset="wisdm",
                   records_total=sum(per_activity.values()) + sum(quarantined.values()),
                   records_kept=sum(per_activity.values()), records_quarantined=quarantined,
                   per_user={str(u): n_windows // len(USERS) for u in USERS}, per_activity=per_activity,
                   class_names=list(class_names))


def _write_windows(folder: Path, X, y, subject, rank, class_names, upstream: Path | None) -> None:
    bout = subject * len(class_names) + y  # one bout per (user, class) stream
    save_npz(folder / "windows.npz", X=X, y=y, subject=subject, bout=bout, start=rank * T,
             timestamp=np.full(len(y), -1, np.int64), class_names=np.array(class_names))
    write_manifest(folder, "windows", config={"window": T, "step": T, "gap_s": 1.0}, window=T, step=T, gap_s=1.0,
                   channels=C, inputs={"upstream": str(upstream) if upstream else None, "dataset": "wisdm"},
                   outputs=[file_entry(folder / "windows.npz")], windows_total=len(y), class_names=list(class_names),
                   per_class={n: int(c) for n, c in zip(class_names, np.bincount(y, minlength=len(class_names)))},
                   per_user={str(u): int((subject == u).sum()) for u in USERS},
                   bouts_total=int(np.unique(bout).size), records_in_windows=len(y) * T)


def _split(y, subject, rank, protocol):
    train = np.flatnonzero(np.isin(subject, TRAIN_USERS))
    val = np.flatnonzero(np.isin(subject, VAL_USERS))
    test = np.flatnonzero(np.isin(subject, TEST_USERS) & ~((y == 0) & (rank < DROPPED_FROM_TEST // 2)))
    leaky = protocol == "random"
    summary = {"protocol": protocol, "leaky": leaky, "description": f"hand-made {protocol} split for tests",
               "n_train": int(train.size), "n_val": int(val.size), "n_test": int(test.size),
               "test_users": list(TEST_USERS), "val_users": list(VAL_USERS)}
    return train, val, test, summary


def _train_tiny(X, y, train, num_classes, steps, seed=0):
    torch.manual_seed(seed)
    model = create_model("tiny", window=T, channels=C, num_classes=num_classes)
    mean, std = X[train].mean(axis=(0, 1)), X[train].std(axis=(0, 1))
    xb = torch.from_numpy((X[train] - mean) / std)
    yb = torch.from_numpy(y[train])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: a second thread only adds contention on a shared machine
    try:
        for _ in range(steps):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xb), yb).backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval(), {"mean": mean.tolist(), "std": std.tolist()}


def build_run(root: Path, *, protocol: str = "subject", run_id: str = "run-a",
              created: str = "2024-01-01T00:00:00+00:00", class_names=CLASSES, ingest: bool = True,
              steps: int = 10, seed: int = 0, augment: dict | None = None) -> Path:
    """Ingest manifest -> windows folder -> train run folder under ``root``, to the contract; returns the run folder."""
    X, y, subject, rank = _synthetic_windows(class_names, seed)
    ingest_dir, windows_dir, run_dir = root / "ingest", root / "windows", root / "runs" / run_id
    if ingest:
        _write_ingest(ingest_dir, class_names, len(y))
    _write_windows(windows_dir, X, y, subject, rank, class_names, ingest_dir if ingest else None)

    train, val, test, split = _split(y, subject, rank, protocol)
    model, norm = _train_tiny(X, y, train, len(class_names), steps, seed)
    train_config = {"model": "tiny", "epochs": 3, "batch_size": 64, "optimizer": "adamw", "lr": 3e-3,
                    "weight_decay": 0.05, "seed": seed, "split": protocol, **(augment or {})}
    save_checkpoint(run_dir / "best.pt", {
        "model": model.state_dict(), "model_name": "tiny", "model_kwargs": model.kwargs,
        "class_names": list(class_names), "norm": norm, "train_config": train_config, "epoch": 2})
    save_npz(run_dir / "split.npz", train=train, val=val, test=test)
    history = [{"epoch": e, "lr": 3e-3, "train_loss": 1.5 / e, "train_acc": 0.5 + 0.1 * e, "val_loss": 1.6 / e,
                "val_acc": 0.45 + 0.1 * e, "val_macro_f1": 0.4 + 0.1 * e, "seconds": 0.5} for e in (1, 2, 3)]
    write_json(run_dir / "history.json", history)
    write_manifest(run_dir, "train", created=created, config=train_config, run_id=run_id, model="tiny",
                   params=model.num_params(), device="cpu", split=split, epochs_run=3, best_epoch=2,
                   best_val_macro_f1=0.6, class_names=list(class_names), norm=norm, train_seconds=1.5,
                   windows_per_s=500.0, inputs={"upstream": str(windows_dir)},
                   outputs=[file_entry(run_dir / n) for n in ("best.pt", "split.npz", "history.json")])
    return run_dir


def reference_predict(run_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(y_true, y_pred)`` on the test split, computed apart from the evaluate stage."""
    model, ckpt = load_model(run_dir)
    with np.load(run_dir.parent.parent / "windows" / "windows.npz") as w, np.load(run_dir / "split.npz") as s:
        X, y, test = w["X"], w["y"], s["test"]
    x = (X[test] - np.array(ckpt["norm"]["mean"], np.float32)) / np.array(ckpt["norm"]["std"], np.float32)
    with torch.no_grad():
        logits = model(torch.from_numpy(x.astype(np.float32)))
    return y[test], logits.argmax(1).numpy()


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    run_dir = build_run(tmp_path_factory.mktemp("chain"))
    return run_dir, run(FAST, run_dir)


def test_metrics_equal_sklearn_on_the_same_test_predictions(evaluated):
    run_dir, m = evaluated
    y_true, y_pred = reference_predict(run_dir)
    assert m["n_test"] == y_true.size
    assert m["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert m["accuracy"] > 0.4  # trained: far above chance (1/6), so the metrics are not degenerate
    assert m["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro", zero_division=0))
    assert m["weighted_f1"] == pytest.approx(f1_score(y_true, y_pred, average="weighted", zero_division=0))
    assert m["macro_precision"] == pytest.approx(precision_score(y_true, y_pred, average="macro", zero_division=0))
    assert m["macro_recall"] == pytest.approx(recall_score(y_true, y_pred, average="macro", zero_division=0))
    assert m["confusion"] == confusion_matrix(y_true, y_pred, labels=range(len(CLASSES))).tolist()
    per_class_recall = recall_score(y_true, y_pred, average=None, labels=range(len(CLASSES)), zero_division=0)
    assert list(m["per_class_accuracy"]) == list(CLASSES)  # keyed by class name, in class order
    for i, name in enumerate(CLASSES):
        assert m["per_class_accuracy"][name] == pytest.approx(per_class_recall[i])
        assert m["per_class"][name]["support"] == int((y_true == i).sum())


def test_only_the_test_split_is_predicted(evaluated):
    run_dir, m = evaluated
    with np.load(run_dir.parent.parent / "windows" / "windows.npz") as w, np.load(run_dir / "split.npz") as s:
        expected_rows = np.bincount(w["y"][s["test"]], minlength=len(CLASSES))
    # Class 0 lost windows in the test split only: rows match the test labels, not all windows.
    assert np.asarray(m["confusion"]).sum(axis=1).tolist() == expected_rows.tolist()
    assert expected_rows[0] == expected_rows[1] - DROPPED_FROM_TEST
    assert m["split"]["protocol"] == "subject" and m["split"]["test_users"] == list(TEST_USERS)


def test_eval_folder_holds_every_artefact_and_a_manifest_that_vouches_for_it(evaluated):
    run_dir, m = evaluated
    eval_dir = run_dir / "eval"
    man = read_manifest(eval_dir, "evaluate")
    assert man["inputs"]["upstream"] == str(run_dir.resolve())
    for entry in man["outputs"]:
        assert sha256_file(entry["path"]) == entry["sha256"]
    listed = {Path(e["path"]).name for e in man["outputs"]}
    assert {"metrics.json", "per_class.csv", "efficiency.csv", "confusion.csv", "confusion_normalized.csv",
            "confusion_counts.png", "confusion_normalized.png", "per_class_accuracy.png", "training_curves.png",
            "class_distribution.png"} <= listed
    for png in (eval_dir / "plots").glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((eval_dir / "metrics.json").read_text()) == json.loads(json.dumps(m))

    counts = pd.read_csv(eval_dir / "confusion.csv", index_col=0)
    assert list(counts.index) == list(CLASSES) and list(counts.columns) == list(CLASSES)
    assert counts.to_numpy().tolist() == m["confusion"]
    normed = pd.read_csv(eval_dir / "confusion_normalized.csv", index_col=0).to_numpy()
    assert np.allclose(normed.sum(axis=1), 1.0)
    per_class = pd.read_csv(eval_dir / "per_class.csv")
    assert list(per_class["class"]) == list(CLASSES)
    eff = pd.read_csv(eval_dir / "efficiency.csv")
    assert {"params", "trainable_params", "flops", "weights_mb"} <= set(eff["metric"])
    assert eff["how"].str.len().min() > 10  # every figure says how it was measured


def test_metrics_json_documented_keys(evaluated):
    _, m = evaluated
    keys = {"accuracy", "macro_f1", "weighted_f1", "macro_precision", "macro_recall", "per_class_accuracy",
            "per_class", "confusion", "class_names", "params", "trainable_params", "flops", "flops_note",
            "latency_ms", "throughput_windows_per_s", "weights_mb", "split", "n_test", "model", "device", "run_id",
            "tta"}
    assert keys <= set(m)
    assert m["params"] == create_model("tiny", window=T, channels=C).num_params()
    assert "multiply-add" in m["flops_note"] and m["flops"] > 0
    assert m["latency_ms"] == {}  # skip_latency


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 7).flatmap(lambda k: st.tuples(
    st.just(k), st.lists(st.tuples(st.integers(0, k - 1), st.integers(0, k - 1)), min_size=1, max_size=60))))
def test_classification_metrics_match_a_plain_python_reference(case):
    k, pairs = case
    y_true = np.array([a for a, _ in pairs])
    y_pred = np.array([b for _, b in pairs])
    names = [f"class {i}" for i in range(k)]
    m = classification_metrics(y_true, y_pred, names)

    cm = [[sum(1 for a, b in pairs if a == i and b == j) for j in range(k)] for i in range(k)]
    assert m["confusion"] == cm
    assert m["accuracy"] == pytest.approx(sum(cm[i][i] for i in range(k)) / len(pairs))
    present = sorted({a for a, _ in pairs} | {b for _, b in pairs})
    f1s = []
    for i in range(k):
        support, predicted = sum(cm[i]), sum(row[i] for row in cm)
        recall = cm[i][i] / support if support else None
        precision = cm[i][i] / predicted if predicted else 0.0
        f1 = 2 * precision * recall / (precision + recall) if recall and precision else 0.0
        assert m["per_class_accuracy"][names[i]] == (None if recall is None else pytest.approx(recall))
        assert m["per_class"][names[i]]["support"] == support
        if i in present:
            f1s.append(f1)
    assert m["macro_f1"] == pytest.approx(sum(f1s) / len(f1s))


def test_normalize_rows_keeps_empty_rows_at_zero():
    out = normalize_rows(np.array([[2, 2], [0, 0]]))
    assert out.tolist() == [[0.5, 0.5], [0.0, 0.0]]


@pytest.mark.parametrize("listed_in_manifest", [True, False])
def test_corrupt_best_pt_is_an_artefact_error_naming_the_file(evaluated, tmp_path, listed_in_manifest):
    src, _ = evaluated
    run_dir = tmp_path / "run"
    shutil.copytree(src, run_dir)  # the copy still points at the same windows folder
    ckpt = run_dir / "best.pt"
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    before = (run_dir / "eval" / "manifest.json").read_bytes()
    if not listed_in_manifest:  # then torch.load itself must fail cleanly
        man = read_manifest(run_dir, "train")
        write_manifest(run_dir, "train", **{k: v for k, v in man.items()
                                            if k not in ("stage", "versions", "outputs")},
                       outputs=[e for e in man["outputs"] if not e["path"].endswith("best.pt")])
    with pytest.raises(ArtefactError, match=r"best\.pt"):
        run(FAST, run_dir)
    # A failed evaluate leaves the earlier evaluation exactly as it was, and no leftovers.
    assert (run_dir / "eval" / "manifest.json").read_bytes() == before
    assert sorted(p.name for p in run_dir.iterdir() if p.name.startswith(".")) == []


def test_eval_config_refuses_fewer_than_100_timed_runs():
    with pytest.raises(UsageError, match="latency_repeats"):
        EvalConfig(latency_repeats=10)
    with pytest.raises(UsageError, match="device"):
        build(EvalConfig, {"device": "tpu"})
    assert build(EvalConfig, {"latency_batch_sizes": [1, 8]}).latency_batch_sizes == (1, 8)


def test_latency_with_the_real_100_repeats_reports_median_and_p90(evaluated, tmp_path):
    src, _ = evaluated
    run_dir = tmp_path / "run"
    shutil.copytree(src, run_dir)
    # Default latency_repeats=100 and warmup=10; one thread is steadier on a shared machine.
    cfg = EvalConfig(device="cpu", latency_batch_sizes=(1, 4), threads=1)
    m = run(cfg, run_dir)
    cpu = m["latency_ms"]["cpu"]
    assert cpu["repeats"] == 100 and cpu["warmup"] == 10
    assert cpu["threads"] == 1
    assert cpu["device_name"]
    for key in ("batch_1", "batch_4"):
        assert 0 < cpu[key]["median"] <= cpu[key]["p90"]
        assert m["throughput_windows_per_s"]["cpu"][key] == pytest.approx(int(key[6:]) / cpu[key]["median"] * 1e3)
    assert "cuda" not in m["latency_ms"]  # device=cpu times the CPU only
    eff = pd.read_csv(run_dir / "eval" / "efficiency.csv")
    row = eff[eff["metric"] == "latency_cpu_batch_1_p90"].iloc[0]
    assert row["unit"] == "ms" and "100 timed runs" in row["how"] and ", 1 thread," in row["how"]
    assert "eager PyTorch" in row["how"]
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        assert "not installed" in m["measured_with"]["fast_runtime"] and "cpu_onnxruntime" not in m["latency_ms"]
        return
    fast = m["latency_ms"]["cpu_onnxruntime"]  # beside eager, same batches, repeats and threads
    assert fast["runtime"].startswith("onnxruntime ") and fast["parity"] <= 1e-4 and fast["threads"] == 1
    assert fast["repeats"] == 100 and all(0 < fast[k]["median"] <= fast[k]["p90"] for k in ("batch_1", "batch_4"))
    row = eff[eff["metric"] == "latency_cpu_onnxruntime_batch_1_median"].iloc[0]
    assert "logits within" in row["how"] and "onnxruntime" in row["how"]
    assert "cpu_onnxruntime_1thread" not in m["latency_ms"]  # asked for one thread: no second row


def test_small_batches_are_also_timed_on_one_thread_beside_the_threads_asked_for(evaluated, tmp_path):
    pytest.importorskip("onnxruntime", reason="onnxruntime not installed: pip install -e '.[export]'")
    from har_vit.stages.evaluate import ONE_THREAD_BATCH

    src, _ = evaluated
    run_dir = tmp_path / "run"
    shutil.copytree(src, run_dir)
    big = ONE_THREAD_BATCH * 2
    before = torch.get_num_threads()
    m = run(EvalConfig(device="cpu", latency_batch_sizes=(1, big), threads=2), run_dir)
    lat = m["latency_ms"]
    assert lat["cpu"]["threads"] == lat["cpu_onnxruntime"]["threads"] == 2
    assert {"batch_1", f"batch_{big}"} <= set(lat["cpu_onnxruntime"])
    one = lat["cpu_onnxruntime_1thread"]
    assert one["threads"] == 1 and "1 thread," in one["runtime"] and one["parity"] <= 1e-4
    assert "batch_1" in one and f"batch_{big}" not in one  # only batches up to ONE_THREAD_BATCH
    assert torch.get_num_threads() == before  # the caller's threads are put back
    eff = pd.read_csv(run_dir / "eval" / "efficiency.csv")
    row = eff[eff["metric"] == "latency_cpu_onnxruntime_1thread_batch_1_median"].iloc[0]
    assert "(CPU, 1 thread, opset" in row["how"]
    from har_vit.stages.report import DASH, runtime_table

    table = runtime_table(lat)  # the report's row: one thread, batch 1 timed, the larger batch not
    assert any(r[0] == one["runtime"] and r[1] == "1" and r[3] == DASH for r in table.rows)


def test_a_batch_size_whose_fast_runtime_falls_back_is_named_and_the_others_kept(evaluated, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime", reason="onnxruntime not installed: pip install -e '.[export]'")
    from har_vit.core import runtime

    src, _ = evaluated
    run_dir = tmp_path / "run"
    shutil.copytree(src, run_dir)
    real = runtime.fast_runtime

    def differs_at_4(*a, **kw):  # as if onnxruntime's logits at batch 4 were off: eager, with the reason
        rt = real(*a, **kw)
        if kw.get("batch") == 4:
            return runtime.Runtime("eager PyTorch", rt.run, note="onnxruntime differs from eager PyTorch by 1e-2")
        return rt

    monkeypatch.setattr(runtime, "fast_runtime", differs_at_4)
    m = run(EvalConfig(device="cpu", latency_batch_sizes=(1, 4), threads=1), run_dir)
    fast = m["latency_ms"]["cpu_onnxruntime"]
    assert "batch_1" in fast and "batch_4" not in fast and fast["parity"] <= 1e-4
    assert m["measured_with"]["fast_runtime"] == "batch 4: onnxruntime differs from eager PyTorch by 1e-2"
    assert set(m["latency_ms"]["cpu"]) >= {"batch_1", "batch_4"}  # eager PyTorch is timed at every batch size


def test_efficiency_counts_match_the_model_and_the_article():
    seed = create_model("seed")
    total, trainable = efficiency.count_params(seed)
    assert total == trainable == seed.num_params() == article.PARAMS
    tiny = create_model("tiny")
    for p in tiny.head.parameters():
        p.requires_grad_(False)
    total, trainable = efficiency.count_params(tiny)
    assert trainable == total - sum(p.numel() for p in tiny.head.parameters())
    assert efficiency.weights_mb(tiny) == pytest.approx(
        sum(t.numel() * t.element_size() for t in tiny.state_dict().values()) / 1e6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_latency_is_timed_with_synchronisation_and_named():
    eff = efficiency.measure(create_model("tiny"), window=128, channels=3, devices=("cpu", "cuda"), batch_sizes=(1,))
    cuda = eff["latency_ms"]["cuda"]
    assert cuda["device_name"] == torch.cuda.get_device_name(0) and "threads" not in cuda
    assert 0 < cuda["batch_1"]["median"] <= cuda["batch_1"]["p90"]
    assert any("cuda.synchronize" in r["how"] for r in efficiency.efficiency_rows(eff))


def test_per_user_figures_agree_with_the_written_test_predictions(evaluated):
    run_dir, m = evaluated
    y_true, y_pred = reference_predict(run_dir)
    df = pd.read_csv(run_dir / "eval" / "test_predictions.csv")
    assert list(df.columns) == ["window", "user", "true", "predicted", "confidence"]
    assert df["true"].tolist() == [CLASSES[i] for i in y_true]
    assert df["predicted"].tolist() == [CLASSES[i] for i in y_pred]
    assert ((df["confidence"] > 1 / len(CLASSES)) & (df["confidence"] <= 1)).all()
    assert sorted(m["per_user"]) == sorted(str(u) for u in TEST_USERS)
    for user, rows in df.groupby("user"):
        got = m["per_user"][str(user)]
        assert got["windows"] == len(rows)
        assert got["accuracy"] == pytest.approx((rows["true"] == rows["predicted"]).mean())
        assert got["macro_f1"] == pytest.approx(f1_score(rows["true"], rows["predicted"], average="macro"))
        for name, part in rows.groupby("true"):
            assert got["recall"][name] == pytest.approx((part["predicted"] == name).mean())
        wrong = rows[rows["true"] != rows["predicted"]]
        if len(wrong):
            top = wrong.groupby(["true", "predicted"]).size().max()
            pair = got["top_confusion"]
            assert pair["windows"] == top
            assert len(wrong[(wrong["true"] == pair["true"]) & (wrong["predicted"] == pair["predicted"])]) == top
        else:
            assert got["top_confusion"] is None
    assert {"per_user.png", "saliency.png"} <= {p.name for p in (run_dir / "eval" / "plots").glob("*.png")}


class _LooksAt(torch.nn.Module):
    """Logits from samples 10..15 of the window only: its saliency must be zero everywhere else."""

    def forward(self, x):
        s = x[:, 10:16, :].sum(dim=(1, 2))
        return torch.stack([s, -s], dim=1)


def test_saliency_marks_the_samples_that_move_the_score():
    from har_vit.core.inference import saliency

    X = np.random.default_rng(0).normal(size=(3, T, C)).astype(np.float32)
    norm = {"mean": [0.0, 0.0, 0.0], "std": [2.0, 2.0, 2.0]}
    sal = saliency(_LooksAt(), norm, X, np.array([0, 1, 0]), smooth=1)
    assert sal.shape == (3, T) and np.allclose(sal.max(axis=1), 1.0)
    assert np.all(sal[:, 10:16] == 1.0) and np.all(sal[:, :10] == 0) and np.all(sal[:, 16:] == 0)
    smoothed = saliency(_LooksAt(), norm, X, np.array([0, 1, 0]), smooth=5)
    assert np.all(smoothed[:, :8] == 0) and np.all(smoothed[:, 18:] == 0) and np.all(smoothed[:, 10:16] > 0)


def test_forest_has_no_saliency():
    from har_vit.core.inference import saliency
    from har_vit.model.forest import fit_forest

    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, T, C)).astype(np.float32)
    forest = fit_forest(torch.from_numpy(X), np.arange(40) % 2, 2, seed=0, trees=5)
    assert saliency(forest, {"mean": [0.0] * C, "std": [1.0] * C}, X[:2], np.array([0, 1])) is None


@pytest.mark.parametrize("threads, words", [(1, "1 thread,"), (2, "2 threads,")])
def test_efficiency_rows_name_the_cpu_threads_in_plain_words(threads, words):
    eff = efficiency.measure(create_model("tiny", window=T, channels=C), window=T, channels=C, batch_sizes=(1,),
                             repeats=2, warmup=0, threads=threads)
    how = " ".join(r["how"] for r in efficiency.efficiency_rows(eff))
    assert words in how and "1 threads" not in how
