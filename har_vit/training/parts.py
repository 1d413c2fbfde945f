"""One training run's parts, built the same way whether it trains alone or in a stack.

``build_parts`` makes the model (seeded initialisation), optimizer, schedule, objective
and generators of a run; ``restore`` loads ``last.pt`` into them; ``end_epoch`` validates
and books an epoch; ``write_run_manifest`` writes the run folder's manifest.
``har_vit.stages.train`` drives them for one model, :mod:`har_vit.training.stacked` for
many at once.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn

from har_vit.core.checkpoint import load_checkpoint
from har_vit.core.efficiency import device_label
from har_vit.core.errors import UsageError
from har_vit.core.io import MANIFEST, file_entry, write_manifest
from har_vit.core.schema import as_dict
from har_vit.model import create_model
from har_vit.training import distributed
from har_vit.training.augment import AugmentConfig, Augmenter
from har_vit.training.average import WeightEMA
from har_vit.training.distributed import DistContext
from har_vit.training.graphs import make_plain
from har_vit.training.loop import Data, autocast_for, build_optimizer, build_scheduler, evaluate_split, make_loss
from har_vit.training.objective import Objective, load_init, load_teacher
from har_vit.training.resume import RunState, check_resumable
from har_vit.training.rng import set_rng_state

if TYPE_CHECKING:
    from har_vit.stages.train import TrainConfig

def set_up_process(cfg: TrainConfig, device: torch.device) -> None:
    """Process-wide settings of training: torch's CPU threads, TF32 for what autocast leaves in fp32."""
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")


def check_run_folder(out: Path, resume: bool) -> Path:
    """``out/last.pt``, once ``out`` is known to fit: resumable when ``resume``, else not a run yet."""
    last_path = out / "last.pt"
    if resume and not last_path.is_file():
        raise UsageError(f"{last_path}: nothing to resume; run without --resume to start training in {out}")
    if not resume and (last_path.exists() or (out / MANIFEST).exists()):
        raise UsageError(f"{out} already holds a training run; pass --resume to continue it, or choose a new --out folder")
    return last_path


@dataclass
class Parts:
    """One run's model and everything that steps it, built the same way alone or in a stack."""

    model: nn.Module
    optimizer: torch.optim.AdamW
    scheduler: Any
    loss_fn: Callable
    shuffle: torch.Generator  # the epoch permutations
    aug_gen: torch.Generator | None  # the augmentation stream
    aug_cfg: AugmentConfig
    teacher: Any
    init_info: dict[str, Any] | None
    steps: int  # optimizer steps per epoch
    ema: WeightEMA | None = None  # the averaged weights (--ema), validated and kept instead of the live ones

    @property
    def served(self) -> nn.Module:
        """The model validation scores and checkpoints keep: the averaged one under --ema."""
        return self.ema.model if self.ema is not None else self.model


def build_parts(cfg: TrainConfig, data: Data, device: torch.device, ctx: DistContext) -> Parts:
    """The run's model (seeded init), optimizer, schedule, objective and generators.

    Leaves torch's global generator seeded for this rank's dropout stream, as training
    expects.
    """
    n_train, T, C = data.X_train.shape
    steps = n_train // cfg.batch_size  # the last partial batch is dropped (see the module docstring)
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank and in every run
    overrides = {k: getattr(cfg, k) for k in ("drop", "drop_path") if getattr(cfg, k) is not None}
    model = create_model(cfg.model, window=T, channels=C, num_classes=len(data.class_names), **overrides)
    init_info = load_init(model, cfg.init) if cfg.init else None
    model = model.to(device)
    if cfg.freeze_epochs and ctx.enabled:
        raise UsageError("--freeze-epochs is not supported under torchrun (DDP fixes the trained parameters "
                         "at start); train the frozen phase in one process")
    # Dropout must differ between ranks; rank 0 keeps the run's seed. The shift keeps any
    # rank's stream apart from every 32-bit seed a single-process run could use.
    torch.manual_seed(cfg.seed + (ctx.rank << 32))
    optimizer = build_optimizer(model, cfg, device)
    scheduler = build_scheduler(optimizer, cfg, steps)
    weights = torch.tensor(data.class_weights, device=device) if data.class_weights else None
    shuffle = torch.Generator(device=device).manual_seed(cfg.seed)
    aug_cfg = cfg.augment_config()
    # The augmentation stream is its own generator (seeded apart from the shuffle), saved in last.pt.
    aug_gen = torch.Generator(device=device).manual_seed(cfg.seed + (1 << 40) + ctx.rank) if aug_cfg.enabled() else None
    teacher = (load_teacher(cfg.teacher, data.norm, data.class_names, device, data.split.summary())
               if cfg.teacher else None)
    if aug_cfg.enabled() or teacher is not None:
        loss_fn: Callable = Objective(cfg.label_smoothing, weights,
                                      Augmenter(aug_cfg, len(data.class_names), channels=C, norm=data.norm)
                                      if aug_cfg.enabled() else None, aug_gen, teacher, cfg.distill,
                                      cfg.distill_alpha, cfg.distill_temperature, lambda: autocast_for(device))
    else:
        loss_fn = make_loss(cfg, weights)

    ema = WeightEMA(model, cfg.ema) if cfg.ema else None
    return Parts(model, optimizer, scheduler, loss_fn, shuffle, aug_gen, aug_cfg, teacher, init_info, steps, ema)


