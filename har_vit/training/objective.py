"""What a training batch is scored against: augmentation, distillation, and warm starts.

The levers of the ViT literature for small data, as trainer options:

- augmentation (:mod:`har_vit.training.augment`), run on the device per batch from its own
  seeded generator;
- knowledge distillation from a trained run (``--teacher RUN``): the loss is
  ``(1 - alpha) * CE(student, target) + alpha * T^2 * KL(teacher_T || student_T)`` with
  soft targets at temperature ``T`` (Hinton et al.), or, with ``distill="hard"``, the
  cross-entropy against the teacher's predicted class (DeiT's hard-label variant,
  without a distillation token). The teacher is frozen, in eval mode, and never trained;
- pre-training then fine-tuning (``--init RUN``): every tensor of the run's best model
  whose name and shape match is copied, except the classification head, which is
  always new (the classes may differ); ``freeze_epochs`` keeps the copied layers
  frozen for the first epochs.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from har_vit.core.checkpoint import load_checkpoint, model_from_checkpoint
from har_vit.core.errors import UsageError
from har_vit.model.ensemble import ensemble_info
from har_vit.training.augment import Augmenter, soft_cross_entropy

HEAD_PREFIX = "head."


def _run_checkpoint(run: str, what: str) -> tuple[Path, dict[str, Any]]:
    p = Path(run)
    ckpt_path = p / "best.pt" if p.is_dir() else p
    if not ckpt_path.is_file():
        raise UsageError(f"--{what} {run}: no best.pt there; pass a trained run folder (or its best.pt)")
    return ckpt_path, load_checkpoint(ckpt_path)


# --- warm start ---------------------------------------------------------------------------------------


def _article_checkpoint(run: str) -> tuple[Path, dict[str, Any]] | None:
    """A state_dict saved from the article's own code, as a checkpoint dict; None for anything else."""
    from har_vit.model import from_article_state_dict, is_article_state_dict

    p = Path(run)
    if not p.is_file():
        return None
    try:
        sd = torch.load(p, map_location="cpu", weights_only=True)
    except Exception:
        return None  # not loadable as plain tensors: let the checkpoint loader name the problem
    if not is_article_state_dict(sd):
        return None
    model = from_article_state_dict(sd)
    return p, {"model_name": "seed (article weights)", "model": model.state_dict()}


def load_init(model: nn.Module, run: str) -> dict[str, Any]:
    """Copy the matching, non-head tensors of ``run``'s best model into ``model``; returns what was done.

    ``run`` is a trained run folder, its ``best.pt``, or a state_dict saved from the
    article's own code (``torch.save(model.state_dict(), path)``), converted on load.
    """
    path, ckpt = _article_checkpoint(run) or _run_checkpoint(run, "init")
    own = model.state_dict()
    copied, skipped = [], []
    for name, t in ckpt["model"].items():
        if name.startswith(HEAD_PREFIX) or name not in own or own[name].shape != t.shape:
            skipped.append(name)
        else:
            own[name] = t.to(own[name].dtype)
            copied.append(name)
    if not copied:
        raise UsageError(f"--init {run}: no layer of model '{ckpt['model_name']}' fits this model; "
                         "initialise from a run of the same variant")
    model.load_state_dict(own)
    return {"run": str(Path(run).resolve()), "checkpoint": str(path), "model": ckpt["model_name"],
            "class_names": ckpt.get("class_names"), "tensors_copied": len(copied), "tensors_new": len(skipped),
            "new": skipped}


def set_frozen(model: nn.Module, frozen: bool) -> int:
    """Freeze (or unfreeze) every parameter but the head's; returns how many tensors changed state."""
    n = 0
    for name, p in model.named_parameters():
        if not name.startswith(HEAD_PREFIX) and p.requires_grad == frozen:
            p.requires_grad_(not frozen)
            n += 1
    return n


# --- teacher ----------------------------------------------------------------------------------------


@dataclass
class Teacher:
    model: nn.Module
    scale: torch.Tensor  # (C,) maps the student's normalised input to the teacher's
    shift: torch.Tensor  # (C,)
    info: dict[str, Any]

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x * self.scale + self.shift).float()


