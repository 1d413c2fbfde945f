"""WISDM resolver: download, verification, caching, --data-path forms, hostile archives.

Downloads go to a real HTTP server on 127.0.0.1 serving synthetic archives laid
out like the official one.
"""
from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import re
import socket
import tarfile
import threading
from collections import Counter
from pathlib import Path

import pytest

from har_vit.core.errors import DataError, DownloadError, UsageError
from har_vit.datasets import download as wisdm_download
from har_vit.datasets import wisdm
from har_vit.datasets.wisdm import (
    ARCHIVE_NAME,
    RAW_NAME,
    SHA256_ENV,
    URL_ENV,
    download,
    resolve_wisdm,
    safe_extract,
)

RAW_LINES = (
    "33,Jogging,49105962326000,-0.6946377,12.680544,0.50395286;\n"
    "33,Jogging,49106062271000,5.012288,11.264028,0.95342433;\n"
    "17,Walking,57869902574000,0.5720646,11.760207,-0.53119576;\n"
)


# --- archives ------------------------------------------------------------------------


def _tar_gz(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info, None


def wisdm_archive(raw: str = RAW_LINES) -> bytes:
    """A small archive with the official layout."""
    folder = tarfile.TarInfo("WISDM_ar_v1.1")
    folder.type = tarfile.DIRTYPE
    return _tar_gz([
        (folder, None),
        _file("WISDM_ar_v1.1/readme.txt", b"WISDM readme\n"),
        _file("WISDM_ar_v1.1/WISDM_ar_v1.1_raw_about.txt", b"about\n"),
        _file(f"WISDM_ar_v1.1/{RAW_NAME}", raw.encode()),
        _file("WISDM_ar_v1.1/WISDM_ar_v1.1_transformed.arff", b"@relation x\n"),
    ])


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


# --- a local HTTP server -------------------------------------------------------------


class Server:
    """Serves ``routes[path] = (body, bytes_to_send)`` and counts requests per path."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[bytes, int]] = {}
        self.hits: Counter[str] = Counter()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                server.hits[self.path] += 1
                if self.path not in server.routes:
                    self.send_error(404)
                    return
                body, send = server.routes[self.path]
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[:send])  # fewer than announced: a cut connection

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def serve(self, path: str, body: bytes, send: int | None = None) -> str:
        self.routes[path] = (body, len(body) if send is None else send)
        return self.url(path)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"


@pytest.fixture
def server(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv(SHA256_ENV, raising=False)
    srv = Server()
    srv.thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data" / "raw"


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/{ARCHIVE_NAME}"


# --- download, verification, cache ----------------------------------------------------


def test_downloads_verifies_extracts_then_uses_cache(server, data_dir, monkeypatch, capsys):
    body = wisdm_archive()
    monkeypatch.setenv(URL_ENV, server.serve("/wisdm.tar.gz", body))

    first = resolve_wisdm(None, data_dir, progress=True, timeout=5)  # stderr is no TTY: no bar

    assert len(first) == 1 and first[0].name == RAW_NAME
    assert first[0].read_text() == RAW_LINES
    assert (data_dir / ARCHIVE_NAME).read_bytes() == body
    assert (data_dir / f"{ARCHIVE_NAME}.sha256").read_text() == f"{sha256(body)}  {ARCHIVE_NAME}\n"
    assert first[0].is_relative_to(data_dir / f"WISDM_ar_latest-{sha256(body)[:12]}")
    assert not [p for p in data_dir.rglob(".*")], "a temporary file or folder was left"
    assert capsys.readouterr().err == ""

    assert resolve_wisdm(None, data_dir, progress=False, timeout=5) == first
    assert server.hits["/wisdm.tar.gz"] == 1


def test_hand_placed_archive_is_used_without_network(data_dir, monkeypatch):
    monkeypatch.delenv(SHA256_ENV, raising=False)
    data_dir.mkdir(parents=True)
    (data_dir / ARCHIVE_NAME).write_bytes(wisdm_archive())

    raw = resolve_wisdm(None, data_dir, url=closed_port_url(), timeout=5)

    assert raw[0].read_text() == RAW_LINES
    assert (data_dir / f"{ARCHIVE_NAME}.sha256").exists()


def test_raw_file_already_in_data_dir_is_found(data_dir):
    (data_dir / "mine").mkdir(parents=True)
    (data_dir / "mine" / RAW_NAME).write_text(RAW_LINES)
    assert resolve_wisdm(None, data_dir, url=closed_port_url()) == [data_dir / "mine" / RAW_NAME]


def test_cut_connection_is_rejected_and_nothing_kept(server, data_dir):
    body = wisdm_archive()
    url = server.serve("/short.tar.gz", body, send=len(body) // 2)

    with pytest.raises(DownloadError, match=rf"truncated download, got {len(body) // 2} of {len(body)} bytes"):
        resolve_wisdm(None, data_dir, url=url, progress=False, timeout=5)
    assert files_under(data_dir) == []
    assert not (data_dir.parent).exists()  # nor the folders the download would have gone into


def test_cut_archive_is_rejected_by_tar_integrity(server, data_dir):
    body = wisdm_archive(RAW_LINES * 200)
    url = server.serve("/cut.tar.gz", body[: len(body) - 40])  # honest Content-Length, cut file

    with pytest.raises(DownloadError, match="corrupt or truncated.*nothing was kept"):
        resolve_wisdm(None, data_dir, url=url, progress=False, timeout=5)
    assert files_under(data_dir) == []


def test_archive_with_bad_crc_is_rejected(server, data_dir):
    body = bytearray(wisdm_archive())
    body[-8] ^= 0xFF  # the gzip trailer's CRC32: every byte arrives, the content is wrong
    with pytest.raises(DownloadError, match="corrupt or truncated.*CRC"):
        resolve_wisdm(None, data_dir, url=server.serve("/crc.tar.gz", bytes(body)), progress=False, timeout=5)
    assert files_under(data_dir) == []


def test_data_inflating_after_the_tar_end_is_rejected(server, data_dir):
    body = wisdm_archive() + gzip.compress(bytes(3 * 2**20))  # a valid second gzip member
    assert len(body) < 20_000
    with pytest.raises(DownloadError, match="bytes after the end of the tar archive"):
        resolve_wisdm(None, data_dir, url=server.serve("/tail.tar.gz", body), progress=False, timeout=5)
    assert files_under(data_dir) == []


def test_tampered_archive_names_expected_and_got(server, data_dir):
    good, bad = wisdm_archive(), wisdm_archive(RAW_LINES.replace("Jogging", "Sitting"))
    url = server.serve("/tampered.tar.gz", bad)

    with pytest.raises(DownloadError, match=f"expected {sha256(good)}.*got {sha256(bad)}"):
        resolve_wisdm(None, data_dir, url=url, expected_sha256=sha256(good), progress=False, timeout=5)
    assert files_under(data_dir) == []


def test_first_use_record_rejects_a_changed_archive_until_vouched(server, data_dir, monkeypatch):
    old, new = wisdm_archive(), wisdm_archive(RAW_LINES * 2)
    url = server.serve("/a.tar.gz", old)
    resolve_wisdm(None, data_dir, url=url, progress=False, timeout=5)
    record = data_dir / f"{ARCHIVE_NAME}.sha256"
    for p in files_under(data_dir):  # the user clears the cache but keeps the record
        if p != record:
            p.unlink()
    server.serve("/a.tar.gz", new)

    with pytest.raises(DownloadError, match=f"expected {sha256(old)} \\(recorded in .*got {sha256(new)}.*{SHA256_ENV}="):
        resolve_wisdm(None, data_dir, url=url, progress=False, timeout=5)
    assert files_under(data_dir) == [record]

    monkeypatch.setenv(SHA256_ENV, sha256(new).upper())
    raw = resolve_wisdm(None, data_dir, url=url, progress=False, timeout=5)
    assert raw[0].read_text() == RAW_LINES * 2
    assert record.read_text().split()[0] == sha256(new)


def test_pinned_sha256_is_enforced(server, data_dir, monkeypatch):
    monkeypatch.setattr(wisdm, "PINNED_SHA256", "0" * 64)
    url = server.serve("/a.tar.gz", wisdm_archive())
    with pytest.raises(DownloadError, match=f"expected {'0' * 64} \\(PINNED_SHA256"):
        resolve_wisdm(None, data_dir, url=url, progress=False, timeout=5)


def test_tampered_cached_archive_is_refused_and_kept(data_dir, monkeypatch):
    data_dir.mkdir(parents=True)
    archive = data_dir / ARCHIVE_NAME
    archive.write_bytes(wisdm_archive())
    monkeypatch.setenv(SHA256_ENV, "f" * 64)
    with pytest.raises(DownloadError, match=f"{archive}: sha256 mismatch: expected {'f' * 64} \\({SHA256_ENV}\\).*delete {archive}"):
        resolve_wisdm(None, data_dir, url=closed_port_url())
    assert archive.exists()  # the user's file is theirs to delete


def test_bad_sha256_setting_is_a_usage_error(data_dir, monkeypatch):
    monkeypatch.setenv(SHA256_ENV, "not-a-hash")
    with pytest.raises(UsageError, match=f"{SHA256_ENV}='not-a-hash' is not a sha256"):
        resolve_wisdm(None, data_dir)


def test_unreachable_server_says_where_to_put_the_file(data_dir, monkeypatch):
    monkeypatch.delenv(SHA256_ENV, raising=False)
    url = closed_port_url()
    with pytest.raises(DownloadError) as e:
        resolve_wisdm(None, data_dir, url=url, timeout=5)
    msg = str(e.value)
    assert msg.startswith(f"cannot reach {url} (")
    assert f"download {ARCHIVE_NAME} by hand and put it in {data_dir}/, or pass --data-path PATH" in msg
    assert "\n" not in msg
    assert not data_dir.parent.exists()  # a failed download leaves no empty data/raw/ behind


def test_http_error_is_reported(server, data_dir):
    with pytest.raises(DownloadError, match=r"HTTP 404 .*by hand"):
        resolve_wisdm(None, data_dir, url=server.url("/nothing-here"), timeout=5)
    assert not data_dir.parent.exists()


def test_download_checks_size_and_sha(server, tmp_path):
    body = b"x" * 1000
    url = server.serve("/blob", body)
    with pytest.raises(DownloadError, match="got 1000 bytes, expected 999"):
        download(url, tmp_path / "blob", expected_size=999, progress=False)
    with pytest.raises(DownloadError, match=f"expected {'a' * 64}, got {sha256(body)}"):
        download(url, tmp_path / "blob", expected_sha256="a" * 64, progress=False)
    assert files_under(tmp_path) == []
    assert download(url, tmp_path / "blob", expected_size=1000, expected_sha256=sha256(body)).read_bytes() == body


def test_download_refuses_more_than_the_cap(server, tmp_path, monkeypatch):
    monkeypatch.setattr(wisdm_download, "MAX_DOWNLOAD_BYTES", 100)
    with pytest.raises(DownloadError, match="over the 100-byte cap"):
        download(server.serve("/big", b"x" * 101), tmp_path / "big", progress=False)
    assert files_under(tmp_path) == []


# --- --data-path forms -----------------------------------------------------------------


def test_data_path_archive(tmp_path, data_dir, monkeypatch):
    monkeypatch.delenv(SHA256_ENV, raising=False)
    archive = tmp_path / "elsewhere" / "copy.tgz"
    archive.parent.mkdir()
    archive.write_bytes(wisdm_archive())

    raw = resolve_wisdm(archive, data_dir)

    assert raw[0].read_text() == RAW_LINES
    assert raw[0].is_relative_to(data_dir)
    assert resolve_wisdm(archive, data_dir) == raw  # unpacked once, then reused


def test_unpack_race_uses_the_folder_another_run_finished(tmp_path, data_dir, monkeypatch):
    archive = tmp_path / ARCHIVE_NAME
    archive.write_bytes(wisdm_archive())
    real = wisdm.safe_extract

    def lose_the_race(archive: Path, dest: Path, **kw) -> Path:
        real(archive, dest)  # the other run renames its folder into place first
        raise DataError(f"{dest}: cannot unpack {archive} there (Directory not empty)")

    monkeypatch.setattr(wisdm, "safe_extract", lose_the_race)
    assert resolve_wisdm(archive, data_dir)[0].read_text() == RAW_LINES


def test_data_path_folder_finds_the_raw_file_inside(tmp_path, data_dir):
    nested = tmp_path / "dl" / "WISDM_ar_v1.1"
    nested.mkdir(parents=True)
    (nested / RAW_NAME).write_text(RAW_LINES)
    (nested / "readme.txt").write_text("readme")
    assert resolve_wisdm(tmp_path / "dl", data_dir) == [nested / RAW_NAME]


@pytest.mark.parametrize("name", ["WISDM_ar_v1.1_raw.txt", "renamed.txt", "WISDM_ar_v1.1_raw.txt.gz"])
def test_data_path_raw_file_is_returned_as_is(tmp_path, data_dir, name):
    path = tmp_path / name
    path.write_bytes(gzip.compress(RAW_LINES.encode()) if name.endswith(".gz") else RAW_LINES.encode())
    assert resolve_wisdm(path, data_dir) == [path]
    assert files_under(data_dir) == []


def test_data_path_missing_is_a_data_error(tmp_path, data_dir):
    missing = tmp_path / "nope.tar.gz"
    with pytest.raises(DataError, match=f"{missing}: no such file or folder"):
        resolve_wisdm(missing, data_dir)


def test_data_path_folder_without_raw_file(tmp_path, data_dir):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=f"{tmp_path / 'empty'}: holds no {RAW_NAME}"):
        resolve_wisdm(tmp_path / "empty", data_dir)


def test_data_path_archive_without_raw_file(tmp_path, data_dir):
    archive = tmp_path / "other.tar.gz"
    archive.write_bytes(_tar_gz([_file("something/else.txt", b"hi\n")]))
    with pytest.raises(DataError, match=f"{archive}: holds no {RAW_NAME}"):
        resolve_wisdm(archive, data_dir)


def test_data_path_unsupported_type(tmp_path, data_dir):
    path = tmp_path / "data.csv"
    path.write_text("a,b\n")
    with pytest.raises(DataError, match="not a .tar.gz/.tgz archive"):
        resolve_wisdm(path, data_dir)


def test_data_path_corrupt_archive(tmp_path, data_dir):
    path = tmp_path / "broken.tar.gz"
    path.write_bytes(b"this is not gzip")
    with pytest.raises(DataError, match=f"{path}: not a readable .tar.gz"):
        resolve_wisdm(path, data_dir)
    assert files_under(data_dir) == []


# --- hostile archives --------------------------------------------------------------------


def _hostile(tmp_path: Path) -> dict[str, tuple[bytes, str, str]]:
    """Archive bytes, the member name and the reason the refusal must mention."""
    outside = tmp_path / "evil_abs"
    payload = b"pwned\n"
    return {
        "dotdot": (_tar_gz([_file("../evil", payload)]), "../evil", "path climbs out with '..'"),
        "nested_dotdot": (_tar_gz([_file("WISDM_ar_v1.1/../../evil", payload)]), "WISDM_ar_v1.1/../../evil", "path climbs out"),
        "absolute": (_tar_gz([_file(str(outside), payload)]), str(outside), "absolute path"),
        "symlink": (
            _tar_gz([_special("WISDM_ar_v1.1/link", tarfile.SYMTYPE, "../../evil"), _file("WISDM_ar_v1.1/link", payload)]),
            "WISDM_ar_v1.1/link",
            "symbolic link to '../../evil'",
        ),
        "hardlink": (_tar_gz([_special("hard", tarfile.LNKTYPE, "/etc/passwd")]), "hard", "hard link to '/etc/passwd'"),
        "device": (_tar_gz([_special("dev", tarfile.CHRTYPE)]), "dev", "device file"),
        "fifo": (_tar_gz([_special("fifo", tarfile.FIFOTYPE)]), "fifo", "FIFO"),
    }


@pytest.mark.parametrize("kind", ["dotdot", "nested_dotdot", "absolute", "symlink", "hardlink", "device", "fifo"])
def test_hostile_members_are_refused(tmp_path, kind):
    body, member, reason = _hostile(tmp_path)[kind]
    archive = tmp_path / "hostile.tar.gz"
    archive.write_bytes(body)
    before = sorted(tmp_path.rglob("*"))

    with pytest.raises(DataError, match=re.escape(f"refusing member {member!r} ({reason}")):
        safe_extract(archive, tmp_path / "out")

    assert sorted(tmp_path.rglob("*")) == before  # no dest, no temp folder, no evil file
    assert not (tmp_path.parent / "evil").exists()


def test_decompression_bomb_is_refused(tmp_path):
    archive = tmp_path / "bomb.tar.gz"
    archive.write_bytes(_tar_gz([_file("small.txt", b"ok\n"), _file("zeros.bin", bytes(100_000))]))
    assert archive.stat().st_size < 1000  # compresses to almost nothing
    before = sorted(tmp_path.rglob("*"))

    with pytest.raises(DataError, match="'zeros.bin' takes the unpacked size past the 10000-byte cap"):
        safe_extract(archive, tmp_path / "out", max_bytes=10_000)
    assert sorted(tmp_path.rglob("*")) == before


def test_too_many_members_is_refused(tmp_path):
    archive = tmp_path / "many.tar.gz"
    archive.write_bytes(_tar_gz([_file(f"f{i}", b"") for i in range(5)]))
    with pytest.raises(DataError, match="more than 3 members"):
        safe_extract(archive, tmp_path / "out", max_members=3)
    assert not (tmp_path / "out").exists()


def test_hostile_download_is_refused_and_nothing_kept(server, data_dir, tmp_path):
    body, member, _ = _hostile(tmp_path)["dotdot"]
    with pytest.raises(DownloadError, match=re.escape(f"refusing member {member!r}") + ".*nothing was kept"):
        resolve_wisdm(None, data_dir, url=server.serve("/evil.tar.gz", body), progress=False, timeout=5)
    assert files_under(data_dir) == []


def test_safe_extract_writes_plain_files(tmp_path):
    archive = tmp_path / "a.tar.gz"
    info, data = _file("WISDM_ar_v1.1/x.txt", b"hello\n")
    info.mode = 0o4777  # setuid, world-writable: must not reach the disk
    archive.write_bytes(_tar_gz([(info, data)]))

    out = safe_extract(archive, tmp_path / "out")

    written = out / "WISDM_ar_v1.1" / "x.txt"
    assert written.read_bytes() == b"hello\n"
    assert written.stat().st_mode & 0o7111 == 0  # no setuid/sticky, not executable
    with pytest.raises(DataError, match="already exists"):
        safe_extract(archive, out)
