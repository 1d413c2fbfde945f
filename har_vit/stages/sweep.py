"""Sweeps: a grid or random search over named train options, several seeds each.

The choice is made on VALIDATION macro F1 only (mean over seeds and folds); test
figures are reported beside it for reading, never used to choose. Split protocols
are the honest ones: ``subject`` (held-out users) or ``loso`` (one fold per user, or
the ``folds`` listed).

A sweep file (YAML)::

    windows: runs/x/windows        # a windows folder
    out: sweeps/aug                # where runs and the table go
    split: subject                 # subject | loso
    seeds: [0, 1, 2]
    base: {model: tiny, epochs: 30}
    grid: {rotate: [0, 180], mixup: [0, 0.2]}       # every combination
    # random: {n: 6, space: {lr: [0.0003, 0.001, 0.003], jitter: [0, 0.05]}}   # n draws
    folds: [0, 5, 10]              # loso only: a subset of folds (default: all)
    sequential: false              # true: train the runs one after another instead of stacked
    workers: 2                     # processes sharing a stack's runs [as cv --workers]

Runs of one architecture and batch size train together as one stacked model
(:mod:`har_vit.training.stacked`; each ends as it would alone, to float tolerance), on the
CPU dealt to several processes (:mod:`har_vit.training.workers`);
options such as ``lr``, ``weight_decay``, the schedule, epochs, augmentation and loss may
differ within a stack. A sweep over ``model``, ``batch_size``, ``drop`` or ``drop_path``
trains one stack per value.

Output: ``table.csv`` / ``table.md`` / ``sweep.json`` with one row per combination
(mean and std over runs of val macro F1, test accuracy and test macro F1), the chosen
combination, and each run folder under ``runs/``.
"""
from __future__ import annotations

import itertools
import json
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from har_vit.core import schema
from har_vit.core.errors import UsageError
from har_vit.core.io import write_json, write_text


@dataclass(frozen=True)
class SweepSpec:
    windows: str
    out: str
    split: str = "subject"
    seeds: tuple[int, ...] = (0, 1, 2)
    base: tuple[tuple[str, Any], ...] = ()
    grid: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    random_n: int = 0
    random_space: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    folds: tuple[int, ...] = ()
    random_seed: int = 0
    sequential: bool = False
    workers: int | None = None

    @classmethod
    def from_mapping(cls, body: Mapping[str, Any]) -> "SweepSpec":
        known = {"windows", "out", "split", "seeds", "base", "grid", "random", "folds", "sequential", "workers"}
        unknown = set(body) - known
        if unknown:
            raise UsageError(f"sweep file: unknown keys {sorted(unknown)}; use {sorted(known)}")
        for k in ("windows", "out"):
            if not body.get(k):
                raise UsageError(f"sweep file: '{k}' is required")
        split = body.get("split", "subject")
        if split not in ("subject", "loso"):
            raise UsageError(f"sweep file: split must be subject or loso (honest protocols), not {split!r}")
        rnd = body.get("random") or {}
        grid = body.get("grid") or {}
        if bool(grid) == bool(rnd):
            raise UsageError("sweep file: give exactly one of 'grid' or 'random'")

        def option(k: Any) -> str:
            k = str(k).replace("-", "_")
            o = schema.OPTIONS.get(k)
            if o is None or "train" not in o.groups:
                raise UsageError(f"sweep file: {schema.suggest(k, 'train')}")
            return k

        def value(k: str, v: Any) -> Any:
            msg = schema.check_value(k, v)
            if msg:
                raise UsageError(f"sweep file: {msg}")
            return v  # as written, so that run names read like the file

        def axes(m: Mapping[str, Any]) -> tuple[tuple[str, tuple[Any, ...]], ...]:
            out = []
            for k, v in m.items():
                k = option(k)
                vals = tuple(v) if isinstance(v, (list, tuple)) and not schema.OPTIONS[k].multiple else (v,)
                if not vals:
                    raise UsageError(f"sweep file: option {k!r} has no values")
                out.append((k, tuple(value(k, x) for x in vals)))
            return tuple(out)

        return cls(windows=str(body["windows"]), out=str(body["out"]), split=split,
                   seeds=tuple(int(s) for s in body.get("seeds", (0, 1, 2))),
                   base=tuple((option(k), value(option(k), v)) for k, v in (body.get("base") or {}).items()),
                   grid=axes(grid), random_n=int(rnd.get("n", 0)), random_space=axes(rnd.get("space") or {}),
                   folds=tuple(int(f) for f in body.get("folds", ())), random_seed=int(rnd.get("seed", 0)),
                   sequential=bool(body.get("sequential", False)), workers=_workers(body.get("workers")))

    def combinations(self) -> list[dict[str, Any]]:
        """The option sets to try, in a stable order."""
        if self.grid:
            keys = [k for k, _ in self.grid]
            return [dict(zip(keys, vals, strict=True)) for vals in itertools.product(*(v for _, v in self.grid))]
        rng = random.Random(self.random_seed)
        seen, out = set(), []
        space = dict(self.random_space)
        total = int(np.prod([len(v) for v in space.values()])) if space else 0
        while len(out) < min(self.random_n, total):
            combo = {k: rng.choice(v) for k, v in space.items()}
            key = json.dumps(combo, sort_keys=True, default=str)
            if key not in seen:
                seen.add(key)
                out.append(combo)
        return out


