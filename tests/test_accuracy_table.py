"""The README's accuracy table is bench/results/accuracy.json, line for line."""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from bench_accuracy import BASELINES, OUT, PROTOCOLS, RUNS_LOG, jobs, parser, scored_tag, table  # noqa: E402

START, END = "<!-- accuracy-table: start (python bench/bench_accuracy.py --table) -->", "<!-- accuracy-table: end -->"


def test_readme_table_is_generated_from_accuracy_json():
    rows = json.loads(OUT.read_text())
    readme = (ROOT / "README.md").read_text()
    assert START in readme and END in readme, "README lacks the accuracy-table markers"
    shown = readme.split(START, 1)[1].split(END, 1)[0].strip()
    assert shown == table(rows), "README table differs: paste the output of python bench/bench_accuracy.py --table"


def test_every_row_has_the_fields_and_its_folds():
    rows = json.loads(OUT.read_text())
    keys = {"model", "recipe", "protocol", "device", "dtype", "epochs", "seeds", "per_seed", "accuracy_mean",
            "accuracy_std", "macro_f1_mean", "macro_f1_std", "command"}
    for r in rows:
        assert keys <= r.keys() and r["protocol"] in PROTOCOLS, r
        assert r["command"].startswith("python bench/bench_accuracy.py")
        assert len(r["seeds"]) >= 3, f"{r['model']} {r['protocol']}: fewer than 3 seeds"
        folds = {(p["seed"], p["fold"]) for p in r["per_seed"]}
        want = {(s, f) for s in r["seeds"] for f in (range(6) if r["protocol"] == "cv6" else [None])}
        assert folds == want, f"{r['model']} {r['protocol']}: runs {sorted(folds, key=str)} != {sorted(want, key=str)}"
        assert r["leaky"] == (r["protocol"] == "random")


def test_every_row_replays_from_the_runs_log_with_its_own_command():
    """A row's command, run today, rebuilds that row from the committed runs log without training:
    its recipe still exists, and every (seed, fold) it lists is logged under the tag the command makes."""
    import shlex

    logged = {(e := json.loads(line))["tag"]: e["result"] for line in RUNS_LOG.read_text().splitlines() if line}
    for r in json.loads(OUT.read_text()):
        a = parser().parse_args(shlex.split(r["command"])[2:])
        assert (a.models, a.protocols, a.seeds) == ([r["model"]], [r["protocol"]], r["seeds"]), r["command"]
        recipe = "fit" if r["model"] in BASELINES else a.recipe
        assert recipe == r["recipe"], r["command"]
        shown = {(p["seed"], p["fold"]): (p["accuracy"], p["macro_f1"]) for p in r["per_seed"]}
        for job in jobs(r["protocol"], a.seeds):
            tag = scored_tag(r["model"], recipe, r["protocol"], job, a.epochs, a.device)
            assert tag in logged, f"{r['command']}: {tag} is not in {RUNS_LOG.name}"
            assert (logged[tag]["accuracy"], logged[tag]["macro_f1"]) == shown[job["seed"], job["fold"]], tag


