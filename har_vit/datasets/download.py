"""Download a file and unpack a tar archive, safely: nothing half-written, nothing outside its folder.

:func:`download` streams a URL to a temporary name, checks its size and sha256 and only
then renames it into place. :func:`safe_extract` checks every tar member before writing
any (plain files and folders with relative paths only, capped in count and bytes) and
unpacks into a hidden folder renamed into place when complete. Dataset readers (see
:mod:`har_vit.datasets.wisdm`) decide what to fetch and which checksum to trust.
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
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath, PureWindowsPath
from urllib.response import addinfourl

from tqdm import tqdm

from har_vit import __version__
from har_vit.core.errors import DataError, DownloadError
from har_vit.core.io import atomic_path

# The real archive is about 11 MB and unpacks to about 50 MB in a handful of members;
# the caps leave ample room for that and stop a runaway server or a decompression bomb.
MAX_DOWNLOAD_BYTES = 256 * 2**20
MAX_EXTRACT_BYTES = 512 * 2**20
MAX_MEMBERS = 1000
# A tar stream ends in zero padding up to a 10 KiB record; anything much longer
# after the end-of-archive marker is not a tar file we wrote or want to inflate.
_MAX_TRAILING_BYTES = 2**20
_CHUNK = 2**20
# Reading errors that mean the archive itself is bad (BadGzipFile is an OSError,
# so it is named rather than catching every OSError, which would hide disk faults).
_CORRUPT = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile)


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
        raise DownloadError(f"cannot download {url!r}: {e}; check the URL") from None


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


MAX_HEADER_BYTES = 64 << 10  # a pax or GNU long-name header; real ones are a few hundred bytes


class _CappedTarInfo(tarfile.TarInfo):
    """Refuses a pax / GNU long-name header that declares more than :data:`MAX_HEADER_BYTES`
    before tarfile reads (and allocates) it: a hostile header may declare gigabytes."""

    def _proc_pax(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        self._cap()
        return super()._proc_pax(tarfile_)

    def _proc_gnulong(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        self._cap()
        return super()._proc_gnulong(tarfile_)

    def _cap(self) -> None:
        if self.size > MAX_HEADER_BYTES:
            raise tarfile.HeaderError(f"an extended header declares {self.size} bytes, over the cap of "
                                      f"{MAX_HEADER_BYTES} (MAX_HEADER_BYTES)")


def _open_tar(archive: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(archive, mode="r:gz", tarinfo=_CappedTarInfo)
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
            with tarfile.open(fileobj=gz, mode="r|", tarinfo=_CappedTarInfo) as tf:
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

