"""Named model variants: small dicts of :class:`ViTConfig` fields, timm-style.

Add a variant by adding one entry to ``VARIANTS``; ``create_model`` and the tests
pick it up. A checkpoint stores ``model.name`` and ``model.kwargs``, and
``create_model(name, **kwargs)`` rebuilds the same network.
"""
from __future__ import annotations

from typing import Any

from har_vit.core.errors import UsageError
from har_vit.model.ensemble import Ensemble
from har_vit.model.vit import HarViT, ViTConfig, config_fields

VARIANTS: dict[str, dict[str, Any]] = {
    # The article's network, quirks kept: per-axis patches with a zero-initialised
    # position embedding, attention-only post-norm blocks relu(x + LN(W attn(x))), a
    # Linear -> LN -> ReLU merge after every stage, no norm before the flatten and a
    # 3072 -> 1024 (LN, ReLU) -> classes head; PyTorch's default init. 4,367,366 params
    # at 128 x 3, 6 classes. tests/test_article.py checks it against a reference written
    # from the article's description, weight for weight.
    "seed": dict(patch=4, joint_axes=False, dims=(256, 256, 256), depths=(1, 1, 1), head_dim=64,
                 block="seed", merge="article", merge_last=True, final_norm=False, pool="flatten",
                 head_hidden=1024, head_norm=True, init="torch"),
    # 6.5% of seed's params, 6.6% of its FLOPs. Tokens mix all axes (phone orientation
    # varies, so one axis alone is a poor unit); overlapping patches and no absolute
    # position embedding (an activity looks the same wherever in the window it starts);
    # pre-norm blocks whose MLP has a depthwise conv over neighbouring tokens (locality
    # that attention would have to learn from ~30 users); a mean-pooled linear head
    # instead of the 3.1M-param flatten head; dropout and stochastic depth. In a CPU
    # ablation with users 29-36 held out, mean pooling, dropping the position embedding
    # and the MLP conv each added accuracy; a conv stem before patching did not.
    "tiny": dict(patch=4, joint_axes=True, embed_kernel=8, pos_embed="none", dims=(64, 96, 128), depths=(1, 1, 1),
                 head_dim=16, block="prenorm", mlp_ratio=2.0, mlp_conv=5, merge="prenorm", merge_last=False,
                 final_norm=True, pool="mean", head_hidden=0, head_norm=False, init="vit", drop=0.1, drop_path=0.1),
}
# tiny that also sees each window at its own scale (layers.WindowScale): per axis, the window
# standardised by its own mean and std, and the log of that std. The default model. After
# standardising over the dataset, hand and sitting activities move by 1-3% of a channel's std
# (bench/results/motion.json), and tiny underfits them (WISDM 2019, 60 epochs without jitter,
# 3 seeds: final training accuracy 0.66-0.67; with these channels 0.79-0.80). Noise (--jitter,
# off by default) of 0.05 std would bury those movements.
VARIANTS["tiny_ws"] = {**VARIANTS["tiny"], "window_scale": True}


# Models fitted by scikit-learn rather than trained by gradient (har_vit.model.forest): the
# baseline a user would pick instead, run through the same splits, evaluate and report.
CLASSICAL = ("rf",)


def list_models(classical: bool = True) -> list[str]:
    """Names of the registered network variants, sorted, then the classical baselines (unless ``classical=False``)."""
    return sorted(VARIANTS) + (list(CLASSICAL) if classical else [])


def create_model(name: str, window: int = 128, channels: int = 3, num_classes: int = 6, members: int = 1,
                 **overrides: Any) -> HarViT | Ensemble:
    """Build variant ``name`` for ``(B, window, channels)`` input and ``num_classes`` logits.

    ``overrides`` replace the variant's :class:`ViTConfig` fields (e.g. ``drop=0.2``).
    ``members > 1`` builds an :class:`~har_vit.model.ensemble.Ensemble` of that many such
    networks (``train --members``). The returned module carries ``name`` and ``kwargs`` so
    that ``create_model(m.name, **m.kwargs)`` rebuilds it (a checkpoint stores both).

    >>> import torch
    >>> m = create_model("tiny", window=64, channels=6, num_classes=18)
    >>> m(torch.zeros(2, 64, 6)).shape
    torch.Size([2, 18])
    """
    if not isinstance(members, int) or isinstance(members, bool) or members < 1:
        raise UsageError(f"members must be a whole number >= 1, got {members!r}")
    if members > 1:
        if name in CLASSICAL:
            raise UsageError(f"--members: '{name}' is not a network; ensembles are of network variants")
        model = Ensemble([create_model(name, window, channels, num_classes, **overrides) for _ in range(members)])
        model.name = name
        model.kwargs = {**model.members[0].kwargs, "members": members}
        return model
    if name in CLASSICAL:
        return _forest(window, channels, num_classes, **overrides)
    if name not in VARIANTS:
        raise UsageError(f"unknown model '{name}'; known models: {', '.join(list_models())}")
    unknown = sorted(set(overrides) - set(config_fields()))
    if unknown:
        raise UsageError(f"unknown model option(s) {unknown} for '{name}'; valid options: {', '.join(config_fields())}")
    shape = dict(window=window, channels=channels, num_classes=num_classes)
    cfg = ViTConfig(**{**VARIANTS[name], **overrides, **shape})
    model = HarViT(cfg)
    model.name = name
    # Plain Python values only, so the dict survives torch.load(weights_only=True).
    model.kwargs = {**shape, **{k: list(v) if isinstance(v, tuple) else v for k, v in overrides.items()}}
    return model



def _forest(window: int, channels: int, num_classes: int, **fitted: Any):
    """An unfitted-shape forest; ``fitted`` (trees, nodes, depth) comes from a checkpoint's model_kwargs."""
    from har_vit.model.forest import ForestClassifier, ForestConfig

    unknown = sorted(set(fitted) - {"trees", "nodes", "depth", "mean", "std"})
    if unknown:
        raise UsageError(f"unknown model option(s) {unknown} for 'rf'; valid options: trees, nodes, depth, mean, std")
    model = ForestClassifier(ForestConfig(window, channels, num_classes,
                                          **{k: tuple(v) if k in ("mean", "std") else v for k, v in fitted.items()}))
    model.name = "rf"
    model.kwargs = {"window": window, "channels": channels, "num_classes": num_classes, **fitted}
    return model