def test_an_interrupted_grid_run_carries_on_where_it_stopped(tmp_path, windows_npz, monkeypatch):
    """A benchmark model cut off mid-run (end of a session) resumes from last.pt, not from scratch."""
    import dataclasses

    import numpy as np
    import torch

    import bench_accuracy
    from bench_accuracy import train_one
    from har_vit.stages.train import TrainConfig, run
    from har_vit.stages.windows import WindowConfig, import_npz, load_windows

    wdir = tmp_path / "w"
    import_npz(WindowConfig(), windows_npz, wdir)
    w = load_windows(wdir)
    cfg = TrainConfig(model="tiny", epochs=2, batch_size=32, progress=False, threads=1, warmup_epochs=0, patience=0)
    whole = train_one(cfg, wdir, tmp_path / "whole", w, 8)
    run(cfg, wdir, tmp_path / "cut", stop_after=1)
    calls = []
    monkeypatch.setattr(bench_accuracy, "run", lambda *a, **k: calls.append(k) or run(*a, **k))
    carried = train_one(cfg, wdir, tmp_path / "cut", w, 8)
    assert calls == [{"resume": True}]  # carried on from last.pt, not started again
    assert whole["tta_views"] == 9 and set(whole["without_tta"]) == {"accuracy", "macro_f1"}  # scored both ways
    drop = ("train_seconds",)
    assert {k: v for k, v in carried.items() if k not in drop} == {k: v for k, v in whole.items() if k not in drop}
    a, b = (torch.load(tmp_path / d / "best.pt", weights_only=True)["model"] for d in ("whole", "cut"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    # A finished run is scored again, not retrained, and not refused as "already holds a run".
    again = train_one(cfg, wdir, tmp_path / "cut", w, 8)
    assert len(calls) == 1
    assert np.isclose(again["accuracy"], whole["accuracy"]) and again["best_epoch"] == whole["best_epoch"]
    # A finished run trained with other settings (a default changed since) is trained again, not scored.
    other_jitter = dataclasses.replace(cfg, jitter=0.05)
    assert bench_accuracy.settings_differ(tmp_path / "cut", other_jitter) == ["jitter"]
    assert bench_accuracy.settings_differ(tmp_path / "cut", dataclasses.replace(cfg, threads=2)) == []
    # An option added after a run was trained is absent from its manifest: at its default it is no difference.
    man = json.loads((tmp_path / "cut" / "manifest.json").read_text())
    del man["config"]["members"], man["config"]["split_seed"]
    (tmp_path / "cut" / "manifest.json").write_text(json.dumps(man))
    assert bench_accuracy.settings_differ(tmp_path / "cut", cfg) == []
    assert bench_accuracy.settings_differ(tmp_path / "cut", dataclasses.replace(cfg, members=2)) == ["members"]
    retrained = train_one(other_jitter, wdir, tmp_path / "cut", w, 0)
    assert calls[-1] == {} and retrained["epochs_run"] == 2 and bench_accuracy.settings_differ(tmp_path / "cut",
                                                                                              other_jitter) == []
    calls.clear()
    # A resume the trainer refuses (here: other options than the cut run's) trains the model again.
    run(cfg, wdir, tmp_path / "other", stop_after=1)
    changed = dataclasses.replace(cfg, lr=cfg.lr * 2)
    redone = train_one(changed, wdir, tmp_path / "other", w, 0)
    assert calls == [{"resume": True}, {}] and redone["epochs_run"] == 2
    assert redone["tta_views"] == 1 and "without_tta" not in redone


def test_a_distilled_recipe_trains_its_teacher_only_when_the_student_must_be_trained(tmp_path, windows_npz,
                                                                                      monkeypatch):
    """distill_ens3 learns from the ens3 model of the same seed, split and --epochs, under ens3's own tag;
    both are logged; a logged student is scored from the log without training its teacher."""
    import bench_accuracy
    from bench_accuracy import one_model
    from har_vit.stages.train import run
    from har_vit.stages.windows import WindowConfig, import_npz, load_windows

    wdir = tmp_path / "w"
    import_npz(WindowConfig(), windows_npz, wdir)
    w = load_windows(wdir)
    log = tmp_path / "log.jsonl"
    a = parser().parse_args(["--recipe", "distill_ens3", "--epochs", "1", "--threads", "1", "--runs-log", str(log)])
    job = {"seed": 0, "fold": None, "split": "subject", "test_users": (2,)}
    calls = []
    monkeypatch.setattr(bench_accuracy, "run", lambda *x, **k: calls.append(x[0]) or run(*x, **k))
    logged = {}
    student = one_model("tiny", "distill_ens3", "users29-36", job, a, tmp_path / "work", wdir, w, logged)
    teacher, pupil = calls
    t_tag = scored_tag("tiny", "ens3", "users29-36", job, 1, "auto")
    assert "-ens3-users29-36-e1-s0-" in t_tag and teacher.members == 3 and teacher.epochs == 1
    assert pupil.members == 1 and pupil.teacher == str((tmp_path / "work" / "runs" / t_tag / "run").resolve())
    assert student["teacher_scores"] == {k: logged[t_tag][k] for k in ("accuracy", "macro_f1")}
    tags = [json.loads(line)["tag"] for line in log.read_text().splitlines()]
    assert tags == [t_tag, scored_tag("tiny", "distill_ens3", "users29-36", job, 1, "auto")]
    # Again, and from the log alone in an empty --work (a row's command replayed): nothing is trained.
    assert one_model("tiny", "distill_ens3", "users29-36", job, a, tmp_path / "work", wdir, w, logged) == student
    assert one_model("tiny", "distill_ens3", "users29-36", job, a, tmp_path / "empty", wdir, w, logged) == student
    assert len(calls) == 2 and not (tmp_path / "empty").exists()


def test_a_call_with_other_seeds_adds_them_to_the_row_and_never_shrinks_it(tmp_path, monkeypatch):
    """Seeds 3-5 run alone (e.g. in another process) join the row's seeds 0-2 from the runs log."""
    import pytest

    import bench_accuracy
    from bench_accuracy import V11, summarise

    if not V11.is_file():
        pytest.skip(f"needs the shared WISDM v1.1 windows ({V11}); see ../shared/data/README.md")
    job = {"split": "subject", "test_users": tuple(range(29, 37))}
    fake = {s: {"seed": s, "fold": None, "accuracy": 0.5 + s / 100, "macro_f1": 0.4 + s / 100, "train_seconds": 1.0,
                "device": "cpu", "device_name": "x"} for s in range(6)}
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps({"tag": scored_tag("rf", "fit", "users29-36", {**job, "seed": s, "fold": None},
                                                         None, "auto"), "result": r}) + "\n" for s, r in fake.items()))
    out = tmp_path / "accuracy.json"
    out.write_text(json.dumps([summarise("rf", "fit", "users29-36", [fake[s] for s in (0, 1, 2)], None, "old")]))
    argv = ["bench_accuracy.py", "--models", "rf", "--protocols", "users29-36", "--seeds", "5", "3", "--out", str(out),
            "--runs-log", str(log), "--work", str(tmp_path / "work")]
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.setattr(bench_accuracy, "train_one", lambda *a, **k: pytest.fail("nothing is to be trained"))
    bench_accuracy.main()
    (row,) = json.loads(out.read_text())
    assert row["seeds"] == [0, 1, 2, 3, 5] and [p["seed"] for p in row["per_seed"]] == [0, 1, 2, 3, 5]
    assert row["command"].endswith("--seeds 0 1 2 3 5")
    assert row["macro_f1_mean"] == pytest.approx(0.4 + 11 / 500)


