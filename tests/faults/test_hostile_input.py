"""Hostile and odd input: every record accounted for, or one clear error."""
from __future__ import annotations

import tempfile
from pathlib import Path

import tarfile
from io import BytesIO

import pytest
from faultkit import cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from synthetic import LABELS, make_log

from har_vit.datasets.parse import parse_file

GOOD = "7,Walking,{t},0.1,9.8,0.3;\n"


def _good(n, t0=10**12):
    return "".join(GOOD.format(t=t0 + i * 50_000_000) for i in range(n))


def _ingest(tmp_path, data: bytes):
    p = tmp_path / "log.txt"
    p.write_bytes(data)
    return cli("ingest", "--dataset", "wisdm", "--data-path", p, "--out", tmp_path / "i")


def _manifest(tmp_path):
    import json
    return json.loads((tmp_path / "i" / "manifest.json").read_text())


def test_ten_megabyte_line(tmp_path):
    data = (_good(200) + "7,Walking," + "9" * (10 << 20) + ",1,2,3;\n" + _good(200, 2 * 10**12)).encode()
    rc, out, err = _ingest(tmp_path, data)
    assert rc == 0, err
    m = _manifest(tmp_path)
    assert m["records_total"] == 401 and m["records_kept"] == 400
    assert sum(m["records_quarantined"].values()) == 1  # an absurd 10-MB "number"
    raw = (tmp_path / "i" / "quarantine.csv").read_text()
    assert len(raw) < 10_000  # the raw text is previewed, not copied whole


def test_binary_garbage_between_records(tmp_path):
    import os
    data = _good(150).encode() + os.urandom(5000).replace(b";", b"").replace(b"\n", b"") + b"\n" + _good(150, 2 * 10**12).encode()
    rc, _, err = _ingest(tmp_path, data)
    assert rc == 0, err
    m = _manifest(tmp_path)
    assert m["records_kept"] == 300
    assert m["records_kept"] + sum(m["records_quarantined"].values()) == m["records_total"]


def test_pure_binary_file_is_a_clear_error(tmp_path):
    import os
    rc, _, err = _ingest(tmp_path, os.urandom(20000))
    assert rc == 1 and "quarantined" in err and "log.txt" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("enc", ["utf-16", "utf-16-le", "utf-16-be", "utf-8-sig"])
def test_utf16_and_bom_files(tmp_path, enc):
    log = make_log(1)
    rc, _, err = _ingest(tmp_path, log.text.decode().encode(enc))
    assert rc == 0, err
    m = _manifest(tmp_path)
    assert (m["records_total"], m["records_kept"]) == (log.total, log.kept)
    assert m["records_quarantined"] == dict(log.quarantined)


def test_csv_with_header_and_extra_columns(tmp_path):
    data = ("user,activity,timestamp,x,y,z\n" + _good(300)
            + "7,Walking,5,1,2,3,extra;\n7,Walking,6,1,2,3,4,5;\n").encode()
    rc, _, err = _ingest(tmp_path, data)
    assert rc == 0, err
    m = _manifest(tmp_path)
    assert m["records_total"] == 303 and m["records_kept"] == 300
    assert m["records_quarantined"] == {"non-numeric value": 1, "wrong number of fields": 2}


def _tar(entries) -> bytes:
    buf = BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, kind, payload in entries:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = len(payload)
                tf.addfile(info, BytesIO(payload))
            else:
                info.type = tarfile.SYMTYPE if kind == "symlink" else tarfile.LNKTYPE
                info.linkname = payload
                tf.addfile(info)
    return buf.getvalue()


@pytest.mark.parametrize("entries,needle", [
    ([("../evil.txt", "file", b"x")], ".."),
    (([("/tmp/evil_abs.txt", "file", b"x")]), "/tmp/evil_abs.txt"),
    ([("WISDM_ar_v1.1/WISDM_ar_v1.1_raw.txt", "symlink", "/etc/passwd")], "link"),
    ([("WISDM_ar_v1.1/WISDM_ar_v1.1_raw.txt", "hardlink", "/etc/passwd")], "link"),
])
def test_hostile_archives_refused_through_the_cli(tmp_path, entries, needle):
    arc = tmp_path / "WISDM_ar_latest.tar.gz"
    arc.write_bytes(_tar(entries))
    rc, _, err = cli("ingest", "--dataset", "wisdm", "--data-path", arc, "--data-dir", tmp_path / "d",
                     "--out", tmp_path / "i")
    assert rc == 1 and needle in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "i" / "manifest.json").exists()


