"""``train --serve best|last``: the checkpoint a run serves is the one every later stage takes."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from click.testing import CliRunner

from har_vit.core.checkpoint import load_checkpoint, load_model, served
from har_vit.core.runs import load_run
from har_vit.stages import evaluate, export
from har_vit.stages.train import TrainConfig, run
from har_vit.stages.windows import WindowConfig, import_npz
from pipeline import cli

# 6 epochs, no early stopping: last.pt is epoch 6; best.pt is validation's pick (an earlier epoch for this seed)
CFG = TrainConfig(model="tiny", epochs=6, patience=0, batch_size=16, progress=False, threads=1, seed=1)
FAST = evaluate.EvalConfig(device="cpu", skip_latency=True, baseline="none")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from conftest import make_windows_npz

    tmp = tmp_path_factory.mktemp("serve")
    windows = tmp / "windows"
    import_npz(WindowConfig(), make_windows_npz(tmp / "w.npz"), windows)
    return {s: (run(dataclasses.replace(CFG, serve=s), windows, tmp / s), tmp / s) for s in ("best", "last")}


def test_a_run_serving_last_is_evaluated_exported_and_loaded_at_its_last_weights(runs, tmp_path):
    man, d = runs["last"]
    assert man["config"]["serve"] == "last" and served(d) == "last"
    last, best = load_checkpoint(d / "last.pt"), load_checkpoint(d / "best.pt")
    assert last["epoch"] == man["epochs_run"] == CFG.epochs
    assert any(not torch.equal(last["model"][k], best["model"][k]) for k in last["model"]), \
        "a weak test: best.pt is last.pt here"

    m = evaluate.run(FAST, d)
    assert (m["checkpoint"], m["epoch"]) == ("last", last["epoch"])
    assert evaluate.run(dataclasses.replace(FAST, which="best"), d)["checkpoint"] == "best"  # asked for: the pick
    assert load_run(d).ckpt_path.name == "last.pt"  # what predict and export load
    model, ckpt = load_model(d)
    X = torch.randn(5, 32, 3)
    with torch.no_grad():
        torch.testing.assert_close(model(X), load_model(d, "last")[0](X), rtol=0, atol=0)
    summary = export.run(export.ExportConfig(format="torchscript", parity_windows=8), d, tmp_path / "export")
    assert summary["checkpoint"] == "last" and summary["inputs"]["checkpoint"]["path"].endswith("last.pt")


def test_a_run_serves_best_by_default_and_so_does_a_run_from_before_the_option(runs, tmp_path):
    man, d = runs["best"]
    assert served(d) == "best" and evaluate.run(FAST, d)["checkpoint"] == "best"
    old = tmp_path / "old"
    old.mkdir()
    body = json.loads((d / "manifest.json").read_text())
    del body["config"]["serve"]
    (old / "manifest.json").write_text(json.dumps(body))
    assert served(old) == "best" and served(tmp_path / "nothing") == "best" and served(old, "last") == "last"


def test_the_command_line_says_when_a_run_serves_its_last_weights(tmp_path, windows_npz):
    windows = tmp_path / "windows"
    import_npz(WindowConfig(), windows_npz, windows)
    res = CliRunner().invoke(cli, ["train", "--in", str(windows), "--out", str(tmp_path / "m"), "--model", "tiny",
                                   "--epochs", "2", "--batch-size", "16", "--threads", "1", "--no-progress",
                                   "--serve", "last"])
    assert res.exit_code == 0, res.output
    assert "the run serves last.pt (epoch 2)" in res.output
    bad = CliRunner().invoke(cli, ["evaluate", "--run", str(tmp_path / "m"), "--which", "worst"])
    assert bad.exit_code != 0 and "worst" in bad.output
