"""pipeline.py doctor: one line per check, exit 1 only for a missing required part, nothing downloaded or written."""
from __future__ import annotations

import errno
import os
import re
import shutil
import socket
import stat
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import pipeline
from har_vit.core.workspace import ENV
from har_vit.datasets.wisdm import ARCHIVE_NAME, RAW_NAME, URL_ENV
from har_vit.stages import doctor

ROOT = Path(__file__).resolve().parents[1]
STATUS = re.compile(r"(ok|info|warn|missing|fail) +(?=\S)")  # the status, padded to 8, then the text at column 9
REQUIRED = ["torch", "numpy", "pandas", "scikit-learn", "fvcore", "seaborn", "matplotlib", "click", "pyyaml", "tqdm"]
OPTIONAL = ["onnx", "onnxscript", "onnxruntime", "chromium", "aeon"]


def run_doctor(*args):
    """``(exit code, stdout lines, stderr)`` of ``pipeline.py doctor`` run in this process (so tests can patch it)."""
    r = CliRunner().invoke(pipeline.cli, ["doctor", *map(str, args)])
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    return r.exit_code, r.stdout.splitlines(), r.stderr


def line_of(lines, start):
    """The one line whose text (after the status column) starts with ``start``."""
    hits = [s for s in lines if s[9:].startswith(start)]
    assert len(hits) == 1, (start, lines)
    return hits[0]


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/{ARCHIVE_NAME}"


@pytest.fixture(autouse=True)
def _no_env_workspace(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)


def test_this_machine_gets_every_check_and_exit_0(tmp_path, monkeypatch):
    url = closed_port_url()
    monkeypatch.setenv(URL_ENV, url)
    ws = tmp_path / "ws"
    rc, lines, err = run_doctor("--workdir", ws)
    assert rc == 0, (lines, err)
    assert all(STATUS.match(s) and STATUS.match(s).end() == 9 for s in lines[:-1]), lines  # aligned
    assert lines[-1].startswith("doctor: run has every required part")
    assert line_of(lines, "workspace: ") == f"info     workspace: {ws} (from --workdir)"
    assert line_of(lines, "run would write").endswith(
        f"runs to {ws / 'runs'}, reports to {ws / 'reports'}, the registry to {ws / 'models'}; "
        f"data lives in {ws / 'data'}")
    assert line_of(lines, f"workspace {ws} does not exist yet").startswith("ok ")
    for name in REQUIRED:
        assert re.fullmatch(rf"ok {{7}}{re.escape(name)} \S+.*", line_of(lines, f"{name} ")), name
    assert "(CPU build)" in line_of(lines, "torch ") or "CUDA" in line_of(lines, "torch ")
    device = line_of(lines, "device: run would compute on ")
    assert f"torch.cuda.device_count() = {__import__('torch').cuda.device_count()}" in device
    assert line_of(lines, "threads: run would use ").startswith("info ")
    assert any(s[9:].startswith("GPU") for s in lines)
    for name in OPTIONAL:  # present or not on this machine: a line either way
        hits = [s for s in lines if s[9:].startswith((f"{name} ", f"{name}:"))]
        assert len(hits) == 1 and hits[0].split()[0] in ("ok", "missing", "warn"), (name, lines)
    data = line_of(lines, "data: ")
    assert data.startswith("warn ") and f"run would download {url} (needs network)" in data
    assert f"put the archive by hand at {ws / 'data' / 'raw' / ARCHIVE_NAME}" in data
    assert list(tmp_path.iterdir()) == []  # nothing downloaded, nothing created, the probe file removed


@pytest.mark.parametrize("missing", ["fvcore", "torch"])
def test_a_missing_required_package_is_exit_1_and_says_what_to_fix(tmp_path, monkeypatch, missing):
    real = doctor._import

    def without(name):
        if name == missing:
            raise ModuleNotFoundError(f"No module named '{name}'")
        return real(name)

    monkeypatch.setattr(doctor, "_import", without)
    rc, lines, err = run_doctor("--workdir", tmp_path)
    assert rc == 1
    hint = f"{missing}: pip install '{missing}>="
    assert line_of(lines, hint).startswith("missing ") and f"No module named '{missing}'" in line_of(lines, hint)
    assert err.startswith("error: 1 required part missing or broken, run would fail: " + hint)
    assert err.rstrip().endswith("fix it and run doctor again") and len(err.strip().splitlines()) == 1
    if missing == "torch":
        assert line_of(lines, "device: ").startswith("warn ") and "torch is missing" in line_of(lines, "device: ")


