"""Train stage: a windows folder -> a run folder with checkpoints, history and a manifest.

WISDM is small (~17k windows of 128 x 3 floats, ~26 MB) and so are the models, so a
per-sample Python data pipeline would cost more than the math. Instead the whole
training split is normalised once and kept on the device as one tensor; an epoch is
one seeded on-device permutation and a batch is one gather from it. The last partial
batch of each epoch is dropped, so every step has the same shape (no recompiles, equal
shards across ranks); the shuffle changes which windows fall out, so all are used.

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

import contextlib
import csv
import io
import json
import math
import random
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from har_vit.training import distributed
from har_vit.training.augment import AugmentConfig, Augmenter
from har_vit.core.checkpoint import load_checkpoint, normalise, save_checkpoint
from har_vit.core import schema
from har_vit.core.schema import as_dict
from har_vit.training.distributed import DistContext
from har_vit.core.efficiency import device_label, resolve_device
from har_vit.core.errors import UsageError
from har_vit.core.io import MANIFEST, file_entry, read_manifest, save_npz, write_json, write_manifest, write_text
from har_vit.core.runid import new_run_id
from har_vit.model import create_model
from har_vit.model.variants import CLASSICAL
from har_vit.training.objective import Objective, load_init, load_teacher, set_frozen
from har_vit.core.splits import Split, make_split
from har_vit.stages.windows import WINDOWS, load_windows

SCHEDULES = schema.OPTIONS["schedule"].choice_list()
HISTORY_FIELDS = ("epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "val_macro_f1", "seconds",
                  "windows_per_s")
# Options that change how a run executes, not what it computes: a resume may change them.
RUNTIME_ONLY = ("device", "compile", "threads", "progress", "eval_batch_size")


@schema.config("train")
class TrainConfig:
    """Everything that defines a training run: the ``train`` options of :mod:`har_vit.core.schema`.

    Defaults: AdamW, warm-up + cosine, subject split, light augmentation (small rotations,
    scaling, jitter, time warp; measured on users 29-36 in bench/results/accuracy.json: full
    180-degree rotations cost ~3 points of macro F1, since the direction of gravity tells
    sitting from standing).
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


# --- the pieces of a training step (the bench's DataLoader baseline reuses them) -------------------


def build_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices (dim >= 2) only, since decaying biases and norm gains only hurts."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    # The fused kernel updates every parameter in one launch; it matters on GPUs, where a
    # small model's step is launch-bound.
    return torch.optim.AdamW(groups, lr=cfg.lr, fused=device.type == "cuda")


def lr_factor(cfg: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """Multiplier of ``cfg.lr`` at optimizer step ``k`` (0-based), for a per-step LambdaLR."""
    total = cfg.epochs * steps_per_epoch
    warm = min(round(cfg.warmup_epochs * steps_per_epoch), total)
    floor = cfg.min_lr / cfg.lr

    def factor(k: int) -> float:
        if k < warm:
            return (k + 1) / warm
        if cfg.schedule == "constant":
            return 1.0
        if cfg.schedule == "step":  # StepLR counted in epochs, as the article uses it
            return cfg.step_gamma ** (k // (cfg.step_epochs * steps_per_epoch))
        progress = min(1.0, (k - warm) / max(1, total - warm))
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    # A LambdaLR over a closure saves only its counters in state_dict, which weights_only loads.
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg, steps_per_epoch))


