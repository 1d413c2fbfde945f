"""Evaluate stage: a train run folder -> ``<run>/eval/`` with test-split metrics, cost and plots.

Only the TEST split of ``split.npz`` is predicted, with the checkpoint's own
normalisation. Outputs (manifest last): ``metrics.json``, ``per_class.csv``,
``efficiency.csv``, ``confusion.csv``, ``confusion_normalized.csv``, ``plots/*.png``.

``metrics.json`` keys (paste into the README):

- ``accuracy``, ``macro_f1``, ``weighted_f1``, ``macro_precision``, ``macro_recall``,
  ``weighted_precision``, ``weighted_recall``: scikit-learn on the test windows. Macro and
  weighted averages run over the classes present in the test labels or predictions
  (scikit-learn's default); an undefined precision (class never predicted) counts as 0.
- ``per_class_accuracy``: class name -> fraction of that class's test windows predicted
  correctly, i.e. the class's recall. This is how the article's per-class accuracy
  reads. ``null`` for a class with no test windows (undefined, not 0).
- ``per_class``: class name -> ``{precision, recall, f1, support}`` (recall ``null`` where
  support is 0; precision and F1 of a never-predicted class are 0).
- ``confusion``: counts, rows true and columns predicted, in ``class_names`` order
  (``confusion_normalized.csv`` holds the row-normalised matrix).
- ``class_names``, ``n_test``, ``model``, ``run_id``, ``checkpoint`` (best/last),
  ``epoch``, ``device`` (where the test split was predicted), ``device_name``.
- ``split``: the train manifest's split record (protocol, leaky, description, n_train,
  n_val, n_test, test_users).
- ``params``, ``trainable_params``, ``flops`` (fvcore, batch 1, one multiply-add = one
  FLOP), ``flops_note`` (how, and which ops fvcore skipped), ``flops_unsupported``,
  ``weights_mb`` (state_dict bytes / 10^6).
- ``latency_ms``: ``{"cpu": {"batch_1": {"median", "p90", "mean"}, "batch_256": {...},
  "threads": n, "device_name", "repeats", "warmup"}, "cuda": {...}, "cpu_onnxruntime": {...,
  "runtime", "parity"}}``; ``cuda`` only when a GPU is present and the device is not ``cpu``;
  ``cpu_onnxruntime`` when onnxruntime is installed and its logits equal eager PyTorch's
  (:mod:`har_vit.core.runtime`), ``cpu_onnxruntime_1thread`` beside it when it ran on more than
  one thread (the batch sizes up to :data:`ONE_THREAD_BATCH` again, on one thread: a small model
  answers one window sooner without the threads' hand-offs), and ``cpu_onnxruntime_tta`` (batch 1:
  one window with all its test-time-augmentation views) when TTA is on; ``{}`` with ``skip_latency``.
- ``tta``: ``{views, description, without_tta: {accuracy, macro_f1}}``: how many views of
  each window were averaged (1: the window alone, TTA off, and no ``without_tta``), and the
  scores of the window alone beside the averaged ones.
- ``throughput_windows_per_s``: ``{"cpu": {"batch_256": windows/s, ...}, ...}``
  (batch / median latency).
- ``measured_with``: torch version, CPU model (/proc/cpuinfo), CUDA device name.
- ``per_user``: test user id -> ``{windows, accuracy, macro_f1, recall: {class: recall},
  top_confusion: {true, predicted, windows} | null}``: which people the model fails on,
  and on which activities (``recall`` lists the classes the user performed).
- ``chance``: ``{uniform_accuracy, majority_accuracy}``; ``baseline``: the random forest
  fitted on the same train windows and scored on the same test windows (or null).

``test_predictions.csv`` holds one row per test window: ``window`` (index in
``windows.npz``), ``user``, ``true``, ``predicted``, ``confidence``. ``plots/saliency.png``
shows, for a few test windows per class (a confident hit and the most confident
mistake), the three axes with the gradient saliency of the predicted class beneath.

See :mod:`har_vit.core.efficiency` for how each cost figure is measured.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

from har_vit.core import efficiency, inference, plots, schema, tta
from har_vit.core.checkpoint import load_model, normalise, served
from har_vit.core.errors import ArtefactError
from har_vit.core.io import (
    MANIFEST,
    file_entry,
    load_npz,
    read_manifest,
    sha256_file,
    staged_folder,
    write_json,
    write_manifest,
    write_text,
)
from har_vit.core.runs import find_model_dir
from har_vit.core.schema import as_dict
from har_vit.model.ensemble import ensemble_info
from har_vit.stages.windows import load_windows

EVAL_DIR = "eval"
PLOTS_DIR = "plots"
# Batch sizes the latency table also times on one onnxruntime thread when more were asked for. On 2
# cores at batch 1 (bench/results/latency_cpu_batch1_threads.json, fixed-batch sessions): tiny_ws
# 0.234 ms on 1 thread vs 0.347 ms on 2; seed, 58 M FLOPs a window, the other way (1.884 vs 1.515).
ONE_THREAD_BATCH = 8


@schema.config("evaluate")
class EvalConfig:
    """How to evaluate a run. ``threads=None`` times the CPU with torch's current thread count (recorded)."""