def test_a_preregistered_verdict_needs_the_mean_the_seeds_ahead_and_the_interval():
    from bench_confirm import paired, verdict

    rule = {"min_mean_difference": 0.02, "min_seeds_ahead": 5, "interval": 0.95}
    steady = paired([0.43, 0.44, 0.42, 0.45, 0.43, 0.44], [0.40, 0.41, 0.40, 0.42, 0.41, 0.41], 0.95)
    assert steady["ahead"] == 6 and abs(steady["mean_difference"] - 0.0267) < 1e-3
    assert steady["interval"][0] > 0 and verdict(steady, rule) == "confirmed"
    # the same mean carried by one lucky seed: ahead on 1, and the interval reaches below zero
    lucky = paired([0.40, 0.41, 0.40, 0.42, 0.41, 0.57], [0.40, 0.41, 0.40, 0.42, 0.42, 0.40], 0.95)
    assert lucky["mean_difference"] >= 0.02 and lucky["interval"][0] < 0 and verdict(lucky, rule) == "not confirmed"
    small = paired([0.415, 0.425, 0.415, 0.435, 0.425, 0.425], [0.40, 0.41, 0.40, 0.42, 0.41, 0.41], 0.95)
    assert small["ahead"] == 6 and small["interval"][0] > 0 and verdict(small, rule) == "not confirmed"  # +1.5 < 2


def test_every_confirmation_follows_its_preregistered_rule():
    """A committed confirm_*.json was made from a prereg file that is committed too, with its seeds and rule."""
    for out in (ROOT / "bench" / "results").glob("confirm_*.json"):
        res = json.loads(out.read_text())
        spec = json.loads((ROOT / res["prereg"]).read_text())
        assert (res["protocol"], res["seeds"], res["rule"]) == (spec["protocol"], spec["seeds"], spec["rule"]), out
        cand = next(c for c in res["comparisons"] if c["candidate"] == spec["candidate"]) if res["comparisons"] else None
        assert res["verdict"] == (cand["verdict"] if cand else "incomplete"), out


def test_the_default_recipe_is_what_run_does_on_each_dataset():
    """On WISDM 2019 the default recipe takes the dataset's own defaults (as `run --dataset wisdm2019` does), trains
    as the recipe of the same training options and is scored at last.pt; on v1.1 it is the schema's defaults."""
    from bench_accuracy import RECIPES, recipe_opts, run_tag, trained_as

    from har_vit.datasets import TRAIN_DEFAULTS

    assert recipe_opts("default", "users29-36") == {} and recipe_opts("default", "cv6") == {}
    assert recipe_opts("default", "w2019-subject") == TRAIN_DEFAULTS["wisdm2019"] == {"rotate": 180.0, "serve": "last"}
    assert RECIPES[trained_as("default", "w2019-subject")] == {"rotate": 180.0}  # --serve changes no weight
    assert trained_as("default", "users29-36") == "default" and recipe_opts("rot30", "w2019-subject") == {}
    job = jobs("w2019-subject", [4])[0]
    tag = scored_tag("tiny_ws", "default", "w2019-subject", job, None, "auto")
    assert tag == "tiny_ws-rot180-w2019-subject-e-s4-fNone-auto-last"
    assert run_tag(tag) == scored_tag("tiny_ws", "rot180", "w2019-subject", job, None, "auto")  # one run folder
    # the WISDM 2019 default of before 2026-12-03 keeps its logged models under its new name
    assert scored_tag("tiny_ws", "rot30", "w2019-subject", job, None, "auto") == "tiny_ws-default-w2019-subject-e-s4-fNone-auto"


def test_early_stopping_replays_stop_where_training_would_have():
    from bench_patience import replay

    curve = [0.1, 0.3, 0.2, 0.25, 0.5, 0.4, 0.45, 0.3]
    assert replay(curve, 2) == (4, 0.3)  # no better score at epochs 3 and 4: stop at 4, keeping epoch 2's
    assert replay(curve, 3) == (8, 0.5)  # epoch 5's 0.5 came in time; 3 epochs without one end it at 8
    assert replay(curve, 10) == (8, 0.5)  # the curve ends first
