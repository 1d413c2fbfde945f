"""Hostile and damaged raw input: bounded memory, every record counted with its own reason."""
from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from har_vit.core.errors import DataError
from har_vit.datasets import parse
from har_vit.datasets.parse import R_LONG, R_MISSING, R_NAN, R_TRUNC, parse_file
from har_vit.stages import ingest

ROOT = Path(__file__).resolve().parents[1]
GOOD = b"".join(b"7,Walking,%d,0.1,9.8,0.3;\n" % (10**9 + i * 50_000_000) for i in range(200))


def _ingest_rss(tmp_path: Path, data_path: Path) -> tuple[int, str, int]:
    """(exit code, stderr, peak RSS in MiB) of `pipeline.py ingest` in a fresh process."""
    probe = ("import resource, subprocess, sys; p = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
             "sys.stderr.write(p.stderr); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024); "
             "sys.exit(p.returncode)")
    p = subprocess.run([sys.executable, "-c", probe, sys.executable, str(ROOT / "pipeline.py"), "ingest",
                        "--data-path", str(data_path), "--out", str(tmp_path / "out"), "--no-progress"],
                       capture_output=True, text=True, cwd=tmp_path)
    return p.returncode, p.stderr, int(p.stdout.strip().splitlines()[-1])


def test_gzip_bomb_of_one_endless_line_is_refused_in_bounded_memory(tmp_path):
    bomb = tmp_path / "bomb.txt.gz"
    with gzip.open(bomb, "wb", compresslevel=9) as fh:
        block = b"7" * (1 << 20)
        for _ in range(1024):  # 1 GiB of digits, no ';' and no newline: about 1 MB compressed
            fh.write(block)
    assert bomb.stat().st_size < 2 << 20
    rc, err, rss = _ingest_rss(tmp_path, bomb)
    assert rc == 1 and "MAX_GZIP_RATIO" in err and len(err.strip().splitlines()) == 1, err
    assert rss < 1024, f"peak RSS {rss} MiB"
    assert not (tmp_path / "out" / "manifest.json").exists()


@pytest.mark.parametrize("junk", [b"\0", b"x"], ids=["NUL bytes", "one long line"])
def test_a_run_without_separators_is_one_record_too_long_and_ingest_goes_on(tmp_path, junk):
    log = tmp_path / "WISDM_ar_v1.1_raw.txt"
    with open(log, "wb") as fh:
        fh.write(GOOD)
        fh.write(junk * (48 << 20))  # 48 MiB, more than a parse chunk, without ';' or newline
        fh.write(b";\n" + GOOD.replace(b"7,Walking,1", b"8,Walking,1"))
    rc, err, rss = _ingest_rss(tmp_path, log)
    assert rc == 0, err
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert m["records_quarantined"] == {R_LONG: 1} and m["records_kept"] == 400
    assert rss < 1024, f"peak RSS {rss} MiB"
    rows = (tmp_path / "out" / "quarantine.csv").read_text().splitlines()
    assert len(rows) == 2 and R_LONG in rows[1] and f"byte {len(GOOD)}" in rows[1] and "50331648 bytes" in rows[1]


def test_a_long_segment_between_separators_is_too_long_not_wrong_fields(tmp_path):
    p = tmp_path / "a.txt"
    p.write_bytes(GOOD + b"7,Walking," + b"1" * 5000 + b",0.1,0.2,0.3;\n")
    r = parse_file(p, {"Walking": 0})
    assert r.reasons() == {R_LONG: 1} and r.kept == 200


def test_a_file_ending_inside_a_record_is_truncated_not_kept(tmp_path):
    p = tmp_path / "a.txt"
    p.write_bytes(GOOD + b"7,Walking,99999999999,0.1,9.8,0.")
    r = parse_file(p, {"Walking": 0})
    assert r.reasons() == {R_TRUNC: 1} and r.kept == 200 and r.total == 201
    p.write_bytes(GOOD + b"7,Walking,99999999999,0.1,9.8,0.3\n")  # a newline ends a record too
    assert parse_file(p, {"Walking": 0}).kept == 201


