"""Every random-number generator a training step draws from, saved and restored as one state.

A resumed run continues bit-identically on CPU because ``last.pt`` carries torch's,
CUDA's, NumPy's and Python's global RNGs plus the trainer's own shuffle and
augmentation generators, as tensors and plain lists (loadable with ``weights_only``).

>>> g = torch.Generator().manual_seed(0)
>>> s = rng_state(g, torch.device("cpu"))
>>> a = torch.randperm(5, generator=g); set_rng_state(s, g, torch.device("cpu"))
>>> bool((torch.randperm(5, generator=g) == a).all())
True
"""
from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def rng_state(shuffle: torch.Generator, device: torch.device, augment: torch.Generator | None = None,
              dropout: torch.Generator | None = None) -> dict[str, Any]:
    """Every RNG a training step may draw from, as tensors and plain lists (weights_only-safe).

    ``dropout`` stands in for torch's global generator (CUDA's on a GPU) when the run's
    dropout masks come from a generator of its own (stacked training).
    """
    np_name, np_keys, np_pos, np_gauss, np_cached = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    own = dropout.get_state() if dropout is not None else None
    return {
        "torch": own if own is not None and device.type != "cuda" else torch.get_rng_state(),
        "cuda": ([own if own is not None else torch.cuda.get_rng_state(device)] if device.type == "cuda" else []),
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

