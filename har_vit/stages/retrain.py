"""Scheduled retraining: train a candidate, compare it with production, promote or keep.

Built for cron, systemd timers and Kubernetes CronJobs: one exclusive lock per
registry, nothing done twice for the same data and config, production never touched
until the final atomic pointer switch, and an exit code that says what happened:

====  ==========================================================================
0     finished its job: ``promoted``, ``kept`` (candidate worse) or ``skipped``
      (nothing new); said on stdout and in ``retrain_history.jsonl``
75    ``EX_TEMPFAIL``: another retrain holds the registry lock; try again later
1     failure (bad data, training error); recorded as ``failed`` in the history
2     bad usage (unknown option value, bad config)
====  ==========================================================================
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from har_vit.core.errors import HarVitError
from har_vit.core.io import sha256_file
from har_vit.core.registry import Registry, scope_of
from har_vit.core.runid import new_run_id

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_LOCKED = 0, 1, 2, 75


@dataclass(frozen=True)
class RetrainResult:
    status: str  # promoted | kept | skipped | failed
    message: str
    run_id: str | None = None
    report: Path | None = None
    run_dir: Path | None = None  # the candidate's run folder in the workspace
    exit_code: int = EXIT_OK


def data_hash(source: Any) -> str:
    """sha256 over the input files' names and contents: changes exactly when the data does."""
    h = hashlib.sha256()
    files = [source.windows_npz] if source.prewindowed else list(source.files)
    for f in sorted(Path(p) for p in files):
        h.update(f.name.encode() + b"\0" + sha256_file(f).encode() + b"\n")
    return h.hexdigest()


def config_hash(configs: Mapping[str, Any]) -> str:
    """sha256 of the resolved configs, minus fields that do not change the model (progress bars)."""
    clean = {k: {kk: vv for kk, vv in v.items() if kk not in ("progress",)} for k, v in configs.items()}
    return hashlib.sha256(json.dumps(clean, sort_keys=True, default=str).encode()).hexdigest()


def compare_on(run_dirs: Mapping[str, Path], windows_dir: Path, device: str = "auto") -> dict[str, float]:
    """Macro F1 of each run's best model on the same windows (all of ``windows_dir``)."""
    from sklearn.metrics import f1_score

    from har_vit.core import inference
    from har_vit.core.checkpoint import load_model
    from har_vit.core.efficiency import resolve_device
    from har_vit.stages.windows import load_windows

    w = load_windows(windows_dir)
    dev = resolve_device(device)
    labels = np.arange(len(w["class_names"]))
    out = {}
    for name, d in run_dirs.items():
        model, ckpt = load_model(d)
        pred = inference.labels(model, ckpt["norm"], w["X"], dev, 512)
        out[name] = float(f1_score(w["y"], pred, labels=labels[np.isin(labels, np.concatenate([w["y"], pred]))],
                                   average="macro", zero_division=0))
    return out