def restore(parts: Parts, cfg: TrainConfig, data: Data, last_path: Path, device: torch.device,
            ctx: DistContext) -> RunState:
    """Load ``last.pt`` into ``parts`` (weights, optimizer, schedule, every RNG); return where the run stands."""
    ckpt = load_checkpoint(last_path)  # ArtefactError when corrupt
    check_resumable(ckpt, cfg, device, data, last_path)
    if parts.ema is not None:  # "model" holds the averaged weights, "ema" the live ones and the count
        parts.ema.load(ckpt["model"], ckpt["ema"])
    else:
        parts.model.load_state_dict(ckpt["model"])
    parts.optimizer.load_state_dict(ckpt["optimizer"])
    parts.scheduler.load_state_dict(ckpt["scheduler"])
    make_plain(parts.optimizer, scheduler=parts.scheduler)  # a graphed CUDA run saved tensor learning rates
    state = RunState.from_ckpt(ckpt)
    if ctx.is_main:
        set_rng_state(ckpt["rng"], parts.shuffle, device, parts.aug_gen)
    else:  # only rank 0's RNGs are saved: other ranks get fresh, distinct dropout streams
        torch.manual_seed(cfg.seed + (ctx.rank << 32) + state.epoch)
        parts.shuffle.set_state(ckpt["rng"]["shuffle"])
    return state


def levers_of(parts: Parts) -> dict[str, Any]:
    """The manifest's record of the accuracy levers a run used."""
    return {"augment": dict(vars(parts.aug_cfg)) if parts.aug_cfg.enabled() else None,
            "teacher": parts.teacher.info if parts.teacher else None, "init": parts.init_info,
            "ema": {"decay": parts.ema.decay, "warm_up": "min(decay, (1 + n) / (10 + n)) after n updates"}
            if parts.ema else None}


def end_epoch(cfg: TrainConfig, state: RunState, data: Data, model: nn.Module, device: torch.device, lr: float,
              totals: list[float], seen: int, train_s: float, t0: float) -> tuple[dict[str, Any], bool]:
    """Validate the epoch just trained, append its history row, update best and early stopping."""
    epoch = state.epoch
    row = {"epoch": epoch, "lr": lr, "train_loss": totals[0] / seen, "train_acc": totals[1] / seen,
           **evaluate_split(model, data.X_val, data.y_val, cfg.eval_batch_size, device)}
    improved = row["val_macro_f1"] > state.best["val_macro_f1"]
    if improved:
        state.best = {"epoch": epoch, "val_macro_f1": row["val_macro_f1"]}
    state.stopped_early = bool(cfg.patience) and epoch - state.best["epoch"] >= cfg.patience
    row.update(seconds=time.perf_counter() - t0, windows_per_s=seen / train_s)
    state.history.append(row)
    state.train_seconds += row["seconds"]
    return row, improved



def write_run_manifest(cfg: TrainConfig, out: Path, windows_dir: Path, data: Data, model: nn.Module,
                    device: torch.device, ctx: DistContext, state: RunState, levers: dict[str, Any]) -> None:
    # Throughput over the training steps only (validation and checkpoints excluded): all
    # windows over all step time, an epoch's step time being its windows / windows_per_s.
    per_epoch = (data.X_train.shape[0] // cfg.batch_size) * cfg.batch_size
    step_seconds = sum(per_epoch / h["windows_per_s"] for h in state.history)
    write_manifest(
        out, "train", config=as_dict(cfg), run_id=state.run_id, model=model.name, model_kwargs=model.kwargs,
        params=model.num_params(), device=device.type, device_name=device_label(device), **distributed.describe(ctx),
        split=data.split.summary(), epochs_run=state.epoch, best_epoch=state.best["epoch"],
        best_val_macro_f1=state.best["val_macro_f1"], stopped_early=state.stopped_early,
        class_names=data.class_names, norm=data.norm, class_weights=data.class_weights,
        train_seconds=round(state.train_seconds, 3),
        windows_per_s=round(per_epoch * len(state.history) / step_seconds, 1) if step_seconds else None,
        inputs={"upstream": str(windows_dir.resolve()), "files": [data.windows_entry]}, **levers,
        outputs=[file_entry(out / f) for f in ("last.pt", "best.pt", "history.json", "history.csv", "split.npz")],
    )