def make_loss(cfg: TrainConfig, class_weights: torch.Tensor | None) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Cross-entropy (optionally label-smoothed and class-weighted) averaged over the batch.

    The plain per-sample mean, not torch's weight-normalised one: then equal shards'
    losses averaged across DDP ranks equal the loss of the whole global batch.
    """

    def loss_fn(logits: torch.Tensor, y: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        return F.cross_entropy(logits.float(), y, weight=class_weights, label_smoothing=cfg.label_smoothing,
                               reduction="none").mean()

    return loss_fn


def autocast_for(device: torch.device) -> ContextManager:
    """bf16 autocast on CUDA (no loss scaling needed, unlike fp16); full fp32 on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, loss_fn: Callable,
               xb: torch.Tensor, yb: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on batch ``xb`` (B, T, C); returns (loss * B, correct) as device tensors.

    A ``loss_fn`` with a ``prepare`` (an :class:`Objective`) augments the batch first;
    accuracy is always against the true labels. Nothing here reads a value back to the
    host, so a GPU runs ahead of Python.
    """
    target = yb
    if hasattr(loss_fn, "prepare"):
        xb, target = loss_fn.prepare(xb, yb)
    with autocast_for(device):
        logits = model(xb)  # (B, classes)
    loss = loss_fn(logits, target, xb)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    scheduler.step()
    return loss.detach() * yb.shape[0], (logits.detach().argmax(1) == yb).sum()


def train_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, loss_fn: Callable,
                X: torch.Tensor, y: torch.Tensor, batches: torch.Tensor, device: torch.device,
                bar: tqdm | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Train over ``batches`` (steps, B) of indices into the on-device ``X`` (N, T, C) and ``y`` (N,).

    Returns the summed loss and the number of correct predictions (device tensors).
    """
    model.train()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    for idx in batches:  # idx: (B,)
        l, c = train_step(model, optimizer, scheduler, loss_fn, X[idx], y[idx], device)
        loss_sum += l
        correct += c
        if bar is not None:
            bar.update()
    return loss_sum, correct


@torch.no_grad()
def evaluate_split(model: nn.Module, X: torch.Tensor, y: torch.Tensor, batch: int, device: torch.device) -> dict[str, float]:
    """Plain cross-entropy, accuracy and macro F1 of ``model`` on (X, y).

    The loss has no label smoothing or class weights, so validation losses compare
    across training options.
    """
    from sklearn.metrics import f1_score

    was_training = model.training
    model.eval()
    with autocast_for(device):
        logits = torch.cat([model(X[i:i + batch]).float() for i in range(0, X.shape[0], batch)])  # (N, classes)
    model.train(was_training)
    pred = logits.argmax(1)
    # Macro F1 over the classes present in the labels or predictions (sklearn's default), as evaluate does.
    f1 = f1_score(y.cpu().numpy(), pred.cpu().numpy(), average="macro", zero_division=0)
    return {"val_loss": F.cross_entropy(logits, y).item(), "val_acc": (pred == y).float().mean().item(),
            "val_macro_f1": float(f1)}


# --- data ------------------------------------------------------------------------------------------


@dataclass
class Data:
    """The train and validation splits on the device, normalised with train statistics."""

    X_train: torch.Tensor  # (N_train, T, C)
    y_train: torch.Tensor  # (N_train,)
    X_val: torch.Tensor
    y_val: torch.Tensor
    split: Split
    norm: dict[str, list[float]]
    class_names: list[str]
    class_weights: list[float] | None
    windows_entry: dict[str, Any]  # the windows manifest's record of windows.npz (path, bytes, sha256)


def fit_norm(X: np.ndarray) -> dict[str, list[float]]:
    """Per-channel mean and std of windows ``X`` (N, T, C), accumulated in float64.

    A constant channel gets std 1 rather than a division by zero.
    """
    mean = X.mean(axis=(0, 1), dtype=np.float64)
    std = X.std(axis=(0, 1), dtype=np.float64)
    return {"mean": mean.tolist(), "std": np.where(std > 1e-8, std, 1.0).tolist()}


def inverse_frequency(y: np.ndarray, num_classes: int) -> list[float]:
    """``n / (K * n_c)`` per class, 0 for a class absent from train.

    With every class present the mean weight over the training windows is 1, so the
    loss keeps its scale and the learning rate needs no retuning.
    """
    counts = np.bincount(y, minlength=num_classes).astype(np.float64)
    w = np.divide(y.size, num_classes * counts, out=np.zeros_like(counts), where=counts > 0)
    return w.tolist()


