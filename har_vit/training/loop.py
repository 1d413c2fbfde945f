"""The training loop's pieces: data on the device, optimizer and schedule, one step, one epoch, validation.

WISDM is small (~17k windows of 128 x 3 floats, ~26 MB) and so are the models, so a
per-sample Python data pipeline would cost more than the math. Instead the whole
training split is normalised once and kept on the device as one tensor
(:func:`prepare_data`); an epoch is one seeded on-device permutation
(:func:`epoch_batches`) and a batch is one gather from it. The last partial batch of
each epoch is dropped, so every step has the same shape (no recompiles, equal shards
across ranks); the shuffle changes which windows fall out, so all are used. The
bench's DataLoader baseline reuses these pieces.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ContextManager

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from har_vit.core import inference
from har_vit.core.checkpoint import normalise
from har_vit.core.errors import UsageError
from har_vit.core.io import file_entry
from har_vit.core.splits import Split, make_split
from har_vit.stages.windows import WINDOWS, load_windows
from har_vit.training import distributed
from har_vit.training.distributed import DistContext

if TYPE_CHECKING:
    from tqdm import tqdm

    from har_vit.stages.train import TrainConfig


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


def autocast_for(device: torch.device, cache: bool = True) -> ContextManager:
    """bf16 autocast on CUDA (no loss scaling needed, unlike fp16); full fp32 on CPU.

    ``cache=False`` recasts the weights on every use, as a captured CUDA graph needs.
    """
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=cache)
    return contextlib.nullcontext()


def step_body(model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: Callable, xb: torch.Tensor,
              target: torch.Tensor, yb: torch.Tensor, device: torch.device,
              autocast_cache: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward, loss, backward and optimizer step on a prepared batch; (loss * B, correct) as device tensors.

    What a CUDA graph captures (:mod:`har_vit.training.graphs`): no host syncs, no schedule.
    """
    with autocast_for(device, autocast_cache):
        logits = model(xb)  # (B, classes)
    loss = loss_fn(logits, target, xb)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach() * yb.shape[0], (logits.detach().argmax(1) == yb).sum()


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
    out = step_body(model, optimizer, loss_fn, xb, target, yb, device)
    scheduler.step()
    return out


def train_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, loss_fn: Callable,
                X: torch.Tensor, y: torch.Tensor, batches: torch.Tensor, device: torch.device,
                bar: tqdm | None = None, check: Callable[[], None] | None = None,
                step: Callable[..., tuple[torch.Tensor, torch.Tensor]] = train_step,
                ema: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Train over ``batches`` (steps, B) of indices into the on-device ``X`` (N, T, C) and ``y`` (N,).

    Returns the summed loss and the number of correct predictions (device tensors).
    ``check`` runs before each step and may raise to stop (a failed checkpoint write);
    ``step`` is :func:`train_step` or a :class:`har_vit.training.graphs.GraphedStep`;
    ``ema`` (a :class:`har_vit.training.average.WeightEMA`) is updated after every step.
    """
    model.train()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    for idx in batches:  # idx: (B,)
        if check is not None:
            check()
        l, c = step(model, optimizer, scheduler, loss_fn, X[idx], y[idx], device)
        if ema is not None:
            ema.update()
        loss_sum += l
        correct += c
        if bar is not None:
            bar.update()
    return loss_sum, correct


def evaluate_split(model: nn.Module, X: torch.Tensor, y: torch.Tensor, batch: int, device: torch.device) -> dict[str, float]:
    """Plain cross-entropy, accuracy and macro F1 of ``model`` on (X, y).

    The loss has no label smoothing or class weights, so validation losses compare
    across training options.
    """
    from sklearn.metrics import f1_score

    logits = inference.logits(model, X, device, batch, autocast=lambda: autocast_for(device))  # (N, classes)
    pred = logits.argmax(1)
    # Macro F1 over the classes present in the labels or predictions (sklearn's default), as evaluate does.
    f1 = f1_score(y.cpu().numpy(), pred.cpu().numpy(), average="macro", zero_division=0)
    return {"val_loss": F.cross_entropy(logits, y).item(), "val_acc": (pred == y).float().mean().item(),
            "val_macro_f1": float(f1)}


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
    split_seed = cfg.seed if cfg.split_seed is None else cfg.split_seed
    split = make_split(cfg.split, w, seed=split_seed, val_frac=cfg.val_frac, test_frac=cfg.test_frac,
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

