#!/usr/bin/env python
"""A pre-registered check: does a candidate beat a baseline on seeds nobody looked at?

A lead found by looking at test scores (``checkpoint_choice.json`` picked ``last.pt`` that way)
is not evidence until it holds on fresh test users. A file in ``bench/preregistered/`` fixes,
before any model of those seeds is trained, the protocol, the seeds, the candidate (model,
recipe, checkpoint), the baseline and the rule of the verdict; git dates it. This script reads
that file and nothing else: every model comes from ``bench_accuracy.py``'s cache (``--work``)
and runs log, scored on its own test split as ``bench_accuracy.py`` scores it, and a model that
is not there yet is listed as missing (train it with the ``bench_accuracy.py`` command printed).
It writes ``bench/results/confirm_<name>.json``: per seed, every model's macro F1 and accuracy,
the paired differences against the baseline, their mean, 95% t interval and seeds ahead, and the
verdict ("confirmed", "not confirmed", or "incomplete" while models are missing).

    python bench/bench_confirm.py bench/preregistered/w2019-rot180-last.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_accuracy import (BASELINES, RUNS_LOG, config_of, jobs, read_runs_log, recipe_opts,  # noqa: E402
                            run_dir_of, scored_tag, settings_differ, tta_of, windows_for)
from bench_checkpoint import score_checkpoint  # noqa: E402
from common import RESULTS, ROOT, machine  # noqa: E402

from har_vit.core.io import MANIFEST, write_json  # noqa: E402
from har_vit.stages.windows import load_windows  # noqa: E402


# Recipe names whose meaning changed after a prereg file named them: (protocols, changed at, the name today).
# On 2026-12-03 WISDM 2019's default became --rotate 180 --serve last; what "default" meant before is "rot30".
RENAMED = {"default": ("w2019", "2026-12-03T12:30:00Z", "rot30")}


def recipe_then(recipe: str, protocol: str, registered: str) -> str:
    """Today's name of the recipe a prereg file registered at ``registered`` meant by ``recipe``."""
    prefix, changed, now = RENAMED.get(recipe, ("", "", recipe))
    return now if protocol.startswith(prefix) and registered < changed else recipe


def label(entry: dict[str, Any]) -> str:
    return f"{entry['model']} {entry['recipe']}" + (f" @{entry['checkpoint']}.pt" if entry.get("checkpoint") else "")


def paired(cand: list[float], base: list[float], interval: float) -> dict[str, Any]:
    """Mean paired difference, its two-sided t interval and how many pairs the candidate leads."""
    from scipy import stats

    d = [c - b for c, b in zip(cand, base, strict=True)]
    mean = statistics.fmean(d)
    half = float(stats.t.ppf(0.5 + interval / 2, len(d) - 1)) * statistics.stdev(d) / len(d) ** 0.5 if len(d) > 1 else float("inf")
    return {"differences": d, "mean_difference": mean, "interval": [mean - half, mean + half],
            "ahead": sum(x > 0 for x in d), "behind": sum(x < 0 for x in d)}