def test_missing_chromium_is_a_missing_line_with_the_install_hint_and_exit_0(tmp_path, monkeypatch):
    (tmp_path / "bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    rc, lines, _ = run_doctor("--workdir", tmp_path)
    assert rc == 0
    assert line_of(lines, "chromium:") == ("missing  chromium: apt-get install chromium (only the browser test of the "
                                           "report, tests/test_report.py, uses it)")
    assert "optional parts missing: " in lines[-1] and "chromium" in lines[-1].split("optional parts missing: ")[1]


@pytest.mark.parametrize("script,status,text", [
    ('echo "Chromium 999.0.1 fake"', "ok", "chromium: Chromium 999.0.1 fake ("),
    ("exit 3", "warn", "chromium: {exe} --version failed (exit 3)"),
    (f"{shutil.which('sleep')} 30", "warn", "chromium: {exe} did not answer --version"),  # sleep: a grandchild
])
def test_chromium_is_run_not_only_found(tmp_path, monkeypatch, script, status, text):
    exe = tmp_path / "bin" / "chromium"
    exe.parent.mkdir()
    exe.write_text(f"#!/bin/sh\n{script}\n")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", str(exe.parent))
    monkeypatch.setattr(doctor, "CHROMIUM_TIMEOUT_S", 0.5)
    rc, lines, _ = run_doctor("--workdir", tmp_path)
    assert rc == 0
    assert line_of(lines, text.format(exe=exe)).split()[0] == status


def test_onnxruntime_probe_runs_a_session(tmp_path, monkeypatch):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install onnxruntime)")
    pytest.importorskip("onnx", reason="onnx not installed: the probe builds its model with it")
    real, runs = ort.InferenceSession, []

    class Recording(real):
        def run(self, *a, **kw):
            out = super().run(*a, **kw)
            runs.append((a, out))
            return out

    monkeypatch.setattr(ort, "InferenceSession", Recording)
    rc, lines, _ = run_doctor("--workdir", tmp_path)
    assert rc == 0
    assert re.fullmatch(r"ok {7}onnxruntime \S+ \(ran a session on a tiny model: .*CPUExecutionProvider.*\)",
                        line_of(lines, "onnxruntime "))
    assert len(runs) == 1
    (_, feeds), (y,) = runs[0]
    np.testing.assert_allclose(y, feeds["x"] @ np.array(doctor._W) + np.array(doctor._B), atol=1e-5)


def test_a_wrong_onnxruntime_answer_is_a_warning_not_ok(tmp_path, monkeypatch):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install onnxruntime)")
    pytest.importorskip("onnx", reason="onnx not installed: the probe builds its model with it")

    class Wrong(ort.InferenceSession):
        def run(self, *a, **kw):
            return [x + 1 for x in super().run(*a, **kw)]

    monkeypatch.setattr(ort, "InferenceSession", Wrong)
    rc, lines, _ = run_doctor("--workdir", tmp_path)
    assert rc == 0  # optional part
    assert line_of(lines, "onnxruntime ").startswith("warn ") and "wrong answer" in line_of(lines, "onnxruntime ")


def test_an_unwritable_workspace_is_exit_1(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        try:  # root writes anyway: then there is nothing to test here
            (ro / "probe").touch()
        except PermissionError:
            pass
        else:
            (ro / "probe").unlink()
            pytest.skip("this user (root?) can write in a read-only folder")
        rc, lines, err = run_doctor("--workdir", ro / "ws")
    finally:
        ro.chmod(0o755)
    assert rc == 1
    assert line_of(lines, f"workspace {ro / 'ws'}: cannot write in {ro}").startswith("fail ")
    assert err.startswith("error: 1 required part missing or broken") and "--workdir" in err


def test_a_read_only_filesystem_is_exit_1_even_for_root(tmp_path, monkeypatch):
    def refused(**kw):  # what a read-only mount answers every user, root included
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(Path(kw["dir"]) / "x"))

    monkeypatch.setattr(doctor.tempfile, "mkstemp", refused)
    rc, lines, err = run_doctor("--workdir", tmp_path)
    assert rc == 1
    assert line_of(lines, f"workspace {tmp_path}: ") == (
        f"fail     workspace {tmp_path}: cannot write in {tmp_path} (Read-only file system); fix its permissions or "
        "pass --workdir a folder you can write")
    assert err.startswith("error: 1 required part missing or broken, run would fail: workspace ")


def test_a_workspace_below_a_file_is_exit_1(tmp_path):
    (tmp_path / "f").write_text("not a folder")
    rc, lines, err = run_doctor("--workdir", tmp_path / "f" / "ws")
    assert rc == 1
    assert line_of(lines, f"workspace {tmp_path / 'f' / 'ws'}: {tmp_path / 'f'} is a file").startswith("fail ")
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_workspace_from_the_environment_and_options_as_run_takes_them(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV, str(tmp_path / "home"))
    (tmp_path / "c.yaml").write_text("threads: 1\ndataset: npz\nepochs: 3\n")  # epochs: run's, ignored here
    rc, lines, _ = run_doctor("--config", tmp_path / "c.yaml", "--device", "cpu")
    assert rc == 0
    assert line_of(lines, "workspace: ").endswith(f"{tmp_path / 'home'} (from ${ENV})")
    assert "run would compute on cpu" in line_of(lines, "device: ")
    assert line_of(lines, "threads: ").startswith("info     threads: run would use 1 CPU thread (--threads")
    assert "--dataset npz needs --data-path" in line_of(lines, "data: ")


