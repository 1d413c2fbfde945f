"""Train stage: a windows folder -> a run folder with checkpoints, history and a manifest.

The loop's pieces (data kept on the device, optimizer, one step, one epoch) are in
:mod:`har_vit.training.loop`, the resume state and checkpoint writing in
:mod:`har_vit.training.resume`, the RNG state in :mod:`har_vit.training.rng`; this
module is the stage: options, the epoch loop, the manifest.

Only the train split shapes the model (normalisation statistics, class weights,
gradients) and only the validation split picks ``best.pt`` and stops early. The test
split is written to ``split.npz`` and never read here: ``evaluate`` scores it.

Run folder (docs/architecture.md): ``last.pt`` (full resume state, every epoch),
``best.pt`` (best validation macro F1), ``history.json`` / ``history.csv``,
``split.npz`` and ``manifest.json`` (written last).

``run(..., resume=True)`` continues from ``last.pt``; on CPU the result is bit-identical
to an uninterrupted run. Under ``torchrun --nproc_per_node N`` the same call trains with
DistributedDataParallel, each rank taking its slice of every global batch.

>>> manifest = run(TrainConfig(model="tiny", epochs=2), "out/windows", "out/runs/tiny")  # doctest: +SKIP
>>> manifest["epochs_run"], manifest["best_epoch"], manifest["device"]                   # doctest: +SKIP
(2, 2, 'cpu')
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from har_vit.core import schema
from har_vit.core.checkpoint import save_checkpoint
from har_vit.core.efficiency import device_label, resolve_device
from har_vit.core.errors import UsageError
from har_vit.core.io import begin_stage, read_manifest, save_npz
from har_vit.core.runid import new_run_id
from har_vit.model.variants import CLASSICAL
from har_vit.training import distributed
from har_vit.training.augment import AugmentConfig
from har_vit.training.distributed import DistContext
from har_vit.training.graphs import graphed_step_or_none
from har_vit.training.loop import Data, epoch_batches, evaluate_split, prepare_data, train_epoch, train_step
from har_vit.training.members import train_members
from har_vit.training.objective import set_frozen
from har_vit.training.parts import (
    build_parts,
    check_run_folder,
    end_epoch,
    levers_of,
    restore,
    set_up_process,
    write_run_manifest,
)
from har_vit.training.resume import CheckpointWriter, RunState, checkpoint_header, epoch_files, write_history


@schema.config("train")
class TrainConfig:
    """Everything that defines a training run: the ``train`` options of :mod:`har_vit.core.schema`.

    Defaults: AdamW, warm-up + cosine, subject split, light augmentation: small rotations
    (full ones would hide the direction of gravity, which tells sitting from standing),
    scaling and time warp; no jitter since 2026-12-02 (see the ``jitter`` option).
    """

    def augment_config(self) -> AugmentConfig:
        return AugmentConfig(**{o.name: getattr(self, o.name) for o in schema.group_options("augment")})

    def check(self) -> list[str]:
        bad = []
        if self.min_lr > self.lr:
            bad.append(f"min_lr ({self.min_lr:g}) must be <= lr ({self.lr:g})")
        if self.freeze_epochs and not self.init:
            bad.append(f"freeze_epochs ({self.freeze_epochs}) needs --init")
        if self.val_frac + self.test_frac >= 1:
            bad.append(f"val_frac + test_frac ({self.val_frac:g} + {self.test_frac:g}) must be < 1")
        return bad


# --- the stage -------------------------------------------------------------------------------------


def run(cfg: TrainConfig, windows_dir: str | Path, out_dir: str | Path, resume: bool = False, *,
        stop_after: int | None = None) -> dict[str, Any]:
    """Train ``cfg.model`` on the windows in ``windows_dir``; write the run folder ``out_dir``.

    Returns the manifest. ``resume=True`` continues from ``out_dir/last.pt`` with the same
    options. ``stop_after=k`` ends this call after epoch k's checkpoint, as a kill would
    (no manifest: the run is unfinished), and returns ``{"finished": False, ...}``; continue
    it with ``resume=True``. Under torchrun every rank calls this; rank 0 writes the folder
    and every rank returns its manifest.
    """
    ctx = distributed.from_env()
    device = resolve_device(cfg.device)  # UsageError for cuda without a GPU
    owned = ctx.enabled and not torch.distributed.is_initialized()
    device = distributed.setup(ctx, device)
    try:
        return _run(cfg, Path(windows_dir), Path(out_dir), resume, stop_after, ctx, device)
    finally:
        distributed.teardown(ctx, owned)


def _run(cfg: TrainConfig, windows_dir: Path, out: Path, resume: bool, stop_after: int | None,
         ctx: DistContext, device: torch.device) -> dict[str, Any]:
    set_up_process(cfg, device)
    if cfg.members > 1:
        if stop_after is not None:
            raise UsageError("stop_after trains one network; an ensemble's members stop and resume one by one")
        return train_members(cfg, windows_dir, out, resume, ctx, device)
    last_path = check_run_folder(out, resume)

    data = prepare_data(cfg, windows_dir, ctx, device)
    if cfg.model in CLASSICAL:
        return _fit_classical(cfg, windows_dir, out, data, ctx, device)
    parts = build_parts(cfg, data, device, ctx)
    n_train, steps = data.X_train.shape[0], parts.steps
    model, optimizer, scheduler, loss_fn = parts.model, parts.optimizer, parts.scheduler, parts.loss_fn
    shuffle, aug_gen = parts.shuffle, parts.aug_gen

    state = RunState(new_run_id(cfg.model, cfg.split, f"s{cfg.seed}"))
    if resume:
        state = restore(parts, cfg, data, last_path, device, ctx)

    train_model: nn.Module = model
    if ctx.enabled:
        # DDP averages gradients over ranks; with equal shards and a per-sample-mean loss
        # that is exactly the gradient of the global batch.
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        train_model = torch.compile(train_model)
    graphed = graphed_step_or_none(model, optimizer, loss_fn, device, cfg.cuda_graph, ctx.enabled, cfg.compile)

    if ctx.is_main:
        print(f"har_vit train: device {device.type} ({device_label(device)}), {ctx.world} process(es); model "
              f"{cfg.model} ({model.num_params():,} params); {n_train} train / {data.X_val.shape[0]} val windows, "
              f"{steps} steps/epoch" + (f"; resuming after epoch {state.epoch}" if resume else ""), file=sys.stderr)
        begin_stage(out)  # a stale manifest must not vouch for a run being rewritten
        save_npz(out / "split.npz", train=data.split.train, val=data.split.val, test=data.split.test)

    fixed = checkpoint_header(cfg, model, data, device)
    writer = CheckpointWriter() if ctx.is_main else None
    stop = torch.zeros((), dtype=torch.int64, device=device)
    try:
        while (state.epoch < cfg.epochs and not state.stopped_early
               and (stop_after is None or state.epoch < stop_after)):
            epoch, t0 = state.epoch + 1, time.perf_counter()
            lr = float(optimizer.param_groups[0]["lr"])  # a device tensor under a CUDA graph
            if cfg.freeze_epochs:
                set_frozen(model, epoch <= cfg.freeze_epochs)  # from the epoch alone: a resume agrees
            batches = epoch_batches(n_train, cfg.batch_size, shuffle, device, ctx)
            bar = tqdm(total=steps, desc=f"epoch {epoch}/{cfg.epochs}", unit="batch", file=sys.stderr,
                       disable=not (cfg.progress and ctx.is_main), dynamic_ncols=True)
            loss_sum, correct = train_epoch(train_model, optimizer, scheduler, loss_fn, data.X_train, data.y_train,
                                            batches, device, bar, writer.check if writer is not None else None,
                                            step=graphed or train_step, ema=parts.ema)
            totals = distributed.all_reduce_sum(torch.stack([loss_sum, correct.double()]), ctx).tolist()  # syncs
            train_s, seen = time.perf_counter() - t0, steps * cfg.batch_size
            state.epoch = epoch
            if ctx.is_main:
                row, improved = end_epoch(cfg, state, data, parts.served, device, lr, totals, seen, train_s, t0)
                bar.set_postfix(loss=f"{row['train_loss']:.4f}", val_acc=f"{row['val_acc']:.4f}",
                                val_f1=f"{row['val_macro_f1']:.4f}", refresh=False)
                writer.submit(epoch_files(out, fixed, model, optimizer, scheduler, shuffle, device, state, improved,
                                          aug_gen, ema=parts.ema))
                stop.fill_(int(state.stopped_early))
            bar.close()
            # Every rank must leave the loop together, and rank 0 alone knows whether to stop.
            state.stopped_early = bool(distributed.broadcast(stop, ctx).item())
    finally:
        if writer is not None:
            writer.close()  # the last epoch's files are on disk before the manifest vouches for them

    if not (state.stopped_early or state.epoch >= cfg.epochs):
        return {"stage": "train", "finished": False, "epochs_run": state.epoch, "run_id": state.run_id}
    if ctx.is_main:
        write_run_manifest(cfg, out, windows_dir, data, model, device, ctx, state,
                           {**levers_of(parts), "training_step": step_mode(graphed)})
    distributed.barrier(ctx)  # the other ranks return once the run folder is complete
    return read_manifest(out, "train")



def step_mode(graphed: Any) -> str:
    """The manifest's word for how the steps ran: ``"cuda graph"`` or ``"eager"`` (with why, when a graph was wanted)."""
    if graphed is None:
        return "eager"
    if graphed.failed is not None:
        return f"eager (cuda graph capture failed: {graphed.failed})"
    return "cuda graph" if graphed.graph is not None else "eager (the run ended within the cuda graph's warm-up steps)"


