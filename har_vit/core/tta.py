"""Test-time augmentation (TTA): each window is also seen turned and scaled, and the views' class probabilities are averaged.

The trainer shows the network windows turned by up to ``rotate`` degrees and scaled per axis
by ``scale``, because every person carries the phone a little differently. At test time the
same kind of change gives the network a few more looks at a window it has never seen: the
window itself and ``n`` fixed linear maps of its axes (rotation times per-axis gain), drawn
once from seed 0 with the run's own ``rotate`` and ``scale``, so predictions are deterministic
and every caller sees the same views. Each view acts on the raw axes (sensor units), as
the trainer's augmentation does, so TTA wraps any runtime that takes raw windows (eager
PyTorch, onnxruntime, a CUDA graph).

The result is returned as the log of the mean probability: softmax of it is the mean
probability itself, so TTA logits go wherever logits go (argmax, softmax, confidence).

>>> v = views(2, rotate=30.0, scale=0.1)
>>> v.shape, bool(np.array_equal(v[0], np.eye(3)))
((3, 3, 3), True)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
import torch

from har_vit.core.errors import UsageError

SEED = 0  # the views are drawn once from this seed: the same views for every run and every call
AXES = 3


def views(n: int, rotate: float, scale: float, channels: int = AXES) -> np.ndarray:
    """``(n + 1, C, C)`` float32 maps of the axes: the identity, then ``n`` draws of rotation @ diag(gain).

    Rotations are about uniform random axes by angles uniform in ``[0, rotate]`` degrees and
    gains ``1 + scale * N(0, 1)`` per axis, as in training. With ``channels`` a multiple of 3,
    each group of 3 channels gets the same map (sensors in one housing turn together).
    """
    from har_vit.training.augment import block_diagonal, random_rotations

    if n < 0:
        raise UsageError(f"--tta must be >= 0 (got {n})")
    if channels % AXES:
        raise UsageError(f"test-time augmentation turns (x, y, z) axes, but the model takes {channels} channels; "
                         "use --tta 0")
    gen = torch.Generator().manual_seed(SEED)
    R = random_rotations(n, rotate, gen, torch.device("cpu"), torch.float64)  # (n, 3, 3)
    gain = 1 + scale * torch.randn(n, AXES, generator=gen, dtype=torch.float64)  # (n, 3)
    A = R @ torch.diag_embed(gain)  # gain in the sensor frame first, then turn the sensor
    A = torch.cat([torch.eye(AXES, dtype=torch.float64).unsqueeze(0), A])  # (n + 1, 3, 3)
    return block_diagonal(A, channels // AXES).numpy().astype(np.float32)  # (n + 1, C, C)


def views_for(ckpt: Mapping[str, Any], n: int, channels: int) -> tuple[np.ndarray, str]:
    """The views for the run a checkpoint comes from, and a line that says what TTA does.

    Only the identity (plain prediction) when ``n`` is 0, when the model is not a network
    (a random forest never trains on augmented windows), or when the run trained with
    neither rotation nor scaling (its network never learnt to read turned windows).
    """
    from har_vit.model.variants import CLASSICAL

    cfg = ckpt.get("train_config") or {}
    rotate, scale = float(cfg.get("rotate") or 0.0), float(cfg.get("scale") or 0.0)
    plain = np.eye(channels, dtype=np.float32)[None]
    if n == 0:
        return plain, "off (--tta 0)"
    if ckpt.get("model_name") in CLASSICAL:
        return plain, f"off: '{ckpt.get('model_name')}' does not train on augmented windows"
    if channels % AXES:
        return plain, f"off: the model's {channels} channels are not groups of (x, y, z) axes"
    if rotate <= 0 and scale <= 0:
        return plain, "off: the run trained with neither --rotate nor --scale"
    return views(n, rotate, scale, channels), (
        f"{n + 1} views per window (the window and {n} fixed turns up to {rotate:g} degrees with per-axis gains "
        f"of std {scale:g}, seed {SEED}); class probabilities averaged")


def turned(x: np.ndarray, A: np.ndarray) -> np.ndarray:
    """Raw windows ``x`` (B, T, C) with every step's axes mapped by ``A`` (C, C): ``x_t -> A x_t``."""
    return np.ascontiguousarray(x @ A.T, dtype=np.float32)


def mean_log_proba(z: torch.Tensor) -> torch.Tensor:
    """``(V, B, K)`` logits of V views -> ``(B, K)`` float32 log of the mean softmax probability."""
    z = z.float()
    return torch.logsumexp(torch.log_softmax(z, dim=-1), dim=0) - float(np.log(z.shape[0]))


def view_logits(model: torch.nn.Module, X: np.ndarray, device: torch.device, batch_size: int,
                norm: Mapping[str, Any], A: np.ndarray) -> torch.Tensor:
    """Logits ``(V, N, K)`` of every view of raw windows ``X``, one pass over ``X`` per view.

    ``[0]`` is the plain prediction; :func:`mean_log_proba` of the whole is the TTA one.
    """
    from har_vit.core import inference

    return torch.stack([inference.logits(model, X if k == 0 else turned(X, a), device, batch_size, norm)
                        for k, a in enumerate(A)])


@dataclass(frozen=True)
class Prediction:
    """What :func:`predict` returns: the (TTA) answer, and the plain one beside it when they differ."""
    log_proba: torch.Tensor  # (N, K) log mean probability over the views (the plain log softmax for one view)
    plain: torch.Tensor | None  # (N, K) logits of the window alone; None when TTA is off
    views: np.ndarray  # (V, C, C) the maps used, identity first
    description: str  # what TTA did, or why it is off

    @property
    def info(self) -> dict[str, Any]:
        return {"views": len(self.views), "description": self.description}


def predict(model: torch.nn.Module, ckpt: Mapping[str, Any], X: np.ndarray, device: torch.device, batch_size: int,
            n: int) -> Prediction:
    """Raw windows ``X`` (N, T, C) predicted by a run's model with ``n`` TTA views (``evaluate --tta n``)."""
    A, note = views_for(ckpt, n, X.shape[2])
    z = view_logits(model, X, device, batch_size, ckpt["norm"], A)  # (V, N, K); [0] plain
    return Prediction(mean_log_proba(z), z[0] if len(A) > 1 else None, A, note)


def wrap(run: Callable[[np.ndarray], np.ndarray], A: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """A runtime (raw windows -> logits) that sends all views of a batch through ``run`` as one batch.

    ``x`` (B, T, C) becomes ``(V * B, T, C)``, view by view; the output is ``(B, K)`` log mean
    probabilities.
    """
    def tta_run(x: np.ndarray) -> np.ndarray:
        B = len(x)
        if B == 0:
            return run(x)
        batch = np.concatenate([x if k == 0 else turned(x, a) for k, a in enumerate(A)])
        z = torch.from_numpy(np.asarray(run(batch), dtype=np.float32)).view(len(A), B, -1)
        return mean_log_proba(z).numpy()

    return tta_run
