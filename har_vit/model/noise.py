"""Where a layer's random masks come from: drawn by the layer itself, or fed in from outside.

Alone, a model's dropout, attention dropout and stochastic depth draw their masks from
torch's global generator, in forward order. Several models trained together as one
stacked model (:mod:`har_vit.training.stacked`) run under ``torch.func.vmap``, where a
layer cannot draw from *its own* model's generator. So there every mask is drawn
before the forward, per model, from a generator that holds exactly the state the
global generator would have had in that model's own run, with exactly the calls the
layer makes alone (:func:`draw`), and the layers take them from a :class:`Feed` in
forward order. A model trained in a stack therefore sees the same masks as trained
alone: the equality ``tests/test_stacked.py`` checks.

The calls a layer makes alone (torch 2.x on the CPU), reproduced by :func:`draw`:

- dropout (``F.dropout``): ``empty_like(x).bernoulli_(1 - p).div_(1 - p)``, times ``x``;
- attention dropout inside ``F.scaled_dot_product_attention``: a ``(B, H, N, N)``
  ``bernoulli_(1 - p)`` mask on the attention weights, scaled by ``1 / (1 - p)``;
- stochastic depth (:func:`har_vit.model.layers.drop_path`): ``(B, 1, ..)``
  ``bernoulli_(1 - p)``, then ``x * keep / (1 - p)``.

On CUDA, ``F.dropout`` uses a fused kernel with its own (Philox) stream, so a stacked
model there sees masks of the same law but not the same masks as alone.

>>> spec = [Draw("dropout", (2, 3), 0.5, torch.float32)]
>>> masks = draw(spec, torch.Generator().manual_seed(0), torch.device("cpu"))
>>> with feeding(masks) as feed:
...     y = take("dropout", torch.ones(2, 3), 0.5)
>>> bool((y == masks[0]).all()), feed.left()
(True, 0)
"""
from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch

KINDS = ("dropout", "attention", "drop_path")


@dataclass(frozen=True)
class Draw:
    """One random draw of one layer in one forward: what :func:`draw` repeats."""

    kind: str  # one of KINDS
    shape: tuple[int, ...]
    p: float  # the drop probability
    dtype: torch.dtype


class Feed:
    """Masks handed to the layers in forward order; ``record`` mode notes the draws instead."""

    def __init__(self, masks: Sequence[torch.Tensor] | None = None):
        self.masks, self.pos = list(masks) if masks is not None else None, 0
        self.drawn: list[Draw] = []  # record mode: the draws the forward asked for

    @property
    def recording(self) -> bool:
        return self.masks is None

    def left(self) -> int:
        return 0 if self.masks is None else len(self.masks) - self.pos

    def next(self, kind: str, shape: tuple[int, ...], p: float, dtype: torch.dtype,
             device: torch.device) -> torch.Tensor:
        if self.masks is None:  # recording: a stand-in of the right shape (ones: keep everything)
            self.drawn.append(Draw(kind, tuple(shape), float(p), dtype))
            return torch.ones(shape, dtype=dtype, device=device)
        if self.pos >= len(self.masks):
            raise RuntimeError(f"the forward asked for more random masks than the {len(self.masks)} drawn for it")
        mask = self.masks[self.pos]
        if tuple(mask.shape) != tuple(shape):
            raise RuntimeError(f"random mask {self.pos} ({kind}) has shape {tuple(mask.shape)}, "
                               f"the layer needs {tuple(shape)}")
        self.pos += 1
        return mask


_local = threading.local()


def current() -> Feed | None:
    """The feed the layers of this thread take their masks from, or None (they draw their own)."""
    return getattr(_local, "feed", None)


@contextlib.contextmanager
def feeding(masks: Sequence[torch.Tensor] | None) -> Iterator[Feed]:
    """Layers take their masks from ``masks`` (``None``: record what they would draw) inside the block."""
    feed, before = Feed(masks), current()
    _local.feed = feed
    try:
        yield feed
    finally:
        _local.feed = before


def take(kind: str, x: torch.Tensor, p: float, shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """The fed mask for a ``kind`` draw over ``x`` (shape ``shape``, default ``x``'s), from the current feed."""
    feed = current()
    assert feed is not None, "take() outside feeding()"
    return feed.next(kind, tuple(x.shape) if shape is None else shape, p, x.dtype, x.device)


def draw(spec: Sequence[Draw], gen: torch.Generator, device: torch.device) -> list[torch.Tensor]:
    """The masks of one forward, drawn from ``gen`` exactly as the layers would draw them alone."""
    out = []
    for d in spec:
        m = torch.empty(d.shape, dtype=d.dtype, device=device).bernoulli_(1.0 - d.p, generator=gen)
        if d.kind == "dropout":  # F.dropout scales the noise, then multiplies
            m.div_(1.0 - d.p)
        out.append(m)
    return out
