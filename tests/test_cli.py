"""The command line: one-line errors with exit codes, help with examples, stages chained."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import pipeline

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ["run", "ingest", "windows", "train", "evaluate", "report", "predict", "retrain", "export", "doctor", "cv"]


def cli(*args):
    """Run pipeline.py in a subprocess: what a user (or cron) sees, exit code included."""
    p = subprocess.run([sys.executable, str(ROOT / "pipeline.py"), *map(str, args)], capture_output=True, text=True)
    return p.returncode, p.stdout, p.stderr


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(command):
    r = CliRunner().invoke(pipeline.cli, [command, "--help"])
    assert r.exit_code == 0, r.output
    assert "Example" in r.output and "python pipeline.py" in r.output or "torchrun" in r.output


def test_models_lists_every_variant_and_marks_the_default():
    from har_vit.core.schema import OPTIONS
    from har_vit.model import list_models

    r = CliRunner().invoke(pipeline.cli, ["models"])
    assert r.exit_code == 0, r.output
    lines = {line.split()[0]: line for line in r.output.splitlines()}
    assert set(lines) == set(list_models())
    assert [n for n, line in lines.items() if "the default" in line] == [OPTIONS["model"].default] == ["tiny_ws"]


@pytest.mark.parametrize("args,code,needle", [
    (["ingest", "--dataset", "nope", "--out", "{tmp}/o"], 2, "'nope' is not one of"),
    (["ingest", "--dataset", "wisdm", "--data-path", "{tmp}/missing.txt", "--out", "{tmp}/o"], 1, "missing.txt"),
    (["ingest", "--dataset", "wisdm", "--data-path", "{tmp}/junk.txt", "--out", "{tmp}/o"], 1, "all 2 records quarantined"),
    (["windows", "--in", "{tmp}/nothing", "--out", "{tmp}/w"], 1, "no manifest"),
    (["train", "--in", "{tmp}/nothing", "--out", "{tmp}/m", "--model", "nope"], 2, "Invalid value for '--model'"),
    (["evaluate", "--run", "{tmp}/nothing"], 2, "no such folder"),
    (["run", "--dataset", "npz"], 2, "--data-path"),
])
def test_bad_input_is_one_line_and_an_exit_code(tmp_path, args, code, needle):
    (tmp_path / "junk.txt").write_text("hello\nworld\n")
    rc, out, err = cli(*[a.format(tmp=tmp_path) for a in args])
    assert rc == code, err
    assert needle in err and err.startswith("error: ")
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "o" / "manifest.json").exists()


def test_stages_chain_through_the_cli(tmp_path, synth_log):
    path, log = synth_log
    rc, out, err = cli("ingest", "--dataset", "wisdm", "--data-path", path, "--out", tmp_path / "i")
    assert rc == 0 and f"{log.kept:,} of {log.total:,} records kept" in out, err
    rc, out, err = cli("windows", "--in", tmp_path / "i", "--out", tmp_path / "w", "--window", 64, "--step", 32)
    assert rc == 0 and "windows of 64 (step 32)" in out, err


def test_config_file_merges_under_command_line(tmp_path, synth_log):
    path, _ = synth_log
    (tmp_path / "c.yaml").write_text("window: 32\nstep: 32\n")
    cli("ingest", "--data-path", path, "--out", tmp_path / "i")
    rc, out, err = cli("windows", "--in", tmp_path / "i", "--out", tmp_path / "w", "--config", tmp_path / "c.yaml",
                       "--step", 16)
    assert rc == 0 and "windows of 32 (step 16)" in out, err
    (tmp_path / "bad.yaml").write_text("window: [unclosed\n")
    rc, _, err = cli("windows", "--in", tmp_path / "i", "--out", tmp_path / "w2", "--config", tmp_path / "bad.yaml")
    assert rc == 2 and "not valid YAML" in err
