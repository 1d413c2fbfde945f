"""The WISDM parser accounts for every record: kept + quarantined == total, whatever the input."""
from __future__ import annotations

import gzip

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from synthetic import LABELS, make_log

from har_vit.datasets.parse import (
    R_DUP_TS,
    R_FIELDS,
    R_LABEL,
    R_MISSING,
    R_NAN,
    R_NONNUM,
    R_ZERO_TS,
    parse_bytes,
    parse_bytes_robust,
    parse_file,
)


@pytest.mark.parametrize("seed", range(6))
def test_synthetic_log_every_record_accounted(seed, tmp_path):
    log = make_log(seed)
    p = tmp_path / "log.txt"
    p.write_bytes(log.text)
    r = parse_file(p, LABELS)
    assert r.total == log.total
    assert r.kept == log.kept
    assert r.reasons() == log.quarantined
    assert r.kept + sum(r.reasons().values()) == r.total


@pytest.mark.parametrize("seed", range(4))
def test_fast_path_equals_robust_reference(seed):
    text = make_log(seed).text
    a, b = parse_bytes(text, LABELS), parse_bytes_robust(text, LABELS)
    assert a.total == b.total and a.quarantine == b.quarantine
    for col in ("user", "activity", "timestamp", "xyz", "line"):
        np.testing.assert_array_equal(getattr(a, col), getattr(b, col))


def test_quirks_of_the_official_format():
    data = (b"33,Jogging,49105962326000,-0.69,12.68,0.50;33,Jogging,49106062271000,5.01,11.26,0.95;\n"
            b"\n"
            b"33,Jogging,49106112167000,4.9,10.8,-0.08,;\n"  # ',;' ending: kept
            b"33,Jogging,49106162167000,4.9,,;\n"  # empty value
            b"33,Jogging,49106212167000,NaN,1,2;\n"
            b"33,Jogging,49106262167000,x,1,2;\n"
            b"33,Skating,49106312167000,1,1,2;\n"
            b"33,Jogging,0,1,1,2;\n"
            b"33,Jogging,49106112167000,1,1;\n")
    r = parse_bytes(data, {"Jogging": 1})
    assert r.total == 9 and r.kept == 3
    assert r.line.tolist() == [1, 1, 3]
    assert r.timestamp.tolist() == [49105962326000, 49106062271000, 49106112167000]
    assert r.activity.tolist() == [1, 1, 1]
    np.testing.assert_allclose(r.xyz[0], [-0.69, 12.68, 0.50], rtol=1e-6)
    assert r.reasons() == {R_MISSING: 1, R_NAN: 1, R_NONNUM: 1, R_LABEL: 1, R_ZERO_TS: 1, R_FIELDS: 1}
    lines = {line: reason for line, reason, _ in r.quarantine}
    assert lines[4] == R_MISSING and lines[5] == R_NAN and lines[9] == R_FIELDS
    assert r.merged_lines == 1  # line 1 held two records


def test_nanosecond_timestamps_are_exact():
    data = b"1,Walking,1690000000000000001,1,2,3;\n1,Walking,1690000000000000003,1,2,3;\n"
    r = parse_bytes(data, {"Walking": 0})
    assert r.timestamp.tolist() == [1690000000000000001, 1690000000000000003]


def test_duplicate_timestamps_quarantined_backward_kept(tmp_path):
    p = tmp_path / "d.txt"
    p.write_bytes(b"1,Walking,100,1,2,3;\n1,Walking,100,4,5,6;\n1,Walking,50,1,2,3;\n")
    r = parse_file(p, {"Walking": 0})
    assert r.kept == 2 and r.reasons() == {R_DUP_TS: 1}
    assert r.timestamp.tolist() == [100, 50]


def test_gzip_utf16_and_chunking_agree(tmp_path):
    text = make_log(3).text
    (tmp_path / "a.txt").write_bytes(text)
    with gzip.open(tmp_path / "a.txt.gz", "wb") as fh:
        fh.write(text)
    (tmp_path / "u16.txt").write_bytes(text.decode().encode("utf-16"))
    ref = parse_file(tmp_path / "a.txt", LABELS)
    for name, chunk in (("a.txt.gz", 1 << 20), ("u16.txt", 1 << 20), ("a.txt", 4096)):
        r = parse_file(tmp_path / name, LABELS, chunk_bytes=chunk)
        assert (r.total, r.kept, r.reasons()) == (ref.total, ref.kept, ref.reasons()), name
        np.testing.assert_array_equal(r.line, ref.line)
        np.testing.assert_array_equal(r.timestamp, ref.timestamp)


def test_unlabelled_logs_for_predict():
    r = parse_bytes(b"7,100,1,2,3;\n7,Walking,200,1,2,3;\n7,Whatever,300,1,2,3;\n", None)
    assert r.kept == 3 and r.activity.tolist() == [-1, -1, -1]
    assert r.timestamp.tolist() == [100, 200, 300]


_record = st.one_of(
    st.builds(lambda u, a, t, x: f"{u},{a},{t},{x},{x},{x}",
              st.integers(-3, 40), st.sampled_from(["Walking", "Jogging", "walking", "", "Fly", "nan"]),
              st.integers(-5, 2**64), st.one_of(st.floats(allow_nan=True), st.text(max_size=4))),
    st.text(max_size=30),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_record, st.sampled_from([";", ";\n", "\n", ",;\n", ";;", "\r\n"])), max_size=30))
def test_property_parser_never_loses_or_raises(parts):
    data = "".join(r + end for r, end in parts).encode("utf-8", errors="surrogatepass")
    for fn in (parse_bytes, parse_bytes_robust):
        r = fn(data, LABELS)
        assert r.kept + len(r.quarantine) == r.total
        assert r.xyz.shape == (r.kept, 3) and r.line.shape == (r.kept,)
        assert np.isfinite(r.xyz).all() and (r.timestamp > 0).all()


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_property_binary_garbage(data):
    r = parse_bytes(data, LABELS)
    assert r.kept + len(r.quarantine) == r.total


def test_invalid_utf8_bytes_are_quarantined_not_raised():
    data = (b"1,Walk\xf0\x28ing,100,1,2,3;\n1,Walking,200,1\xff,2,3;\n1,Walking,300,1,2,3;\n"
            + b"7,\xf0\x9f\x98,1,2,3,4;\n")
    for fn in (parse_bytes, parse_bytes_robust):
        r = fn(data, {"Walking": 0})
        assert (r.total, r.kept) == (4, 1)
        assert r.reasons() == {R_LABEL: 2, R_NONNUM: 1}