def upstream_folder(manifest: Mapping[str, Any]) -> Path | None:
    """The upstream folder a manifest names in ``inputs.upstream``, or None."""
    inputs = manifest.get("inputs")
    up = inputs.get("upstream") if isinstance(inputs, Mapping) else None
    return Path(up) if up else None


def read_json(path: str | os.PathLike) -> Any:
    """Parse a JSON artefact; missing or corrupt is an ArtefactError naming the file."""
    p = Path(path)
    if not p.is_file():
        raise ArtefactError(f"{p}: not found; run the stage that writes it first")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtefactError(f"{p}: corrupt JSON ({e}); re-run the stage that wrote it") from None


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """scikit-learn metrics of integer labels, keyed by class name (see the module docstring)."""
    labels = np.arange(len(class_names))
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    prec, rec, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    # labels=None: average over the classes present, so a class the test users never
    # performed does not enter the macro average as a zero.
    averages = {avg: precision_recall_fscore_support(y_true, y_pred, average=avg, zero_division=0)[:3]
                for avg in ("macro", "weighted")}
    per_class, per_class_acc = {}, {}
    for i, name in enumerate(class_names):
        has = bool(support[i])
        per_class[name] = {"precision": float(prec[i]), "recall": float(rec[i]) if has else None,
                           "f1": float(f1[i]), "support": int(support[i])}
        per_class_acc[name] = float(rec[i]) if has else None
    return {
        "accuracy": float(np.mean(y_true == y_pred)),
        "macro_f1": float(averages["macro"][2]),
        "weighted_f1": float(averages["weighted"][2]),
        "macro_precision": float(averages["macro"][0]),
        "macro_recall": float(averages["macro"][1]),
        "weighted_precision": float(averages["weighted"][0]),
        "weighted_recall": float(averages["weighted"][1]),
        "per_class_accuracy": per_class_acc,
        "per_class": per_class,
        "confusion": cm.tolist(),
        "class_names": list(class_names),
    }


def normalize_rows(cm: np.ndarray) -> np.ndarray:
    """Row-normalised confusion matrix; a class with no test windows keeps a row of zeros."""
    cm = np.asarray(cm, dtype=np.float64)
    totals = cm.sum(axis=1, keepdims=True)
    return np.divide(cm, totals, out=np.zeros_like(cm), where=totals > 0)


def _check_unchanged(run_dir: Path, manifest: Mapping[str, Any], names: Sequence[str]) -> None:
    """Files we read that the train manifest lists must still match its sha256."""
    listed = {Path(e["path"]).name: e for e in manifest.get("outputs", []) if isinstance(e, Mapping)}
    for name in names:
        entry, p = listed.get(name), run_dir / name
        if entry and p.is_file() and (p.stat().st_size != entry.get("bytes") or sha256_file(p) != entry.get("sha256")):
            raise ArtefactError(f"{p}: does not match the train manifest (size or sha256 differ: truncated or "
                                "modified after training); restore it or retrain")


def _test_indices(split_path: Path, n_windows: int, n_test_manifest: int | None) -> np.ndarray:
    test = load_npz(split_path, required=("test",))["test"].astype(np.int64)
    if test.size == 0:
        raise ArtefactError(f"{split_path}: the test split is empty; retrain with a split that holds out test windows")
    if test.min() < 0 or test.max() >= n_windows:
        raise ArtefactError(f"{split_path}: test indices outside 0..{n_windows - 1}; the windows folder changed "
                            "since training - retrain on it")
    if n_test_manifest is not None and n_test_manifest != test.size:
        raise ArtefactError(f"{split_path}: {test.size} test windows but the train manifest says {n_test_manifest}; "
                            "retrain")
    return test