def prepare_data(cfg: TrainConfig, windows_dir: Path, ctx: DistContext, device: torch.device) -> Data:
    w = load_windows(windows_dir)  # ArtefactError when missing or corrupt
    split = make_split(cfg.split, w, seed=cfg.seed, val_frac=cfg.val_frac, test_frac=cfg.test_frac,
                       test_users=cfg.test_users or None, fold=cfg.fold)
    n_train, n_val = split.train.size, split.val.size
    if n_val == 0:
        raise UsageError(f"split '{cfg.split}' left no validation windows in {windows_dir} ({split.description}); "
                         "best.pt and early stopping need them: raise --val-frac or use more users")
    if n_train < cfg.batch_size:
        raise UsageError(f"only {n_train} training windows in {windows_dir} for batch size {cfg.batch_size}; "
                         f"lower --batch-size to at most {n_train} or add data")
    if cfg.batch_size % ctx.world:
        raise UsageError(f"batch size {cfg.batch_size} does not split evenly over {ctx.world} processes; "
                         f"use a multiple of {ctx.world}")
    names = [str(c) for c in w["class_names"]]
    X_train, y_train = w["X"][split.train], w["y"][split.train]
    norm = fit_norm(X_train)
    weights = inverse_frequency(y_train, len(names)) if cfg.class_weights else None
    entry = next((e for e in w["manifest"].get("outputs", []) if Path(e["path"]).name == WINDOWS), None)
    if entry is None:
        entry = file_entry(windows_dir / WINDOWS)

    def on_device(X: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        # The same normalise() as inference, so train and serve see identical inputs.
        return normalise(torch.from_numpy(X), norm).to(device), torch.from_numpy(y.astype(np.int64)).to(device)

    Xt, yt = on_device(X_train, y_train)
    Xv, yv = on_device(w["X"][split.val], w["y"][split.val])
    return Data(Xt, yt, Xv, yv, split, norm, names, weights, entry)


# --- checkpoint state ------------------------------------------------------------------------------


def rng_state(shuffle: torch.Generator, device: torch.device, augment: torch.Generator | None = None) -> dict[str, Any]:
    """Every RNG a training step may draw from, as tensors and plain lists (weights_only-safe)."""
    np_name, np_keys, np_pos, np_gauss, np_cached = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": [torch.cuda.get_rng_state(device)] if device.type == "cuda" else [],
        "numpy": [str(np_name), torch.from_numpy(np_keys.astype(np.int64)), int(np_pos), int(np_gauss), float(np_cached)],
        "python": [py_version, list(py_internal), py_gauss],
        "shuffle": shuffle.get_state(),
        "augment": [augment.get_state()] if augment is not None else [],
    }


def set_rng_state(state: dict[str, Any], shuffle: torch.Generator, device: torch.device,
                  augment: torch.Generator | None = None) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state["cuda"]:
        torch.cuda.set_rng_state(state["cuda"][0], device)
    name, keys, pos, gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, gauss, cached))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    shuffle.set_state(state["shuffle"])
    if augment is not None and state.get("augment"):
        augment.set_state(state["augment"][0])


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

    def wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._pool.shutdown(wait=True)


def write_history(out: Path, history: list[dict[str, Any]]) -> None:
    write_json(out / "history.json", history)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=HISTORY_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    write_text(out / "history.csv", buf.getvalue())


