"""WISDM v1.1: find the raw accelerometer log, downloading and unpacking it if needed.

:func:`resolve_wisdm` turns what the user gave (nothing, an archive, a folder or the
raw file) into the raw text file(s) the line parser reads. Without a path it looks
in the data folder (``data/raw/``), then for ``WISDM_ar_latest.tar.gz`` there, and
only then downloads the official archive.

Environment:

- ``HAR_VIT_WISDM_URL``: download from this URL instead of :data:`OFFICIAL_URL`
  (a mirror, a local ``file://`` copy, a test server).
- ``HAR_VIT_WISDM_SHA256``: the sha256 the archive must have.

Checksum policy. The WISDM lab publishes no checksum for the archive, and no
dataset registry we could find pins one, so a value baked in here could not be
traced to anyone but us. Instead: trust on first use. The sha256 of the first
archive that arrives complete (Content-Length matched, gzip CRC and every tar
header read to the end) is written beside it as ``WISDM_ar_latest.tar.gz.sha256``
(``sha256sum -c`` format), and every later copy of the archive must match it. An
expectation from the caller (``expected_sha256`` / ``HAR_VIT_WISDM_SHA256``) or
:data:`PINNED_SHA256` wins over the record and replaces it once met, so a
legitimately changed upstream archive never locks anyone out: set the variable to
the new value the error message prints.

Caching: the download goes to a hidden temporary name and is renamed into place
only once verified; an archive is unpacked into a hidden temporary folder, renamed
to ``<archive stem>-<first 12 hex of its sha256>/`` once complete. No partial file
or folder is ever left under a real name.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from har_vit.core.errors import DataError, DownloadError, UsageError
from har_vit.core.io import sha256_file, write_text
from har_vit.datasets.download import _by_hand, _check_archive, download, safe_extract

OFFICIAL_URL = "https://www.cis.fordham.edu/wisdm/includes/datasets/latest/WISDM_ar_latest.tar.gz"
ARCHIVE_NAME = "WISDM_ar_latest.tar.gz"
RAW_NAME = "WISDM_ar_v1.1_raw.txt"
URL_ENV = "HAR_VIT_WISDM_URL"
SHA256_ENV = "HAR_VIT_WISDM_SHA256"

# The official archive's sha256, to be set only from a source others can check.
# None: no published value exists, so the trust-on-first-use record stands in.
PINNED_SHA256: str | None = None


_RAW_NAMES = (RAW_NAME, RAW_NAME + ".gz")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")


def resolve_wisdm(
    data_path: Path | None,
    data_dir: Path,
    *,
    url: str = OFFICIAL_URL,
    expected_sha256: str | None = None,
    progress: bool = True,
    timeout: float = 30.0,
) -> list[Path]:
    """Return the WISDM v1.1 raw text file(s) to parse.

    ``data_path`` may be the archive (``.tar.gz``/``.tgz``), a folder holding
    ``WISDM_ar_v1.1_raw.txt``, or a raw ``.txt``/``.txt.gz`` file. Without it the raw
    file is looked for under ``data_dir``, then ``data_dir/WISDM_ar_latest.tar.gz`` is
    unpacked, and only then is the archive downloaded from ``url`` (overridden by
    ``HAR_VIT_WISDM_URL`` when left at the official URL). Archives are unpacked into
    ``data_dir``. Raises DataError for a missing or unusable path, DownloadError for
    a failed download or a checksum mismatch.
    """
    data_dir = Path(data_dir)
    vouched = _vouched_sha256(expected_sha256)
    if data_path is not None:
        return [_from_data_path(Path(data_path), data_dir, vouched)]
    found = _find_raw(data_dir)
    if found is not None:
        return [found]
    archive = data_dir / ARCHIVE_NAME
    if archive.is_file():
        sha = _admit(archive, str(archive), _expectation(vouched, archive), _cached_advice(archive))
    else:
        sha = _download_archive(_effective_url(url), archive, vouched, progress, timeout)
    _record(archive, sha)
    return [_raw_from_archive(archive, data_dir, sha)]


# --- resolving what the user gave -------------------------------------------------


def _from_data_path(path: Path, data_dir: Path, vouched: tuple[str, str] | None) -> Path:
    """The raw file behind a ``--data-path``: an archive, a folder or the file itself."""
    if not path.exists():
        raise DataError(f"{path}: no such file or folder; pass {ARCHIVE_NAME}, the folder it unpacks to or {RAW_NAME}")
    if path.is_dir():
        found = _find_raw(path)
        if found is None:
            raise DataError(f"{path}: holds no {RAW_NAME} (nor .gz); pass the folder unpacked from {ARCHIVE_NAME} or the raw file")
        return found
    name = path.name.lower()
    if name.endswith((".tar.gz", ".tgz")):
        # A user's own archive may be a repack, so only an expectation they gave applies.
        if vouched is None:
            return _raw_from_archive(path, data_dir, sha256_file(path))
        return _raw_from_archive(path, data_dir, _admit(path, str(path), vouched, "check it is the file you meant"))
    if name.endswith((".txt", ".txt.gz")):
        return path  # reading .gz is the parser's job
    raise DataError(f"{path}: not a .tar.gz/.tgz archive, a folder or a .txt/.txt.gz file; pass one of those")


def _find_raw(root: Path) -> Path | None:
    """The shallowest raw file (``.txt`` before ``.txt.gz``) under ``root``, or None.

    Hidden folders are skipped: they are this module's unfinished temporary folders.
    """
    if not root.is_dir():
        return None
    hits: list[Path] = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        hits += [Path(folder, f) for f in files if f in _RAW_NAMES]
    return min(hits, key=lambda p: (len(p.parts), p.name.endswith(".gz"), str(p)), default=None)


def _raw_from_archive(archive: Path, data_dir: Path, sha: str) -> Path:
    """Unpack ``archive`` into ``data_dir`` unless already done, and find the raw file in it.

    The folder is named after the archive's sha256, so an existing one (renamed into
    place only when complete) is exactly this archive unpacked and is reused as is.
    """
    stem = re.sub(r"\.(tar\.gz|tgz)$", "", archive.name, flags=re.IGNORECASE)
    dest = data_dir / f"{stem}-{sha[:12]}"
    if not dest.is_dir():
        try:
            safe_extract(archive, dest)
        except DataError:
            if not dest.is_dir():  # else another run unpacked the same archive meanwhile
                raise
    found = _find_raw(dest)
    if found is None:
        raise DataError(f"{archive}: holds no {RAW_NAME}; pass the WISDM v1.1 archive {ARCHIVE_NAME}")
    return found


# --- checksums: expectations, trust on first use -----------------------------------


def _vouched_sha256(argument: str | None) -> tuple[str, str] | None:
    """The sha256 the caller vouches for, with where it came from: argument, then env."""
    for value, source in ((argument, "expected_sha256"), (os.environ.get(SHA256_ENV), SHA256_ENV)):
        if value:
            sha = value.strip().lower()
            if not _SHA256_RE.fullmatch(sha):
                raise UsageError(f"{source}={value!r} is not a sha256 (64 hex digits); fix or unset it")
            return sha, source
    return None


def _expectation(vouched: tuple[str, str] | None, archive: Path) -> tuple[str, str] | None:
    """What the cached archive must hash to: vouched, else pinned, else the first-use record."""
    if vouched is not None:
        return vouched
    if PINNED_SHA256 is not None:
        return PINNED_SHA256, "PINNED_SHA256 in har_vit.datasets.wisdm"
    recorded = _read_record(archive)
    return (recorded, f"recorded in {_sidecar(archive)} at first use") if recorded else None


def _sidecar(archive: Path) -> Path:
    return archive.with_name(archive.name + ".sha256")


def _read_record(archive: Path) -> str | None:
    sidecar = _sidecar(archive)
    if not sidecar.is_file():
        return None
    fields = sidecar.read_text(encoding="utf-8", errors="replace").split()
    if not fields or not _SHA256_RE.fullmatch(fields[0]):
        raise DataError(f"{sidecar}: not a sha256 record; delete it (the next archive that verifies is recorded again)")
    return fields[0]


def _record(archive: Path, sha: str) -> None:
    """Remember ``sha`` as the trusted archive's, in ``sha256sum -c`` format."""
    if _read_record(archive) != sha:
        write_text(_sidecar(archive), f"{sha}  {archive.name}\n")


