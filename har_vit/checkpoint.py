"""Checkpoints as plain dicts that load with ``torch.load(..., weights_only=True)``.

A checkpoint alone rebuilds its model: it carries the variant name, the constructor
kwargs, the class names and the per-channel normalisation fitted on train.
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch

from har_vit.errors import ArtefactError
from har_vit.io import write_bytes


def save_checkpoint(path: str | os.PathLike, ckpt: dict[str, Any]) -> Path:
    """Serialise ``ckpt`` and rename it into place (never a half-written checkpoint)."""
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    return write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; a corrupt file is an ArtefactError naming it."""
    p = Path(path)
    if not p.is_file():
        raise ArtefactError(f"{p}: checkpoint not found; train a model first (python pipeline.py train ...)")
    try:
        ckpt = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ArtefactError(f"{p}: corrupt or truncated checkpoint ({type(e).__name__}: {first[:200]}); delete it and retrain (or --resume from an older copy)") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_name" not in ckpt:
        raise ArtefactError(f"{p}: not a har_vit checkpoint (no model/model_name); pass a file written by 'pipeline.py train'")
    return ckpt


def model_from_checkpoint(ckpt: dict[str, Any]) -> torch.nn.Module:
    """Rebuild the model of a checkpoint dict and load its weights (eval mode)."""
    from har_vit.model import create_model

    model = create_model(ckpt["model_name"], **ckpt.get("model_kwargs", {}))
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise ArtefactError(f"checkpoint weights do not fit model '{ckpt['model_name']}': {str(e).splitlines()[0]}") from None
    return model.eval()


def load_model(run_dir: str | os.PathLike, which: str = "best", map_location: str = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """``(model in eval mode, checkpoint dict)`` from a train run folder (``best`` or ``last``)."""
    ckpt = load_checkpoint(Path(run_dir) / f"{which}.pt", map_location=map_location)
    return model_from_checkpoint(ckpt), ckpt


def normalise(x: torch.Tensor, norm: dict[str, Any]) -> torch.Tensor:
    """``(x - mean) / std`` per channel with the train statistics stored in a checkpoint. x: (B, T, C)."""
    mean = torch.as_tensor(norm["mean"], dtype=x.dtype, device=x.device)
    std = torch.as_tensor(norm["std"], dtype=x.dtype, device=x.device)
    return (x - mean) / std
