"""Atomic writes, hashing and stage manifests.

Every artefact is written to a temporary name in its final folder and renamed into
place, so a crash never leaves a half file under the real name. A stage's
``manifest.json`` is written last: a folder without a valid manifest is not a
finished artefact.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import glob
import hashlib
import json
import os
import platform
import secrets
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from har_vit.core.errors import ArtefactError, DiskError

MANIFEST = "manifest.json"
_UMASK = os.umask(0)
os.umask(_UMASK)


# Write failures a user can fix (space, permissions, a read-only mount): one line naming the path.
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EFBIG})


@contextlib.contextmanager
def disk_errors(path: str | os.PathLike) -> Iterator[None]:
    """Turn a write failure the user can fix into a DiskError naming ``path`` and what to do."""
    try:
        yield
    except OSError as e:
        if e.errno not in DISK_ERRNOS:
            raise
        where = e.filename or path
        raise DiskError(f"{where}: cannot write ({e.strerror or e}); free space, fix permissions or choose "
                        "another output folder - nothing half-written was kept") from None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    Every artefact is written through here: a failed write leaves no file and is a
    DiskError naming the path when the disk or the permissions are at fault.

    >>> with atomic_path("out.bin") as tmp:   # doctest: +SKIP
    ...     tmp.write_bytes(b"...")
    """
    path = Path(path)
    with disk_errors(path):
        with _atomic_path(path) as tmp:
            yield tmp


