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

import gzip
import hashlib
import http.client
import os
import re
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Callable, Iterator
from urllib.response import addinfourl

from tqdm import tqdm

from har_vit import __version__
from har_vit.core.errors import DataError, DownloadError, UsageError
from har_vit.core.io import atomic_path, sha256_file, write_text

OFFICIAL_URL = "https://www.cis.fordham.edu/wisdm/includes/datasets/latest/WISDM_ar_latest.tar.gz"
ARCHIVE_NAME = "WISDM_ar_latest.tar.gz"
RAW_NAME = "WISDM_ar_v1.1_raw.txt"
URL_ENV = "HAR_VIT_WISDM_URL"
SHA256_ENV = "HAR_VIT_WISDM_SHA256"

# The official archive's sha256, to be set only from a source others can check.
# None: no published value exists, so the trust-on-first-use record stands in.
PINNED_SHA256: str | None = None

# The real archive is about 11 MB and unpacks to about 50 MB in a handful of members;
# the caps leave ample room for that and stop a runaway server or a decompression bomb.
MAX_DOWNLOAD_BYTES = 256 * 2**20
MAX_EXTRACT_BYTES = 512 * 2**20
MAX_MEMBERS = 1000
# A tar stream ends in zero padding up to a 10 KiB record; anything much longer
# after the end-of-archive marker is not a tar file we wrote or want to inflate.
_MAX_TRAILING_BYTES = 2**20

_RAW_NAMES = (RAW_NAME, RAW_NAME + ".gz")
_CHUNK = 2**20
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
# Reading errors that mean the archive itself is bad (BadGzipFile is an OSError,
# so it is named rather than catching every OSError, which would hide disk faults).
_CORRUPT = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile)


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


def download(
    url: str,
    dest: Path,
    *,
    expected_size: int | None = None,
    expected_sha256: str | None = None,
    progress: bool = True,
    timeout: float = 30.0,
    verify: Callable[[Path], None] | None = None,
) -> Path:
    """Download ``url`` to ``dest``, renaming it into place only once it checks out.

    The body must match the server's Content-Length and, when given, ``expected_size``
    and ``expected_sha256``; ``verify`` then sees the complete temporary file and may
    raise to reject it. On any failure nothing is left at ``dest`` or beside it. The
    progress bar goes to stderr, only when ``progress`` and stderr is a terminal.
    """
    dest = Path(dest)
    with atomic_path(dest) as tmp:
        with _open_url(url, dest, timeout) as response:
            announced = _content_length(response)
            if announced is not None and announced > MAX_DOWNLOAD_BYTES:
                raise DownloadError(f"{url}: announces {announced} bytes, over the {MAX_DOWNLOAD_BYTES}-byte cap; check the URL")
            got, sha = _stream(response, tmp, url, dest, announced, progress)
        retry = f"nothing was kept - re-run to retry, or {_by_hand(dest)}"
        if announced is not None and got != announced:
            raise DownloadError(f"{url}: truncated download, got {got} of {announced} bytes; {retry}")
        if expected_size is not None and got != expected_size:
            raise DownloadError(f"{url}: got {got} bytes, expected {expected_size}; {retry}")
        if expected_sha256 is not None and sha != expected_sha256.lower():
            raise DownloadError(f"{url}: sha256 mismatch: expected {expected_sha256.lower()}, got {sha}; {retry}")
        if verify is not None:
            verify(tmp)
    return dest


def safe_extract(
    archive: Path, dest: Path, *, max_bytes: int = MAX_EXTRACT_BYTES, max_members: int = MAX_MEMBERS
) -> Path:
    """Unpack the ``.tar.gz`` ``archive`` into the new folder ``dest`` and return it.

    Every member is checked before anything is written: only plain files and folders
    with relative paths that stay inside ``dest`` are allowed (no ``..``, absolute
    paths, links, devices or FIFOs), at most ``max_members`` of them holding at most
    ``max_bytes`` in all. A refused member is a DataError naming it. The files are
    written by this function, not by ``TarFile.extract``, so no mode, owner or link
    from the archive reaches the disk. Unpacking happens in a hidden temporary folder
    that is renamed to ``dest`` when complete.
    """
    archive, dest = Path(archive), Path(dest)
    if not archive.is_file():
        raise DataError(f"{archive}: no such file; pass an existing .tar.gz archive")
    if dest.exists():
        raise DataError(f"{dest}: already exists; delete it or unpack {archive.name} elsewhere")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        with _open_tar(archive) as tf:
            try:
                members = list(_checked_members(tf, str(archive), max_bytes, max_members))
                for member in members:
                    _write_member(tf, member, tmp, archive)
            except _CORRUPT as e:
                raise _corrupt(str(archive), e) from None
        os.rename(tmp, dest)
    except OSError as e:  # disk full, permissions, or dest created meanwhile by another run
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(f"{dest}: cannot unpack {archive} there ({e.strerror or e}); free space or fix permissions") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


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


def _by_hand(dest: Path) -> str:
    return f"download {dest.name} by hand and put it in {dest.parent}/, or pass --data-path PATH"


def _open_url(url: str, dest: Path, timeout: float) -> http.client.HTTPResponse | addinfourl:
    request = urllib.request.Request(url, headers={"User-Agent": f"har_vit/{__version__}"})
    try:
        return urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:  # before URLError: it is one
        raise DownloadError(f"cannot download {url}: HTTP {e.code} {e.reason}; {_by_hand(dest)}") from None
    except urllib.error.URLError as e:
        raise DownloadError(f"cannot reach {url} ({e.reason}); {_by_hand(dest)}") from None
    except (OSError, http.client.HTTPException) as e:  # timeout or reset before the headers
        raise DownloadError(f"cannot reach {url} ({type(e).__name__}: {e}); {_by_hand(dest)}") from None
    except ValueError as e:  # "unknown url type"
        raise DownloadError(f"cannot download {url!r}: {e}; check {URL_ENV}") from None


