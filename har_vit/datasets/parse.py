"""Vectorised parser of the WISDM raw line format.

A WISDM record is ``user,activity,timestamp,x,y,z;``. The official files break that
promise in documented ways: several records on one physical line, records ending in
``,;``, blank lines, empty or NaN values. We split the bytes on ``;`` and newline
with numpy, quarantine every candidate record that does not have the right shape,
and hand the well-shaped ones to pandas' C parser in one buffer. Nothing is dropped
silently: every non-blank segment between separators is a record, and each is either
kept or quarantined with a reason (``kept + quarantined == total``).

>>> r = parse_bytes(b"7,Walking,10,0.1,0.2,0.3;7,Walking,0,1,2,3;\\n", {"Walking": 0})
>>> r.total, len(r.timestamp), dict(r.reasons())
(2, 1, {'zero timestamp': 1})
"""
from __future__ import annotations

import codecs
import gzip
import io
import os
import warnings
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import pandas as pd

from har_vit.core.errors import DataError

RAW_PREVIEW = 200  # characters of a quarantined record kept in the quarantine file
CHUNK_BYTES = 32 << 20  # files are parsed in chunks cut at record ends: bounded memory
# Input caps, enforced while streaming and before anything is allocated for them. A WISDM
# record is < 100 bytes, so a run of 4 KiB without ';' or newline is not a record: it is
# skipped as it streams by (counting its bytes) and quarantined as "record too long".
MAX_RECORD_BYTES = 4 << 10
MAX_DECOMPRESSED_BYTES = 16 << 30  # text one .gz may inflate to
MAX_GZIP_RATIO = 100  # inflated / compressed bytes; WISDM text compresses about 4x
GZIP_RATIO_AFTER = 64 << 20  # the ratio is judged once this much has been inflated
MAX_WIDE_BYTES = 256 << 20  # UTF-16/32 logs are re-encoded in memory: cap their size
UNLABELLED = -1
_F32_MAX = float(np.finfo(np.float32).max)

# Quarantine reasons (stable strings: scripts read them from the manifest).
R_FIELDS = "wrong number of fields"
R_MISSING = "missing value"
R_NAN = "nan"
R_NONNUM = "non-numeric value"
R_NONFINITE = "non-finite value"
R_BAD_USER = "invalid user id"
R_BAD_TS = "invalid timestamp"
R_LABEL = "unknown activity"
R_ZERO_TS = "zero timestamp"
R_DUP_TS = "duplicate timestamp"
R_LONG = "record too long"
R_TRUNC = "truncated record"


@dataclass
class Parsed:
    """Kept records (columns) and quarantined ones of one parse, in input order."""

    user: np.ndarray
    activity: np.ndarray
    timestamp: np.ndarray
    xyz: np.ndarray
    line: np.ndarray
    total: int
    quarantine: list[tuple[int, str, str]] = field(default_factory=list)  # (line, reason, raw)
    order: np.ndarray | None = None  # segment index of each kept record (merging only)
    merged_lines: int = 0  # physical lines that held more than one record


    def reasons(self) -> Counter:
        return Counter(reason for _, reason, _ in self.quarantine)

    @property
    def kept(self) -> int:
        return int(self.timestamp.shape[0])


def _empty(total: int = 0, quarantine: list | None = None) -> Parsed:
    z = np.zeros(0, np.int64)
    return Parsed(z, z.copy(), z.copy(), np.zeros((0, 3), np.float32), z.copy(), total, quarantine or [], z.copy())


def _preview(raw: bytes) -> str:
    text = raw.decode("utf-8", errors="replace").strip()
    if len(text) > RAW_PREVIEW:
        text = f"{text[:RAW_PREVIEW]}... ({len(raw)} bytes)"
    return text


