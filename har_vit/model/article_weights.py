"""Weights from and to the article's own code.

The article's PyTorch module names its tensors ``position_embedding``, ``patch_conv``,
``msa_layer.{i}.{query,key,value}`` (separate q, k, v Linears), ``msa_layer.{i}.att_mlp``
(Linear, LayerNorm), ``msa_layer.{i}.downsample_mlp`` (Linear, LayerNorm) and
``dense_tower`` (Linear, LayerNorm, ReLU, Linear). :func:`from_article_state_dict`
builds the ``seed`` variant whose logits for ``x`` of shape ``(B, T, C)`` equal the
article model's for ``x.unsqueeze(1)``; :func:`to_article_state_dict` goes back.

>>> import torch
>>> from har_vit.model import create_model
>>> m = create_model("seed", num_classes=18).eval()
>>> back = from_article_state_dict(to_article_state_dict(m)).eval()
>>> x = torch.randn(2, 128, 3)
>>> torch.equal(back(x), m(x))
True
"""
from __future__ import annotations

from typing import Mapping

import torch

from har_vit.core.errors import UsageError
from har_vit.model.variants import VARIANTS, create_model
from har_vit.model.vit import HarViT

# The article's names whose tensors map one to one onto ours; the q, k, v Linears of each
# block are concatenated into our fused ``qkv`` (same parameters, one matmul).
_ONE_TO_ONE = {
    "position_embedding": "pos_embed",
    "patch_conv.weight": "patch_embed.proj.weight",
    "patch_conv.bias": "patch_embed.proj.bias",
    "dense_tower.0.weight": "head.0.weight", "dense_tower.0.bias": "head.0.bias",
    "dense_tower.1.weight": "head.1.weight", "dense_tower.1.bias": "head.1.bias",
    "dense_tower.3.weight": "head.4.weight", "dense_tower.3.bias": "head.4.bias",
}
_PER_BLOCK = {
    "att_mlp.0": "{i}.0.attn.proj", "att_mlp.1": "{i}.0.norm",
    "downsample_mlp.0": "{i}.1.reduction", "downsample_mlp.1": "{i}.1.norm",
}
_QKV = ("query", "key", "value")


def _key_map(blocks: int) -> dict[str, str]:
    out = dict(_ONE_TO_ONE)
    for i in range(blocks):
        for theirs, ours in _PER_BLOCK.items():
            for p in ("weight", "bias"):
                out[f"msa_layer.{i}.{theirs}.{p}"] = f"stages.{ours.format(i=i)}.{p}"
    return out


def is_article_state_dict(sd: Mapping[str, object]) -> bool:
    """True when ``sd`` has the article's tensor names (a state_dict saved from its code)."""
    return isinstance(sd, Mapping) and "position_embedding" in sd and "patch_conv.weight" in sd


def from_article_state_dict(sd: Mapping[str, torch.Tensor]) -> HarViT:
    """The ``seed`` model carrying the article's weights; window, channels and classes come from the shapes."""
    if not is_article_state_dict(sd):
        raise UsageError("not a state_dict of the article's network: it needs 'position_embedding' and "
                         "'patch_conv.weight' (save it with torch.save(model.state_dict(), path))")
    blocks = len({k.split(".")[1] for k in sd if k.startswith("msa_layer.")})
    seed = VARIANTS["seed"]
    try:
        _, channels, patches, _ = sd["position_embedding"].shape  # (1, C, N, D)
        patch = sd["patch_conv.weight"].shape[2]  # (D, 1, patch, 1)
        classes = sd["dense_tower.3.weight"].shape[0]
    except (KeyError, ValueError) as e:
        raise UsageError(f"article state_dict has an unexpected layout ({e}); expected the article's "
                         "position_embedding (1, C, N, D) and dense_tower.3 (classes, hidden)") from None
    if blocks != len(seed["dims"]) or patch != seed["patch"]:
        raise UsageError(f"article state_dict has {blocks} blocks and patch {patch}; the article's network "
                         f"has {len(seed['dims'])} and {seed['patch']}")
    model = create_model("seed", window=int(patches * patch), channels=int(channels), num_classes=int(classes))
    ours: dict[str, torch.Tensor] = {ours: sd[theirs] for theirs, ours in _key_map(blocks).items() if theirs in sd}
    for i in range(blocks):
        for p in ("weight", "bias"):
            try:
                ours[f"stages.{i}.0.attn.qkv.{p}"] = torch.cat([sd[f"msa_layer.{i}.{n}.{p}"] for n in _QKV])
            except KeyError as e:
                raise UsageError(f"article state_dict lacks {e}") from None
    missing = sorted(set(model.state_dict()) - set(ours))
    unused = sorted(set(sd) - set(_key_map(blocks)) - {f"msa_layer.{i}.{n}.{p}" for i in range(blocks)
                                                         for n in _QKV for p in ("weight", "bias")})
    if missing or unused:
        raise UsageError(f"article state_dict does not fit the seed network: missing {missing[:4]}, "
                         f"unexpected {unused[:4]}")
    try:
        model.load_state_dict(ours)
    except RuntimeError as e:
        raise UsageError(f"article state_dict shapes do not fit the seed network: {str(e).splitlines()[-1].strip()}") from None
    return model


def to_article_state_dict(model: HarViT) -> dict[str, torch.Tensor]:
    """The article's state_dict for a ``seed``-shaped model (inverse of :func:`from_article_state_dict`)."""
    cfg = model.cfg
    if (cfg.block, cfg.merge, cfg.pool, cfg.final_norm, cfg.joint_axes) != ("seed", "article", "flatten", False, False) \
            or not (cfg.head_hidden and cfg.head_norm) or cfg.pos_embed != "learned" or set(cfg.depths) != {1}:
        raise UsageError(f"model '{getattr(model, 'name', '?')}' is not the article's network; only 'seed' converts")
    own = model.state_dict()
    blocks = len(cfg.dims)
    sd = {theirs: own[ours].clone() for theirs, ours in _key_map(blocks).items()}
    for i in range(blocks):
        for p in ("weight", "bias"):
            for n, t in zip(_QKV, own[f"stages.{i}.0.attn.qkv.{p}"].chunk(3)):
                sd[f"msa_layer.{i}.{n}.{p}"] = t.clone()
    return sd