# --- the stage -------------------------------------------------------------------------------------


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
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 for whatever autocast leaves in fp32
    last_path = out / "last.pt"
    if resume and not last_path.is_file():
        raise UsageError(f"{last_path}: nothing to resume; run without --resume to start training in {out}")
    if not resume and (last_path.exists() or (out / MANIFEST).exists()):
        raise UsageError(f"{out} already holds a training run; pass --resume to continue it, or choose a new --out folder")

    data = prepare_data(cfg, windows_dir, ctx, device)
    if cfg.model in CLASSICAL:
        return _fit_classical(cfg, windows_dir, out, data, ctx, device)
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

    state = RunState(new_run_id(cfg.model, cfg.split, f"s{cfg.seed}"))
    if resume:
        ckpt = load_checkpoint(last_path)  # ArtefactError when corrupt
        check_resumable(ckpt, cfg, device, data, last_path)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        state = RunState.from_ckpt(ckpt)
        if ctx.is_main:
            set_rng_state(ckpt["rng"], shuffle, device, aug_gen)
        else:  # only rank 0's RNGs are saved: other ranks get fresh, distinct dropout streams
            torch.manual_seed(cfg.seed + (ctx.rank << 32) + state.epoch)
            shuffle.set_state(ckpt["rng"]["shuffle"])
        del ckpt

    train_model: nn.Module = model
    if ctx.enabled:
        # DDP averages gradients over ranks; with equal shards and a per-sample-mean loss
        # that is exactly the gradient of the global batch.
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        train_model = torch.compile(train_model)

    if ctx.is_main:
        print(f"har_vit train: device {device.type} ({device_label(device)}), {ctx.world} process(es); model "
              f"{cfg.model} ({model.num_params():,} params); {n_train} train / {data.X_val.shape[0]} val windows, "
              f"{steps} steps/epoch" + (f"; resuming after epoch {state.epoch}" if resume else ""), file=sys.stderr)
        out.mkdir(parents=True, exist_ok=True)
        (out / MANIFEST).unlink(missing_ok=True)  # a stale manifest must not vouch for a run being rewritten
        save_npz(out / "split.npz", train=data.split.train, val=data.split.val, test=data.split.test)

    fixed = checkpoint_header(cfg, model, data, device)
    writer = CheckpointWriter() if ctx.is_main else None
    stop = torch.zeros((), dtype=torch.int64, device=device)
    try:
        while (state.epoch < cfg.epochs and not state.stopped_early
               and (stop_after is None or state.epoch < stop_after)):
            epoch, t0 = state.epoch + 1, time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]
            if cfg.freeze_epochs:
                set_frozen(model, epoch <= cfg.freeze_epochs)  # from the epoch alone: a resume agrees
            batches = epoch_batches(n_train, cfg.batch_size, shuffle, device, ctx)
            bar = tqdm(total=steps, desc=f"epoch {epoch}/{cfg.epochs}", unit="batch", file=sys.stderr,
                       disable=not (cfg.progress and ctx.is_main), dynamic_ncols=True)
            loss_sum, correct = train_epoch(train_model, optimizer, scheduler, loss_fn, data.X_train, data.y_train,
                                            batches, device, bar)
            totals = distributed.all_reduce_sum(torch.stack([loss_sum, correct.double()]), ctx).tolist()  # syncs
            train_s, seen = time.perf_counter() - t0, steps * cfg.batch_size
            state.epoch = epoch
            if ctx.is_main:
                row = {"epoch": epoch, "lr": lr, "train_loss": totals[0] / seen, "train_acc": totals[1] / seen,
                       **evaluate_split(model, data.X_val, data.y_val, cfg.eval_batch_size, device)}
                improved = row["val_macro_f1"] > state.best["val_macro_f1"]
                if improved:
                    state.best = {"epoch": epoch, "val_macro_f1": row["val_macro_f1"]}
                state.stopped_early = bool(cfg.patience) and epoch - state.best["epoch"] >= cfg.patience
                row.update(seconds=time.perf_counter() - t0, windows_per_s=seen / train_s)
                state.history.append(row)
                state.train_seconds += row["seconds"]
                bar.set_postfix(loss=f"{row['train_loss']:.4f}", val_acc=f"{row['val_acc']:.4f}",
                                val_f1=f"{row['val_macro_f1']:.4f}", refresh=False)
                writer.submit(epoch_files(out, fixed, model, optimizer, scheduler, shuffle, device, state, improved,
                                          aug_gen))
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
        levers = {"augment": {k: v for k, v in vars(aug_cfg).items()} if aug_cfg.enabled() else None,
                  "teacher": teacher.info if teacher else None, "init": init_info}
        _write_manifest(cfg, out, windows_dir, data, model, device, ctx, state, levers)
    distributed.barrier(ctx)  # the other ranks return once the run folder is complete
    return read_manifest(out, "train")


def checkpoint_header(cfg: TrainConfig, model: nn.Module, data: Data, device: torch.device) -> dict[str, Any]:
    """What every checkpoint of a run carries besides its weights: enough to rebuild and serve the model."""
    return {"model_name": model.name, "model_kwargs": model.kwargs, "class_names": data.class_names,
            "norm": data.norm, "train_config": as_dict(cfg), "device_type": device.type,
            "windows_sha256": data.windows_entry["sha256"]}


