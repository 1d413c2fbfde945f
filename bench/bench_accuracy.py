#!/usr/bin/env python
"""Accuracy on real data, one protocol per row, one results file: ``bench/results/accuracy.json``.

Each row is ``{model, recipe, protocol, device, dtype, epochs, seeds, per_seed,
accuracy_mean, accuracy_std, macro_f1_mean, macro_f1_std, command}``; ``per_seed`` lists
``{seed, fold, accuracy, macro_f1}`` (``fold`` null outside CV) and ``command`` reproduces
the row. Networks and ``rf`` run through the real trainer (``har_vit.stages.train.run``: model
selection on validation users only) and are scored on the test split with scikit-learn;
``minirocket`` (aeon's MiniRocket features + ridge, the strongest non-deep baseline; needs
``pip install aeon``) is fitted on the same training windows.

Protocols:

- ``users29-36``: shared v1.1 windows; users 29-36 are the test set, validation users
  drawn from the rest by the seed;
- ``cv6``: shared v1.1 windows, 6-fold cross-validation grouped by user (sorted ids, fold
  k = users 6k+1..6k+6), every fold for every seed; the row's mean is over folds x seeds;
- ``random``: shared v1.1 windows, random 70/10/20 (LEAKY: the same users on both sides);
- ``w2019-subject``: the shared WISDM 2019 phone accelerometer logs (22 users, 18
  activities) ingested and cut 128/64 by the pipeline, default subject split by seed
  (each seed draws its own 4 test users, so the three seeds are three different splits);
- ``w2019-default``: the same windows, test users 1609, 1622, 1634, 1638 (the split
  ``run --dataset wisdm2019`` tests on: seed 0's), validation users drawn by the seed, as
  ``users29-36`` does for v1.1: one split, the seed varies the model.

Recipes: ``default`` is what ``pipeline.py run`` does with no options; ``jitter`` is the
default recipe until 2026-12-02 (``--jitter 0.05``; ``jitter_ema``: the same with ``--ema
0.998``); ``aug`` is ``jitter`` with full 180-degree rotations; ``lr1e-3`` is the default with
twice the peak learning rate; ``nojitter60`` is ``--jitter 0 --epochs 60 --patience 0``; the
default with one change each: ``rot180`` (``--rotate 180``), ``mixup`` (``--mixup 0.2``), ``ema``
(``--ema 0.998``), ``val20`` (``--val-frac 0.2``); ``ens3`` is an ensemble of three default
models (``--members 3``); ``distill_ens3`` is one default model distilled from ``ens3``'s ensemble
of the same seed and split (``--teacher RUN``, trained first if missing); ``article`` is the
article's optimiser and schedule for its network (AdamW 5e-4, StepLR x0.1 every 10 epochs,
batch 128, 30 epochs, no warm-up, no early stopping) with the old default augmentation,
predicted one pass per window; ``tta`` and
``jitter_tta`` score the ``default`` and ``jitter`` recipes' trained models (the same run
folders) with ``evaluate --tta 8`` and keep each run's plain scores in ``without_tta``;
``fit`` marks the classical baselines. Finished
runs are cached in ``--work``, so an interrupted grid resumes; rows are merged into the
results file by (model, recipe, protocol, device, dtype, epochs).

    python bench/bench_accuracy.py --models rf minirocket --protocols users29-36 cv6 random w2019-subject
    python bench/bench_accuracy.py --models tiny_ws --recipe default --protocols users29-36 cv6
    python bench/bench_accuracy.py --models seed --recipe article --protocols users29-36
    python bench/bench_accuracy.py --table     # the README's accuracy table, from the results file
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, ROOT, machine  # noqa: E402

from har_vit.core import results, tta  # noqa: E402
from har_vit.core.checkpoint import load_model, normalise  # noqa: E402
from har_vit.core.errors import UsageError  # noqa: E402
from har_vit.core.io import MANIFEST, read_manifest, write_json  # noqa: E402
from har_vit.core.schema import OPTIONS, as_dict  # noqa: E402
from har_vit.datasets import TRAIN_DEFAULTS  # noqa: E402
from har_vit.model import list_models  # noqa: E402
from har_vit.stages.train import TrainConfig, run  # noqa: E402
from har_vit.stages.windows import WindowConfig, import_npz, load_windows  # noqa: E402
from har_vit.training.loop import fit_norm  # noqa: E402

SHARED = Path(os.environ.get("HAR_VIT_SHARED_DATA", ROOT.parent / "shared" / "data"))
V11 = SHARED / "wisdm_v1.1" / "wisdm_v1.1_windows128.npz"
W2019 = SHARED / "wisdm2019"
OUT = RESULTS / "accuracy.json"
# Every finished model's result, one JSON line each, committed: a grid interrupted in one session
# resumes in the next from here (the --work folder holds the same results and is not committed).
RUNS_LOG = RESULTS / "accuracy_runs.jsonl"
PROTOCOLS = ("users29-36", "cv6", "random", "w2019-subject", "w2019-default")
W2019_DEFAULT_TEST_USERS = (1609, 1622, 1634, 1638)  # make_split(seed=0) of the shared WISDM 2019 windows
RECIPES: dict[str, dict[str, Any]] = {
    # What `run` does with no options: the schema's defaults and the dataset's own (TRAIN_DEFAULTS; on
    # WISDM 2019 since 2026-12-03: --rotate 180 --serve last). Every other recipe is its options over the
    # schema's defaults alone, whatever the dataset.
    "default": {},
    # The schema's defaults alone (--rotate 30 --serve best): on WISDM 2019 the default until 2026-12-03.
    "rot30": {},
    # The article's optimiser and schedule; the augmentation its rows were measured with (the
    # defaults until 2026-12-02, jitter 0.05 included).
    "article": dict(schedule="step", lr=5e-4, step_epochs=10, step_gamma=0.1, warmup_epochs=0.0,
                    weight_decay=0.01, batch_size=128, epochs=30, patience=0, jitter=0.05),
    "aug": dict(rotate=180.0, scale=0.1, jitter=0.05, time_warp=0.1),  # the old default with full rotations
    # The default recipe until 2026-12-02, when the default model was tiny: noise of 0.05 std.
    "jitter": dict(jitter=0.05),
    "jitter_ema": dict(jitter=0.05, ema=0.998),  # with weight averaging (horizon ~500 steps)
    "jitter_tta": dict(jitter=0.05),  # the jitter recipe's models, predicted with evaluate --tta 8
    # 60 epochs without early stopping (2 validation users are a noisy guide on WISDM 2019)
    "nojitter60": dict(jitter=0.0, epochs=60, patience=0),
    "tta": {},  # the default recipe's models, predicted with test-time augmentation (evaluate --tta 8)
    "lr1e-3": dict(lr=1e-3),  # a probe: twice the default peak learning rate
    # Probes of 2026-12-03 on WISDM 2019: the default with one change each.
    "rot180": dict(rotate=180.0),  # full 3D rotations: a phone sits in a pocket any way up
    "mixup": dict(mixup=0.2),  # Mixup, Beta(0.2, 0.2)
    "ema": dict(ema=0.998),  # weight averaging (horizon ~500 steps): a steadier model for 2 validation users to pick
    "val20": dict(val_frac=0.2),  # a fifth of the users for validation (4 of WISDM 2019's 22, not 2): a steadier guide
    # 2026-12-03: an ensemble of 3 default models on one split (train --members 3): 3x the training, params and latency.
    "ens3": dict(members=3),
    # The same ensemble at about the default's training cost: 3 members of 9 epochs (the default's runs stop after
    # 26 on average). Measured 2026-12-03, users 29-36: macro F1 0.8089, below the default's 0.8579: 9 epochs are too few.
    "ens3e9": dict(members=3, epochs=9),
    # 2026-12-03: one default model distilled from the ens3 recipe's ensemble of the same seed, split and fold
    # (train --teacher RUN, soft targets, alpha 0.5, T 4): the ensemble's accuracy at one model's latency, if it
    # carries over. The teacher is trained first when the student must be trained and the teacher's run is missing;
    # each student's line in the runs log keeps its teacher's own training time (teacher_train_seconds) and scores.
    "distill_ens3": {},
}
# Recipes whose student learns from another recipe's trained model of the same seed, split and fold.
TEACHER = {"distill_ens3": "ens3"}
BASELINES = ("rf", "minirocket")
# Test-time augmentation per recipe (extra views per window): the article predicts each window once;
# every other recipe predicts as `evaluate` does by default.
TTA = {"article": 0, "tta": 8, "jitter_tta": 8}
# Recipes that differ from another only in how the test windows are predicted share its trained models.
TRAINED_AS = {"tta": "default", "jitter_tta": "jitter", "rot30": "default"}


def dataset_defaults(protocol: str) -> dict[str, Any]:
    """The dataset's own training defaults (what `run` adds on that data), for the default recipe only."""
    return dict(TRAIN_DEFAULTS.get("wisdm2019" if protocol.startswith("w2019") else "npz", {}))