def decode_to_utf8(data: bytes) -> bytes:
    """Re-encode UTF-16/32 input (by BOM, or NUL-interleaved ASCII) as UTF-8; pass others through."""
    for bom, enc in ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
                     (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16")):
        if data.startswith(bom):
            return data.decode(enc, errors="replace").encode("utf-8")
    if data.startswith(codecs.BOM_UTF8):
        return data[len(codecs.BOM_UTF8):]
    head = data[:4096]
    # UTF-16 without BOM: every other byte of ASCII text is NUL.
    if len(head) >= 8 and head[1::2].count(0) > 0.9 * (len(head) // 2):
        return data.decode("utf-16-le", errors="replace").encode("utf-8")
    if len(head) >= 8 and head[0::2].count(0) > 0.9 * (len(head) // 2):
        return data.decode("utf-16-be", errors="replace").encode("utf-8")
    return data


# One C-level pass maps ';' to newline (so every record ends in a newline), tab and CR
# to space, and other control bytes (binary garbage) to DEL, which no number contains.
_TABLE = bytes((10 if b == 59 else 32 if b in (9, 13) else 127 if b < 32 and b != 10 else b) for b in range(256))
_NAMES6 = ["user", "activity", "timestamp", "x", "y", "z"]
_NAMES5 = ["user", "timestamp", "x", "y", "z"]


def _segments(data: bytes) -> tuple[bytes, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Split on ';' and newline: (translated bytes, arr, starts, ends, line of each segment)."""
    t = data.translate(_TABLE)
    arr = np.frombuffer(t, dtype=np.uint8)
    sep = np.flatnonzero(arr == 10)
    n = arr.shape[0]
    starts = np.concatenate(([0], sep + 1))
    ends = np.concatenate((sep, [n]))  # exclusive
    was_nl = np.frombuffer(data, dtype=np.uint8)[sep] == 10
    lines = np.concatenate(([0], np.cumsum(was_nl, dtype=np.int64)))
    return t, arr, starts, ends, lines


def parse_bytes(data: bytes, labels: Mapping[str, int] | None, first_line: int = 1) -> Parsed:
    """Parse WISDM-format bytes.

    ``labels`` maps a raw activity label (matched case-insensitively, stripped) to a
    class index; records with other labels are quarantined. With ``labels=None``
    the activity column is optional and ignored (``activity == -1``): the predict
    path for logs without labels. ``first_line`` numbers the first line of ``data``.

    Fast path: pandas' C parser reads the whole buffer with one record per line,
    skipping the empty segments; every record that is not plainly good is re-parsed
    by the robust path (:func:`parse_bytes_robust`), so both give the same reasons.
    """
    if not data:
        return _empty()
    t, arr, starts, ends, lines = _segments(data)
    lines = lines + first_line
    merged = _merged_lines(arr, starts, ends, lines)
    if labels is None:  # 5 or 6 fields: no single-pass layout
        return _with_merged(_parse_segments(data, t, arr, starts, ends, lines, labels), merged)
    df = None
    for ts_dtype in ("int64", "Int64"):  # exact integers; nullable only when values are missing
        try:
            with warnings.catch_warnings():  # a failed int64 cast warns before it raises
                warnings.simplefilter("ignore", RuntimeWarning)
                df = pd.read_csv(io.BytesIO(t), header=None, names=_NAMES6 + ["extra"], sep=",", engine="c",
                                 dtype={"activity": "category", "timestamp": ts_dtype}, skipinitialspace=True,
                                 skip_blank_lines=True, quoting=3, low_memory=False, encoding_errors="replace")
            break
        except (ValueError, pd.errors.ParserError, OverflowError, TypeError):
            continue
    rows = np.flatnonzero(ends > starts)  # the C parser skips empty segments
    if df is None or len(df) != rows.shape[0]:  # e.g. whitespace-only lines: careful path
        return _with_merged(_parse_segments(data, t, arr, starts, ends, lines, labels), merged)
    starts, ends, lines = starts[rows], ends[rows], lines[rows]
    ok = df["extra"].isna().to_numpy() & ((ends - starts) <= MAX_RECORD_BYTES)
    cols = {}
    for c in ("user", "x", "y", "z"):
        s = df[c]
        if not pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s):
            v = pd.to_numeric(s.astype(str), errors="coerce").to_numpy(np.float64, na_value=np.nan)
        else:
            v = s.to_numpy(np.float64, na_value=np.nan)
        cols[c] = v
        with np.errstate(invalid="ignore"):
            ok &= np.isfinite(v) & (np.abs(v) <= _F32_MAX)  # stored as float32
    ts = df["timestamp"]
    ok &= ~ts.isna().to_numpy()
    ts = ts.to_numpy(np.int64, na_value=0)
    u = cols["user"]
    ok &= (u == np.round(u)) & (u >= 0) & (u <= 2**31) & (ts > 0)
    act = _map_labels(df["activity"], labels)
    ok &= act >= 0
    good = Parsed(u[ok].astype(np.int64), act[ok], ts[ok],
                  np.stack([cols["x"][ok], cols["y"][ok], cols["z"][ok]], axis=1).astype(np.float32),
                  lines[ok], int(ok.sum()), [], rows[ok])
    odd = np.flatnonzero(~ok)
    if odd.size == 0:
        return _with_merged(good, merged)
    rest = _parse_segments(data, t, arr, starts[odd], ends[odd], lines[odd], labels, order=rows[odd])
    return _with_merged(_merge(good, rest), merged)


def parse_bytes_robust(data: bytes, labels: Mapping[str, int] | None, first_line: int = 1) -> Parsed:
    """Slow, careful reference parser: field counts by numpy, values by pandas per shape."""
    if not data:
        return _empty()
    t, arr, starts, ends, lines = _segments(data)
    lines = lines + first_line
    return _with_merged(_parse_segments(data, t, arr, starts, ends, lines, labels), _merged_lines(arr, starts, ends, lines))


def _merged_lines(arr: np.ndarray, starts: np.ndarray, ends: np.ndarray, lines: np.ndarray) -> int:
    """Physical lines holding more than one non-blank segment (records run together on one line)."""
    ws = arr == 32
    cs = np.concatenate(([0], np.cumsum(ws, dtype=np.int64)))
    nonblank = (ends - starts) - (cs[ends] - cs[starts]) > 0
    if not nonblank.any():
        return 0
    _, counts = np.unique(lines[nonblank], return_counts=True)
    return int((counts > 1).sum())


def _with_merged(p: Parsed, merged: int) -> Parsed:
    p.merged_lines = merged
    return p


def _merge(a: Parsed, b: Parsed) -> Parsed:
    order = np.argsort(np.concatenate([a.order, b.order]), kind="stable")
    cat = _concat(a, b)
    q = sorted(a.quarantine + b.quarantine, key=lambda r: r[0])
    return Parsed(cat.user[order], cat.activity[order], cat.timestamp[order], cat.xyz[order],
                  cat.line[order], a.total + b.total, q, cat.order[order])


def _parse_segments(data: bytes, t: bytes, arr: np.ndarray, starts: np.ndarray, ends: np.ndarray,
                    lines: np.ndarray, labels: Mapping[str, int] | None,
                    order: np.ndarray | None = None) -> Parsed:
    """Parse the given segments one shape at a time; ``order`` keys them for merging."""
    order = np.arange(starts.shape[0]) if order is None else order
    ws = arr == 32
    cs_ws = np.concatenate(([0], np.cumsum(ws, dtype=np.int64)))
    nonblank = (ends - starts) - (cs_ws[ends] - cs_ws[starts]) > 0
    cs_c = np.concatenate(([0], np.cumsum(arr == 44, dtype=np.int64)))
    commas = cs_c[ends] - cs_c[starts]
    last_nonws = _last_non_ws(arr, ws, starts, ends)
    want = (5, 6) if labels is None else (6,)
    too_long = nonblank & ((ends - starts) > MAX_RECORD_BYTES)
    # Only an extra empty field is dropped: with 5 commas, 'x,y,;' is a missing z.
    ends_in_comma = nonblank & (last_nonws >= 0) & (arr[np.maximum(last_nonws, 0)] == 44)
    trailing = ends_in_comma & np.isin(commas, want) & ~np.isin(commas + 1, want)
    fields = commas + 1 - trailing
    good_shape = nonblank & np.isin(fields, want) & ~too_long

    quarantine = [(int(lines[i]), R_LONG if too_long[i] else R_FIELDS, _preview(data[starts[i]:ends[i]]))
                  for i in np.flatnonzero(nonblank & ~good_shape)]
    out = _empty(int(nonblank.sum()), quarantine)
    for nfields in want:
        sel = np.flatnonzero(good_shape & (fields == nfields))
        if sel.size:
            part = _parse_fields(data, t, arr, starts[sel], ends[sel], trailing[sel], last_nonws[sel],
                                 lines[sel], nfields, labels, order[sel])
            out = _concat(out, part)
    o = np.argsort(out.order, kind="stable")
    out.quarantine.sort(key=lambda q: q[0])
    return Parsed(out.user[o], out.activity[o], out.timestamp[o], out.xyz[o], out.line[o],
                  out.total, out.quarantine, out.order[o])


def _last_non_ws(arr: np.ndarray, ws: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Index of the last non-whitespace byte of each segment, -1 for blank ones."""
    # Position of the latest non-ws byte at or before each index, via maximum.accumulate.
    pos = np.where(~ws, np.arange(arr.shape[0], dtype=np.int64), -1)
    np.maximum.accumulate(pos, out=pos)
    last = np.where(ends > 0, pos[np.maximum(ends - 1, 0)], -1)
    return np.where(last >= starts, last, -1)


def _parse_fields(data: bytes, t: bytes, arr: np.ndarray, starts: np.ndarray, ends: np.ndarray,
                  trailing: np.ndarray, last_nonws: np.ndarray, lines: np.ndarray, nfields: int,
                  labels: Mapping[str, int] | None, order: np.ndarray) -> Parsed:
    # Join the selected segments (minus ',;' commas) into one buffer of newline-ended rows.
    n = arr.shape[0]
    delta = np.zeros(n + 1, np.int8)
    delta[starts] += 1
    delta[ends] -= 1
    keep = np.cumsum(delta[:-1], dtype=np.int8).astype(bool)
    keep[last_nonws[trailing]] = False
    keep[ends[ends < n]] = True  # the newline ending each row
    joined = arr[keep].tobytes()
    if ends[-1] == n:
        joined += b"\n"
    names = _NAMES6 if nfields == 6 else _NAMES5
    df = pd.read_csv(io.BytesIO(joined), header=None, names=names, sep=",", engine="c",
                     dtype=str, keep_default_na=False, skipinitialspace=True, skip_blank_lines=False,
                     quoting=3, low_memory=False, encoding_errors="replace")
    if len(df) != len(starts):  # pragma: no cover - would be a bug in the splitting above
        raise DataError(f"internal parse mismatch: {len(df)} rows for {len(starts)} records")
    reason = np.full(len(df), "", dtype=object)
    cols = {}
    for c in ("user", "timestamp", "x", "y", "z"):
        raw = df[c].str.strip()
        v = pd.to_numeric(raw, errors="coerce").to_numpy(np.float64, na_value=np.nan)
        low = raw.str.lower()
        missing = low.isin(["", "na", "null", "none"]).to_numpy()
        nan = (low == "nan").to_numpy()
        reason[(reason == "") & np.isnan(v) & ~missing & ~nan] = R_NONNUM
        reason[(reason == "") & missing] = R_MISSING
        reason[(reason == "") & nan] = R_NAN
        cols[c] = (raw, v)
    xyz = np.stack([cols[c][1] for c in ("x", "y", "z")], axis=1)
    with np.errstate(invalid="ignore"):
        finite = (np.isfinite(xyz) & (np.abs(xyz) <= _F32_MAX)).all(axis=1)
    reason[(reason == "") & ~finite] = R_NONFINITE
    u = cols["user"][1]
    with np.errstate(invalid="ignore"):
        reason[(reason == "") & ((u != np.round(u)) | (u < 0) | (u > 2**31))] = R_BAD_USER
    # Timestamps must be exact integers: float64 would lose nanosecond digits.
    ts_raw = cols["timestamp"][0]
    digits = ts_raw.str.fullmatch(r"\d{1,19}").fillna(False).to_numpy(bool).copy()
    digits &= ~((ts_raw.str.len() == 19) & (ts_raw > "9223372036854775807")).to_numpy(bool)  # int64 max
    reason[(reason == "") & ~digits] = R_BAD_TS
    ts = np.zeros(len(df), np.int64)
    ts[digits] = ts_raw[digits].astype(np.int64).to_numpy()

    if nfields == 6 and labels is not None:
        act = _map_labels(df["activity"], labels)
        reason[(reason == "") & (act < 0)] = R_LABEL
    else:
        act = np.full(len(df), UNLABELLED, np.int64)
    reason[(reason == "") & (ts == 0)] = R_ZERO_TS

    good = reason == ""
    quarantine = [(int(lines[i]), str(reason[i]), _preview(data[starts[i]:ends[i]])) for i in np.flatnonzero(~good)]
    return Parsed(np.nan_to_num(u[good]).astype(np.int64), act[good], ts[good], xyz[good].astype(np.float32),
                  lines[good].astype(np.int64), 0, quarantine, order[good])


def _map_labels(col: pd.Series, labels: Mapping[str, int]) -> np.ndarray:
    lookup = {str(k).strip().lower(): v for k, v in labels.items()}
    cat = col.astype("category")
    codes = np.array([lookup.get(str(c).strip().lower(), -1) for c in cat.cat.categories] + [-1], np.int64)
    return codes[cat.cat.codes.to_numpy()]  # code -1 (NaN label) picks the trailing -1


def _concat(a: Parsed, b: Parsed) -> Parsed:
    return Parsed(np.concatenate([a.user, b.user]), np.concatenate([a.activity, b.activity]),
                  np.concatenate([a.timestamp, b.timestamp]), np.concatenate([a.xyz, b.xyz]),
                  np.concatenate([a.line, b.line]), a.total + b.total, a.quarantine + b.quarantine,
                  np.concatenate([a.order, b.order]))


def _concat_all(parts: list[Parsed]) -> Parsed:
    """One concatenation for all chunks (not a growing copy per chunk)."""
    if not parts:
        return _empty()
    return Parsed(*(np.concatenate([getattr(p, c) for p in parts]) for c in ("user", "activity", "timestamp", "xyz", "line")),
                  sum(p.total for p in parts), [q for p in parts for q in p.quarantine],
                  np.concatenate([p.order for p in parts]), sum(p.merged_lines for p in parts))


def drop_duplicate_timestamps(p: Parsed) -> Parsed:
    """Quarantine a record whose timestamp equals the previous record's in the same
    (user, activity) run: two samples cannot share an instant, and keeping both would
    give a window a zero-length step. The first of the pair is kept."""
    if p.kept < 2:
        return p
    same_stream = (p.user[1:] == p.user[:-1]) & (p.activity[1:] == p.activity[:-1])
    dup = np.concatenate(([False], same_stream & (p.timestamp[1:] == p.timestamp[:-1])))
    if not dup.any():
        return p
    q = p.quarantine + [(int(line), R_DUP_TS, f"{u},{a},{t},{x:g},{y:g},{z:g}")
                        for line, u, a, t, (x, y, z) in zip(p.line[dup], p.user[dup], p.activity[dup],
                                                            p.timestamp[dup], p.xyz[dup])]
    k = ~dup
    return Parsed(p.user[k], p.activity[k], p.timestamp[k], p.xyz[k], p.line[k], p.total, q, p.order[k],
                  p.merged_lines)


class _CappedGzip:
    """A gzip reader that refuses, in one line, an inflation over the size or ratio caps."""

    def __init__(self, path: Path) -> None:
        self.path, self.fh, self.out = path, gzip.open(path, "rb"), 0
        self.compressed = max(path.stat().st_size, 1)

    def read(self, n: int = -1) -> bytes:
        data = self.fh.read(n)
        self.out += len(data)
        if self.out > MAX_DECOMPRESSED_BYTES:
            raise DataError(f"{self.path}: inflates past {MAX_DECOMPRESSED_BYTES >> 30} GiB (the cap "
                            "MAX_DECOMPRESSED_BYTES); not a WISDM log - remove it or unpack it yourself")
        if self.out > GZIP_RATIO_AFTER and self.out > MAX_GZIP_RATIO * self.compressed:
            raise DataError(f"{self.path}: inflates more than {MAX_GZIP_RATIO}x ({self.compressed} bytes -> over "
                            f"{self.out} bytes; the cap MAX_GZIP_RATIO): a decompression bomb, not a WISDM log")
        return data

    def close(self) -> None:
        self.fh.close()


def _wide_text(head: bytes) -> bool:
    """UTF-16/32 by BOM, or ASCII interleaved with NULs (text, not a run of NUL bytes)."""
    if head[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):
        return True
    return len(head) == 4 and ((head[0] != 0 and head[1] == 0) or (head[0] == 0 and head[1] != 0))


def _last_separator(data: bytes) -> int:
    """Index of the last line end, else of the last ';' (a line is cut only when it must be), else -1."""
    cut = data.rfind(b"\n")
    return cut if cut >= 0 else data.rfind(b";")


def iter_chunks(path: Path, chunk_bytes: int = CHUNK_BYTES,
                max_record: int = MAX_RECORD_BYTES) -> Iterator[tuple[str, bytes, int, int, int]]:
    """Yield ``(kind, bytes, first_line, offset, size)`` pieces of a (possibly gzipped) file.

    ``kind`` is ``"data"`` (whole records, cut after a separator), ``"long"`` (a run of
    more than ``max_record`` bytes without ';' or newline, skipped as it streams by: the
    bytes are its first :data:`RAW_PREVIEW` and its length) or ``"truncated"`` (the file
    ends inside a record). ``offset`` is the piece's byte offset in the (inflated) file and
    ``size`` its length in bytes (for ``"long"``, the whole run's, not the preview's).
    Memory stays within a chunk plus one record, whatever the input.
    """
    fh: Any = None
    try:
        fh = _CappedGzip(path) if path.suffix == ".gz" else open(path, "rb")
        head = fh.read(4)
        if _wide_text(head):  # UTF-16/32 logs are rare and small: re-encode in one go, capped
            data = head + fh.read(MAX_WIDE_BYTES + 1)
            if len(data) > MAX_WIDE_BYTES:
                raise DataError(f"{path}: a UTF-16/32 log over {MAX_WIDE_BYTES >> 20} MiB (the cap MAX_WIDE_BYTES); "
                                "convert it to UTF-8 first")
            yield "data", decode_to_utf8(data), 1, 0, len(data)
            return
        line, offset, rest = 1, 0, head
        skip: list[Any] | None = None  # [line, offset, bytes so far, preview] of an over-long record
        while True:
            block = fh.read(chunk_bytes)
            if skip is not None:
                ends = [i for i in (block.find(b"\n"), block.find(b";")) if i >= 0]
                if not block or ends:
                    i = min(ends) if ends else len(block)
                    skip[2] += i
                    yield "long", skip[3], skip[0], skip[1], skip[2]
                    offset, rest, skip = offset + i, block[i:], None
                    if not block:
                        return
                    continue
                skip[2] += len(block)
                continue
            data = rest + block
            if not block:
                cut = _last_separator(data)
                if data[cut + 1:].strip():  # the file ends inside a record
                    if cut >= 0:
                        yield "data", data[: cut + 1], line, offset, cut + 1
                        line += data[: cut + 1].count(b"\n")
                    yield "truncated", data[cut + 1:][:RAW_PREVIEW], line, offset + cut + 1, len(data) - cut - 1
                elif data:
                    yield "data", decode_to_utf8(data) if offset == 0 else data, line, offset, len(data)
                return
            cut = _last_separator(data)
            if cut < 0:
                if len(data) > max_record:
                    skip, rest = [line, offset, len(data), data[:RAW_PREVIEW]], b""
                else:
                    rest = data
                continue
            piece, rest = data[: cut + 1], data[cut + 1:]
            yield "data", decode_to_utf8(piece) if offset == 0 else piece, line, offset, len(piece)
            line += piece.count(b"\n")
            offset += len(piece)
            if len(rest) > max_record:
                skip, rest = [line, offset, len(rest), rest[:RAW_PREVIEW]], b""
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise DataError(f"{path}: cannot read ({type(e).__name__}: {e}); check the file is a complete WISDM log") from None
    finally:
        if fh is not None:
            fh.close()


def parse_file(path: str | os.PathLike, labels: Mapping[str, int] | None,
               chunk_bytes: int = CHUNK_BYTES) -> Parsed:
    """Parse one WISDM log file (``.txt`` or ``.txt.gz``) chunk by chunk, in bounded memory."""
    path = Path(path)
    parts, order = [], 0
    for kind, data, first_line, offset, size in iter_chunks(path, chunk_bytes):
        if kind == "data":
            part = parse_bytes(data, labels, first_line)
        else:
            what = f"{size} bytes without ';' or newline" if kind == "long" else f"the file ends {size} bytes into it"
            part = _empty(1, [(first_line, R_LONG if kind == "long" else R_TRUNC,
                               f"byte {offset}, {what}: {_preview(data[:60])}")])
        part.order = part.order + order  # keep file order across chunks
        order += len(data) + 1  # more than the segments of any chunk
        parts.append(part)
    return drop_duplicate_timestamps(_concat_all(parts))