def _name(combo: Mapping[str, Any]) -> str:
    text = "-".join(f"{k}={v}" for k, v in combo.items()) or "base"
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text)[:120]


def run(spec: SweepSpec, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Train every combination x seed (x fold), evaluate, and write the table; returns sweep.json's dict."""
    from har_vit.core.schema import build
    from har_vit.core.splits import loso_folds
    from har_vit.datasets import TRAIN_DEFAULTS, windows_dataset
    from har_vit.stages import evaluate, train
    from har_vit.stages.windows import load_windows
    from har_vit.training.workers import train_stacks

    out = Path(spec.out)
    w = load_windows(spec.windows)
    folds: list[int | None] = [None]
    if spec.split == "loso":
        folds = list(spec.folds) if spec.folds else list(range(len(loso_folds(w))))
    combos = spec.combinations()
    # The dataset's own defaults (as train --in takes them) under the spec's base and grid.
    given = set(dict(spec.base)) | {k for c in combos for k in c}
    name = windows_dataset(spec.windows)
    own = {k: v for k, v in TRAIN_DEFAULTS.get(name or "", {}).items() if k not in given}
    if own:
        echo(f"sweep: {name} data, so its defaults "
             + " ".join(f"{k}={v}" for k, v in own.items()) + " (put them in base: to override)")
    base = {**own, **dict(spec.base)}
    t0 = time.perf_counter()
    jobs = []  # (combo index, seed, fold, config, run folder)
    for i, combo in enumerate(combos):
        for seed in spec.seeds:
            for fold in folds:
                layer = {**base, **combo, "seed": seed, "split": spec.split, "progress": False,
                         **({"fold": fold} if fold is not None else {})}
                run_dir = out / "runs" / _name(combo) / (f"s{seed}" + (f"-f{fold}" if fold is not None else ""))
                jobs.append((i, seed, fold, build(train.TrainConfig, layer), run_dir))
    # Runs finished before an interruption are kept; the rest train now, together where they can.
    todo = [(cfg, d) for _, _, _, cfg, d in jobs if not (d / "manifest.json").is_file()]
    stacks = _stacks(todo, spec.sequential)
    for group in stacks:
        if len(group) > 1:
            echo(f"sweep: training {len(group)} runs of {group[0][0].model} together as one stacked model")
            train_stacks([c for c, _ in group], spec.windows, [d for _, d in group],
                         resume=[(d / "last.pt").is_file() for _, d in group], workers=spec.workers, echo=echo)
        else:
            (cfg, d), = group
            train.run(cfg, spec.windows, d, resume=(d / "last.pt").is_file())
    per_combo: list[list[dict[str, Any]]] = [[] for _ in combos]
    for done, (i, seed, fold, cfg, run_dir) in enumerate(jobs, 1):
        man = json.loads((run_dir / "manifest.json").read_text())
        if (run_dir / "eval" / "manifest.json").is_file():
            met = json.loads((run_dir / "eval" / "metrics.json").read_text())
        else:
            met = evaluate.run(build(evaluate.EvalConfig, {"skip_latency": True, "device": cfg.device}), run_dir)
        per_combo[i].append({"seed": seed, "fold": fold, "val_macro_f1": man["best_val_macro_f1"],
                             "test_accuracy": met["accuracy"], "test_macro_f1": met["macro_f1"], "dir": str(run_dir)})
        echo(f"[{done}/{len(jobs)}] {_name(combos[i])} seed {seed}" + (f" fold {fold}" if fold is not None else "")
             + f": val F1 {man['best_val_macro_f1']:.4f}, test acc {met['accuracy']:.4f}")
    rows = []
    for combo, runs in zip(combos, per_combo, strict=True):
        stats = {k: (float(np.mean([r[k] for r in runs])), float(np.std([r[k] for r in runs])))
                 for k in ("val_macro_f1", "test_accuracy", "test_macro_f1")}
        rows.append({"name": _name(combo), "options": combo, "n_runs": len(runs), "runs": runs,
                     **{f"{k}_mean": m for k, (m, _) in stats.items()}, **{f"{k}_std": s for k, (_, s) in stats.items()}})
    best = max(rows, key=lambda r: r["val_macro_f1_mean"])
    result = {"split": spec.split, "seeds": list(spec.seeds), "folds": folds, "base": base, "rows": rows,
              "chosen": best["name"], "chosen_by": "mean validation macro F1 (test never used to choose)",
              "stacked": [len(g) for g in stacks if len(g) > 1], "trained_now": len(todo),
              "seconds": round(time.perf_counter() - t0, 1)}
    write_json(out / "sweep.json", result)
    write_text(out / "table.csv", _csv(rows))
    write_text(out / "table.md", _markdown(rows, best["name"], spec))
    return result


def _workers(v: Any) -> int | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise UsageError(f"sweep file: workers must be a whole number of processes, at least 1 (got {v!r})")
    return v


def _stacks(todo: list[tuple[Any, Path]], sequential: bool) -> list[list[tuple[Any, Path]]]:
    """Runs that can train together (one architecture and batch size), grouped; the rest one by one."""
    from har_vit.training.stacked import stack_key, why_not_stacked

    groups: dict[tuple[Any, ...], list[tuple[Any, Path]]] = {}
    alone = []
    for cfg, d in todo:
        if sequential or why_not_stacked(cfg) is not None:
            alone.append([(cfg, d)])
        else:
            groups.setdefault(stack_key(cfg), []).append((cfg, d))
    return list(groups.values()) + alone


def _csv(rows: list[dict[str, Any]]) -> str:
    cols = ["name", "n_runs", "val_macro_f1_mean", "val_macro_f1_std", "test_accuracy_mean", "test_accuracy_std",
            "test_macro_f1_mean", "test_macro_f1_std"]
    return "\n".join([",".join(cols)] + [",".join(str(r[c]) for c in cols) for r in rows]) + "\n"


def _markdown(rows: list[dict[str, Any]], chosen: str, spec: SweepSpec) -> str:
    lines = [f"Split: {spec.split}; seeds {list(spec.seeds)}; chosen by mean validation macro F1 (marked *).", "",
             "| options | runs | val macro F1 | test accuracy | test macro F1 |", "|---|---|---|---|---|"]
    for r in rows:
        mark = " *" if r["name"] == chosen else ""
        lines.append(f"| {r['name']}{mark} | {r['n_runs']} | {r['val_macro_f1_mean']:.4f} ± {r['val_macro_f1_std']:.4f} "
                     f"| {r['test_accuracy_mean']:.4f} ± {r['test_accuracy_std']:.4f} "
                     f"| {r['test_macro_f1_mean']:.4f} ± {r['test_macro_f1_std']:.4f} |")
    return "\n".join(lines) + "\n"