def _admit(path: Path, label: str, expectation: tuple[str, str] | None, advice: str) -> str:
    """Check ``path`` against ``expectation`` and read it through; return its sha256.

    ``label`` names the file in messages (the URL for a download still under its
    temporary name).
    """
    sha = sha256_file(path)
    if expectation is not None and sha != expectation[0]:
        expected, source = expectation
        raise DownloadError(
            f"{label}: sha256 mismatch: expected {expected} ({source}), got {sha}; "
            f"{advice}, or set {SHA256_ENV}={sha} if the archive changed on purpose"
        )
    _check_archive(path, label)
    return sha


def _cached_advice(archive: Path) -> str:
    return f"delete {archive} to download it again"


# --- downloading ---------------------------------------------------------------------


def _effective_url(url: str) -> str:
    """``url``, or ``HAR_VIT_WISDM_URL`` when the caller left the official default."""
    return (os.environ.get(URL_ENV) or url) if url == OFFICIAL_URL else url


def _download_archive(
    url: str, archive: Path, vouched: tuple[str, str] | None, progress: bool, timeout: float
) -> str:
    """Download, verify and cache the archive at ``archive``; return its sha256."""
    expectation = _expectation(vouched, archive)
    sha = ""

    def verify(tmp: Path) -> None:
        # The expectation is checked here rather than by download()'s own sha check so
        # that the message can say where it came from (e.g. the first-use record).
        nonlocal sha
        try:
            sha = _admit(tmp, url, expectation, "nothing was kept; re-run to retry")
        except DataError as e:  # corrupt or unsafe content is a failed download here
            raise DownloadError(f"{e}; nothing was kept - re-run to retry, or {_by_hand(archive)}") from None

    download(url, archive, progress=progress, timeout=timeout, verify=verify)
    return sha


# --- reading archives safely ---------------------------------------------------------