def _class_names(ckpt: Mapping[str, Any], windows: Mapping[str, np.ndarray], ckpt_path: Path,
                 windows_dir: Path) -> list[str]:
    ours = [str(c) for c in ckpt.get("class_names", [])]
    theirs = [str(c) for c in windows["class_names"]]
    if ours and ours != theirs:
        raise ArtefactError(f"{ckpt_path}: trained on classes {ours} but {windows_dir} holds {theirs}; "
                            "evaluate on the windows folder the run was trained on")
    return theirs


def per_user_metrics(users: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray,
                     class_names: Sequence[str]) -> dict[str, Any]:
    """Accuracy, macro F1, per-class recall and the most frequent mistake of each test user."""
    out: dict[str, Any] = {}
    for u in np.unique(users):
        m = users == u
        yt, yp = y_true[m], y_pred[m]
        recall = {name: float(np.mean(yp[yt == k] == k)) for k, name in enumerate(class_names) if np.any(yt == k)}
        wrong = yt != yp
        top = None
        if wrong.any():
            (t, p), n = Counter(zip(yt[wrong].tolist(), yp[wrong].tolist())).most_common(1)[0]
            top = {"true": class_names[t], "predicted": class_names[p], "windows": int(n)}
        out[str(int(u))] = {"windows": int(m.sum()), "accuracy": float(np.mean(yt == yp)),
                            "macro_f1": float(f1_score(yt, yp, average="macro", zero_division=0)),
                            "recall": recall, "top_confusion": top}
    return out


def saliency_examples(model: torch.nn.Module, norm: Mapping[str, Any], X: np.ndarray, y_true: np.ndarray,
                      y_pred: np.ndarray, confidence: np.ndarray, class_names: Sequence[str],
                      max_classes: int = 8) -> list[dict[str, Any]]:
    """Per class, its most confident correct window and its most confident mistake, with saliency.

    With more than ``max_classes`` classes, the ones with the lowest recall are shown. Empty for
    a model without gradients (the forest).
    """
    recall = {k: float(np.mean(y_pred[y_true == k] == k)) for k in range(len(class_names)) if np.any(y_true == k)}
    classes = sorted(recall, key=lambda k: (recall[k], k))[:max_classes] if len(recall) > max_classes else sorted(recall)
    picks = []
    for k in classes:
        for correct in (True, False):
            idx = np.flatnonzero((y_true == k) & ((y_pred == k) == correct))
            if idx.size:
                picks.append((int(idx[np.argmax(confidence[idx])]), correct))
    if not picks:
        return []
    rows = np.array([i for i, _ in picks])
    sal = inference.saliency(model, norm, X[rows], y_pred[rows])
    if sal is None:
        return []
    return [{"x": X[i], "saliency": sal[j], "correct": ok,
             "title": (f"{class_names[y_true[i]]}: right ({confidence[i]:.2f})" if ok else
                       f"{class_names[y_true[i]]} taken for {class_names[y_pred[i]]} ({confidence[i]:.2f})")}
            for j, (i, ok) in enumerate(picks)]


def _frame_csv(path: Path, df: pd.DataFrame, index: bool = False) -> Path:
    return write_text(path, df.to_csv(index=index, lineterminator="\n"))


def _write_tables(eval_dir: Path, metrics: dict[str, Any], eff: dict[str, Any]) -> list[Path]:
    names = metrics["class_names"]
    per_class = pd.DataFrame([{"class": n, "accuracy": metrics["per_class_accuracy"][n], **metrics["per_class"][n]}
                              for n in names])
    cm = np.asarray(metrics["confusion"])
    counts = pd.DataFrame(cm, index=pd.Index(names, name="true\\predicted"), columns=names)
    normed = pd.DataFrame(normalize_rows(cm).round(6), index=counts.index, columns=names)
    return [
        write_json(eval_dir / "metrics.json", metrics),
        _frame_csv(eval_dir / "per_class.csv", per_class),
        _frame_csv(eval_dir / "efficiency.csv", pd.DataFrame(efficiency.efficiency_rows(eff))),
        _frame_csv(eval_dir / "confusion.csv", counts, index=True),
        _frame_csv(eval_dir / "confusion_normalized.csv", normed, index=True),
    ]


