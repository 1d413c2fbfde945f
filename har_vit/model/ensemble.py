"""Several networks of one variant, trained apart on one split, predicting together.

``train --members K`` trains K models that differ only in their seed of initialisation,
shuffling, augmentation and dropout (the split is the run's), and keeps them as one
:class:`Ensemble`: its output is the log of the mean of the members' class probabilities,
so a softmax of it gives that mean and its argmax the ensemble's answer. Every later stage
(evaluate, predict, export, the report) takes it as it takes one network; a checkpoint
rebuilds it with ``create_model(name, members=K, ...)``.

>>> import torch
>>> from har_vit.model import create_model
>>> e = create_model("tiny", window=32, members=3).eval()
>>> torch.allclose(e(torch.zeros(2, 32, 3)).exp().sum(1), torch.ones(2))  # mean probabilities: they sum to one
True
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import nn


class Ensemble(nn.Module):
    """``(B, window, channels)`` -> log of the members' mean class probabilities ``(B, num_classes)``."""

    def __init__(self, members: Sequence[nn.Module]):
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {len(members)}")
        self.members = nn.ModuleList(members)
        self._log_k = math.log(len(members))

    @property
    def cfg(self) -> Any:
        """The members' shared config (window, channels, classes): what stages read off a model."""
        return self.members[0].cfg

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        log_probs = torch.stack([m(x).float().log_softmax(-1) for m in self.members])
        return torch.logsumexp(log_probs, dim=0) - self._log_k

    def num_params(self, trainable_only: bool = False) -> int:
        """Parameters of all members together."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def flops(self) -> int:
        """fvcore FLOPs of one window through every member."""
        from har_vit.model.vit import count_flops

        return count_flops(self, torch.zeros(1, self.cfg.window, self.cfg.channels))[0]


def member_seed(seed: int, index: int) -> int:
    """Seed of member ``index`` of a run with ``seed``: member 0 keeps it (one member is a plain run).

    >>> [member_seed(7, i) for i in range(3)]
    [7, 1000007, 2000007]
    """
    return seed + 1_000_000 * index


def ensemble_info(ckpt: dict[str, Any]) -> dict[str, Any]:
    """For a metrics or predictions manifest: ``members`` and each member's epoch, for an ensemble; else nothing.

    >>> ensemble_info({"model_kwargs": {"members": 2}, "member_epochs": [9, 4]}), ensemble_info({"model_kwargs": {}})
    ({'members': 2, 'member_epochs': [9, 4]}, {})
    """
    k = int(ckpt.get("model_kwargs", {}).get("members", 1))
    return {"members": k, "member_epochs": ckpt.get("member_epochs")} if k > 1 else {}