def _content_length(response: http.client.HTTPResponse | addinfourl) -> int | None:
    value = response.headers.get("Content-Length")
    return int(value) if value is not None and value.strip().isdigit() else None


def _stream(
    response: http.client.HTTPResponse | addinfourl, out: Path, url: str, dest: Path, total: int | None, progress: bool
) -> tuple[int, str]:
    """Copy the body to ``out``; return its byte count and sha256."""
    digest, got = hashlib.sha256(), 0
    shown = progress and sys.stderr.isatty()
    bar = tqdm(total=total, desc=dest.name, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr, disable=not shown)
    with open(out, "wb") as fh, bar:
        try:
            while chunk := response.read(_CHUNK):
                got += len(chunk)
                if got > MAX_DOWNLOAD_BYTES:
                    raise DownloadError(f"{url}: more than {MAX_DOWNLOAD_BYTES} bytes, over the cap; check the URL")
                digest.update(chunk)
                fh.write(chunk)
                bar.update(len(chunk))
        except (OSError, http.client.HTTPException) as e:  # timeout, reset, IncompleteRead
            raise DownloadError(
                f"{url}: download broke off after {got} bytes ({type(e).__name__}: {e}); "
                f"nothing was kept - re-run to retry, or {_by_hand(dest)}"
            ) from None
    return got, digest.hexdigest()


# --- reading archives safely ---------------------------------------------------------


def _open_tar(archive: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(archive, mode="r:gz")
    except _CORRUPT as e:
        raise _corrupt(str(archive), e) from None


def _corrupt(label: str, e: BaseException) -> DataError:
    return DataError(f"{label}: not a readable .tar.gz, corrupt or truncated ({type(e).__name__}: {e}); get a fresh copy")


def _check_archive(archive: Path, label: str) -> None:
    """Read ``archive`` through once: safe headers, intact gzip stream (CRC, length)."""
    try:
        with gzip.open(archive, "rb") as gz:
            # Stream mode reads sequentially from the gzip stream we hold, so what is
            # left in it afterwards is exactly what follows the end-of-archive marker.
            with tarfile.open(fileobj=gz, mode="r|") as tf:
                for _ in _checked_members(tf, label, MAX_EXTRACT_BYTES, MAX_MEMBERS):
                    pass
            trailing = 0
            while chunk := gz.read(_CHUNK):
                trailing += len(chunk)
                if trailing > _MAX_TRAILING_BYTES:
                    raise DataError(f"{label}: more than {_MAX_TRAILING_BYTES} bytes after the end of the tar archive; get a fresh copy")
    except _CORRUPT as e:
        raise _corrupt(label, e) from None


def _checked_members(tf: tarfile.TarFile, label: str, max_bytes: int, max_members: int) -> Iterator[tarfile.TarInfo]:
    """Yield the members of ``tf``, raising DataError at the first unsafe one.

    Sizes are the ones the headers claim, summed before any data is read; a member
    never yields more than its claimed size, so the sum bounds what is written.
    """
    total = 0
    for count, member in enumerate(tf, start=1):
        if count > max_members:
            raise DataError(f"{label}: more than {max_members} members (decompression-bomb guard); get a trusted copy of the archive")
        why = _refusal(member)
        if why is not None:
            raise DataError(f"{label}: refusing member {member.name!r} ({why}); the archive is unsafe - get a trusted copy")
        total += member.size if member.isreg() else 0
        if total > max_bytes:
            raise DataError(
                f"{label}: member {member.name!r} takes the unpacked size past the {max_bytes}-byte cap "
                "(decompression-bomb guard); get a trusted copy of the archive"
            )
        yield member


def _refusal(member: tarfile.TarInfo) -> str | None:
    """Why ``member`` must not be unpacked, or None for a plain file or folder inside."""
    if member.issym():
        return f"symbolic link to {member.linkname!r}"
    if member.islnk():
        return f"hard link to {member.linkname!r}"
    if member.ischr() or member.isblk():
        return "device file"
    if member.isfifo():
        return "FIFO"
    if member.issparse():  # "regular" to tarfile; WISDM has none, so no need to reason about holes
        return "sparse file"
    if not (member.isreg() or member.isdir()):
        return f"unsupported member type {member.type!r}"
    name = member.name
    if not name or name.startswith(("/", "\\")) or PureWindowsPath(name).drive:
        return "absolute path"
    if ".." in re.split(r"[/\\]", name):
        return "path climbs out with '..'"
    return None


def _write_member(tf: tarfile.TarFile, member: tarfile.TarInfo, root: Path, archive: Path) -> None:
    """Create one checked member under ``root`` with default permissions."""
    target = root.joinpath(*PurePosixPath(member.name).parts)
    # Second guard after _refusal: whatever the name, the target resolves inside root.
    real_root = os.path.realpath(root)
    if os.path.commonpath([os.path.realpath(target), real_root]) != real_root:
        raise DataError(f"{archive}: refusing member {member.name!r} (resolves outside the destination); get a trusted copy")
    if member.isdir():
        target.mkdir(parents=True, exist_ok=True)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    source = tf.extractfile(member)
    assert source is not None  # _refusal let only regular files and folders through
    with source, open(target, "wb") as out:
        shutil.copyfileobj(source, out, _CHUNK)