def load_teacher(run: str, student_norm: dict[str, list[float]], class_names: list[str], device: torch.device,
                 student_split: dict[str, Any]) -> Teacher:
    """The frozen teacher of ``run``; refuses one that saw the student's test users in training."""
    path, ckpt = _run_checkpoint(run, "teacher")
    if list(ckpt.get("class_names", [])) != list(class_names):
        raise UsageError(f"--teacher {run}: its classes {ckpt.get('class_names')} differ from these {class_names}")
    man_path = Path(run) / "manifest.json" if Path(run).is_dir() else path.parent / "manifest.json"
    t_split = json.loads(man_path.read_text()).get("split", {}) if man_path.is_file() else {}
    mine = set(student_split.get("test_users") or [])
    if mine and t_split.get("protocol") in ("subject", "loso") and not mine <= set(t_split.get("test_users") or []):
        raise UsageError(f"--teacher {run}: it trained on test users {sorted(mine - set(t_split['test_users']))} of "
                         "this run, which would leak the test set; train the teacher with the same --test-users")
    model = model_from_checkpoint(ckpt).to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    # teacher input = (x * std_s + mean_s - mean_t) / std_t, per channel
    ms, ss = (torch.tensor(student_norm[k], dtype=torch.float32, device=device) for k in ("mean", "std"))
    mt, st = (torch.tensor(ckpt["norm"][k], dtype=torch.float32, device=device) for k in ("mean", "std"))
    info = {"run": str(Path(run).resolve()), "checkpoint": str(path), "model": ckpt["model_name"],
            "params": sum(p.numel() for p in model.parameters()), "run_split": t_split.get("description"),
            **ensemble_info(ckpt)}  # a teacher trained with --members K is their ensemble: K is named
    return Teacher(model, ss / st, (ms - mt) / st, info)


# --- the objective ------------------------------------------------------------------------------------


class Objective:
    """``prepare(x, y) -> (x, target)`` then ``loss(logits, target, x)`` for one training batch."""

    def __init__(self, label_smoothing: float, class_weights: torch.Tensor | None,
                 augmenter: Augmenter | None = None, generator: torch.Generator | None = None,
                 teacher: Teacher | None = None, distill: str = "soft", alpha: float = 0.5,
                 temperature: float = 4.0, autocast: Callable[[], Any] | None = None) -> None:
        if distill not in ("soft", "hard"):
            raise UsageError(f"distill must be soft or hard, not {distill!r}")
        if not 0 <= alpha <= 1 or temperature <= 0:
            raise UsageError(f"need 0 <= distill_alpha <= 1 and distill_temperature > 0 (got {alpha}, {temperature})")
        self.label_smoothing, self.weight = label_smoothing, class_weights
        self.augmenter, self.generator = augmenter, generator
        self.teacher, self.distill, self.alpha, self.T = teacher, distill, alpha, temperature
        self.autocast = autocast

    def prepare(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.augmenter is None:
            return x, y
        return self.augmenter(x, y, self.generator)

    def __call__(self, logits: torch.Tensor, target: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        logits = logits.float()
        if target.dtype.is_floating_point:
            base = soft_cross_entropy(logits, target, self.label_smoothing, self.weight)
        else:  # the plain path, exactly as without levers
            base = F.cross_entropy(logits, target, weight=self.weight, label_smoothing=self.label_smoothing,
                                   reduction="none").mean()
        if self.teacher is None or x is None:
            return base
        ctx = self.autocast() if self.autocast else torch.no_grad()
        with torch.no_grad(), ctx:
            t = self.teacher.logits(x)  # (B, K)
        if self.distill == "hard":
            kd = F.cross_entropy(logits, t.argmax(1))
        else:
            kd = F.kl_div(F.log_softmax(logits / self.T, 1), F.log_softmax(t / self.T, 1), log_target=True,
                          reduction="batchmean") * self.T ** 2
        return (1 - self.alpha) * base + self.alpha * kd
