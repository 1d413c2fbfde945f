"""Checkpoints as plain dicts that load with ``torch.load(..., weights_only=True)``.

A checkpoint alone rebuilds its model: it carries the variant name, the constructor
kwargs, the class names and the per-channel normalisation fitted on train.

``torch.load`` does not verify the bytes of tensors (a flipped bit in a weight loads
silently), so :func:`save_checkpoint` stores a sha256 over every value of the dict in
``ckpt["integrity"]`` and :func:`load_checkpoint` recomputes it: a damaged file is an
ArtefactError naming it, never a quietly different model.
"""
from __future__ import annotations

import contextvars
import hashlib
import io
import os
from pathlib import Path
from typing import Any

import torch

from har_vit.core.errors import ArtefactError
from har_vit.core.io import MANIFEST, write_bytes

INTEGRITY = "integrity"
# A checkpoint without an integrity digest was not written by save_checkpoint; it loads only when
# the user vouches for it (``--trust``), which the command line sets here for its one command.
TRUST: contextvars.ContextVar[bool] = contextvars.ContextVar("har_vit_trust_checkpoints", default=False)


def digest(obj: Any) -> str:
    """sha256 over a checkpoint's contents: tensor bytes, dtypes, shapes and plain values."""
    h = hashlib.sha256()

    def walk(o: Any) -> None:
        if isinstance(o, torch.Tensor):
            t = o.detach().cpu().reshape(-1).contiguous()
            h.update(f"T{t.dtype}{tuple(o.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes())
        elif isinstance(o, dict):
            h.update(b"{")
            for k in sorted(o, key=str):
                if k == INTEGRITY:
                    continue
                h.update(repr(k).encode() + b":")
                walk(o[k])
            h.update(b"}")
        elif isinstance(o, (list, tuple)):
            h.update(b"[")
            for v in o:
                walk(v)
            h.update(b"]")
        else:
            h.update(repr(o).encode() + b";")

    walk(obj)
    return h.hexdigest()


def save_checkpoint(path: str | os.PathLike, ckpt: dict[str, Any]) -> Path:
    """Serialise ``ckpt`` with its integrity digest and rename it into place (never a half file)."""
    buf = io.BytesIO()
    torch.save({**ckpt, INTEGRITY: digest(ckpt)}, buf)
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
    stored = ckpt.pop(INTEGRITY, None)
    if stored is None and not TRUST.get():
        raise ArtefactError(f"{p}: checkpoint has no integrity digest (not written by har_vit, or edited); "
                            "retrain, or pass --trust if you know where the file comes from")
    if stored is not None and stored != digest(ckpt):
        raise ArtefactError(f"{p}: checkpoint is damaged (contents do not match its integrity digest); "
                            "delete it and retrain (or --resume from an older copy)")
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


def served(run_dir: str | os.PathLike, which: str = "served") -> str:
    """``best`` or ``last``: ``which`` itself, or for ``served`` the checkpoint the run was trained to serve
    (its ``--serve``, in the train manifest's config; ``best`` for runs from before the option, and for a
    folder without a readable manifest, whose ``best.pt`` is the complete file to trust)."""
    if which != "served":
        return which
    import json

    try:
        config = json.loads((Path(run_dir) / MANIFEST).read_text()).get("config") or {}
    except (OSError, ValueError, AttributeError):
        return "best"
    return "last" if config.get("serve") == "last" else "best"


def load_model(run_dir: str | os.PathLike, which: str = "served",
               map_location: str = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """``(model in eval mode, checkpoint dict)`` from a train run folder: ``best``, ``last`` or the one it serves."""
    ckpt = load_checkpoint(Path(run_dir) / f"{served(run_dir, which)}.pt", map_location=map_location)
    return model_from_checkpoint(ckpt), ckpt


def normalise(x: torch.Tensor, norm: dict[str, Any]) -> torch.Tensor:
    """``(x - mean) / std`` per channel with the train statistics stored in a checkpoint. x: (B, T, C)."""
    mean = torch.as_tensor(norm["mean"], dtype=x.dtype, device=x.device)
    std = torch.as_tensor(norm["std"], dtype=x.dtype, device=x.device)
    return (x - mean) / std