def test_decompression_bomb_refused(tmp_path):
    # 600 MiB of zeros compress to well under 1 MiB; the cap is 512 MiB of content.
    arc = tmp_path / "WISDM_ar_latest.tar.gz"
    with tarfile.open(arc, "w:gz", compresslevel=1) as tf:
        info = tarfile.TarInfo("WISDM_ar_v1.1/WISDM_ar_v1.1_raw.txt")
        info.size = 600 << 20

        class Zeros:
            def __init__(self):
                self.left = info.size

            def read(self, n=-1):
                n = self.left if n < 0 else min(n, self.left)
                self.left -= n
                return b"\0" * n
        tf.addfile(info, Zeros())
    assert arc.stat().st_size < 5 << 20
    rc, _, err = cli("ingest", "--dataset", "wisdm", "--data-path", arc, "--data-dir", tmp_path / "d",
                     "--out", tmp_path / "i")
    assert rc == 1 and len(err.strip().splitlines()) == 1, err
    extracted = sum(p.stat().st_size for p in (tmp_path / "d").rglob("*") if p.is_file()) if (tmp_path / "d").exists() else 0
    assert extracted < 1 << 20


# --- fuzzing -------------------------------------------------------------------------------------
_pieces = st.one_of(
    st.sampled_from([";", ",", "\n", "\r\n", ",;", ";;", " ", "\t", "NaN", "inf", "-", ".", "e", "Walking", "Jogging",
                     "7", "0", "1690000000000000001", "99999999999999999999", "\x00", "\xff", "é"]),
    st.integers(-10**20, 10**20).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(max_size=8),
)
# Record-shaped text with raw bytes mixed in (invalid UTF-8 once broke the C parser's decoding).
_bytes = st.lists(st.one_of(_pieces.map(lambda s: s.encode("utf-8", "surrogatepass")), st.binary(min_size=1, max_size=3)),
                  max_size=80).map(b"".join)
FUZZ_COUNT = {"n": 0}


def _check(data: bytes) -> None:
    """Ingest's parse of ``data`` as a file never raises, and every record is kept or quarantined."""
    FUZZ_COUNT["n"] += 1
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "log.txt"
        p.write_bytes(data)
        r = parse_file(p, LABELS, chunk_bytes=64)  # tiny chunks: every cut and carry-over path
    assert r.kept + len(r.quarantine) == r.total
    assert r.xyz.shape == (r.kept, 3) and r.timestamp.shape == (r.kept,) and (r.timestamp > 0).all()


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_bytes)
def test_fuzz_parser_fast_subset(data):
    _check(data)


def test_the_default_fuzz_ran_its_thousand_inputs():
    """Hypothesis may stop early on a small search space; this one must really try 1,000 inputs."""
    before = FUZZ_COUNT["n"]
    test_fuzz_parser_fast_subset()
    assert FUZZ_COUNT["n"] - before >= 1000


@pytest.mark.slow
@settings(max_examples=10_000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=600), _bytes,
                 st.lists(_pieces, max_size=120).map(lambda xs: "".join(xs).encode("utf-8", "surrogatepass"))))
def test_fuzz_parser_10k(data):
    _check(data)


def test_fuzz_file_path_chunks(tmp_path):
    """Chunk boundaries never change the result (tiny chunks force many cuts)."""
    p = tmp_path / "f.txt"
    p.write_bytes(make_log(4).text)
    a, b = parse_file(p, LABELS), parse_file(p, LABELS, chunk_bytes=97)
    assert (a.total, a.kept, a.reasons()) == (b.total, b.kept, b.reasons())