def _fit_classical(cfg: TrainConfig, windows_dir: Path, out: Path, data: Data, ctx: DistContext,
                   device: torch.device) -> dict[str, Any]:
    """``--model rf``: fit the forest on the train split in one go; the run folder has the networks' contract."""
    from har_vit.model.forest import fit_forest

    if ctx.enabled:
        raise UsageError("--model rf fits on one process; run it without torchrun")
    t0 = time.perf_counter()
    model = fit_forest(data.X_train, data.y_train.cpu().numpy(), len(data.class_names), cfg.seed,
                       threads=cfg.threads)
    fit_s = time.perf_counter() - t0
    row = {"epoch": 1, "lr": 0.0, "train_loss": float("nan"), "train_acc": float("nan"),
           **evaluate_split(model, data.X_val.cpu(), data.y_val.cpu(), cfg.eval_batch_size, torch.device("cpu"))}
    row.update(seconds=time.perf_counter() - t0, windows_per_s=data.X_train.shape[0] / fit_s)
    state = RunState(new_run_id(cfg.model, cfg.split, f"s{cfg.seed}"), epoch=1, history=[row],
                     best={"epoch": 1, "val_macro_f1": row["val_macro_f1"]}, train_seconds=row["seconds"])
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)
    save_npz(out / "split.npz", train=data.split.train, val=data.split.val, test=data.split.test)
    light = {**checkpoint_header(cfg, model, data, torch.device("cpu")), "model": model.state_dict(), "epoch": 1,
             "val": {k: row[k] for k in ("val_loss", "val_acc", "val_macro_f1")}}
    save_checkpoint(out / "best.pt", light)
    write_history(out, state.history)
    save_checkpoint(out / "last.pt", {**light, **state.to_ckpt()})
    print(f"har_vit train: rf fitted on {data.X_train.shape[0]} train windows in {fit_s:.1f} s on the CPU; "
          f"val macro F1 {row['val_macro_f1']:.4f}", file=sys.stderr)
    _write_manifest(cfg, out, windows_dir, data, model, torch.device("cpu"), ctx, state,
                    {"augment": None, "teacher": None, "init": None})
    return read_manifest(out, "train")


def epoch_batches(n: int, batch: int, shuffle: torch.Generator, device: torch.device, ctx: DistContext) -> torch.Tensor:
    """This rank's index batches ``(steps, batch // world)`` for one epoch over ``n`` windows.

    One permutation of all windows per epoch, cut into global batches; rank r takes the
    r-th slice of every global batch, so the ranks together see each global batch once.
    """
    perm = torch.randperm(n, generator=shuffle, device=device)
    # Ranks draw the same permutation from the same seed; the broadcast makes that a guarantee
    # rather than an assumption about RNG streams on different GPUs.
    distributed.broadcast(perm, ctx)
    steps, per_rank = n // batch, batch // ctx.world
    batches = perm[:steps * batch].view(steps, batch)  # (S, B) global batches
    return batches[:, ctx.rank * per_rank:(ctx.rank + 1) * per_rank]  # (S, B / world)


def epoch_files(out: Path, fixed: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                shuffle: torch.Generator, device: torch.device, state: RunState, improved: bool,
                augment: torch.Generator | None = None) -> Callable[[], None]:
    """Snapshot the epoch's state now; return the function that writes its files (on the writer thread)."""
    light = {**fixed, "model": cpu_copy(model.state_dict()), "epoch": state.epoch,
             "val": {k: state.history[-1][k] for k in ("val_loss", "val_acc", "val_macro_f1")}}
    full = {**light, **state.to_ckpt(), "optimizer": cpu_copy(optimizer.state_dict()),
            "scheduler": cpu_copy(scheduler.state_dict()), "rng": cpu_copy(rng_state(shuffle, device, augment))}

    def write() -> None:
        # Order matters for a kill between writes: best.pt before last.pt, so last.pt never
        # records a best epoch whose weights best.pt does not hold yet. A resume from an
        # older last.pt re-runs the epoch and rewrites the same files.
        if improved:
            save_checkpoint(out / "best.pt", light)
        write_history(out, full["history"])
        save_checkpoint(out / "last.pt", full)

    return write


def _write_manifest(cfg: TrainConfig, out: Path, windows_dir: Path, data: Data, model: nn.Module,
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