def _write_plots(plot_dir: Path, metrics: dict[str, Any], run_dir: Path, train_man: Mapping[str, Any],
                 windows_man: Mapping[str, Any], examples: Sequence[Mapping[str, Any]] = ()) -> list[Path]:
    names = metrics["class_names"]
    cm = np.asarray(metrics["confusion"])
    out = [
        plots.confusion_heatmap(cm, names, plot_dir / "confusion_counts.png"),
        plots.confusion_heatmap(normalize_rows(cm), names, plot_dir / "confusion_normalized.png", normalized=True),
        plots.per_class_bars(metrics["per_class_accuracy"], plot_dir / "per_class_accuracy.png"),
        plots.per_user(metrics["per_user"], names, plot_dir / "per_user.png"),
    ]
    if examples:
        out.append(plots.saliency_grid(examples, plot_dir / "saliency.png"))
    history_path = run_dir / "history.json"
    if history_path.is_file():
        history = read_json(history_path)
        if history:
            out.append(plots.training_curves(history, plot_dir / "training_curves.png", train_man.get("best_epoch")))
    if windows_man.get("per_class"):
        records = None
        ingest_dir = upstream_folder(windows_man)
        if ingest_dir is not None and (ingest_dir / MANIFEST).is_file():  # no ingest stage for npz input
            records = read_manifest(ingest_dir, "ingest").get("per_activity")
        out.append(plots.class_distribution(windows_man["per_class"], plot_dir / "class_distribution.png", records))
    return out


def chance_levels(y_true: np.ndarray, num_classes: int) -> dict[str, float]:
    """What guessing scores on this test set: uniform over classes, and always the most frequent class."""
    counts = np.bincount(y_true, minlength=num_classes)
    return {"uniform_accuracy": 1.0 / num_classes, "majority_accuracy": float(counts.max() / max(1, counts.sum()))}


def baseline_scores(w: Mapping[str, Any], run_dir: Path, train_man: Mapping[str, Any], ckpt: Mapping[str, Any],
                    test: np.ndarray, num_classes: int) -> dict[str, Any]:
    """The random-forest baseline fitted on this run's train windows and scored on its test windows."""
    import time

    from sklearn.metrics import accuracy_score, f1_score

    from har_vit.model.forest import fit_forest

    train = load_npz(run_dir / "split.npz", ("train",))["train"]
    seed = int((train_man.get("config") or {}).get("seed", 0))
    t0 = time.perf_counter()
    forest = fit_forest(normalise(torch.from_numpy(w["X"][train]), ckpt["norm"]), w["y"][train], num_classes, seed,
                        norm=ckpt["norm"])
    fit_s = time.perf_counter() - t0
    pred = inference.labels(forest, ckpt["norm"], w["X"][test], torch.device("cpu"), 1024)
    y = w["y"][test]
    return {"model": "rf", "description": "random forest (300 trees) on 79 window statistics, same train and test "
                                          "windows, fitted by scikit-learn",
            "accuracy": float(accuracy_score(y, pred)), "macro_f1": float(f1_score(y, pred, average="macro")),
            "fit_seconds": round(fit_s, 1), "seed": seed}


def _time_checked(eff: dict[str, Any], runtimes: Mapping[int, Any], X: np.ndarray, cfg: EvalConfig,
                  fallback_key: str) -> tuple[dict[str, Any], dict[str, float], float] | None:
    """Time each batch size's runtime (numpy in and out) whose logits passed the parity check.

    A batch size whose runtime fell back to eager is named in ``measured_with[fallback_key]``,
    not timed. Returns (latency, throughput, worst parity), or None when none passed.
    """
    fell_back = {b: rt.note for b, rt in runtimes.items() if rt.parity is None}
    if fell_back:
        eff["measured_with"][fallback_key] = "; ".join(f"batch {b}: {note}" for b, note in fell_back.items())
    passed = {b: rt for b, rt in runtimes.items() if rt.parity is not None}
    if not passed:
        return None
    lat: dict[str, Any] = {}
    thr: dict[str, float] = {}
    for batch, rt in passed.items():
        one_lat, one_thr = efficiency.time_runtime(rt, X.shape[1], X.shape[2], [batch], cfg.latency_repeats,
                                                   cfg.latency_warmup)
        lat.update(one_lat)
        thr.update(one_thr)
    return lat, thr, max(r.parity for r in passed.values())


