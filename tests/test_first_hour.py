"""A new user's first hour: every command from a fresh workspace ends with a summary that holds.

Each command runs as a subprocess (what a user sees, exit code included). The summary's
figures must equal the evaluation's ``metrics.json``; every ``next:`` hint and every
folder suggested by an error is followed literally and must work.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_windows_npz

from har_vit.core.schema import OPTIONS
from har_vit.core.workspace import ENV

DEFAULT_MODEL = OPTIONS["model"].default  # what the summaries name when no --model is given

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["--epochs", "1", "--batch-size", "16", "--no-progress", "--threads", "1"]
EVAL = ["--skip-latency"]


def cli(*args, cwd, code=0):
    env = {k: v for k, v in os.environ.items() if k != ENV}
    p = subprocess.run([sys.executable, str(ROOT / "pipeline.py"), *map(str, args)], capture_output=True, text=True,
                       cwd=cwd, env=env)
    assert p.returncode == code, p.stderr
    return p.stdout, p.stderr


def field(out: str, name: str) -> str:
    """The value of the ``name:`` line of a summary."""
    m = re.search(rf"^{name}: (.*)$", out, re.MULTILINE)
    assert m, f"no '{name}:' line in:\n{out}"
    return m.group(1)


def check_scores(out: str, metrics: dict) -> None:
    """The three score lines and the verdict say what metrics.json says."""
    assert f"  accuracy {metrics['accuracy']:.4f}  macro F1 {metrics['macro_f1']:.4f}  {DEFAULT_MODEL} on npz, subject split" in out
    base = metrics["baseline"]
    assert f"  baseline {base['accuracy']:.4f}  macro F1 {base['macro_f1']:.4f}  random forest" in out
    assert f"  chance   {1 / 6:.4f} (uniform over 6 classes)" in out
    assert re.search(r"^  (Beats|On par with|LOSES to) the random-forest baseline.*(person|people) the model never saw",
                     out, re.MULTILINE), out


def follow(hint: str, cwd: Path, *more: str) -> str:
    """Run a printed ``next: python pipeline.py ...`` hint as it stands (plus options to keep the test quick)."""
    args = shlex.split(hint)
    assert args[:2] == ["python", "pipeline.py"], hint
    out, _ = cli(*args[2:], *more, cwd=cwd)
    return out


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("first-hour")
    cwd, ws = root / "cwd", root / "ws"
    cwd.mkdir()
    npz = make_windows_npz(root / "win.npz")
    out, err = cli("run", "--workdir", ws, "--dataset", "npz", "--data-path", npz, *QUICK, *EVAL, cwd=cwd)
    return {"cwd": cwd, "ws": ws, "out": out, "err": err}


def test_run_ends_with_scores_beside_baseline_and_chance_and_where_things_are(first_run):
    out, ws = first_run["out"], first_run["ws"]
    run_dir = Path(field(out, "run"))
    assert run_dir.parent == ws / "runs" and out.startswith(f"summary: run {run_dir.name}: ingest, windows, train")
    metrics = json.loads((run_dir / "model" / "eval" / "metrics.json").read_text())
    check_scores(out, metrics)
    report = Path(field(out, "report"))
    assert report.is_file() and report.parent == ws / "reports" / run_dir.name
    assert field(out, "open") == report.resolve().as_uri() and field(out, "open").startswith("file:///")
    assert "[5/5] report" in first_run["err"]  # progress on stderr, the summary alone on stdout


def test_evaluate_report_predict_export_take_the_run_folder_or_any_folder_inside_it(first_run, synth_log):
    cwd, ws = first_run["cwd"], first_run["ws"]
    run_dir = Path(field(first_run["out"], "run"))
    for where in (run_dir, run_dir / "model" / "eval" / "plots"):
        out, _ = cli("evaluate", "--workdir", ws, "--run", where, *EVAL, cwd=cwd)
        assert out.startswith("summary: evaluate: ") and field(out, "run") == str(run_dir)
        check_scores(out, json.loads((run_dir / "model" / "eval" / "metrics.json").read_text()))
        assert field(out, "next") == f"python pipeline.py report --run {run_dir}"
    out, _ = cli("report", "--workdir", ws, "--run", run_dir / "windows", cwd=cwd)
    assert out.startswith(f"summary: report of {run_dir.name}") and Path(field(out, "report")).is_file()
    assert Path(field(out, "report")) == Path(field(first_run["out"], "report"))  # the same report, written again
    assert field(out, "open").startswith("file:///")

    log, _ = synth_log
    out, _ = cli("predict", "--workdir", ws, "--run", run_dir, "--data-path", log, "--out", cwd / ".." / "p.csv",
                 cwd=cwd)
    # The npz windows were cut every 32 samples; new logs are cut every 64 unless told otherwise.
    assert re.search(r"^summary: predict: [\d,]+ windows of 32 samples, step 64; the training windows had step 32",
                     out, re.MULTILINE), out
    assert field(out, "run") == str(run_dir) and "most predicted: " in out
    out, _ = cli("predict", "--workdir", ws, "--run", run_dir, "--data-path", log, "--out", cwd / ".." / "p.csv",
                 "--step", 8, cwd=cwd)
    assert "windows of 32 samples, step 8;" in out
    out, _ = cli("export", "--workdir", ws, "--run", run_dir / "model", "--format", "torchscript",
                 "--out", cwd / ".." / "x", cwd=cwd)
    assert out.startswith("summary: export: torchscript, max |logit diff|") and field(out, "run") == str(run_dir)


def test_a_wrong_folder_gets_advice_that_works_when_followed(first_run, tmp_path):
    cwd, ws = first_run["cwd"], first_run["ws"]
    run_dir = Path(field(first_run["out"], "run"))
    (tmp_path / "elsewhere").mkdir()
    for wrong in (tmp_path / "elsewhere", ws / "runs", tmp_path / "missing"):
        _, err = cli("evaluate", "--workdir", ws, "--run", wrong, *EVAL, cwd=cwd, code=2)
        assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and "Traceback" not in err
        suggested = re.search(r"pass a run folder, e.g. (\S+?)[,;(\s]", err + " ")
        assert suggested and suggested.group(1) == str(run_dir), err
        out, _ = cli("evaluate", "--workdir", ws, "--run", suggested.group(1), *EVAL, cwd=cwd)
        assert out.startswith("summary: evaluate: ")


def test_stage_by_stage_each_summary_names_the_next_command_and_it_works(tmp_path, synth_log):
    log, _ = synth_log
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    out, _ = cli("ingest", "--workdir", tmp_path, "--data-path", log, "--out", tmp_path / "s" / "ingest", cwd=cwd)
    assert out.startswith("summary: ingest of wisdm: ") and "records kept" in out
    out = follow(field(out, "next"), cwd, "--window", 32, "--step", 16)
    assert out.startswith("summary: windows: ") and "windows of 32 (step 16)" in out
    out = follow(field(out, "next"), cwd, *QUICK)
    assert out.startswith(f"summary: train: {DEFAULT_MODEL} on cpu, 1 epochs, best val macro F1 ")
    assert field(out, "run") == str(tmp_path / "s" / "model")
    out = follow(field(out, "next"), cwd, *EVAL)
    assert out.startswith("summary: evaluate: ") and "  accuracy " in out and "  chance   " in out
    out = follow(field(out, "next"), cwd, "--workdir", tmp_path)
    assert Path(field(out, "report")).is_relative_to(tmp_path / "reports")
    assert list(cwd.iterdir()) == []


def test_retrain_ends_with_the_candidates_scores_and_where_it_went(first_run):
    cwd, ws = first_run["cwd"], first_run["ws"]
    npz = ws.parent / "win.npz"
    out, _ = cli("retrain", "--workdir", ws, "--dataset", "npz", "--data-path", npz, *QUICK, *EVAL, cwd=cwd)
    assert re.match(r"summary: retrain (promoted|kept|skipped): ", out), out
    if not out.startswith("summary: retrain skipped"):
        run_dir = Path(field(out, "run"))
        assert run_dir.parent == ws / "runs"
        check_scores(out, json.loads((run_dir / "model" / "eval" / "metrics.json").read_text()))
        assert Path(field(out, "report")).is_file() and field(out, "open").startswith("file:///")