def run(values: Mapping[str, Any], echo: Callable[[str], None] = print) -> RetrainResult:
    """One retrain under the registry lock, with the resolved options of ``pipeline.py retrain``.

    LockedError (exit 75) propagates to the caller: the lock covers the whole job, so a
    second retrain does not wait for the first.
    """
    from har_vit.core.schema import as_dict, build
    from har_vit.core.workspace import Workspace
    from har_vit.datasets import resolve
    from har_vit.stages import evaluate, ingest, job, train, windows

    values = Workspace.at(values.get("workdir")).fill(values, "retrain")
    tolerance = values["promote_tolerance"]
    reg = Registry(values["registry"])
    with reg.lock():
        values = dict(values)
        ing_cfg = build(ingest.IngestConfig, values)
        source = resolve(ing_cfg.dataset, ing_cfg.dataset_options())
        dhash = data_hash(source)
        # The hash covers what the user asked for; production's test users (added below) follow from it.
        cfgs = {"ingest": as_dict(ing_cfg), "windows": as_dict(build(windows.WindowConfig, values)),
                "train": as_dict(build(train.TrainConfig, values)), "evaluate": as_dict(build(evaluate.EvalConfig, values))}
        chash = config_hash(cfgs)
        scope = scope_of(source.dataset, _class_names(source))
        prod = reg.production(scope)  # production of this dataset and class set only
        prod_dir = reg.run_dir(prod["run_id"]) if prod else None
        if prod_dir is not None:
            # Hold out production's test users so its test windows are unseen by the candidate.
            split = json.loads((prod_dir / "manifest.json").read_text()).get("split", {})
            if split.get("protocol") in ("subject", "loso") and split.get("test_users") and not values.get("test_users"):
                values.update(test_users=tuple(split["test_users"]), split="subject")
        base = {"scope": scope, "data_hash": dhash, "config_hash": chash,
                "production_run_id": prod["run_id"] if prod else None,
                "tolerance": tolerance}
        done = [h for h in reg.history() if h.get("status") in ("promoted", "kept") and h.get("scope") == scope]
        if done and done[-1].get("data_hash") == dhash and done[-1].get("config_hash") == chash:
            msg = f"skipped: data and config unchanged since the retrain of {done[-1].get('time')}; nothing to do"
            reg.append_history({"status": "skipped", "reason": "data and config unchanged", **base})
            return RetrainResult("skipped", msg)

        run_id = new_run_id("retrain", cfgs["train"]["model"])
        store_info = {"data_hash": dhash, "config_hash": chash}
        try:  # every attempt ends in the history, a failed one (training or comparison) included
            res = job.run(values, echo=echo, run_id=run_id, register=False)
            info = {**store_info, "accuracy": res.metrics["accuracy"], "macro_f1": res.metrics["macro_f1"],
                    "split": res.metrics.get("split"), "report": str(res.report)}
            if prod_dir is None:
                reg.store(res.model_dir, run_id, **info)
                reg.promote(run_id, f"first model of {scope}: no production model yet", scope)
                msg = f"promoted {run_id}: first model in {reg.root} (test macro F1 {res.metrics['macro_f1']:.4f})"
                reg.append_history({"status": "promoted", "run_id": run_id, "reason": "no production model",
                                    "candidate_macro_f1": res.metrics["macro_f1"], **base})
                return RetrainResult("promoted", msg, run_id, res.report, res.out)
            scores = compare_on({"candidate": res.model_dir, "production": prod_dir}, prod_dir / "windows",
                                cfgs["evaluate"]["device"])
            leak = comparison_leak(res.model_dir, prod_dir)
            reg.store(res.model_dir, run_id, **info)  # only a candidate that was compared is stored
        except HarVitError as e:
            reg.append_history({"status": "failed", "run_id": run_id, "reason": str(e), **base})
            raise
        cand, cur = scores["candidate"], scores["production"]
        record = {"run_id": run_id, "candidate_macro_f1": cand, "production_macro_f1": cur,
                  "compared_on": f"test windows of production run {prod['run_id']}",
                  "comparison_leaky": leak is not None, "leak": leak, **base}
        if leak is not None:
            reason = (f"comparison is leaky ({leak}); a leaky comparison never promotes - retrain with production's "
                      "test users held out (leave --test-users unset)")
            reg.append_history({"status": "kept", "reason": reason, **record})
            return RetrainResult("kept", f"kept production {prod['run_id']}: {reason}; candidate stored as {run_id}",
                                 run_id, res.report, res.out)
        if cand >= cur - tolerance:
            reason = f"candidate macro F1 {cand:.4f} >= production {cur:.4f} - tolerance {tolerance}"
            reg.promote(run_id, reason, scope)
            reg.append_history({"status": "promoted", "reason": reason, **record})
            return RetrainResult("promoted", f"promoted {run_id}: {reason}", run_id, res.report, res.out)
        reason = f"candidate macro F1 {cand:.4f} < production {cur:.4f} - tolerance {tolerance}"
        reg.append_history({"status": "kept", "reason": reason, **record})
        return RetrainResult("kept", f"kept production {prod['run_id']}: {reason}; candidate stored as {run_id}",
                             run_id, res.report, res.out)


def _class_names(source: Any) -> list[str]:
    """The class names a dataset source trains on (read from the .npz for pre-windowed data)."""
    if not source.prewindowed:
        return list(source.class_names)
    from har_vit.core.io import load_npz

    return [str(c) for c in load_npz(source.windows_npz, ("class_names",))["class_names"]]


def comparison_leak(candidate: Path, production: Path) -> str | None:
    """Why comparing on production's test windows would flatter the candidate, or None when it is fair.

    Fair only when production's test windows are held-out users (subject or loso split)
    and the candidate trained (train or validation) on none of them.
    """
    from har_vit.core.io import load_npz, read_manifest
    from har_vit.stages.windows import load_windows

    prod_split = read_manifest(production, "train").get("split") or {}
    if prod_split.get("protocol") not in ("subject", "loso"):
        return f"production's split '{prod_split.get('protocol')}' shares users between train and test"
    man = read_manifest(candidate, "train")
    up = (man.get("inputs") or {}).get("upstream")
    w = load_windows(up)
    s = load_npz(Path(candidate) / "split.npz", ("train", "val"))
    seen = {int(u) for u in np.unique(w["subject"][np.concatenate([s["train"], s["val"]]).astype(np.int64)])}
    shared = sorted(seen & {int(u) for u in prod_split.get("test_users") or []})
    return f"the candidate trained on users {shared} of production's test set" if shared else None