def _time_fast_runtime(eff: dict[str, Any], model: torch.nn.Module, norm: Mapping[str, Any], X: np.ndarray,
                       cfg: EvalConfig, views: np.ndarray) -> None:
    """Add ``cpu_onnxruntime`` latency beside eager PyTorch's when onnxruntime runs the model with equal logits.

    With test-time augmentation (more than one view) also ``cpu_onnxruntime_tta``: one window's
    prediction as ``predict`` makes it, all its views in one call of a session fixed to that batch.
    """
    from har_vit.core.runtime import Runtime, describe_onnxruntime, fast_runtime

    saved = torch.get_num_threads()
    threads = cfg.threads or saved
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    try:
        # One session per batch size, its batch dimension fixed; each is checked against eager before
        # anything is timed.
        runtimes = {b: fast_runtime(model.cpu(), norm, "auto", check=X[:64], batch=b) for b in cfg.latency_batch_sizes}
        timed = _time_checked(eff, runtimes, X, cfg, "fast_runtime")
        timed_one = None
        small = [b for b in cfg.latency_batch_sizes if b <= ONE_THREAD_BATCH]
        if timed is not None and small and threads > 1:  # the small batches again, on one onnxruntime thread
            ones = {b: fast_runtime(model.cpu(), norm, "auto", threads=1, check=X[:64], batch=b) for b in small}
            timed_one = _time_checked(eff, ones, X, cfg, "fast_runtime_1thread")
        timed_tta = None
        if timed is not None and len(views) > 1:
            rt = fast_runtime(model.cpu(), norm, "auto", check=X[:64], batch=len(views))
            wrapped = Runtime(rt.name, tta.wrap(rt, views), rt.parity, rt.note)
            timed_tta = _time_checked(eff, {1: wrapped}, X, cfg, "fast_runtime_tta")
    finally:
        torch.set_num_threads(saved)
    if timed is None:
        return
    for key, got, how, n in (
            ("cpu_onnxruntime", timed, "a session per batch size with that size fixed", threads),
            ("cpu_onnxruntime_1thread", timed_one, "a session per batch size with that size fixed", 1),
            ("cpu_onnxruntime_tta", timed_tta, f"test-time augmentation: one window's {len(views)} "
                                               f"views in one call, batch fixed to {len(views)}", threads)):
        if got is None:
            continue
        lat, thr, parity = got
        lat.update(threads=n, runtime=describe_onnxruntime(n, how), parity=parity)
        eff["latency_ms"][key] = lat
        eff["throughput_windows_per_s"][key] = thr


def _time_cuda_graph(eff: dict[str, Any], model: torch.nn.Module, norm: Mapping[str, Any], X: np.ndarray,
                     cfg: EvalConfig) -> None:
    """Add ``cuda_graph`` latency beside eager CUDA's: one graph per batch size, each checked against eager first."""
    from har_vit.core.runtime import fast_runtime

    device = torch.device("cuda")
    runtimes = {b: fast_runtime(model, norm, "auto", device, check=X[:64], batch=b) for b in cfg.latency_batch_sizes}
    model.cpu()  # each graph runs its own copy of the model
    timed = _time_checked(eff, runtimes, X, cfg, "cuda_graph")  # the copies to and from the GPU are in the time
    if timed is None:
        return
    lat, thr, parity = timed
    lat.update(device_name=efficiency.device_label(device),
               runtime=f"CUDA graph (torch {torch.__version__}, a graph per batch size with that size fixed)",
               parity=parity)
    eff["latency_ms"]["cuda_graph"] = lat
    eff["throughput_windows_per_s"]["cuda_graph"] = thr


