"""One workspace: every default path under --workdir, nothing written to the current folder."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from har_vit.core.errors import LockedError
from har_vit.core.registry import Registry
from har_vit.core.workspace import ENV, Workspace

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["--epochs", "1", "--batch-size", "16", "--no-progress", "--threads", "1"]
EVAL = ["--skip-latency", "--baseline", "none"]


def cli(*args, cwd, env_home=None):
    env = {k: v for k, v in os.environ.items() if k != ENV}
    if env_home:
        env[ENV] = str(env_home)
    p = subprocess.run([sys.executable, str(ROOT / "pipeline.py"), *map(str, args)], capture_output=True, text=True,
                       cwd=cwd, env=env)
    assert p.returncode == 0, p.stderr
    return p.stdout


def test_every_command_leaves_the_current_folder_empty(tmp_path, synth_log, windows_npz):
    log, _ = synth_log
    cwd, ws = tmp_path / "cwd", tmp_path / "ws"
    cwd.mkdir()
    s = ws / "stages"
    out = cli("run", "--workdir", ws, "--dataset", "npz", "--data-path", windows_npz, *QUICK, *EVAL, cwd=cwd)
    run_dir = Path(out.split("run: ", 1)[1].splitlines()[0])
    report = Path(out.split("report: ", 1)[1].splitlines()[0])
    assert run_dir.parent == ws / "runs" and (run_dir / "model" / "manifest.json").is_file()
    assert report.is_file() and report.is_relative_to(ws / "reports")
    assert len(list((ws / "models").glob("production-npz-6cls-*.json"))) == 1

    cli("ingest", "--workdir", ws, "--data-path", log, "--out", s / "i", cwd=cwd)
    cli("windows", "--workdir", ws, "--in", s / "i", "--out", s / "w", "--window", 32, "--step", 16, cwd=cwd)
    cli("train", "--workdir", ws, "--in", s / "w", "--out", s / "m", *QUICK, cwd=cwd)
    cli("evaluate", "--workdir", ws, "--run", s / "m", *EVAL, cwd=cwd)
    out = cli("report", "--workdir", ws, "--run", s / "m", cwd=cwd)
    assert Path(out.split("report: ", 1)[1].strip()).is_relative_to(ws / "reports")
    cli("predict", "--workdir", ws, "--data-path", log, "--out", s / "p.csv", cwd=cwd)  # production, from ws/models
    cli("export", "--workdir", ws, "--format", "torchscript", "--out", s / "x", cwd=cwd)
    out = cli("retrain", "--workdir", ws, "--dataset", "npz", "--data-path", windows_npz, *QUICK, *EVAL, cwd=cwd)
    assert "run: " + str(ws / "runs") in out
    assert list(cwd.iterdir()) == []
    assert sorted(p.name for p in ws.iterdir()) == ["models", "reports", "runs", "stages"]


def test_run_out_keeps_the_run_and_its_report_under_out(tmp_path, windows_npz):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    out = cli("run", "--dataset", "npz", "--data-path", windows_npz, "--out", tmp_path / "D", *QUICK, *EVAL,
              cwd=cwd, env_home=tmp_path / "home")
    assert Path(out.split("report: ", 1)[1].strip()).is_relative_to(tmp_path / "D" / "reports")
    assert list(cwd.iterdir()) == []
    assert sorted(p.name for p in (tmp_path / "home").iterdir()) == ["models"]  # only the registry entry


def test_workdir_beats_env_beats_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert Workspace.at(None, env={}).root == tmp_path
    assert Workspace.at(None, env={ENV: str(tmp_path / "e")}).root == tmp_path / "e"
    assert Workspace.at(tmp_path / "w", env={ENV: str(tmp_path / "e")}).root == tmp_path / "w"
    assert Workspace.at("rel", env={}).root == tmp_path / "rel"  # made absolute once, at the start


def test_a_short_registry_write_waits_for_the_lock(tmp_path):
    reg = Registry(tmp_path / "models")
    got = threading.Event()

    def writer():
        with reg.lock(wait=30):
            got.set()

    with reg.lock():
        t = threading.Thread(target=writer)
        t.start()
        time.sleep(0.3)
        assert not got.is_set()  # still waiting: the lock is held
    t.join(30)
    assert got.is_set()


def test_waiting_has_a_limit_and_retrain_does_not_wait(tmp_path):
    reg = Registry(tmp_path / "models")
    with reg.lock():
        with pytest.raises(LockedError, match="after waiting 0.2 s"):
            with Registry(tmp_path / "models").lock(wait=0.2):
                pass
        with pytest.raises(LockedError, match="another retrain is running"):
            with Registry(tmp_path / "models").lock():
                pass


def test_two_runs_started_at_once_in_one_workspace_both_finish(tmp_path, windows_npz):
    cmd = [sys.executable, str(ROOT / "pipeline.py"), "run", "--workdir", str(tmp_path / "ws"), "--dataset", "npz",
           "--data-path", str(windows_npz), *QUICK, *EVAL]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
             for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-500:] for o in outs]
    runs = sorted(p.name for p in (tmp_path / "ws" / "runs").iterdir())
    assert len(runs) == 2 and len(Registry(tmp_path / "ws" / "models").runs()) == 2
    assert len(list((tmp_path / "ws" / "reports").glob("*/report.html"))) == 2
