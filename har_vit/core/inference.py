"""Batched inference, written once: evaluate, predict, validation during training and retrain use it.

>>> from har_vit.model import create_model
>>> m = create_model("tiny", window=32)
>>> logits(m, np.zeros((5, 32, 3), np.float32), torch.device("cpu"), batch_size=2).shape
torch.Size([5, 6])
>>> xyz = np.zeros((100, 3), np.float32)
>>> len(Strided(xyz, np.array([0, 10, 68]), 32)), Strided(xyz, np.array([0, 10, 68]), 32)[1:3].shape
(3, (2, 32, 3))
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import Any, ContextManager

import numpy as np
import torch
from torch import nn

from har_vit.core.checkpoint import normalise


class Strided:
    """Windows of ``window`` records starting at ``first``, gathered from ``xyz`` (records, C) per slice.

    Overlapping windows hold N * T >> records values; gathering one batch at a time keeps
    memory at one batch of windows.
    """

    def __init__(self, xyz: np.ndarray, first: np.ndarray, window: int) -> None:
        self.xyz, self.first, self.offsets = xyz, np.asarray(first), np.arange(window)

    def __len__(self) -> int:
        return int(self.first.shape[0])

    def __getitem__(self, s: slice) -> np.ndarray:
        return self.xyz[self.first[s, None] + self.offsets]  # (B, T, C)


def logits(model: nn.Module, X: Any, device: torch.device, batch_size: int = 512,
           norm: Mapping[str, Any] | None = None, autocast: Callable[[], ContextManager] | None = None) -> torch.Tensor:
    """Float32 logits ``(N, K)`` on ``device`` of the windows ``X``, ``batch_size`` at a time, in eval mode.

    ``X`` is anything sliceable into ``(B, T, C)`` batches: an array, a tensor, a :class:`Strided`.
    With ``norm`` (a checkpoint's ``{"mean", "std"}``) raw windows are normalised first, as in
    training. The model's train/eval mode is restored afterwards.
    """
    was_training = model.training
    model = model.to(device).eval()
    out = []
    try:
        with torch.inference_mode(), (autocast or contextlib.nullcontext)():
            for i in range(0, len(X), batch_size):
                x = X[i:i + batch_size]
                if isinstance(x, np.ndarray):
                    x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
                x = x.to(device)
                out.append(model(normalise(x, norm) if norm is not None else x).float())  # (B, K)
    finally:
        model.train(was_training)
    if out:
        return torch.cat(out)
    return torch.zeros((0, int(getattr(getattr(model, "cfg", None), "num_classes", 0))), device=device)


def labels(model: nn.Module, norm: Mapping[str, Any], X: Any, device: torch.device, batch_size: int = 512) -> np.ndarray:
    """Predicted class index per window of raw ``X`` (N,) int64, normalised with the checkpoint's statistics."""
    return logits(model, X, device, batch_size, norm).argmax(dim=1).cpu().numpy().astype(np.int64)


def probabilities(model: nn.Module, norm: Mapping[str, Any], X: Any, device: torch.device,
                  batch_size: int = 512) -> np.ndarray:
    """Class probabilities ``(N, K)`` float32 of raw windows ``X``."""
    return torch.softmax(logits(model, X, device, batch_size, norm), dim=1).cpu().numpy()


def saliency(model: nn.Module, norm: Mapping[str, Any], X: np.ndarray, target: np.ndarray,
             smooth: int = 5) -> np.ndarray | None:
    """Where in time the model looks: ``|d logit[target] / d x|`` summed over axes, ``(N, T)`` in [0, 1].

    Gradients of the target class's logit with respect to each raw input sample (through the
    normalisation), summed over the axes, smoothed by a ``smooth``-sample moving average and
    scaled to a maximum of 1 per window. ``None`` for a model without gradients (the forest).
    """
    was_training = model.training
    model = model.cpu().eval()
    try:
        x = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32)).requires_grad_(True)
        with torch.enable_grad():
            out = model(normalise(x, norm))
            if not out.requires_grad:
                return None
            out.gather(1, torch.as_tensor(target, dtype=torch.long)[:, None]).sum().backward()
    finally:
        model.train(was_training)
    g = x.grad.abs().sum(dim=2).numpy()  # (N, T)
    if smooth > 1:
        kernel = np.ones(smooth) / smooth
        g = np.stack([np.convolve(row, kernel, mode="same") for row in g])
    return g / np.maximum(g.max(axis=1, keepdims=True), 1e-12)