@contextlib.contextmanager
def _atomic_path(path: Path) -> Iterator[Path]:
    made: list[Path] = []  # the folders this write created, deepest first
    try:
        for d in reversed([d for d in (path.parent, *path.parent.parents) if not d.exists()]):
            try:
                d.mkdir()
            except FileExistsError:  # made meanwhile by another writer: theirs, not ours to remove
                continue
            made.insert(0, d)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; artefacts get the usual mode
        os.close(fd)
        tmp_path = Path(tmp)
        try:
            yield tmp_path
            with open(tmp_path, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp_path, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp_path.unlink()
            raise
    except BaseException:
        for d in made:  # deepest first: a failed write leaves no empty folders behind either
            with contextlib.suppress(OSError):
                d.rmdir()
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> Path:
    """Write arrays as an uncompressed ``.npz`` atomically (streamed: no copy in memory)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    return Path(path)


def load_npz(path: str | os.PathLike, required: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Load every array of an ``.npz``; a corrupt or incomplete file is an ArtefactError."""
    path = Path(path)
    if not path.is_file():
        raise ArtefactError(f"{path}: file not found; run the stage that writes it first")
    try:
        with np.load(path, allow_pickle=False) as z:
            out = {k: z[k] for k in z.files}
    except Exception as e:  # zipfile.BadZipFile, ValueError, EOFError, OSError...
        raise ArtefactError(f"{path}: unreadable or corrupt ({type(e).__name__}: {e}); delete it and re-run the stage that wrote it") from None
    missing = [k for k in required if k not in out]
    if missing:
        raise ArtefactError(f"{path}: missing arrays {missing}; re-run the stage that wrote it")
    return out


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def file_entry(path: str | os.PathLike) -> dict[str, Any]:
    """``{"path", "bytes", "sha256"}`` of a file, for manifests."""
    p = Path(path)
    return {"path": str(p), "bytes": p.stat().st_size, "sha256": sha256_file(p)}


def versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for mod in ("numpy", "pandas", "torch", "sklearn"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # pragma: no cover - optional at this point
            pass
    from har_vit import __version__

    out["har_vit"] = __version__
    return out


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def begin_stage(folder: str | os.PathLike, clean: bool = True) -> Path:
    """Create ``folder`` and drop any old manifest first: until the new manifest is
    written last, the folder reads as unfinished, never as the old result."""
    out = Path(folder)
    with disk_errors(out):
        out.mkdir(parents=True, exist_ok=True)
        (out / MANIFEST).unlink(missing_ok=True)
        if clean:  # only when the stage (re)starts: a write of its own may be in flight later
            remove_temp_files(out)
    return out


def remove_temp_files(folder: str | os.PathLike) -> int:
    """Delete the temporary files that killed :func:`atomic_path` writes left in ``folder``; returns how many.

    Called when a stage (re)starts in its folder, before it writes anything, so no live
    write of that stage can be among them.
    """
    n = 0
    for p in Path(folder).glob(".*.tmp"):
        if p.is_file():
            p.unlink(missing_ok=True)
            n += 1
    return n


@contextlib.contextmanager
def staged_folder(folder: str | os.PathLike) -> Iterator[Path]:
    """Build a stage folder aside and swap it into place only when the stage succeeded.

    Yields a fresh hidden folder beside ``folder``. On success its manifest's paths are
    rewritten to the final name and it replaces ``folder`` (the old one is removed after
    the swap); on failure it is removed and ``folder`` stays exactly as it was, so a
    failed stage never loses an earlier good result. Leftovers of killed stages (their
    process gone) are cleaned first, and an old folder caught mid-swap is put back.
    """
    final = Path(folder)
    with disk_errors(final):
        final.parent.mkdir(parents=True, exist_ok=True)
        clean_leftovers(final)
    tag = f"{os.getpid()}-{secrets.token_hex(3)}"
    tmp = final.parent / f".{final.name}.tmp-{tag}"
    with disk_errors(tmp):
        tmp.mkdir()
    try:
        yield tmp
        man = tmp / MANIFEST
        if man.is_file():
            write_text(man, man.read_text(encoding="utf-8").replace(str(tmp), str(final)))
        old = final.parent / f".{final.name}.old-{tag}"
        if final.exists():
            os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def clean_leftovers(folder: str | os.PathLike) -> None:
    """Remove what killed :func:`staged_folder` runs left beside ``folder``; restore a folder caught mid-swap."""
    final = Path(folder)
    if not final.parent.is_dir():
        return
    for p in final.parent.glob(f".{glob.escape(final.name)}.*-*-*"):
        kind, _, rest = p.name[len(final.name) + 2:].partition("-")
        pid = rest.split("-", 1)[0]
        if kind not in ("tmp", "old") or not pid.isdigit() or pid_alive(int(pid)):
            continue
        if kind == "old" and not final.exists():
            os.rename(p, final)  # killed between the two renames of a swap: the old result is the good one
        else:
            shutil.rmtree(p, ignore_errors=True)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (this one always does)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_manifest(folder: str | os.PathLike, stage: str, **fields: Any) -> Path:
    """Write ``folder/manifest.json`` last, atomically, with stage, time and versions."""
    body = {"stage": stage, "created": now_iso(), "versions": versions(), **fields}
    return write_json(Path(folder) / MANIFEST, body)


def read_manifest(folder: str | os.PathLike, stage: str | None = None) -> dict[str, Any]:
    """Read and check a stage manifest; a missing or corrupt one is an ArtefactError."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise ArtefactError(f"{path}: no manifest; {folder} is not a finished {stage or 'stage'} output - run that stage (again)")
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtefactError(f"{path}: corrupt manifest ({e}); re-run the stage that wrote it") from None
    if not isinstance(body, dict) or "stage" not in body:
        raise ArtefactError(f"{path}: not a har_vit manifest; re-run the stage that wrote it")
    if stage is not None and body["stage"] != stage:
        raise ArtefactError(f"{path}: is a '{body['stage']}' manifest, expected '{stage}'; pass the {stage} output folder")
    problems = manifest_problems(body)
    if problems:
        raise ArtefactError(f"{path}: malformed manifest ({'; '.join(problems)}); re-run the stage that wrote it")
    return body


# What every manifest must hold, and what each stage adds, by type: checked on every read.
_COMMON = {"stage": str, "created": str, "outputs": list}
_BY_STAGE: dict[str, dict[str, Any]] = {
    "ingest": {"records_total": int, "records_kept": int, "records_quarantined": dict, "class_names": list,
               "inputs": list},
    "windows": {"window": int, "step": int, "gap_s": (int, float), "windows_total": int, "class_names": list,
                "inputs": dict},
    "train": {"run_id": str, "model": str, "split": dict, "class_names": list, "inputs": dict},
    "evaluate": {"run_id": str, "accuracy": (int, float), "macro_f1": (int, float), "inputs": dict},
}


def manifest_problems(body: dict[str, Any]) -> list[str]:
    """Each way ``body`` breaks the manifest contract, one short phrase per problem (empty: fine).

    >>> manifest_problems({"stage": "x", "created": "now", "outputs": []})
    ['outputs is empty: a stage always writes something']
    """
    problems = []
    for key, kind in {**_COMMON, **_BY_STAGE.get(str(body.get("stage")), {})}.items():
        if key not in body:
            problems.append(f"{key} missing")
        elif not isinstance(body[key], kind) or isinstance(body[key], bool):
            problems.append(f"{key} is {type(body[key]).__name__}, expected "
                            f"{getattr(kind, '__name__', 'a number')}")
    outputs = body.get("outputs")
    if isinstance(outputs, list):
        if not outputs:
            problems.append("outputs is empty: a stage always writes something")
        for i, e in enumerate(outputs):
            if not (isinstance(e, dict) and isinstance(e.get("path"), str) and isinstance(e.get("bytes"), int)
                    and isinstance(e.get("sha256"), str) and len(e["sha256"]) == 64):
                problems.append(f"outputs[{i}] is not {{path, bytes, sha256}}")
    return problems


def verify_outputs(folder: str | os.PathLike, manifest: dict[str, Any]) -> None:
    """Check every output listed in a manifest still has its recorded size and sha256."""
    for entry in manifest.get("outputs", []):
        p = Path(folder) / Path(entry["path"]).name
        if not p.is_file():
            raise ArtefactError(f"{p}: listed in the manifest but missing; re-run the stage")
        if p.stat().st_size != entry["bytes"] or sha256_file(p) != entry["sha256"]:
            raise ArtefactError(f"{p}: does not match its manifest (size or sha256 differ: truncated or modified); re-run the stage")
