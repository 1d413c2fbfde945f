"""The classical baseline a user would pick instead: a random forest on per-window statistics.

``rf`` goes through the same splits, evaluate, report, predict and export as the networks:
scikit-learn fits the forest, and the fitted trees are stored as tensors in an
``nn.Module`` (:class:`ForestClassifier`), so the checkpoint still loads with
``torch.load(weights_only=True)`` (no pickle) and inference is plain torch.

Features (:func:`window_features`), for each axis and the magnitude: mean, std, min, max,
5 percentiles, mean absolute first difference, zero-crossing rate of the centred signal
and 8 FFT band shares; plus the correlation of every pair of axes (79 at 3 axes). The
WISDM papers used 43 such statistics with random forests. They are taken in the sensor's
units: the pipeline normalises each channel, and the forest undoes that first (``norm`` of
:func:`fit_forest`), so the magnitude is the physical one. Taken of normalised windows, the
forest scored macro F1 0.3729 on ``w2019-subject`` (bench/bench_accuracy.py, 3 splits),
against 0.3971 in sensor units (commit 8238d1d).

>>> import torch
>>> window_features(torch.zeros(2, 128, 3)).shape
torch.Size([2, 79])
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

PERCENTILES = (0.1, 0.25, 0.5, 0.75, 0.9)
BANDS = 8


def num_features(channels: int) -> int:
    return (channels + 1) * (9 + 2 + BANDS) + channels * (channels - 1) // 2


def window_features(x: torch.Tensor, window: int | None = None, channels: int | None = None) -> torch.Tensor:
    """Windows ``(B, T, C)`` -> statistics ``(B, num_features(C))``, float32.

    ``window`` and ``channels`` (plain ints; default: read from ``x``) fix the index
    arithmetic, so a traced graph holds constants rather than shape expressions.
    """
    x = x.float()
    T, C = int(window or x.shape[1]), int(channels or x.shape[2])
    sig = torch.cat([x, x.norm(dim=2, keepdim=True)], dim=2).transpose(1, 2)  # (B, C+1, T)
    mean, std = sig.mean(-1), sig.std(-1, unbiased=False)
    srt = sig.sort(-1).values  # (B, C+1, T)
    pct = [srt[..., min(T - 1, int(round(q * (T - 1))))] for q in PERCENTILES]
    mad = (sig[..., 1:] - sig[..., :-1]).abs().mean(-1)
    centred = sig - mean.unsqueeze(-1)
    zcr = ((centred[..., 1:] * centred[..., :-1]) < 0).float().mean(-1)
    power = torch.fft.rfft(centred, dim=-1).abs().pow(2)[..., 1:]  # (B, C+1, T//2): DC removed
    edges = np.linspace(0, T // 2, BANDS + 1).round().astype(int)
    bands = torch.stack([power[..., a:b].sum(-1) for a, b in zip(edges[:-1], edges[1:])], -1)  # (B, C+1, BANDS)
    bands = bands / bands.sum(-1, keepdim=True).clamp_min(1e-12)
    z = centred[:, :C] / std[:, :C].unsqueeze(-1).clamp_min(1e-8)  # (B, C, T)
    pairs = [(i, j) for i in range(C) for j in range(i + 1, C)]
    corr = [(z[:, i] * z[:, j]).mean(-1) for i, j in pairs]
    per_signal = torch.stack([mean, std, srt[..., 0], srt[..., -1], *pct, mad, zcr], -1)  # (B, C+1, 11)
    parts = [per_signal.flatten(1), bands.flatten(1)] + ([torch.stack(corr, -1)] if corr else [])
    return torch.cat(parts, 1)


def sensor_units(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Undo the pipeline's per-channel normalisation: ``x * std + mean``, float32."""
    return x.float() * std + mean


@dataclass(frozen=True)
class ForestConfig:
    """Shape of a fitted forest; ``trees``, ``nodes`` and ``depth`` are known only after fitting."""

    window: int = 128
    channels: int = 3
    num_classes: int = 6
    trees: int = 300
    nodes: int = 1  # nodes per tree, padded to the largest tree
    depth: int = 0  # the deepest leaf; inference walks this many steps
    # The normalisation its input arrives in (the run's ``norm``): the statistics are taken of
    # ``x * std + mean``, the sensor's own units, where the magnitude of (x, y, z) is the
    # physical one. Empty (checkpoints from before): taken of the input as it comes.
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()