def test_missing_and_nan_are_counted_apart_and_merged_lines_are_counted(tmp_path):
    p = tmp_path / "a.txt"
    p.write_bytes(b"7,Walking,10,0.1,,0.3;7,Walking,20,NaN,1,2;7,Walking,30,1,2,3;\n7,Walking,40,1,2,3;\n")
    r = parse_file(p, {"Walking": 0})
    assert r.reasons() == {R_MISSING: 1, R_NAN: 1} and r.kept == 2 and r.merged_lines == 1


def _w2019(root: Path, files: dict[str, bytes]) -> Path:
    (root / "raw" / "phone" / "accel").mkdir(parents=True)
    (root / "activity_key.txt").write_text("walking = A\n")
    for name, body in files.items():
        (root / "raw" / "phone" / "accel" / name).write_bytes(body)
    return root


def test_an_empty_file_among_others_is_reported_and_ingest_goes_on(tmp_path):
    good = GOOD.replace(b"7,Walking", b"1600,A")
    root = _w2019(tmp_path / "w", {"data_1600_accel_phone.txt": good, "data_1601_accel_phone.txt": b""})
    m = ingest.run(ingest.IngestConfig(dataset="wisdm2019", data_path=str(root), progress=False), tmp_path / "o")
    assert m["records_kept"] == 200 and m["empty_files"] == [str(root / "raw/phone/accel/data_1601_accel_phone.txt")]
    assert m["records_merged_lines"] == 0


def test_only_empty_files_is_one_clear_error(tmp_path):
    root = _w2019(tmp_path / "w", {"data_1600_accel_phone.txt": b"", "data_1601_accel_phone.txt": b"\n\n"})
    with pytest.raises(DataError, match="no records found"):
        ingest.run(ingest.IngestConfig(dataset="wisdm2019", data_path=str(root), progress=False), tmp_path / "o")


def test_caps_are_checked_while_streaming(tmp_path, monkeypatch):
    """A .gz over the inflated-size cap is refused before it is read to the end."""
    monkeypatch.setattr(parse, "MAX_DECOMPRESSED_BYTES", 1 << 20)
    p = tmp_path / "a.txt.gz"
    with gzip.open(p, "wb") as fh:
        fh.write(GOOD * 20_000)  # ~9 MB of good records
    with pytest.raises(DataError, match="MAX_DECOMPRESSED_BYTES"):
        parse_file(p, {"Walking": 0}, chunk_bytes=1 << 16)


def test_wisdm2019_takes_gzipped_logs_and_hints_at_the_other_device(tmp_path):
    good = GOOD.replace(b"7,Walking", b"1600,A")
    root = _w2019(tmp_path / "w", {"data_1600_accel_phone.txt.gz": gzip.compress(good)})
    m = ingest.run(ingest.IngestConfig(dataset="wisdm2019", data_path=str(root), progress=False), tmp_path / "o")
    assert m["records_kept"] == 200
    watch = root / "raw" / "watch" / "accel"
    watch.mkdir(parents=True)
    (watch / "data_1600_accel_watch.txt").write_bytes(good)
    for f in (root / "raw" / "phone" / "accel").iterdir():
        f.unlink()
    with pytest.raises(DataError, match="found 1 watch logs .*pass --sensor-device watch"):
        ingest.run(ingest.IngestConfig(dataset="wisdm2019", data_path=str(root), progress=False), tmp_path / "o2")


def test_a_tar_header_declaring_gigabytes_is_refused_before_it_is_read(tmp_path):
    import io
    import tarfile

    from har_vit.datasets.download import MAX_HEADER_BYTES, safe_extract

    info = tarfile.TarInfo("WISDM_ar_v1.1/WISDM_ar_v1.1_raw.txt")
    info.size = len(GOOD)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        info.pax_headers = {"comment": "x" * 100}
        tf.addfile(info, io.BytesIO(GOOD))
    raw = bytearray(buf.getvalue())
    # The first block is the pax header's own header; its size field (octal, at 124) claims 2 GiB.
    raw[124:136] = b"%011o\0" % (2 << 30)
    raw[148:156] = b" " * 8
    raw[148:156] = b"%06o\0 " % sum(raw[:512])
    bomb = tmp_path / "bomb.tar.gz"
    bomb.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(DataError, match="declares 2147483648 bytes, over the cap .*MAX_HEADER_BYTES"):
        safe_extract(bomb, tmp_path / "out")
    assert not (tmp_path / "out").exists() and MAX_HEADER_BYTES < 1 << 20