def test_cuda_asked_for_without_a_gpu_is_exit_1(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    rc, lines, err = run_doctor("--workdir", tmp_path, "--device", "cuda")
    assert rc == 1 and line_of(lines, "device: ").startswith("fail ") and "use --device cpu" in err


@pytest.mark.gpu
def test_each_gpu_runs_a_tensor_op(tmp_path):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    rc, lines, _ = run_doctor("--workdir", tmp_path, "--device", "cuda")
    assert rc == 0 and "run would compute on cuda" in line_of(lines, "device: ")
    for i in range(torch.cuda.device_count()):
        assert line_of(lines, f"GPU {i}: ").startswith(f"ok       GPU {i}: {torch.cuda.get_device_name(i)}, ")
        assert line_of(lines, f"GPU {i}: ").endswith("(a tensor op ran)")


def test_wisdm_data_found_is_only_looked_at(tmp_path):
    raw = tmp_path / "data" / "raw"
    (raw / "unpacked").mkdir(parents=True)
    (raw / "unpacked" / RAW_NAME).write_text("1,Walking,1,0.1,0.2,0.3;\n")
    rc, lines, _ = run_doctor("--workdir", tmp_path)
    assert rc == 0 and line_of(lines, "data: ") == f"ok       data: wisdm raw log {raw / 'unpacked' / RAW_NAME}"
    (raw / "unpacked" / RAW_NAME).unlink()
    (raw / ARCHIVE_NAME).write_bytes(b"not even gzip")  # doctor must not open, check or unpack it
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    rc, lines, _ = run_doctor("--workdir", tmp_path)
    assert rc == 0 and line_of(lines, "data: ").startswith(f"ok       data: wisdm archive {raw / ARCHIVE_NAME} (cached")
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_missing_data_is_a_warning_naming_the_fix(tmp_path):
    rc, lines, _ = run_doctor("--workdir", tmp_path, "--dataset", "wisdm2019")
    data = line_of(lines, "data: ")
    assert rc == 0 and data.startswith(f"warn     data: {tmp_path / 'data' / 'raw' / 'wisdm-dataset'}: not found")
    assert "--dataset npz --data-path <windows.npz" in data and "--dataset wisdm (downloads" in data
    rc, lines, _ = run_doctor("--workdir", tmp_path, "--dataset", "npz", "--data-path", tmp_path / "no.npz")
    assert rc == 0 and line_of(lines, "data: ").startswith(f"warn     data: {tmp_path / 'no.npz'}: file not found")
    np.savez(tmp_path / "part.npz", X=np.zeros((1, 2, 3)), y=np.zeros(1))
    rc, lines, _ = run_doctor("--workdir", tmp_path, "--dataset", "npz", "--data-path", tmp_path / "part.npz")
    assert rc == 0 and "lacks arrays ['subject', 'class_names']" in line_of(lines, "data: ")


def test_npz_and_wisdm2019_data_present_are_ok(tmp_path, windows_npz):
    rc, lines, _ = run_doctor("--workdir", tmp_path, "--dataset", "npz", "--data-path", windows_npz)
    assert rc == 0 and line_of(lines, "data: ").startswith(f"ok       data: npz {windows_npz}")
    root = tmp_path / "wisdm-dataset"
    (root / "raw" / "watch" / "accel").mkdir(parents=True)
    (root / "activity_key.txt").write_text("walking = A\njogging = B\n")
    (root / "raw" / "watch" / "accel" / "data_1600_accel_watch.txt").write_text("1600,A,1,0.1,0.2,0.3;\n")
    rc, lines, _ = run_doctor("--workdir", tmp_path, "--dataset", "wisdm2019", "--data-path", root,
                              "--sensor-device", "watch")
    assert rc == 0
    assert line_of(lines, "data: ") == f"ok       data: wisdm2019, 1 log in {root / 'raw' / 'watch' / 'accel'}, 2 activities"


def test_required_packages_are_the_runtime_dependencies_of_pyproject():
    tomllib = pytest.importorskip("tomllib", reason="tomllib is Python 3.11+")
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert sorted(r for _, _, r, _ in doctor.REQUIRED) == sorted(deps)


def test_help_has_an_example():
    r = CliRunner().invoke(pipeline.cli, ["doctor", "--help"])
    assert r.exit_code == 0 and "python pipeline.py doctor" in r.output