class ForestClassifier(nn.Module):
    """A fitted random forest as tensors: windows ``(B, T, C)`` -> log of the mean tree probabilities.

    Every tree is padded to ``nodes`` nodes; a leaf points to itself with an infinite
    threshold, so walking ``depth`` steps from the root ends on each window's leaf.
    """

    def __init__(self, cfg: ForestConfig):
        super().__init__()
        self.cfg = cfg
        n, k = cfg.trees, cfg.nodes
        self.register_buffer("feature", torch.zeros(n, k, dtype=torch.int64))
        # float64: sklearn compares float32 features with float64 midpoints; rounding them to
        # float32 could send a window equal to a neighbour's value down the other branch.
        self.register_buffer("threshold", torch.full((n, k), float("inf"), dtype=torch.float64))
        self.register_buffer("left", torch.zeros(n, k, dtype=torch.int64))
        self.register_buffer("right", torch.zeros(n, k, dtype=torch.int64))
        self.register_buffer("value", torch.full((n, k, cfg.num_classes), 1.0 / cfg.num_classes))
        # Not persistent: they come from the config (model_kwargs), so older checkpoints still load.
        mean, std = (cfg.mean, cfg.std) if cfg.mean else ((0.0,) * cfg.channels, (1.0,) * cfg.channels)
        self.register_buffer("in_mean", torch.tensor(mean, dtype=torch.float32), persistent=False)
        self.register_buffer("in_std", torch.tensor(std, dtype=torch.float32), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from har_vit.core.errors import UsageError

        T, C = self.cfg.window, self.cfg.channels
        if not torch.jit.is_tracing() and (x.ndim != 3 or tuple(x.shape[1:]) != (T, C)):
            raise UsageError(f"the model takes windows of shape (batch, {T}, {C}), got {tuple(x.shape)}")
        raw = sensor_units(x, self.in_mean, self.in_std) if self.cfg.mean else x
        feats = window_features(raw, T, C).double()  # (B, F)
        n, k = self.cfg.trees, self.cfg.nodes
        base = torch.arange(n, device=x.device) * k  # (trees,): offset of each tree's nodes
        feature, threshold = self.feature.flatten(), self.threshold.flatten()
        left, right = self.left.flatten(), self.right.flatten()
        node = base.expand(x.shape[0], n)  # (B, trees): global node ids, all at the roots
        for _ in range(self.cfg.depth):
            goes_left = feats.gather(1, feature[node]) <= threshold[node]
            node = base + torch.where(goes_left, left[node], right[node])
        probs = self.value.flatten(0, 1)[node].mean(1)  # (B, classes)
        return probs.clamp_min(1e-6).log()

    def num_params(self, trainable_only: bool = False) -> int:
        """Fitted numbers (split features and thresholds of internal nodes, leaf class shares); none trainable."""
        if trainable_only:
            return 0
        leaves = int((self.threshold == float("inf")).sum())
        internal = self.cfg.trees * self.cfg.nodes - leaves
        return 2 * internal + leaves * self.cfg.num_classes


def fit_forest(X: torch.Tensor, y: np.ndarray, num_classes: int, seed: int, trees: int = 300,
               threads: int | None = None, norm: dict[str, Any] | None = None) -> ForestClassifier:
    """Fit scikit-learn's RandomForestClassifier on :func:`window_features` of ``X`` and pack it as tensors.

    ``norm`` (``{"mean", "std"}`` per channel): ``X`` comes normalised with it, as the
    trainer's windows do; the statistics are then taken in sensor units (``X * std + mean``),
    at fitting and in the packed model alike.
    """
    from sklearn.ensemble import RandomForestClassifier

    X = X.cpu().float()
    if norm is not None:
        X = sensor_units(X, torch.tensor(norm["mean"], dtype=torch.float32), torch.tensor(norm["std"], dtype=torch.float32))
    feats = window_features(X).numpy()
    rf = RandomForestClassifier(n_estimators=trees, random_state=seed, n_jobs=threads or -1)
    rf.fit(feats, y)
    T, C = X.shape[1:]
    nodes = max(e.tree_.node_count for e in rf.estimators_)
    depth = max(e.tree_.max_depth for e in rf.estimators_)
    from har_vit.model.variants import create_model

    units = {} if norm is None else {"mean": [float(v) for v in norm["mean"]], "std": [float(v) for v in norm["std"]]}
    model = create_model("rf", window=int(T), channels=int(C), num_classes=num_classes, trees=trees, nodes=int(nodes),
                         depth=int(depth), **units)
    with torch.no_grad():
        for t, est in enumerate(rf.estimators_):
            tr = est.tree_
            m = tr.node_count
            leaf = tr.children_left == -1
            ids = np.arange(m)
            model.feature[t, :m] = torch.from_numpy(np.where(leaf, 0, tr.feature).astype(np.int64))
            model.threshold[t, :m] = torch.from_numpy(np.where(leaf, np.inf, tr.threshold))
            model.left[t, :m] = torch.from_numpy(np.where(leaf, ids, tr.children_left).astype(np.int64))
            model.right[t, :m] = torch.from_numpy(np.where(leaf, ids, tr.children_right).astype(np.int64))
            share = np.zeros((m, num_classes), np.float32)
            v = tr.value[:, 0, :]
            share[:, rf.classes_.astype(int)] = v / v.sum(1, keepdims=True)  # columns: the classes seen in train
            model.value[t, :m] = torch.from_numpy(share)
    return model
