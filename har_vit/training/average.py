"""An exponential moving average of the weights (``--ema DECAY``), the model a run validates and keeps.

After every optimizer step ``avg = d * avg + (1 - d) * live`` over the parameters (buffers
are copied), with the decay ramped up early as ``d = min(DECAY, (1 + n) / (10 + n))`` after
``n`` updates, so a short run is not dominated by the initial weights. The averaged copy is
what validation scores, so ``best.pt`` and early stopping pick among averaged weights, and
it is the ``model`` that every checkpoint holds (what evaluate, predict and export load);
``last.pt`` also keeps the live weights and the update count, so a resume continues exactly.

>>> from torch import nn
>>> live = nn.Linear(2, 1)
>>> ema = WeightEMA(live, decay=0.5)
>>> with torch.no_grad():
...     _ = live.weight.add_(1.0)
>>> ema.update()   # n = 0: d = min(0.5, 1 / 10) = 0.1
>>> bool(torch.allclose(ema.model.weight, live.weight - 0.1))
True
"""
from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class WeightEMA:
    """The averaged copy (:attr:`model`, eval mode, no gradients) of a live model."""

    def __init__(self, live: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), not {decay}")
        self.decay, self.updates = decay, 0
        self.live = live
        self.model = copy.deepcopy(live).eval().requires_grad_(False)
        self._pairs_p = ([p for p in self.model.parameters()], [p for p in live.parameters()])
        self._pairs_b = ([b for b in self.model.buffers()], [b for b in live.buffers()])

    def current_decay(self) -> float:
        return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))

    @torch.no_grad()
    def update(self) -> None:
        avg, live = self._pairs_p
        torch._foreach_lerp_(avg, [p.detach() for p in live], 1.0 - self.current_decay())
        for a, b in zip(*self._pairs_b, strict=True):
            a.copy_(b)
        self.updates += 1

    def state(self) -> dict[str, Any]:
        """What ``last.pt`` keeps besides the averaged weights (its ``model``): the live weights and the count."""
        return {"live": self.live.state_dict(), "updates": self.updates}

    def load(self, averaged: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
        self.model.load_state_dict(averaged)
        self.live.load_state_dict(state["live"])
        self.updates = int(state["updates"])
