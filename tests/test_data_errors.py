"""Data that cannot be found or downloaded: one line that names the file to place where and what runs now."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from har_vit.core.workspace import ENV
from har_vit.datasets.wisdm import ARCHIVE_NAME, SHA256_ENV, URL_ENV

ROOT = Path(__file__).resolve().parents[1]
WISDM2019 = "--dataset wisdm2019 --data-path <the release's wisdm-dataset folder>"
NPZ = "--dataset npz --data-path <windows.npz with X, y, subject, class_names>"


def wisdm_alt(ws: Path) -> str:
    return f"--dataset wisdm (downloads WISDM v1.1; offline, put {ARCHIVE_NAME} in {ws / 'data' / 'raw'}/ first)"


def cli(*args, env=None):
    """``(exit code, stderr)`` of pipeline.py in a subprocess: what a user sees."""
    base = {k: v for k, v in os.environ.items() if k not in (ENV, URL_ENV, SHA256_ENV)}
    p = subprocess.run([sys.executable, str(ROOT / "pipeline.py"), *map(str, args)], capture_output=True, text=True,
                       env={**base, **(env or {})}, timeout=60, check=False)
    return p.returncode, p.stderr


def one_line_error(rc: int, err: str) -> str:
    assert rc == 1, err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err.strip()


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/{ARCHIVE_NAME}"


@pytest.mark.parametrize("command", ["ingest", "run"])
def test_wisdm_unreachable_names_the_file_to_place_and_what_runs_now(tmp_path, command):
    url, ws = closed_port_url(), tmp_path / "ws"
    out = ["--out", tmp_path / "o"] if command == "ingest" else []
    rc, err = cli(command, "--workdir", ws, "--dataset", "wisdm", "--no-progress", *out, env={URL_ENV: url})
    msg = one_line_error(rc, err)
    assert msg.startswith(f"error: cannot reach {url} (")
    assert msg.endswith(f"; download {ARCHIVE_NAME} by hand and put it in {ws / 'data' / 'raw'}/, or pass "
                        f"--data-path PATH; to run now without it: {WISDM2019} or {NPZ}")
    assert not list((ws / "data").rglob("*.tar.gz*"))  # nothing half-downloaded kept
    assert not (ws / "runs").exists() and not (tmp_path / "o").exists()  # and no empty run or stage folder


def test_wisdm_data_path_missing_names_what_runs_now(tmp_path):
    rc, err = cli("ingest", "--workdir", tmp_path, "--dataset", "wisdm", "--data-path", tmp_path / "no.tar.gz",
                  "--out", tmp_path / "o")
    msg = one_line_error(rc, err)
    assert msg.startswith(f"error: {tmp_path / 'no.tar.gz'}: no such file or folder; pass {ARCHIVE_NAME}")
    assert msg.endswith(f"; to run now without it: {WISDM2019} or {NPZ}")


@pytest.mark.parametrize("given", [False, True])
def test_wisdm2019_folder_missing_names_what_runs_now(tmp_path, given):
    root = tmp_path / "elsewhere" / "wisdm-dataset" if given else tmp_path / "data" / "raw" / "wisdm-dataset"
    path = ["--data-path", root] if given else []
    rc, err = cli("ingest", "--workdir", tmp_path, "--dataset", "wisdm2019", *path, "--out", tmp_path / "o")
    msg = one_line_error(rc, err)
    assert msg.startswith(f"error: {root}: not found; ")
    assert msg.endswith(f"(the WISDM 2019 release cannot be downloaded automatically); to run now without it: "
                        f"{wisdm_alt(tmp_path)} or {NPZ}")


def test_npz_file_missing_names_what_runs_now(tmp_path):
    rc, err = cli("ingest", "--workdir", tmp_path, "--dataset", "npz", "--data-path", tmp_path / "w.npz",
                  "--out", tmp_path / "o")
    msg = one_line_error(rc, err)
    assert msg == (f"error: {tmp_path / 'w.npz'}: file not found; pass an .npz with arrays X, y, subject, class_names; "
                   f"to run now without it: {wisdm_alt(tmp_path)} or {WISDM2019}")


def test_windows_command_checks_its_npz_as_ingest_does(tmp_path):
    missing = tmp_path / "w.npz"
    rc, err = cli("windows", "--workdir", tmp_path, "--dataset", "npz", "--data-path", missing, "--out", tmp_path / "o")
    assert one_line_error(rc, err) == (f"error: {missing}: file not found; pass an .npz with arrays X, y, subject, "
                                       f"class_names; to run now without it: {wisdm_alt(tmp_path)} or {WISDM2019}")
    log = tmp_path / "log.txt"
    log.write_text("33,Jogging,49105962326000,-0.6946377,12.680544,0.50395286;\n")
    rc, err = cli("windows", "--workdir", tmp_path, "--data-path", log, "--out", tmp_path / "o")
    assert rc == 2 and len(err.strip().splitlines()) == 1 and not (tmp_path / "o").exists()
    assert err.startswith(f"error: windows reads windows, not raw logs: for {log} run ingest first")


def test_windows_refuses_an_npz_named_as_another_dataset(tmp_path, windows_npz):
    """--dataset wisdm2019 with an .npz: the user meant one of the two; the windows are not imported silently."""
    rc, err = cli("windows", "--workdir", tmp_path, "--dataset", "wisdm2019", "--data-path", windows_npz,
                  "--out", tmp_path / "o")
    assert rc == 2 and len(err.strip().splitlines()) == 1 and not (tmp_path / "o").exists()  # 2: a usage error
    assert err.strip() == (f"error: --dataset wisdm2019 with --data-path {windows_npz}: an .npz holds windows; pass "
                           "--dataset npz to import it, or ingest the wisdm2019 logs first (python pipeline.py ingest "
                           "--dataset wisdm2019 --data-path ...)")
    rc, _ = cli("windows", "--workdir", tmp_path, "--dataset", "npz", "--data-path", windows_npz, "--out", tmp_path / "o")
    assert rc == 0 and (tmp_path / "o" / "windows.npz").is_file()


def test_npz_without_data_path_names_what_runs_now(tmp_path):
    rc, err = cli("ingest", "--workdir", tmp_path, "--dataset", "npz", "--out", tmp_path / "o")
    assert rc == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert err.strip() == ("error: --dataset npz needs --data-path FILE.npz (arrays X [N,T,C], y, subject, class_names); "
                           f"to run now without it: {wisdm_alt(tmp_path)} or {WISDM2019}")