def verdict(stat: dict[str, Any], rule: dict[str, Any]) -> str:
    ok = (stat["mean_difference"] >= rule["min_mean_difference"] and stat["ahead"] >= rule["min_seeds_ahead"]
          and stat["interval"][0] > 0)
    return "confirmed" if ok else "not confirmed"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("prereg", type=Path, help="a file of bench/preregistered/")
    ap.add_argument("--work", default=str(ROOT / "bench" / "out" / "accuracy"), help="bench_accuracy.py's cache")
    ap.add_argument("--runs-log", default=str(RUNS_LOG))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help="[bench/results/confirm_<name>.json]")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    spec = json.loads(a.prereg.read_text())
    protocol, seeds, rule = spec["protocol"], spec["seeds"], spec["rule"]
    work, logged = Path(a.work), read_runs_log(Path(a.runs_log))
    w = load_windows(windows_for(protocol, work))
    bench_args = argparse.Namespace(epochs=None, device="auto", threads=None)  # the rows' own settings

    def score(entry: dict[str, Any], job: dict[str, Any]) -> dict[str, Any] | None:
        model, which = entry["model"], entry.get("checkpoint", "best")
        recipe = recipe_then(entry["recipe"], protocol, spec["registered"])
        tag = scored_tag(model, recipe, protocol, job, None, "auto")
        if model in BASELINES or which == recipe_opts(recipe, protocol).get("serve", "best"):  # what bench_accuracy logged
            return {k: logged[tag][k] for k in ("accuracy", "macro_f1")} if tag in logged else None
        run_dir = run_dir_of(model, recipe, protocol, job, bench_args, work)
        if not (run_dir / MANIFEST).is_file() or settings_differ(run_dir, config_of(model, recipe, protocol, job,
                                                                                 bench_args, work)):
            return None
        s = score_checkpoint(run_dir, which, w, tta_of(recipe))
        return {"accuracy": s["accuracy"], "macro_f1": s["macro_f1"], "epoch": s["epoch"]}

    entries = [spec["candidate"], spec["baseline"], *spec.get("also_report", [])]
    table: dict[str, dict[int, dict[str, Any] | None]] = {label(e): {} for e in entries}
    missing: list[str] = []
    for job in jobs(protocol, seeds):
        for e in entries:
            table[label(e)][job["seed"]] = s = score(e, job)
            if s is None:
                missing.append(f"{label(e)} seed {job['seed']}")
    for e in entries:
        row = table[label(e)]
        print(f"{label(e):28s} " + "  ".join(f"s{k} {v['macro_f1']:.4f}" if v else f"s{k} -" for k, v in row.items()))
    base = table[label(spec["baseline"])]
    comparisons = []
    for e in [spec["candidate"], *spec.get("also_report", [])]:
        row = table[label(e)]
        both = [s for s in seeds if row.get(s) and base.get(s)]
        if len(both) < 2:
            continue
        stat = paired([row[s][rule["metric"]] for s in both], [base[s][rule["metric"]] for s in both], rule["interval"])
        comparisons.append({"candidate": e, "seeds": both, **stat,
                            "verdict": verdict(stat, rule) if len(both) == len(seeds) else "incomplete"})
        print(f"== {label(e)} - {label(spec['baseline'])}: {stat['mean_difference']:+.4f} mean over {len(both)} seeds, "
              f"{rule['interval']:.0%} interval [{stat['interval'][0]:+.4f}, {stat['interval'][1]:+.4f}], ahead on "
              f"{stat['ahead']}: {comparisons[-1]['verdict']}" + (" (the pre-registered candidate)" if e is spec["candidate"] else ""))
    if missing:
        print("missing (train with bench/bench_accuracy.py --protocols " + protocol + " --seeds "
              + " ".join(map(str, seeds)) + " --threads 1 and the model's --models/--recipe): " + "; ".join(missing))
    out = a.out or RESULTS / f"confirm_{spec['name']}.json"
    write_json(out, {
        "what": "a pre-registered check (rule fixed in the prereg file before any of its seeds' models was trained): "
                "the candidate's paired macro-F1 difference over the baseline on fresh seeds",
        "prereg": str(a.prereg.resolve().relative_to(ROOT)) if a.prereg.resolve().is_relative_to(ROOT) else str(a.prereg),
        "registered": spec["registered"], "protocol": protocol, "seeds": seeds, "rule": rule,
        "verdict": next((c["verdict"] for c in comparisons if c["candidate"] is spec["candidate"]), "incomplete"),
        "comparisons": comparisons,
        "recipes_renamed": {e["recipe"]: r for e in entries
                            if (r := recipe_then(e["recipe"], protocol, spec["registered"])) != e["recipe"]},
        "per_seed": {k: {str(s): v for s, v in row.items()} for k, row in table.items()}, "missing": missing,
        "device": "cpu", "dtype": "float32", "machine": machine(), "measured": time.strftime("%Y-%m-%d"),
        "command": " ".join(["python", "bench/bench_confirm.py", *sys.argv[1:]])})
    print(f"-> {out}")


if __name__ == "__main__":
    main()
