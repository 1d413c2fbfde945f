"""``pipeline.py cv``: cross-validation grouped by user, every fold for every seed, one results row.

The data is ingested and cut once (``DIR/data/``). The sorted user ids are cut into
``--folds`` contiguous groups; each group is the test set of one fold (for WISDM v1.1 and 6
folds: users 1-6, 7-12, ..., 31-36, the ``cv6`` protocol of ``bench/bench_accuracy.py``),
validation users are drawn from the rest by the seed, and model selection and early
stopping see validation users only. Every (seed, fold) model is trained and evaluated on
its test users in its own folder ``DIR/models/s<seed>-f<fold>/``; a finished one is kept
when ``cv`` runs again, so an interrupted run resumes.

The models train together as stacked models (:mod:`har_vit.training.stacked`: each
with its own fold's data, seed and dropout stream, so each ends with the weights it
would have alone, to float tolerance). On the CPU they are dealt to several processes
(``--workers``, :mod:`har_vit.training.workers`), each training its share as one stack;
on CUDA one process holds them all. ``--sequential`` trains them one after
another instead, and models that a stack cannot hold (``--model rf``, ``--teacher``,
``--init``) always train alone.

``DIR/cv.json``: ``{"rows": [row], "stacked": bool, "processes": {"workers", "models",
"threads"}, "folds": [[users], ...], "seconds"}``
where ``row`` has the format of ``bench/results/accuracy.json`` (:mod:`har_vit.core.results`):
``per_seed`` lists ``{seed, fold, accuracy, macro_f1}`` for every model, and ``command`` the
command line that reproduces it.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from har_vit.core import results
from har_vit.core.efficiency import machine
from har_vit.core.errors import DataError, UsageError
from har_vit.core.io import write_json
from har_vit.core.runid import new_run_id
from har_vit.core.schema import build
from har_vit.training.stacked import why_not_stacked
from har_vit.training.workers import train_stacks

CV_JSON = "cv.json"


def folds_of(users: np.ndarray, k: int) -> list[tuple[int, ...]]:
    """The sorted user ids cut into ``k`` contiguous groups (sizes differ by at most one).

    >>> folds_of(np.array([3, 1, 2, 2, 4, 5, 6]), 3)
    [(1, 2), (3, 4), (5, 6)]
    """
    ids = np.unique(users)
    if k > ids.size:
        raise UsageError(f"--folds {k}: the data has only {ids.size} users; use --folds {ids.size} or fewer")
    return [tuple(int(u) for u in part) for part in np.array_split(ids, k)]


def recipe_of(cfg: Any) -> str:
    """``default`` when every training option that shapes the model is at its default, else what differs."""
    from har_vit.stages.train import TrainConfig

    defaults = TrainConfig()
    ignored = {"seed", "split", "test_users", "fold", "progress", "device", "threads", "compile", "eval_batch_size"}
    changed = [f.name for f in dataclasses.fields(cfg)
               if f.name not in ignored and getattr(cfg, f.name) != getattr(defaults, f.name)]
    return "default" if not changed else "custom: " + ", ".join(f"{n}={getattr(cfg, n)}" for n in changed)


def _windows(values: Mapping[str, Any], out: Path, echo: Callable[[str], None]) -> Path:
    """Ingest and cut the data once under ``out/data`` (kept for a rerun)."""
    from har_vit.datasets import resolve
    from har_vit.stages import ingest, windows

    folder = out / "data" / "windows"
    if (folder / "manifest.json").is_file():
        return folder
    ing_cfg, win_cfg = build(ingest.IngestConfig, values), build(windows.WindowConfig, values)
    source = resolve(ing_cfg.dataset, ing_cfg.dataset_options())
    if source.prewindowed:
        windows.import_npz(win_cfg, source.windows_npz, folder)
    else:
        ingest.run(ing_cfg, out / "data" / "ingest", source)
        windows.run(win_cfg, out / "data" / "ingest", folder)
    echo(f"cv: data -> {folder}")
    return folder


def run(values: Mapping[str, Any], echo: Callable[[str], None] = print, command: str = "") -> dict[str, Any]:
    """Train and evaluate every (seed, fold) model; write and return ``cv.json``'s dict."""
    from har_vit.core.efficiency import cpu_model_name
    from har_vit.core.workspace import Workspace
    from har_vit.stages import evaluate, train
    from har_vit.stages.windows import load_windows

    ws = Workspace.at(values.get("workdir"))
    values = ws.fill(values, "cv")
    seeds = tuple(dict.fromkeys(int(s) for s in values["seeds"]))
    if not seeds:
        raise UsageError("--seeds: give at least one seed")
    base = build(train.TrainConfig, values)
    out = Path(values.get("out") or ws.runs / f"cv-{new_run_id(values['dataset'], base.model, 'cv')}")
    t0 = time.perf_counter()
    windows = _windows(values, out, echo)
    users = load_windows(windows, verify=False)["subject"]
    folds = folds_of(users, int(values["folds"]))
    eval_cfg = evaluate.EvalConfig(skip_latency=True, baseline="none", device=base.device)
    jobs = [(seed, k, test_users, out / "models" / f"s{seed}-f{k}") for seed in seeds
            for k, test_users in enumerate(folds)]
    cfgs = {(seed, k): dataclasses.replace(base, seed=seed, split="subject", test_users=test_users, fold=None,
                                           progress=False) for seed, k, test_users, _ in jobs}
    # Trained before an interruption: kept. The rest train now, together or one after another.
    todo = [(seed, k, d) for seed, k, _, d in jobs if not (d / "manifest.json").is_file()]
    reason = "--sequential" if values.get("sequential") else why_not_stacked(base)
    stacked = reason is None and len(todo) > 1
    t_train = time.perf_counter()
    split: dict[str, Any] = {}
    if stacked:
        echo(f"cv: training {len(todo)} models together as stacked models")
        _, split = train_stacks([cfgs[seed, k] for seed, k, _ in todo], windows, [d for _, _, d in todo],
                                resume=[(d / "last.pt").is_file() for _, _, d in todo], workers=values.get("workers"),
                                echo=echo)
    else:
        if todo and reason:
            echo(f"cv: training {len(todo)} models one after another ({reason})")
        for seed, k, d in todo:
            train.run(cfgs[seed, k], windows, d, resume=(d / "last.pt").is_file())
    train_s = time.perf_counter() - t_train
    runs: list[dict[str, Any]] = []
    for seed, k, test_users, model_dir in jobs:
        metrics_path = model_dir / "eval" / "metrics.json"
        man = json.loads((model_dir / "manifest.json").read_text())
        m = json.loads(metrics_path.read_text()) if metrics_path.is_file() else evaluate.run(eval_cfg, model_dir)
        if m["n_test"] == 0:
            raise DataError(f"fold {k} (users {test_users}) has no test windows")
        tta = m.get("tta") or {}
        runs.append({"seed": seed, "fold": k, "accuracy": m["accuracy"], "macro_f1": m["macro_f1"],
                     "tta_views": tta.get("views", 1), **({"without_tta": tta["without_tta"]} if "without_tta" in tta else {}),
                     "best_epoch": man.get("best_epoch"), "epochs_run": man.get("epochs_run"),
                     "train_seconds": man.get("train_seconds", 0.0), "device": man.get("device", "cpu"),
                     "device_name": man.get("device_name") or cpu_model_name()})
        echo(f"[{len(runs)}/{len(jobs)}] seed {seed} fold {k} (test users {', '.join(map(str, test_users))}): "
             f"accuracy {m['accuracy']:.4f}, macro F1 {m['macro_f1']:.4f}, best epoch {man.get('best_epoch')} "
             f"of {man.get('epochs_run')}")
    row = results.summarise(base.model, recipe_of(base), f"cv{len(folds)}", runs, base.epochs, command, machine())
    result = {"rows": [row], "stacked": stacked, "folds": [list(f) for f in folds], "seeds": list(seeds),
              "windows": str(windows), "seconds": round(time.perf_counter() - t0, 1),
              "train_seconds": round(train_s, 1), "trained_now": len(todo), "out": str(out),
              **({"processes": split} if split else {})}
    write_json(out / CV_JSON, result)
    return result