def recipe_opts(recipe: str, protocol: str, epochs: int | None = None) -> dict[str, Any]:
    """The options a recipe gives the trainer on a protocol's data (``--epochs`` wins)."""
    base = dataset_defaults(protocol) if recipe == "default" else {}
    return {**base, **RECIPES.get(recipe, {}), **({"epochs": epochs} if epochs else {})}


def trained_as(recipe: str, protocol: str) -> str:
    """The recipe whose trained models ``recipe`` scores: itself, unless it only predicts otherwise.

    The default recipe on a dataset with its own defaults trains as the recipe of those options (on
    WISDM 2019, ``rot180``: ``--serve`` changes which checkpoint is tested, not what is learnt), so its
    models are ``rot180``'s, scored at ``last.pt``.
    """
    learnt = {k: v for k, v in dataset_defaults(protocol).items() if k not in NOT_TRAINING}
    if recipe == "default" and learnt:
        return next(r for r, o in RECIPES.items() if r not in ("default", "rot30") and o == learnt)
    return TRAINED_AS.get(recipe, recipe)


def tta_of(recipe: str) -> int:
    return TTA.get(recipe, OPTIONS["tta"].default)


# --- data -------------------------------------------------------------------------------------------


def windows_for(protocol: str, work: Path) -> Path:
    """The windows folder a protocol reads, built once under ``work``."""
    if protocol.startswith("w2019"):
        from har_vit.stages import ingest, windows

        out = work / "w2019" / "windows"
        if not (out / "manifest.json").is_file():
            cfg = ingest.IngestConfig(dataset="wisdm2019", data_path=str(W2019), progress=False)
            ingest.run(cfg, work / "w2019" / "ingest")
            windows.run(WindowConfig(), work / "w2019" / "ingest", out)
        return out
    out = work / "v11" / "windows"
    if not (out / "manifest.json").is_file():
        import_npz(WindowConfig(), V11, out)
    return out


