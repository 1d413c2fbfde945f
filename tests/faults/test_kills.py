"""kill -9 at random moments: resume gives the same model; no half artefact is ever read as good."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from faultkit import cli, kill_when, make_rng
from synthetic import make_log

from har_vit.core.io import read_manifest, verify_outputs

TRAIN_YAML = "model: tiny\nepochs: 6\nbatch_size: 32\nprogress: false\nthreads: 1\nwarmup_epochs: 1\n"


def _epochs_done(run: Path) -> int:
    try:
        return len(json.loads((run / "history.json").read_text()))
    except (OSError, ValueError):
        return 0


def _state(path: Path) -> dict:
    return torch.load(path, weights_only=True)["model"]


@pytest.fixture
def windows_dir(tmp_path, windows_npz):
    rc, _, err = cli("windows", "--dataset", "npz", "--data-path", windows_npz, "--out", tmp_path / "w")
    assert rc == 0, err
    (tmp_path / "t.yaml").write_text(TRAIN_YAML)
    return tmp_path / "w"


def test_kill9_during_training_resume_equals_uninterrupted(tmp_path, windows_dir):
    rng = make_rng()
    cfg = tmp_path / "t.yaml"
    rc, _, err = cli("train", "--in", windows_dir, "--out", tmp_path / "ref", "--config", cfg)
    assert rc == 0, err
    run = tmp_path / "run"
    kills = 0
    for attempt in range(3):  # three kills at random epochs, each resumed
        target = rng.randint(1, 5)
        resume = ["--resume"] if (run / "last.pt").exists() else []
        killed = kill_when(["train", "--in", windows_dir, "--out", run, "--config", cfg, *resume],
                           ready=lambda: _epochs_done(run) >= target, delay=rng.uniform(0, 0.3))
        kills += killed
        if not killed:
            break
    assert kills >= 1
    if not (run / "manifest.json").exists():
        rc, _, err = cli("train", "--in", windows_dir, "--out", run, "--config", cfg,
                         *(["--resume"] if (run / "last.pt").exists() else []))
        assert rc == 0, err
    for name in ("best.pt", "last.pt"):
        a, b = _state(tmp_path / "ref" / name), _state(run / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f"{name} differs after {kills} kills"
    ha, hb = (json.loads((d / "history.json").read_text()) for d in (tmp_path / "ref", run))
    keys = ("train_loss", "val_loss", "val_acc", "val_macro_f1")
    assert [[h[k] for k in keys] for h in ha] == [[h[k] for k in keys] for h in hb]
    print(f"killed {kills} times; weights and metrics identical to the uninterrupted run")


@pytest.mark.parametrize("stage", ["ingest", "windows"])
def test_kill9_during_data_stages_never_leaves_a_good_looking_half(tmp_path, stage):
    rng = make_rng()
    log = tmp_path / "big.txt"
    log.write_bytes(b"".join(make_log(s, users=(1, 2, 3, 4), bout_len=(2000, 4000)).text for s in range(6)))
    ingest_args = ["ingest", "--dataset", "wisdm", "--data-path", log]
    rc, _, err = cli(*ingest_args, "--out", tmp_path / "ref_i")
    assert rc == 0, err
    rc, _, err = cli("windows", "--in", tmp_path / "ref_i", "--out", tmp_path / "ref_w")
    assert rc == 0, err
    target = tmp_path / ("i" if stage == "ingest" else "w")
    args = ([*ingest_args, "--out", target] if stage == "ingest"
            else ["windows", "--in", tmp_path / "ref_i", "--out", target])
    for _ in range(4):
        kill_when(args, ready=lambda: True, delay=rng.uniform(0.3, 2.5))
        # Whatever the kill left: either no manifest (the next reader refuses) or a complete, verified folder.
        if (target / "manifest.json").exists():
            verify_outputs(target, read_manifest(target))
        else:
            nxt = (["windows", "--in", target, "--out", tmp_path / "n"] if stage == "ingest"
                   else ["train", "--in", target, "--out", tmp_path / "n"])
            rc, _, err = cli(*nxt)
            assert rc == 1 and "no manifest" in err and len(err.strip().splitlines()) == 1
    rc, _, err = cli(*args)
    assert rc == 0, err
    ref = read_manifest(tmp_path / ("ref_i" if stage == "ingest" else "ref_w"))
    got = read_manifest(target)
    for k in ("records_total", "records_kept", "records_quarantined", "windows_total", "per_class"):
        assert got.get(k) == ref.get(k)


def test_kill9_during_report_leaves_old_or_complete_pages(tmp_path, windows_dir):
    from har_vit.stages import evaluate, train
    rng = make_rng()
    m = tmp_path / "m"
    train.run(train.TrainConfig(model="tiny", epochs=1, batch_size=32, progress=False), windows_dir, m)
    evaluate.run(evaluate.EvalConfig(skip_latency=True), m)
    reports = tmp_path / "reports"
    for _ in range(3):
        kill_when(["report", "--run", m, "--reports", reports, "--report-name", "r1"], ready=lambda: True,
                  delay=rng.uniform(0.5, 4.0))
        for page in [reports / "r1" / "report.html", reports / "index.html"]:
            if page.exists():
                assert page.read_text().rstrip().endswith("</html>"), f"{page} is half-written"
    rc, _, err = cli("report", "--run", m, "--reports", reports, "--report-name", "r1")
    assert rc == 0, err
