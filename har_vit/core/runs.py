"""A trained run as a user points at it: its model, checkpoint, manifest and windowing.

``predict``, ``export`` and ``evaluate`` load runs through :func:`load_run`;
:func:`window_settings` says how new raw logs must be cut to match what the model saw.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from har_vit.core import schema
from har_vit.core.checkpoint import load_model, served
from har_vit.core.errors import ArtefactError, UsageError
from har_vit.core.io import MANIFEST, read_manifest, verify_outputs

FALLBACK_GAP_S = schema.OPTIONS["gap_s"].default  # what every run used unless told otherwise
TS_PER_S = schema.OPTIONS["ts_per_s"].default


MODEL_DIR = "model"  # the train stage's folder inside a run folder made by ``pipeline.py run``
_CLIMB = 3  # how far above the given folder a run folder is looked for (model/eval/plots -> run)


def is_model_dir(folder: Path) -> bool:
    """A train stage's folder: its manifest says stage ``train``, or it holds ``best.pt`` (an unfinished run)."""
    try:
        return json.loads((folder / MANIFEST).read_text(encoding="utf-8")).get("stage") == "train"
    except (OSError, ValueError, AttributeError):
        return (folder / "best.pt").is_file()


def find_model_dir(path: str | os.PathLike, runs_dir: str | os.PathLike | None = None) -> Path:
    """The trained model's folder for a run folder or any folder inside it.

    ``runs/<id>`` (what ``pipeline.py run`` prints), ``runs/<id>/model``, ``runs/<id>/model/eval``,
    ``runs/<id>/windows`` and a stored registry run all lead to the folder holding the train
    manifest and ``best.pt``. Anything else is a UsageError that names runs that would work,
    found in ``runs_dir`` (the workspace's ``runs/``).
    """
    given = Path(path)
    if not given.exists():
        raise UsageError(f"--run {given}: no such folder; {_runs_hint(runs_dir)}")
    if not given.is_dir():
        raise UsageError(f"--run {given}: is a file; pass the run folder that 'pipeline.py run' printed "
                         f"(runs/<run id>), not a file inside it; {_runs_hint(runs_dir)}")
    here = given.resolve()
    for folder in [here, *here.parents][: _CLIMB + 1]:
        for candidate in (folder, folder / MODEL_DIR):
            if candidate.is_dir() and is_model_dir(candidate):
                return candidate if candidate.resolve() != here else given
    raise UsageError(f"--run {given}: no trained model (train manifest, best.pt) in it or in the folders above it; {_runs_hint(runs_dir)}")


def _runs_hint(runs_dir: str | os.PathLike | None) -> str:
    """Advice that works: the newest runs of the workspace, or how to make one."""
    from har_vit.core.workspace import Workspace

    runs = Path(runs_dir) if runs_dir is not None else Workspace.at().runs
    found = sorted((d for d in runs.iterdir() if d.is_dir() and is_model_dir(d / MODEL_DIR)),
                   key=lambda d: d.stat().st_mtime, reverse=True) if runs.is_dir() else []
    if not found:
        return (f"no trained runs in {runs}; train one with 'pipeline.py run' (or pass --workdir where your "
                "runs are)")
    names = ", ".join(str(d) for d in found[:3])
    return f"pass a run folder, e.g. {names}" + (f" ({len(found)} runs in {runs})" if len(found) > 3 else "")


@dataclass
class RunInfo:
    """A trained model and what its run folder says about it."""

    model: nn.Module  # eval mode, on the CPU
    ckpt: dict[str, Any]
    ckpt_path: Path
    manifest: dict[str, Any] | None  # the train manifest; None when the run never finished
    windows_dir: Path | None  # the windows folder it was trained on, None when the manifest names none
    class_names: list[str]
    run_id: str
    notes: list[str] = field(default_factory=list)  # what the user should know (fallbacks)


def load_run(model_dir: str | Path, which: str = "served") -> RunInfo:
    """Load checkpoint ``which`` (best, last, or served: the one the run serves) of a train run folder and
    read its manifest.

    A folder without the checkpoint is an ArtefactError. A missing train manifest
    (a run stopped before its end; ``best.pt`` is still a complete file) is allowed and
    noted; a corrupt one, or a manifest of another stage, is an ArtefactError.
    """
    model_dir = Path(model_dir)
    which = served(model_dir, which)
    if not model_dir.is_dir():
        raise ArtefactError(f"{model_dir}: model folder not found; pass a train run folder (holding {which}.pt)")
    notes = []
    manifest = None
    if (model_dir / MANIFEST).is_file():
        manifest = read_manifest(model_dir, "train")
        verify_outputs(model_dir, manifest)  # first: the checkpoint must be the one the manifest vouches for
    else:
        notes.append(f"{model_dir}: no train manifest (the run did not finish); using {which}.pt as it is")
    model, ckpt = load_model(model_dir, which)
    if "norm" not in ckpt or {"mean", "std"} - set(ckpt["norm"]):
        raise ArtefactError(f"{model_dir / (which + '.pt')}: checkpoint has no normalisation (norm.mean/std); "
                            "retrain with 'pipeline.py train'")
    num_classes = model.cfg.num_classes
    names = [str(c) for c in ckpt.get("class_names") or (manifest or {}).get("class_names") or []]
    if len(names) != num_classes:
        raise ArtefactError(f"{model_dir / (which + '.pt')}: {len(names)} class names for a model with "
                            f"{num_classes} outputs; retrain the run")
    inputs = (manifest or {}).get("inputs")
    up = inputs.get("upstream") if isinstance(inputs, Mapping) else None
    run_id = str((manifest or {}).get("run_id") or model_dir.resolve().name)
    return RunInfo(model, ckpt, model_dir / f"{which}.pt", manifest, Path(up) if up else None, names, run_id, notes)


@dataclass(frozen=True)
class WindowSettings:
    window: int
    step: int
    gap_s: float
    ts_per_s: float
    source: str  # where they came from: the windows manifest, or "fallback: <why>"

    @property
    def max_gap(self) -> float:
        """Largest step between two records of one bout, in timestamp units."""
        return self.gap_s * self.ts_per_s


def window_settings(run: RunInfo) -> WindowSettings:
    """The window, step and gap the model was trained with (see the module docstring)."""
    T = int(run.model.cfg.window)
    wdir = run.windows_dir
    if wdir is not None and wdir.exists():
        m = read_manifest(wdir, "windows")  # present but unfinished or corrupt: an ArtefactError, not a guess
        try:
            window, step, gap = int(m["window"]), int(m["step"]), float(m["gap_s"])
        except (KeyError, TypeError, ValueError):
            raise ArtefactError(f"{wdir / MANIFEST}: no window/step/gap_s; re-run the windows stage") from None
        ts_per_s = float((m.get("config") or {}).get("ts_per_s", TS_PER_S))
        if window != T:
            raise ArtefactError(f"{wdir / MANIFEST}: window {window} but the model in {run.ckpt_path} takes {T} "
                                "samples; the run's windows folder was rebuilt after training - retrain")
        return WindowSettings(window, step, gap, ts_per_s, f"windows manifest {wdir / MANIFEST}")
    why = (f"the run's windows folder {wdir} is gone" if wdir is not None
           else "the run names no windows folder")
    step = max(T // 2, 1)
    note = (f"{why}: windowing with the checkpoint's window {T} and gap {FALLBACK_GAP_S} s "
            "(fallback; the model may have been trained with another gap)")
    run.notes.append(note)
    return WindowSettings(T, step, FALLBACK_GAP_S, TS_PER_S, f"fallback: {why}")