def _fit_classical(cfg: TrainConfig, windows_dir: Path, out: Path, data: Data, ctx: DistContext,
                   device: torch.device) -> dict[str, Any]:
    """``--model rf``: fit the forest on the train split in one go; the run folder has the networks' contract."""
    from har_vit.model.forest import fit_forest

    if ctx.enabled:
        raise UsageError("--model rf fits on one process; run it without torchrun")
    t0 = time.perf_counter()
    model = fit_forest(data.X_train, data.y_train.cpu().numpy(), len(data.class_names), cfg.seed,
                       threads=cfg.threads, norm=data.norm)
    fit_s = time.perf_counter() - t0
    row = {"epoch": 1, "lr": 0.0, "train_loss": float("nan"), "train_acc": float("nan"),
           **evaluate_split(model, data.X_val.cpu(), data.y_val.cpu(), cfg.eval_batch_size, torch.device("cpu"))}
    row.update(seconds=time.perf_counter() - t0, windows_per_s=data.X_train.shape[0] / fit_s)
    state = RunState(new_run_id(cfg.model, cfg.split, f"s{cfg.seed}"), epoch=1, history=[row],
                     best={"epoch": 1, "val_macro_f1": row["val_macro_f1"]}, train_seconds=row["seconds"])
    begin_stage(out)
    save_npz(out / "split.npz", train=data.split.train, val=data.split.val, test=data.split.test)
    light = {**checkpoint_header(cfg, model, data, torch.device("cpu")), "model": model.state_dict(), "epoch": 1,
             "val": {k: row[k] for k in ("val_loss", "val_acc", "val_macro_f1")}}
    save_checkpoint(out / "best.pt", light)
    write_history(out, state.history)
    save_checkpoint(out / "last.pt", {**light, **state.to_ckpt()})
    print(f"har_vit train: rf fitted on {data.X_train.shape[0]} train windows in {fit_s:.1f} s on the CPU; "
          f"val macro F1 {row['val_macro_f1']:.4f}", file=sys.stderr)
    write_run_manifest(cfg, out, windows_dir, data, model, torch.device("cpu"), ctx, state,
                       {"augment": None, "teacher": None, "init": None, "training_step": "fit"})
    return read_manifest(out, "train")