def run(cfg: EvalConfig, run_dir: str | os.PathLike) -> dict[str, Any]:
    """Evaluate the run in ``run_dir`` on its test split; write ``run_dir/eval/`` and return metrics.json's dict."""
    run_dir = find_model_dir(run_dir)
    train_man = read_manifest(run_dir, "train")
    eval_dir = run_dir / EVAL_DIR

    windows_dir = upstream_folder(train_man)
    if windows_dir is None:
        raise ArtefactError(f"{run_dir / MANIFEST}: names no windows folder in inputs.upstream; retrain the run")
    w = load_windows(windows_dir)  # checks the manifest and windows.npz's sha256
    windows_man = w["manifest"]
    which = served(run_dir, cfg.which)
    split_path, ckpt_path = run_dir / "split.npz", run_dir / f"{which}.pt"
    _check_unchanged(run_dir, train_man, [ckpt_path.name, split_path.name])
    test = _test_indices(split_path, len(w["y"]), (train_man.get("split") or {}).get("n_test"))

    device = efficiency.resolve_device(cfg.device)
    model, ckpt = load_model(run_dir, which)
    class_names = _class_names(ckpt, w, ckpt_path, windows_dir)
    X_test, y_true = w["X"][test], w["y"][test].astype(np.int64)
    pred = tta.predict(model, ckpt, X_test, device, cfg.predict_batch_size, cfg.tta)
    A = pred.views
    proba = torch.exp(pred.log_proba).cpu().numpy()
    y_pred = proba.argmax(axis=1).astype(np.int64)
    tta_info: dict[str, Any] = pred.info
    if pred.plain is not None:  # the plain prediction beside it, so a reader sees what TTA adds
        plain = classification_metrics(y_true, pred.plain.argmax(dim=1).cpu().numpy(), class_names)
        tta_info["without_tta"] = {"accuracy": plain["accuracy"], "macro_f1": plain["macro_f1"]}
    confidence = proba[np.arange(y_pred.size), y_pred]
    users = w["subject"][test].astype(np.int64)

    latency_devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() and cfg.device != "cpu" else [])
    eff = efficiency.measure(model.cpu(), window=X_test.shape[1], channels=X_test.shape[2], devices=latency_devices,
                             batch_sizes=cfg.latency_batch_sizes, repeats=cfg.latency_repeats, warmup=cfg.latency_warmup,
                             threads=cfg.threads, latency=not cfg.skip_latency)
    if not cfg.skip_latency:
        _time_fast_runtime(eff, model, ckpt["norm"], X_test, cfg, A)
        if "cuda" in latency_devices:
            _time_cuda_graph(eff, model, ckpt["norm"], X_test, cfg)
    metrics = {
        "run_id": train_man.get("run_id", run_dir.name), "model": ckpt["model_name"], "checkpoint": which,
        "epoch": ckpt.get("epoch"), **ensemble_info(ckpt), "device": device.type,
        "device_name": efficiency.device_label(device),
        "split": train_man.get("split", {}), "n_test": int(test.size),
        **classification_metrics(y_true, y_pred, class_names), "tta": tta_info, **eff,
        "per_user": per_user_metrics(users, y_true, y_pred, class_names),
        "chance": chance_levels(y_true, len(class_names)),
        "baseline": (baseline_scores(w, run_dir, train_man, ckpt, test, len(class_names))
                     if cfg.baseline == "rf" and ckpt["model_name"] != "rf" else None),
    }

    examples = saliency_examples(model, ckpt["norm"], X_test, y_true, y_pred, confidence, class_names)
    predictions = pd.DataFrame({"window": test, "user": users, "true": np.asarray(class_names)[y_true],
                                "predicted": np.asarray(class_names)[y_pred], "confidence": confidence})

    with staged_folder(eval_dir) as tmp:  # a failed evaluate leaves the earlier evaluation as it was
        written = _write_tables(tmp, metrics, eff)
        written.append(write_text(tmp / "test_predictions.csv",
                                  predictions.to_csv(index=False, float_format="%.6g", lineterminator="\n")))
        written += _write_plots(tmp / PLOTS_DIR, metrics, run_dir, train_man, windows_man, examples)
        write_manifest(
            tmp, "evaluate", config=as_dict(cfg),
            inputs={"upstream": str(run_dir.resolve()), "files": [file_entry(ckpt_path), file_entry(split_path),
                                                         file_entry(windows_dir / "windows.npz")]},
            outputs=[file_entry(p) for p in written],
            run_id=metrics["run_id"], model=metrics["model"], n_test=metrics["n_test"], device=metrics["device"],
            accuracy=metrics["accuracy"], macro_f1=metrics["macro_f1"],
        )
    return metrics
