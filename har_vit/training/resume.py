"""A training run's resume state: what ``last.pt`` holds, how it is written, when a resume is allowed.

``RunState`` is where a run stands after its last finished epoch; ``epoch_files`` writes
an epoch's checkpoints and history on the ``CheckpointWriter``'s background thread;
``check_resumable`` refuses a resume with other options, data or device kind.
"""
from __future__ import annotations

import csv
import io
import json
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
from torch import nn

from har_vit.core.checkpoint import save_checkpoint
from har_vit.core.errors import UsageError
from har_vit.core.io import write_json, write_text
from har_vit.core.schema import as_dict
from har_vit.training.rng import rng_state

if TYPE_CHECKING:
    from har_vit.stages.train import TrainConfig
    from har_vit.training.average import WeightEMA
    from har_vit.training.loop import Data

HISTORY_FIELDS = ("epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "val_macro_f1", "seconds",
                  "windows_per_s")
# Options that change how a run executes, not what it computes: a resume may change them.
RUNTIME_ONLY = ("device", "compile", "cuda_graph", "threads", "progress", "eval_batch_size")


def cpu_copy(obj: Any) -> Any:
    """A snapshot of nested dicts/lists of tensors on the CPU, safe from the training that continues."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(cpu_copy(v) for v in obj)
    return obj


def _comparable(x: Any) -> Any:
    # Checkpoints give tuples or lists depending on the path they took; compare as JSON sees them.
    return json.loads(json.dumps(x))


def check_resumable(ckpt: dict[str, Any], cfg: TrainConfig, device: torch.device, data: Data, path: Path) -> None:
    """A resume must continue the same computation: same options, data and device kind."""
    saved, now = ckpt.get("train_config", {}), as_dict(cfg)
    diff = [f"{k}={saved.get(k)!r} (now {now[k]!r})" for k in now
            if k not in RUNTIME_ONLY and _comparable(saved.get(k)) != _comparable(now[k])]
    if diff:
        raise UsageError(f"{path}: cannot resume with different options: {', '.join(diff)}; pass the run's "
                         "original options (see its train_config), or start a new run in another folder")
    if ckpt.get("windows_sha256") != data.windows_entry["sha256"]:
        raise UsageError(f"{path}: the run was trained on another windows.npz (sha256 "
                         f"{str(ckpt.get('windows_sha256'))[:12]}..., now {data.windows_entry['sha256'][:12]}...); "
                         "resume on the original windows folder, or start a new run")
    if ckpt.get("device_type") != device.type:
        raise UsageError(f"{path}: the run trained on {ckpt.get('device_type')} and would resume on {device.type}; "
                         f"the shuffling RNG is device-specific: pass --device {ckpt.get('device_type')}")


class CheckpointWriter:
    """Writes each epoch's files on one background thread, in submission order.

    Serialising and fsyncing a checkpoint takes long next to a GPU epoch of WISDM, so
    the next epoch trains meanwhile. Callers hand over CPU snapshots (:func:`cpu_copy`),
    never live tensors. A failed write re-raises at the next submit or at close.
    """

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="har_vit-ckpt")
        self._pending: Future | None = None

    def submit(self, fn: Callable[[], Any]) -> None:
        self.wait()  # at most one epoch in flight: memory stays bounded and errors surface early
        self._pending = self._pool.submit(fn)

    def check(self) -> None:
        """Raise now if the write in flight has already failed (without waiting for it)."""
        if self._pending is not None and self._pending.done() and self._pending.exception() is not None:
            self.wait()

    def wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._pool.shutdown(wait=True)


def write_history(out: Path, history: list[dict[str, Any]], lead: Sequence[str] = ()) -> None:
    """``history.json`` and ``history.csv``; ``lead``: columns before the epoch's (an ensemble's member, seed)."""
    write_json(out / "history.json", history)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=(*lead, *HISTORY_FIELDS), lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    write_text(out / "history.csv", buf.getvalue())


@dataclass
class RunState:
    """Where a run stands after its last finished epoch; saved in ``last.pt``, restored on resume."""

    run_id: str
    epoch: int = 0  # last finished epoch, 1-based (0: none yet)
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=lambda: {"epoch": 0, "val_macro_f1": -1.0})
    train_seconds: float = 0.0
    stopped_early: bool = False

    def to_ckpt(self) -> dict[str, Any]:
        """A copy for a checkpoint (the live lists keep growing while the writer thread saves)."""
        return {"run_id": self.run_id, "epoch": self.epoch, "history": [dict(h) for h in self.history],
                "best": dict(self.best), "train_seconds": self.train_seconds, "stopped_early": self.stopped_early}

    @classmethod
    def from_ckpt(cls, ckpt: dict[str, Any]) -> RunState:
        return cls(ckpt["run_id"], int(ckpt["epoch"]), list(ckpt["history"]), dict(ckpt["best"]),
                   float(ckpt["train_seconds"]), bool(ckpt["stopped_early"]))


def checkpoint_header(cfg: TrainConfig, model: nn.Module, data: Data, device: torch.device) -> dict[str, Any]:
    """What every checkpoint of a run carries besides its weights: enough to rebuild and serve the model."""
    return {"model_name": model.name, "model_kwargs": model.kwargs, "class_names": data.class_names,
            "norm": data.norm, "train_config": as_dict(cfg), "device_type": device.type,
            "windows_sha256": data.windows_entry["sha256"]}


def epoch_files(out: Path, fixed: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                shuffle: torch.Generator, device: torch.device, state: RunState, improved: bool,
                augment: torch.Generator | None = None, dropout: torch.Generator | None = None,
                ema: WeightEMA | None = None) -> Callable[[], None]:
    """Snapshot the epoch's state now; return the function that writes its files (on the writer thread).

    ``dropout``: the generator of this run's dropout masks when it is not torch's global
    one (a model trained in a stack, :mod:`har_vit.training.stacked`). ``ema``: the
    averaged weights, which both files then hold as ``model``; ``last.pt`` keeps the live
    ones under ``ema``.
    """
    served = ema.model if ema is not None else model
    light = {**fixed, "model": cpu_copy(served.state_dict()), "epoch": state.epoch,
             "val": {k: state.history[-1][k] for k in ("val_loss", "val_acc", "val_macro_f1")}}
    full = {**light, **state.to_ckpt(), "optimizer": cpu_copy(optimizer.state_dict()),
            "scheduler": cpu_copy(scheduler.state_dict()), "rng": cpu_copy(rng_state(shuffle, device, augment, dropout)),
            **({"ema": cpu_copy(ema.state())} if ema is not None else {})}

    def write() -> None:
        # Order matters for a kill between writes: best.pt before last.pt, so last.pt never
        # records a best epoch whose weights best.pt does not hold yet. A resume from an
        # older last.pt re-runs the epoch and rewrites the same files.
        if improved:
            save_checkpoint(out / "best.pt", light)
        write_history(out, full["history"])
        save_checkpoint(out / "last.pt", full)

    return write

