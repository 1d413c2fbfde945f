"""The model registry: a folder of stored runs and a ``production`` pointer.

Layout (default ``models/``)::

    models/
      production-<scope>.json  which run serves a dataset and class set (scope_of); replaced atomically
      retrain_history.jsonl    one line per retrain: promoted, kept, skipped or failed
      .lock                    flock()ed by whoever writes the registry
      runs/<run_id>/           a stored run, self-contained:
        best.pt  manifest.json  split.npz  history.json  history.csv  eval/
        windows/               its TEST windows only (a valid windows folder), so the
                               run can be evaluated and compared without the original data
        registry.json          data and config hashes, metrics summary, stored time

A stored run is written under a hidden temporary name and renamed into place, so a
killed store leaves nothing that looks like a run. Nothing here deletes a run.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from har_vit.core.errors import ArtefactError, LockedError, UsageError
from har_vit.core.io import (
    MANIFEST,
    file_entry,
    load_npz,
    now_iso,
    pid_alive,
    read_manifest,
    save_npz,
    write_json,
    write_manifest,
)
from har_vit.core.runs import find_model_dir
from har_vit.core.workspace import Workspace

PRODUCTION = "production.json"  # legacy single pointer; pointers are production-<scope>.json
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,200}")
HISTORY = "retrain_history.jsonl"
LOCK = ".lock"
RUNS = "runs"
# Files of a train run folder that a stored run keeps (last.pt is resume state: not needed).
_KEEP = ("best.pt", "history.json", "history.csv")


def scope_of(dataset: str, class_names: list[str] | tuple[str, ...]) -> str:
    """The production scope of a dataset and its classes: ``wisdm-6cls-<8 hex of the names>``.

    >>> scope_of("wisdm", ["Downstairs", "Jogging"])
    'wisdm-2cls-f12d2e5b'
    """
    h = hashlib.sha256("\n".join(map(str, class_names)).encode()).hexdigest()[:8]
    return f"{re.sub(r'[^A-Za-z0-9_.-]', '_', str(dataset))}-{len(class_names)}cls-{h}"


class Registry:
    """A registry folder. ``Registry("models").production()`` -> the serving run's entry or None.

    Without ``root``, the workspace's ``models/`` (:class:`har_vit.core.workspace.Workspace`).
    """

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = Path(root) if root is not None else Workspace.at().models

    # -- locking -------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, wait: float = 0.0) -> Iterator[None]:
        """Hold the registry's exclusive lock.

        ``wait=0`` (retrain: its lock covers the whole job) gives LockedError (exit 75) at
        once when another process holds it; a short write (storing a finished run) passes
        the seconds it may wait, and gets LockedError only when they run out.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / LOCK
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            deadline = time.monotonic() + wait
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as e:
                    if e.errno not in (errno.EAGAIN, errno.EACCES):
                        raise
                    if time.monotonic() >= deadline:
                        holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
                        waited = f" after waiting {wait:g} s" if wait else ""
                        raise LockedError(f"{path}: registry is locked by {holder}{waited}; another retrain is "
                                          "running - try again later") from None
                    time.sleep(0.05)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {now_iso()}".encode(), 0)
            yield
        finally:
            os.close(fd)  # closing releases the flock, also when the process is killed

    # -- runs --------------------------------------------------------------------------------
    def run_dir(self, run_id: str, source: Path | None = None) -> Path:
        """The folder of stored run ``run_id``; an id that is not a plain name is an ArtefactError.

        A run id comes from files a user or an attacker may edit (``production.json``), so it
        must be a plain folder name, and the folder, if present, a real directory inside
        ``runs/`` (not a symlink leading elsewhere).
        """
        if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id):
            where = source or self.root
            raise ArtefactError(f"{where}: run id {run_id!r} is not a plain folder name (letters, digits, "
                                f"'.', '_', '-'); restore the pointer from {HISTORY}")
        d = self.root / RUNS / run_id
        if d.is_symlink():
            raise ArtefactError(f"{d}: a stored run must be a folder, not a symlink; remove the link")
        return d

    def runs(self) -> list[str]:
        d = self.root / RUNS
        return sorted(p.name for p in d.iterdir() if p.is_dir() and not p.name.startswith(".")) if d.is_dir() else []

    def store(self, run_dir: str | os.PathLike, run_id: str, **info: Any) -> Path:
        """Copy a trained and evaluated run folder into ``runs/<run_id>`` (self-contained)."""
        from har_vit.stages.windows import load_windows

        src = Path(run_dir)
        man = read_manifest(src, "train")
        dest = self.run_dir(run_id)
        if dest.exists():
            raise UsageError(f"{dest}: a run with id {run_id} is already stored; runs are never overwritten")
        _clean_stale_stores(dest.parent)
        tmp = dest.parent / f".{run_id}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            for name in _KEEP:
                if (src / name).is_file():
                    shutil.copy2(src / name, tmp / name)
            if (src / "eval").is_dir():
                shutil.copytree(src / "eval", tmp / "eval")
            # Keep only the test windows, re-indexed, so the stored run is evaluable on its own.
            w = load_windows(man["inputs"]["upstream"])
            test = load_npz(src / "split.npz", ("test",))["test"].astype(np.int64)
            _store_test_windows(w, test, tmp / "windows")
            empty = np.zeros(0, np.int64)
            save_npz(tmp / "split.npz", train=empty, val=empty, test=np.arange(test.size, dtype=np.int64))
            stored = dict(man)
            stored["inputs"] = {**man.get("inputs", {}), "upstream": str(dest.resolve() / "windows"),
                                "original_upstream": man["inputs"]["upstream"]}
            stored["outputs"] = [file_entry(tmp / n) | {"path": n} for n in (*_KEEP, "split.npz") if (tmp / n).is_file()]
            for k in ("stage", "created", "versions"):
                stored.pop(k, None)
            write_json(tmp / "registry.json", {"run_id": run_id, "stored": now_iso(), "source": str(src.resolve()),
                                               **info})
            write_manifest(tmp, "train", **stored)
            _fix_eval_upstream(tmp, dest)
            os.replace(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return dest

    def entry(self, run_id: str) -> dict[str, Any]:
        d = self.run_dir(run_id)
        try:
            return json.loads((d / "registry.json").read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ArtefactError(f"{d}/registry.json: unreadable ({e}); the stored run is damaged") from None

    # -- production pointers ---------------------------------------------------------------------
    # One production model per scope: a dataset and its class set (a model for WISDM v1.1's six
    # activities cannot serve WISDM 2019's eighteen). Each scope has its pointer file,
    # ``production-<scope>.json``; a legacy ``production.json`` is read as a scope of its own.
    def pointers(self) -> dict[str, Path]:
        """Every production pointer file by scope ('' for a legacy ``production.json``)."""
        found = {}
        for f in sorted(self.root.glob("production*.json")) if self.root.is_dir() else []:
            scope = f.stem[len("production-"):] if f.stem.startswith("production-") else ""
            if f.stem == "production" or scope:
                found[scope] = f
        return found

    def production(self, scope: str | None = None) -> dict[str, Any] | None:
        """The production pointer (``run_id``, ``promoted``, ``reason``, ``scope``) of ``scope``, or None.

        Without ``scope``: the only pointer there is; several are a UsageError naming them.
        """
        pointers = self.pointers()
        if scope is None:
            if len(pointers) > 1:
                names = ", ".join(f"production-{s}" if s else "production" for s in pointers)
                raise UsageError(f"{self.root}: one production model per dataset ({names}); pass --run with one "
                                 "of these names, or a run id")
            p = next(iter(pointers.values()), None)
        else:
            p = pointers.get(scope)
        if p is None or not p.is_file():
            return None
        try:
            body = json.loads(p.read_text())
            if not (self.run_dir(body["run_id"], p) / "best.pt").is_file():
                raise KeyError("run missing")
        except (OSError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
            raise ArtefactError(f"{p}: unreadable or points at a missing run ({e}); restore it from "
                                f"{HISTORY} (each promotion is recorded there)") from None
        return body

    def promote(self, run_id: str, reason: str, scope: str) -> dict[str, Any]:
        """Point ``scope``'s production at ``run_id`` with one atomic rename."""
        if not (self.run_dir(run_id) / "best.pt").is_file():
            raise ArtefactError(f"{self.run_dir(run_id)}: not a stored run; cannot promote it")
        body = {"run_id": run_id, "scope": scope, "promoted": now_iso(), "reason": reason}
        write_json(self.root / f"production-{scope}.json", body)
        return body

    def resolve(self, spec: str | os.PathLike, runs_dir: str | os.PathLike | None = None) -> Path:
        """``production`` (or ``production-<scope>``), a stored run id, or a run folder (or any folder
        inside one) -> the trained model's folder. ``runs_dir`` is where to look for runs to suggest."""
        spec = str(spec)
        if spec == "production" or (spec.startswith("production-") and spec[len("production-"):] in self.pointers()):
            prod = self.production(None if spec == "production" else spec[len("production-"):])
            if prod is None:
                raise UsageError(f"{self.root}: no production model yet; run 'pipeline.py run' or 'retrain' first, "
                                 "or pass a run folder to --run")
            return self.run_dir(prod["run_id"])
        if _RUN_ID.fullmatch(spec) and self.run_dir(spec).is_dir():
            return self.run_dir(spec)
        if Path(spec).exists():
            return find_model_dir(spec, runs_dir)
        stored = ", ".join(self.runs()[-3:]) or "none yet"
        raise UsageError(f"--run {spec}: neither 'production', a run id in {self.root / RUNS} (stored: {stored}), "
                         "nor a folder; pass the run folder that 'pipeline.py run' printed (runs/<run id>)")

    # -- history ----------------------------------------------------------------------------------
    def history(self) -> list[dict[str, Any]]:
        p = self.root / HISTORY
        if not p.is_file():
            return []
        out = []
        for line in p.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut by a crash mid-append: skip it, keep the rest
        return out

    def append_history(self, record: dict[str, Any]) -> None:
        """Append one JSON line (O_APPEND, fsync); a torn last line is skipped by history()."""
        self.root.mkdir(parents=True, exist_ok=True)
        line = (json.dumps({"time": now_iso(), **record}, default=str) + "\n").encode()
        fd = os.open(self.root / HISTORY, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)


def _clean_stale_stores(runs: Path) -> None:
    """Remove the hidden half-stored runs of killed processes (``.<run id>.tmp-<pid>``)."""
    for p in runs.glob(".*.tmp-*") if runs.is_dir() else []:
        pid = p.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)


def _store_test_windows(w: dict[str, Any], test: np.ndarray, out: Path) -> None:
    from har_vit.stages.windows import WindowConfig, write_windows

    m = w["manifest"]
    arrays = {k: w[k][test] for k in ("X", "y", "subject", "bout", "start", "timestamp")}
    arrays["class_names"] = w["class_names"]
    cfg = WindowConfig(**{k: v for k, v in m.get("config", {}).items() if k in ("window", "step", "gap_s", "ts_per_s")})
    write_windows(cfg, arrays, out, {"upstream": None, "test_windows_of": m.get("inputs", {}).get("upstream"),
                              "dataset": m.get("inputs", {}).get("dataset")},
           {"test_only": True}, time.perf_counter())


def _fix_eval_upstream(tmp: Path, dest: Path) -> None:
    """The copied eval manifest names the original run folder; point it at the stored one."""
    p = tmp / "eval" / MANIFEST
    if p.is_file():
        body = json.loads(p.read_text())
        body.setdefault("inputs", {})["upstream"] = str(dest.resolve())
        write_json(p, body)