def jobs(protocol: str, seeds: list[int]) -> list[dict[str, Any]]:
    """(seed, fold, split options) of every model a row needs."""
    if protocol == "cv6":
        return [{"seed": s, "fold": k, "split": "subject", "test_users": tuple(range(6 * k + 1, 6 * k + 7))}
                for s in seeds for k in range(6)]
    split = {"users29-36": dict(split="subject", test_users=tuple(range(29, 37))),
             "random": dict(split="random"), "w2019-subject": dict(split="subject"),
             "w2019-default": dict(split="subject", test_users=W2019_DEFAULT_TEST_USERS)}[protocol]
    return [{"seed": s, "fold": None, **split} for s in seeds]


# --- one model -------------------------------------------------------------------------------------


def scores(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    return {"accuracy": float(accuracy_score(y, pred)), "macro_f1": float(f1_score(y, pred, average="macro"))}


# Options that do not change what a model learns: a cached run trained with other values still counts.
NOT_TRAINING = frozenset({"device", "threads", "progress", "eval_batch_size", "serve"})


def settings_differ(run_dir: Path, cfg: TrainConfig) -> list[str]:
    """The options a finished run folder was trained with that differ from ``cfg``'s.

    A tag names the model, recipe, protocol, seed and fold, not every option a recipe resolves
    to; when a default changes (``--jitter`` on 2026-12-02), a cached run under the same tag
    was trained otherwise and must not be scored as if it were ``cfg``'s.
    """
    if not (run_dir / MANIFEST).is_file():
        return []
    saved = read_manifest(run_dir, "train").get("config", {})
    now = json.loads(json.dumps(as_dict(cfg)))  # tuples as lists, as the manifest holds them
    # An option added since the run (e.g. --members, 2026-12-03) is absent from its manifest: at its
    # default it changes nothing, so it is no difference.
    default = json.loads(json.dumps(as_dict(TrainConfig())))
    return sorted(k for k, v in now.items() if k not in NOT_TRAINING and saved.get(k, default.get(k)) != v)


def predict_test(run_dir: Path, which: str, w: dict[str, np.ndarray], n_tta: int) -> tuple[Any, np.ndarray, dict]:
    """A run's ``best`` or ``last`` checkpoint on its own test split, as ``evaluate --tta n_tta`` predicts:
    (predictions, true labels, checkpoint)."""
    model, ckpt = load_model(run_dir, which)
    test = np.load(run_dir / "split.npz")["test"]
    return tta.predict(model, ckpt, w["X"][test], torch.device("cpu"), 1024, n_tta), w["y"][test], ckpt


def read_runs_log(path: Path) -> dict[str, Any]:
    """{tag: result} of every model in the runs log (a later line for a tag wins)."""
    if not path.is_file():
        return {}
    return {(e := json.loads(line))["tag"]: e["result"] for line in path.read_text().splitlines() if line}


def train_one(cfg: TrainConfig, windows: Path, run_dir: Path, w: dict[str, np.ndarray], n_tta: int) -> dict[str, Any]:
    """The real trainer, then the test split of the checkpoint it serves, predicted as ``evaluate --tta n_tta`` does.

    A run folder left by an interrupted grid is carried on, not started again: a finished run
    (manifest written) is only scored, an unfinished one resumes from its ``last.pt`` (on CPU with
    the same threads, bit-exact), and one that never reached the end of its first epoch starts
    afresh. A resume the trainer refuses (another device type, changed options or windows: the
    tag does not hold them all) starts the model again, and says so.
    """
    m = None
    if differ := settings_differ(run_dir, cfg):
        print(f"{run_dir} was trained with other settings ({', '.join(differ)}); training it again", flush=True)
    elif (run_dir / MANIFEST).is_file():
        m = read_manifest(run_dir, "train")
    elif (run_dir / "last.pt").is_file():
        print(f"resuming {run_dir} from its last.pt", flush=True)
        try:
            m = run(cfg, windows, run_dir, resume=True)
        except UsageError as e:
            print(f"cannot resume {run_dir} ({e}); training it again from the start", flush=True)
    if m is None:
        if run_dir.exists():
            shutil.rmtree(run_dir)
        m = run(cfg, windows, run_dir)
    which = cfg.serve  # what evaluate tests: best.pt, or last.pt (--serve last); one run folder may serve both
    pred, y, ckpt = predict_test(run_dir, which, w, n_tta)
    plain = {"without_tta": scores(y, pred.plain.argmax(1).numpy())} if pred.plain is not None else {}
    return {**scores(y, pred.log_proba.argmax(1).numpy()), "tta_views": len(pred.views), **plain,
            "best_epoch": int(ckpt["epoch"]) if which == "best" else m["best_epoch"], "epochs_run": m["epochs_run"],
            **({"checkpoint": which, "checkpoint_epoch": int(ckpt["epoch"])} if which != "best" else {}),
            "train_seconds": m["train_seconds"], "device": m["device"], "device_name": m["device_name"]}


def minirocket_one(cfg: TrainConfig, w: dict[str, np.ndarray], threads: int | None) -> dict[str, Any]:
    """aeon MiniRocket features (10,000 kernels) + RidgeClassifierCV, fitted on the train split."""
    from aeon.transformations.collection.convolution_based import MiniRocket
    from sklearn.linear_model import RidgeClassifierCV

    from har_vit.core.splits import make_split

    split = make_split(cfg.split, w, seed=cfg.seed, test_users=cfg.test_users or None)
    norm = fit_norm(w["X"][split.train])
    def prep(idx: np.ndarray) -> np.ndarray:  # (N, C, T), z-scored with train statistics as the networks see it
        return normalise(torch.from_numpy(w["X"][idx]), norm).numpy().transpose(0, 2, 1).astype(np.float32)

    t0 = time.perf_counter()
    rocket = MiniRocket(random_state=cfg.seed, n_jobs=threads or 1)
    f_train = rocket.fit_transform(prep(split.train))
    ridge = RidgeClassifierCV(alphas=np.logspace(-3, 3, 10)).fit(f_train, w["y"][split.train])
    pred = ridge.predict(rocket.transform(prep(split.test)))
    return {**scores(w["y"][split.test], pred), "train_seconds": round(time.perf_counter() - t0, 1),
            "device": "cpu", "device_name": machine()["cpu"]}


# --- rows ------------------------------------------------------------------------------------------


def row_command(model: str, recipe: str, protocol: str, seeds: list[int], epochs: int | None, device: str) -> str:
    args = ["python", "bench/bench_accuracy.py", "--models", model, "--protocols", protocol,
            "--seeds", *map(str, seeds)]
    if model not in BASELINES:
        args += ["--recipe", recipe] + (["--epochs", str(epochs)] if epochs else []) + (
            ["--device", device] if device != "auto" else [])
    return shlex.join(args)


def summarise(model: str, recipe: str, protocol: str, runs: list[dict[str, Any]], epochs: int | None,
              command: str) -> dict[str, Any]:
    row = results.summarise(model, recipe, protocol, runs, epochs, command, machine())
    trained = sorted({r["trained"] for r in runs if r.get("trained")})
    if trained:  # e.g. cv6 models trained stacked by `pipeline.py cv`: their train_seconds are the stack's
        row["trained"] = trained
    return row


def row_seeds(path: Path, model: str, recipe: str, protocol: str, device: str, epochs: int | None,
              but: list[int]) -> list[int]:
    """The seeds of the results file's row for (model, recipe, protocol, device, epochs) that are not in ``but``."""
    rows = json.loads(path.read_text()) if path.is_file() else []
    return sorted({s for r in rows if (r["model"], r["recipe"], r["protocol"], r["device"], r["epochs"]) ==
                   (model, recipe, protocol, device, epochs) for s in r["seeds"]} - set(but))


def merge(path: Path, new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    key = lambda r: (r["model"], r["recipe"], r["protocol"], r["device"], r["dtype"], r["epochs"])  # noqa: E731
    rows = {key(r): r for r in (json.loads(path.read_text()) if path.is_file() else [])}
    rows.update({key(r): r for r in new})
    order = {p: i for i, p in enumerate(PROTOCOLS)}
    out = sorted(rows.values(), key=lambda r: (order.get(r["protocol"], 9), -r["macro_f1_mean"]))
    write_json(path, out)
    return out


def table(rows: list[dict[str, Any]]) -> str:
    """The README's accuracy table: one line per row of accuracy.json."""
    lines = ["| protocol | model | recipe | epochs | seeds x folds | accuracy | macro F1 | device, dtype |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        proto = r["protocol"] + (" (**leaky**)" if r.get("leaky") else "")
        recipe = r["recipe"] + (f" ({r['tta_views']} views)" if r.get("tta_views", 1) > 1 else "")
        lines.append(f"| {proto} | `{r['model']}` | {recipe} | {r['epochs'] or '-'} | {len(r['per_seed'])} | "
                     f"{r['accuracy_mean']:.4f} ± {r['accuracy_std']:.4f} | {r['macro_f1_mean']:.4f} ± "
                     f"{r['macro_f1_std']:.4f} | {r['device']}, {r['dtype']} |")
    return "\n".join(lines)


def scored_tag(model: str, recipe: str, protocol: str, job: dict[str, Any], epochs: int | None, device: str) -> str:
    """The runs log's key of one model's scores: the trained model's tag (shared by every recipe that
    only predicts otherwise, see ``trained_as``), plus ``-ttaN`` when its test windows were predicted with
    TTA and ``-last`` when its ``last.pt`` was tested."""
    opts = recipe_opts(recipe, protocol, epochs)
    n_tta = 0 if model in BASELINES else tta_of(recipe)
    trained = trained_as(recipe, protocol)
    tag = f"{model}-{trained}-{protocol}-e{opts.get('epochs', '')}-s{job['seed']}-f{job['fold']}-{device}"
    return tag + (f"-tta{n_tta}" if n_tta else "") + ("-last" if opts.get("serve") == "last" else "")


def run_dir_of(model: str, recipe: str, protocol: str, job: dict[str, Any], a: argparse.Namespace, work: Path) -> Path:
    """The run folder of a model, shared by every TTA setting of its recipe."""
    return work / "runs" / run_tag(scored_tag(model, recipe, protocol, job, a.epochs, a.device)) / "run"


def run_tag(scored: str) -> str:
    """A scored tag without how its test windows were predicted (``-ttaN``, ``-last``): its run folder's name."""
    return scored.split("-tta")[0].removesuffix("-last")


def config_of(model: str, recipe: str, protocol: str, job: dict[str, Any], a: argparse.Namespace,
              work: Path) -> TrainConfig:
    """What the trainer is given for one model of a row (a distilled recipe: its teacher's run folder too)."""
    opts = recipe_opts(recipe, protocol, a.epochs)
    cfg = TrainConfig(**{**opts, "model": "tiny" if model == "minirocket" else model, "seed": job["seed"],
                         "split": job["split"], "test_users": job.get("test_users", ()),
                         "device": a.device, "threads": a.threads, "progress": False})
    if recipe in TEACHER:
        cfg = replace(cfg, teacher=str(run_dir_of(model, TEACHER[recipe], protocol, job, a, work).resolve()))
    return cfg


def one_model(model: str, recipe: str, protocol: str, job: dict[str, Any], a: argparse.Namespace, work: Path,
              windows: Path, w: dict[str, np.ndarray], logged: dict[str, Any], need_run: bool = False) -> dict[str, Any]:
    """One model's scores: from the runs log or ``--work`` when it is there, else trained (and logged) now.

    ``need_run`` asks for the trained run folder itself (a teacher's), not only its scores: a run that
    the log holds but ``--work`` lacks, or that was trained with other settings, is trained again. A
    distilled recipe's teacher (``TEACHER``) is the teacher recipe's own model of the same seed, split
    and ``--epochs``, under its own tag; it is trained only when the student has to be.
    """
    n_tta = 0 if model in BASELINES else tta_of(recipe)
    scored = scored_tag(model, recipe, protocol, job, a.epochs, a.device)
    run_dir = run_dir_of(model, recipe, protocol, job, a, work)
    cached = run_dir.parent / f"result{scored.removeprefix(run_tag(scored))}.json"  # -ttaN, -last: per scoring
    cfg = config_of(model, recipe, protocol, job, a, work)
    teacher = TEACHER.get(recipe)
    stale = settings_differ(run_dir, cfg)
    if cached.is_file() and stale:
        cached.unlink()  # scores of a run trained otherwise; train_one trains it again
    have_run = (run_dir / MANIFEST).is_file() and not stale
    if (scored in logged or cached.is_file()) and (have_run or not need_run):
        return logged[scored] if scored in logged else json.loads(cached.read_text())
    teacher_res = one_model(model, teacher, protocol, job, a, work, windows, w, logged, need_run=True) if teacher else None
    if model == "minirocket":
        res = minirocket_one(cfg, w, a.threads)
    else:
        res = train_one(cfg, windows, run_dir, w, n_tta)
    res = {"seed": job["seed"], "fold": job["fold"], **res}
    if teacher_res is not None:  # a distilled model costs its teacher's training too
        res["teacher_train_seconds"] = teacher_res["train_seconds"]
        res["teacher_scores"] = {k: teacher_res[k] for k in ("accuracy", "macro_f1")}
    write_json(cached, res)
    logged[scored] = res
    with open(a.runs_log, "a") as fh:  # one short line per model: appends do not interleave
        fh.write(json.dumps({"tag": scored, "result": res}) + "\n")
    print(f"{protocol:13s} {model:10s} {recipe:8s} seed {job['seed']} fold {job['fold']}: "
          f"acc {res['accuracy']:.4f}  macro F1 {res['macro_f1']:.4f}  ({res['train_seconds']:.0f} s)", flush=True)
    return res


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["tiny_ws"], choices=list_models() + ["minirocket"])
    ap.add_argument("--recipe", default="default", choices=sorted(RECIPES), help="networks only")
    ap.add_argument("--protocols", nargs="+", default=["users29-36"], choices=PROTOCOLS)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs")
    ap.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--work", default=str(ROOT / "bench" / "out" / "accuracy"), help="cache of windows and runs")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--runs-log", default=str(RUNS_LOG), help="one JSON line per finished model (read to resume)")
    ap.add_argument("--table", action="store_true", help="print the README table from --out and exit")
    return ap


def main() -> None:
    a = parser().parse_args()
    out = Path(a.out)
    if a.table:
        print(table(json.loads(out.read_text())))
        return
    missing = [p for p in (V11, W2019) if not p.exists()]
    if missing:
        print(f"bench_accuracy: SKIPPED: {', '.join(map(str, missing))} not found (see ../shared/data/README.md)")
        return
    if a.threads:
        torch.set_num_threads(a.threads)
    work = Path(a.work)
    runs_log = Path(a.runs_log)
    logged = read_runs_log(runs_log)
    for protocol in a.protocols:
        windows = windows_for(protocol, work)
        w = load_windows(windows)
        for model in a.models:
            recipe = "fit" if model in BASELINES else a.recipe
            opts = recipe_opts(recipe, protocol, a.epochs)
            runs = [one_model(model, recipe, protocol, job, a, work, windows, w, logged) for job in jobs(protocol, a.seeds)]
            epochs = None if model in BASELINES else TrainConfig(**opts).epochs
            # A call with other seeds than the row's adds to it (from the runs log), never shrinks it.
            for job in jobs(protocol, row_seeds(out, model, recipe, protocol, runs[0]["device"], epochs, a.seeds)):
                if (tag := scored_tag(model, recipe, protocol, job, a.epochs, a.device)) in logged:
                    runs.append(logged[tag])
            seeds = sorted({r["seed"] for r in runs})
            runs = [r for s in seeds for r in runs if r["seed"] == s]  # the row lists its models by seed
            row = summarise(model, recipe, protocol, runs, epochs,
                            row_command(model, recipe, protocol, seeds, a.epochs, a.device))
            if len(row["seeds"]) < 3:  # a partial grid: its runs are logged; the results file takes rows of >= 3 seeds
                print(f"== {protocol} {model}: {len(row['seeds'])} seed(s) only; not written to {out.name} "
                      f"(runs kept in {runs_log.name}; rerun with 3 seeds to make the row)")
                continue
            merge(out, [row])
            print(f"== {protocol} {model} ({recipe}): accuracy {row['accuracy_mean']:.4f} ± {row['accuracy_std']:.4f}, "
                  f"macro F1 {row['macro_f1_mean']:.4f} ± {row['macro_f1_std']:.4f} over {len(runs)} models", flush=True)
    print(table(json.loads(out.read_text())) if out.is_file() else "")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
