"""``train --members K``: K networks on one split, one ensemble run folder every later stage takes."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from har_vit.core.checkpoint import load_checkpoint, load_model
from har_vit.core.errors import UsageError
from har_vit.model.ensemble import Ensemble
from har_vit.stages import evaluate
from har_vit.stages.train import TrainConfig, run
from har_vit.stages.windows import WindowConfig, import_npz
from har_vit.training.members import member_configs
from pipeline import cli

# Dropout and augmentation on, so that the members' own seeds matter.
CFG = TrainConfig(model="tiny", epochs=2, batch_size=16, drop=0.2, jitter=0.05, progress=False, threads=1, members=2,
                  seed=3)


@pytest.fixture
def windows(tmp_path, windows_npz):
    out = tmp_path / "windows"
    import_npz(WindowConfig(), windows_npz, out)
    return out


def probs(model, X):
    with torch.no_grad():
        return model(X).softmax(-1)


def test_an_ensemble_is_its_members_own_runs_on_one_split_averaging_their_probabilities(tmp_path, windows):
    man = run(CFG, windows, tmp_path / "ens")
    members = [tmp_path / "ens" / "members" / f"m{i}" for i in range(2)]
    # Each member is the run its own config makes alone (stacked with the other: float tolerance).
    alone = run(member_configs(CFG)[1], windows, tmp_path / "alone1")
    for k, v in load_checkpoint(members[1] / "last.pt")["model"].items():
        torch.testing.assert_close(v, load_checkpoint(tmp_path / "alone1" / "last.pt")["model"][k], rtol=1e-4, atol=1e-4)
    # One split for all (the run's seed draws it), other seeds for the rest.
    splits = [np.load(d / "split.npz") for d in (tmp_path / "ens", *members, tmp_path / "alone1")]
    for s in splits[1:]:
        assert all(np.array_equal(s[k], splits[0][k]) for k in ("train", "val", "test"))
    assert alone["split"] == man["split"]
    seeds = [m["seed"] for m in man["members"]]
    assert seeds[0] == CFG.seed and len(set(seeds)) == 2
    a, b = (load_checkpoint(d / "best.pt")["model"] for d in members)
    assert any(not torch.equal(a[k], b[k]) for k in a), "members with other seeds must learn other weights"

    ens, ckpt = load_model(tmp_path / "ens")
    assert isinstance(ens, Ensemble) and ckpt["model_kwargs"]["members"] == 2
    assert man["params"] == sum(load_model(d)[0].num_params() for d in members)
    X = torch.randn(7, 32, 3)
    mean = torch.stack([probs(load_model(d)[0], X) for d in members]).mean(0)
    torch.testing.assert_close(probs(ens, X), mean, rtol=1e-5, atol=1e-6)
    # The manifest's validation score is the ensemble's own, beside each member's.
    assert man["best_val_macro_f1"] == ckpt["val"]["val_macro_f1"]
    assert [m["best_epoch"] for m in man["members"]] == ckpt["member_epochs"]
    # Trained side by side in one stack, each member timed the whole stack's epochs: counted once.
    assert man["train_seconds"] == pytest.approx(max(m["train_seconds"] for m in man["members"]), abs=1e-3)
    history = json.loads((tmp_path / "ens" / "history.json").read_text())
    assert sorted({(h["member"], h["seed"]) for h in history}) == list(enumerate(seeds))
    assert (tmp_path / "ens" / "history.csv").read_text().startswith("member,seed,epoch,")


def test_a_one_member_run_is_a_plain_run(tmp_path, windows):
    plain = dataclasses.replace(CFG, members=1)
    run(plain, windows, tmp_path / "a")
    run(member_configs(CFG)[0], windows, tmp_path / "b")  # member 0: the run's seed, split_seed set to it
    for k, v in load_checkpoint(tmp_path / "a" / "last.pt")["model"].items():
        assert torch.equal(v, load_checkpoint(tmp_path / "b" / "last.pt")["model"][k])
    assert not (tmp_path / "a" / "members").exists()


def test_an_interrupted_ensemble_resumes_its_unfinished_members(tmp_path, windows):
    run(CFG, windows, tmp_path / "whole")
    cfg0, cfg1 = member_configs(CFG)
    part = tmp_path / "part"
    run(cfg0, windows, part / "members" / "m0")
    assert run(cfg1, windows, part / "members" / "m1", stop_after=1)["finished"] is False
    with pytest.raises(UsageError, match="already holds a training run; pass --resume"):
        run(CFG, windows, part)
    man = run(CFG, windows, part, resume=True)
    assert [m["epochs_run"] for m in man["members"]] == [2, 2]
    whole, resumed = load_checkpoint(tmp_path / "whole" / "best.pt"), load_checkpoint(part / "best.pt")
    for k, v in whole["model"].items():
        torch.testing.assert_close(resumed["model"][k], v, rtol=1e-4, atol=1e-4)
    with pytest.raises(UsageError, match="nothing to resume"):
        run(CFG, windows, tmp_path / "empty", resume=True)


def test_evaluate_and_export_take_an_ensemble_as_one_model(tmp_path, windows):
    run(CFG, windows, tmp_path / "ens")
    m = evaluate.run(evaluate.EvalConfig(skip_latency=True, baseline="none"), tmp_path / "ens")
    assert m["members"] == 2 and len(m["member_epochs"]) == 2
    ens, ckpt = load_model(tmp_path / "ens")
    test = np.load(tmp_path / "ens" / "split.npz")["test"]
    w = np.load(tmp_path / "windows" / "windows.npz")
    X = (torch.from_numpy(w["X"][test]) - torch.tensor(ckpt["norm"]["mean"])) / torch.tensor(ckpt["norm"]["std"])
    pred = probs(ens, X.float()).argmax(1).numpy()
    assert m["accuracy"] == pytest.approx(float((pred == w["y"][test]).mean()))
    pytest.importorskip("onnxruntime")
    res = CliRunner().invoke(cli, ["export", "--run", str(tmp_path / "ens"), "--out", str(tmp_path / "onnx")])
    assert res.exit_code == 0, res.output
    exported = json.loads((tmp_path / "onnx" / "manifest.json").read_text())
    assert exported["max_abs_diff"] <= 1e-4 and exported["argmax_agreement"] == 1.0


def test_members_of_a_forest_or_under_a_wrong_count_are_one_line_errors(tmp_path, windows):
    res = CliRunner().invoke(cli, ["train", "--in", str(windows), "--out", str(tmp_path / "rf"), "--model", "rf",
                                   "--members", "2"])
    assert res.exit_code != 0 and "not a network" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "rf" / "members").exists()
    res = CliRunner().invoke(cli, ["train", "--in", str(windows), "--out", str(tmp_path / "x"), "--members", "0"])
    assert res.exit_code != 0 and "members" in res.output and "Traceback" not in res.output
    # Bad input found once the members start: the one-line error, and no folder left behind.
    res = CliRunner().invoke(cli, ["train", "--in", str(windows), "--out", str(tmp_path / "bad"), "--members", "2",
                                   "--test-users", "999", "--threads", "1", "--no-progress"])
    assert res.exit_code != 0 and "999" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "bad").exists()


def test_cv_of_an_ensemble_scores_each_folds_ensemble(tmp_path, windows_npz):
    args = ["cv", "--dataset", "npz", "--data-path", str(windows_npz), "--folds", "2", "--seeds", "0", "--epochs", "1",
            "--batch-size", "16", "--members", "2", "--threads", "1", "--no-progress", "--out", str(tmp_path / "cv"),
            "--workdir", str(tmp_path / "ws")]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    row = json.loads((tmp_path / "cv" / "cv.json").read_text())["rows"][0]
    assert row["recipe"].startswith("custom:") and "members=2" in row["recipe"]
    for p in row["per_seed"]:
        model = tmp_path / "cv" / "models" / f"s0-f{p['fold']}"
        metrics = json.loads((model / "eval" / "metrics.json").read_text())
        assert metrics["members"] == 2 and metrics["macro_f1"] == p["macro_f1"]
        assert sorted(d.name for d in (model / "members").iterdir()) == ["m0", "m1"]


def test_an_ensemble_teaches_a_student_its_mean_probabilities(tmp_path, windows):
    from har_vit.stages import report
    from har_vit.training.objective import load_teacher

    ens_cfg = dataclasses.replace(CFG, epochs=1)
    run(ens_cfg, windows, tmp_path / "ens")
    before = (tmp_path / "ens" / "best.pt").read_bytes()
    ens, ckpt = load_model(tmp_path / "ens")
    split = json.loads((tmp_path / "ens" / "manifest.json").read_text())["split"]
    teacher = load_teacher(str(tmp_path / "ens"), ckpt["norm"], ckpt["class_names"], torch.device("cpu"), split)
    X = torch.randn(9, 32, 3)
    members = [load_model(tmp_path / "ens" / "members" / f"m{i}")[0] for i in range(2)]
    # The distillation target is the ensemble's mean probability, not one member's.
    torch.testing.assert_close(teacher.logits(X).softmax(-1), torch.stack([probs(m, X) for m in members]).mean(0),
                               rtol=1e-5, atol=1e-6)
    student = run(dataclasses.replace(ens_cfg, members=1, teacher=str(tmp_path / "ens")), windows, tmp_path / "student")
    assert (tmp_path / "ens" / "best.pt").read_bytes() == before  # the teacher is never trained
    assert student["teacher"]["members"] == 2 and student["teacher"]["params"] == ens.num_params()
    assert student["params"] * 2 == ens.num_params()
    evaluate.run(evaluate.EvalConfig(skip_latency=True, baseline="none"), tmp_path / "student")
    html = report.run(tmp_path / "student", tmp_path / "reports").read_text()
    assert f"ensemble of 2 tiny ({ens.num_params():,} params)" in html
