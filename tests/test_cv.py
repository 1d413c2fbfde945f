"""cv: every fold for every seed, grouped by user, one row in the format of accuracy.json."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from har_vit.core.errors import UsageError
from har_vit.core.workspace import ENV
from har_vit.stages.cv import folds_of

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["--epochs", "1", "--batch-size", "16", "--no-progress", "--threads", "1"]


def cli(*args, cwd):
    env = {k: v for k, v in os.environ.items() if k != ENV}
    p = subprocess.run([sys.executable, str(ROOT / "pipeline.py"), *map(str, args)], capture_output=True, text=True,
                       cwd=cwd, env=env)
    assert p.returncode == 0, p.stderr
    return p.stdout, p.stderr


def test_folds_are_contiguous_groups_of_sorted_users_covering_each_once():
    users = np.repeat(np.array([7, 3, 36, 1, 12, 5, 9]), 4)
    folds = folds_of(users, 3)
    assert folds == [(1, 3, 5), (7, 9), (12, 36)]
    assert sorted(u for f in folds for u in f) == sorted(set(users.tolist()))
    assert folds_of(np.arange(1, 37), 6)[1] == (7, 8, 9, 10, 11, 12)  # bench's cv6 folds on WISDM v1.1
    with pytest.raises(UsageError, match="only 7 users"):
        folds_of(users, 8)


def test_cv_trains_every_fold_for_every_seed_and_resumes(tmp_path, windows_npz):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    out = tmp_path / "cv"
    args = ["cv", "--workdir", tmp_path, "--dataset", "npz", "--data-path", windows_npz, "--folds", 3,
            "--seeds", 0, "--seeds", 1, "--out", out, *QUICK]
    stdout, err = cli(*args, cwd=cwd)
    result = json.loads((out / "cv.json").read_text())
    (row,) = result["rows"]
    assert result["folds"] == [[1, 2], [3, 4], [5, 6]] and result["stacked"] is True
    assert row["protocol"] == "cv3" and row["recipe"] == "custom: epochs=1, batch_size=16"
    assert sorted((p["seed"], p["fold"]) for p in row["per_seed"]) == [(s, k) for s in (0, 1) for k in range(3)]
    for p in row["per_seed"]:  # each score is its model's own evaluation on its fold's users
        m = json.loads((out / "models" / f"s{p['seed']}-f{p['fold']}" / "eval" / "metrics.json").read_text())
        assert (p["accuracy"], p["macro_f1"]) == (m["accuracy"], m["macro_f1"])
        assert m["split"]["test_users"] == result["folds"][p["fold"]]
        assert set(m["per_user"]) == {str(u) for u in result["folds"][p["fold"]]}
    assert row["accuracy_mean"] == pytest.approx(np.mean([p["accuracy"] for p in row["per_seed"]]))
    assert row["command"].startswith("python pipeline.py cv --workdir ") and "--folds 3" in row["command"]
    assert stdout.startswith("summary: cv: 6 models (3 folds grouped by user x 2 seeds, trained together as one "
                             "stacked model)") and f"run: {out}" in stdout
    assert err.count("[") >= 6 and "[6/6] seed 1 fold 2" in err

    # A rerun keeps every finished model: nothing is trained again, the row is the same.
    before = {p: p.stat().st_mtime_ns for p in out.glob("models/*/best.pt")}
    cli(*args, cwd=cwd)
    assert {p: p.stat().st_mtime_ns for p in out.glob("models/*/best.pt")} == before
    assert json.loads((out / "cv.json").read_text())["rows"][0]["per_seed"] == row["per_seed"]
    assert list(cwd.iterdir()) == []


def test_cv_sequential_trains_the_same_models_one_after_another(tmp_path, windows_npz):
    """--sequential and the default stack give each (seed, fold) the same weights, to float tolerance."""
    import torch

    from har_vit.core.checkpoint import load_checkpoint

    common = ["cv", "--workdir", tmp_path, "--dataset", "npz", "--data-path", windows_npz, "--folds", 2,
              "--seeds", 0, "--seeds", 3, "--epochs", "2", "--batch-size", "16", "--no-progress", "--threads", "1"]
    cli(*common, "--out", tmp_path / "stacked", cwd=tmp_path)
    _, err = cli(*common, "--out", tmp_path / "seq", "--sequential", cwd=tmp_path)
    assert "one after another (--sequential)" in err
    a, b = (json.loads((tmp_path / d / "cv.json").read_text()) for d in ("stacked", "seq"))
    assert (a["stacked"], b["stacked"]) == (True, False)
    for p in a["rows"][0]["per_seed"]:
        name = f"models/s{p['seed']}-f{p['fold']}/last.pt"
        wa, wb = (load_checkpoint(tmp_path / d / name)["model"] for d in ("stacked", "seq"))
        for k in wa:
            torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-4)


def test_cv_deals_the_stack_to_processes_with_the_same_models(tmp_path, windows_npz):
    """On the CPU the default --workers is twice the threads (one for one); each model ends as in one stack."""
    import torch

    from har_vit.core.checkpoint import load_checkpoint

    common = ["cv", "--workdir", tmp_path, "--dataset", "npz", "--data-path", windows_npz, "--folds", 3,
              "--seeds", 0, "--seeds", 3, "--epochs", "2", "--batch-size", "16", "--no-progress"]
    stdout, err = cli(*common, "--threads", 2, "--out", tmp_path / "two", cwd=tmp_path)
    cli(*common, "--threads", 1, "--out", tmp_path / "one", cwd=tmp_path)
    two, one = (json.loads((tmp_path / d / "cv.json").read_text()) for d in ("two", "one"))
    assert two["processes"] == {"workers": 4, "models": [1, 1, 2, 2], "threads": 2}
    assert one["processes"] == {"workers": 1, "models": [6], "threads": 1}
    assert all(f"[process {k}/4]" in err for k in range(1, 5))
    assert "trained in 4 processes (stacks of 1 + 1 + 2 + 2 models, 2 threads in all)" in stdout
    for p in two["rows"][0]["per_seed"]:
        name = f"models/s{p['seed']}-f{p['fold']}/last.pt"
        wa, wb = (load_checkpoint(tmp_path / d / name)["model"] for d in ("two", "one"))
        for k in wa:
            torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-4)
