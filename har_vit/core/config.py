"""Frozen config dataclasses, built once from defaults < YAML file < CLI options."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Mapping, TypeVar

from har_vit.core.errors import UsageError

T = TypeVar("T")


def load_yaml(path: str | os.PathLike | None) -> dict[str, Any]:
    """Read a YAML config file into a dict (empty when ``path`` is None)."""
    if path is None:
        return {}
    import yaml

    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{p}: config file not found; pass an existing YAML file to --config")
    try:
        body = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise UsageError(f"{p}: not valid YAML ({str(e).splitlines()[0]}); fix the file") from None
    if not isinstance(body, dict):
        raise UsageError(f"{p}: a config file must be a mapping of option: value")
    return {str(k).replace("-", "_"): v for k, v in body.items()}


def build(cls: type[T], *layers: Mapping[str, Any] | None) -> T:
    """Build ``cls`` from layered mappings, later layers winning; ``None`` values are skipped.

    Keys that ``cls`` does not know are ignored, so one YAML file can feed every stage.
    """
    names = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    for layer in layers:
        for k, v in (layer or {}).items():
            k = k.replace("-", "_")
            if k in names and v is not None:
                values[k] = v
    for k, v in list(values.items()):
        default = names[k].default
        if isinstance(default, tuple) and isinstance(v, (list, tuple)):
            values[k] = tuple(v)
    try:
        return cls(**values)
    except (TypeError, ValueError) as e:
        raise UsageError(f"bad {cls.__name__} option: {e}") from None


def choice_errors(**given: tuple[Any, tuple[str, ...]]) -> list[str]:
    """Messages for options whose value is not among its choices: ``choice_errors(device=(v, DEVICES))``."""
    return [f"{k} '{v}' is not one of {', '.join(ch)}" for k, (v, ch) in given.items() if v not in ch]


def as_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
