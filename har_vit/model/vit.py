"""The patch-merging 1D Vision Transformer, configured by one frozen dataclass.

A window ``(B, T, C)`` is cut into time patches (per axis, or over all axes jointly),
given a learned position embedding, and run through stages of transformer blocks,
each followed by a patch merge that halves the number of patches. The head either
flattens the remaining tokens (the article) or averages them.

>>> m = HarViT(ViTConfig())          # the article's network at 128 x 3, 6 classes
>>> m(torch.zeros(2, 128, 3)).shape
torch.Size([2, 6])
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from har_vit.core.errors import UsageError
from har_vit.model.layers import Block, DilatedStem, Dropout, PatchEmbed, PatchMerge1d, SeedBlock, WindowScale

BLOCK_KINDS = ("seed", "prenorm")
POOLS = ("flatten", "mean")
POS_EMBEDS = ("learned", "none")
MERGES = ("article", "prenorm")
INITS = ("torch", "vit")


@dataclass(frozen=True)
class ViTConfig:
    """Shape of the network. The defaults are the article's network (``seed``)."""

    window: int = 128  # samples per window, T
    channels: int = 3  # accelerometer axes, C
    num_classes: int = 6
    patch: int = 4  # samples per patch; T must be a multiple
    window_scale: bool = False  # add each window's standardised shape and log std per axis (layers.WindowScale)
    stem: int = 0  # width of a multi-dilation conv stem before the patches (joint_axes only); 0: none
    stem_kernel: int = 9
    stem_dilations: tuple[int, ...] = (1, 2, 4, 8)
    joint_axes: bool = False  # False: a token per (axis, patch), as the article; True: a token per patch over all axes
    embed_kernel: int = 0  # patch conv length in time; 0: = patch, larger: overlapping patches
    pos_embed: str = "learned"  # "learned": one vector per patch per group (article); "none"
    dims: tuple[int, ...] = (256, 256, 256)  # embedding dim of each stage
    depths: tuple[int, ...] = (1, 1, 1)  # blocks per stage
    head_dim: int = 64  # heads = dim // head_dim
    block: str = "seed"  # "seed": relu(x + norm(attn(x))) (article); "prenorm": attention + MLP, pre-norm
    mlp_ratio: float = 2.0  # MLP hidden = ratio * dim ("prenorm" blocks only)
    mlp_conv: int = 0  # odd kernel of a depthwise conv over time inside the MLP; 0: none
    merge: str = "article"  # "article": relu(LN(Linear(2D))); "prenorm": Linear(LN(2D)) (Swin)
    merge_last: bool = True  # merge after the final stage too (the article does)
    final_norm: bool = False  # LayerNorm on the final tokens before the head (the article has none)
    pool: str = "flatten"  # "flatten": concat every final token (article); "mean": average them
    head_hidden: int = 1024  # hidden units of the head; 0 for a single Linear
    head_norm: bool = True  # LayerNorm between the head's hidden Linear and its ReLU (article)
    init: str = "torch"  # "torch": PyTorch's default init, zero position embedding (article); "vit": trunc-normal
    drop: float = 0.0  # dropout in attention, MLP and head
    drop_path: float = 0.0  # stochastic depth, rising linearly to this over the blocks

    def __post_init__(self) -> None:
        # Config files and checkpoints carry lists; freeze them for hashing and equality.
        object.__setattr__(self, "dims", tuple(int(d) for d in self.dims))
        object.__setattr__(self, "depths", tuple(int(d) for d in self.depths))
        object.__setattr__(self, "stem_dilations", tuple(int(d) for d in self.stem_dilations))
        bad = []
        if self.window < self.patch or self.window % self.patch:
            bad.append(f"window {self.window} must be a positive multiple of patch {self.patch}")
        if min(self.channels, self.num_classes, self.patch) < 1:
            bad.append(f"channels ({self.channels}), num_classes ({self.num_classes}) and patch ({self.patch}) must be >= 1")
        if not self.dims or len(self.dims) != len(self.depths):
            bad.append(f"dims {self.dims} and depths {self.depths} need one entry per stage")
        if any(d % self.head_dim for d in self.dims):
            bad.append(f"every dim in {self.dims} must be a multiple of head_dim {self.head_dim}")
        if self.embed_kernel and (self.embed_kernel < self.patch or (self.embed_kernel - self.patch) % 2):
            bad.append(f"embed_kernel {self.embed_kernel} must be patch {self.patch} plus an even overlap")
        if self.mlp_conv < 0 or (self.mlp_conv and self.mlp_conv % 2 == 0):
            bad.append(f"mlp_conv {self.mlp_conv} must be 0 or an odd kernel size")
        if self.pos_embed not in POS_EMBEDS:
            bad.append(f"pos_embed '{self.pos_embed}' is not one of {POS_EMBEDS}")
        if self.block not in BLOCK_KINDS:
            bad.append(f"block '{self.block}' is not one of {BLOCK_KINDS}")
        if self.stem and (not self.joint_axes or self.stem % len(self.stem_dilations) or self.stem_kernel % 2 == 0):
            bad.append(f"stem {self.stem} needs joint_axes, a multiple of {len(self.stem_dilations)} dilations "
                       f"and an odd stem_kernel (got {self.stem_kernel})")
        if self.window_scale and not self.joint_axes:
            bad.append("window_scale needs joint_axes (its channels join the axes' tokens)")
        if self.merge not in MERGES:
            bad.append(f"merge '{self.merge}' is not one of {MERGES}")
        if self.init not in INITS:
            bad.append(f"init '{self.init}' is not one of {INITS}")
        if self.pool not in POOLS:
            bad.append(f"pool '{self.pool}' is not one of {POOLS}")
        if not (0.0 <= self.drop < 1.0 and 0.0 <= self.drop_path < 1.0):
            bad.append(f"drop ({self.drop}) and drop_path ({self.drop_path}) must be in [0, 1)")
        if bad:
            raise UsageError("bad model config: " + "; ".join(bad))

    @property
    def groups(self) -> int:
        """Token sequences per window: one per axis, or one for all axes."""
        return 1 if self.joint_axes else self.channels

    @property
    def num_patches(self) -> int:
        return self.window // self.patch

    @property
    def final_patches(self) -> int:
        """Patches per group after every merge (each one rounds odd counts up)."""
        n = self.num_patches
        for _ in range(len(self.dims) - 1 + self.merge_last):
            n = math.ceil(n / 2)
        return n

    @property
    def head_in(self) -> int:
        if self.pool == "flatten":
            return self.groups * self.final_patches * self.dims[-1]
        return self.dims[-1]


class HarViT(nn.Module):
    """Patch-merging 1D ViT: float ``(B, window, channels)`` -> logits ``(B, num_classes)``."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.cfg = cfg
        G, N, D0 = cfg.groups, cfg.num_patches, cfg.dims[0]
        self.window_scale = WindowScale() if cfg.window_scale else None
        cin = WindowScale.out_channels(cfg.channels) if cfg.window_scale else cfg.channels
        self.stem = DilatedStem(cin, cfg.stem, cfg.stem_kernel, cfg.stem_dilations) if cfg.stem else None
        width = cfg.stem or cin
        self.patch_embed = PatchEmbed(D0, cfg.patch, axes=width if cfg.joint_axes else 1, kernel=cfg.embed_kernel)
        # Without absolute positions the model sees order only through overlapping
        # patches, convs and merges: an activity looks the same wherever it starts.
        self.pos_embed = nn.Parameter(torch.zeros(1, G, N, D0)) if cfg.pos_embed == "learned" else None

        dpr = iter(torch.linspace(0, cfg.drop_path, sum(cfg.depths)).tolist())
        out_dims = cfg.dims[1:] + ((cfg.dims[-1],) if cfg.merge_last else ())
        self.stages = nn.ModuleList()
        patches = N
        for i, (dim, depth) in enumerate(zip(cfg.dims, cfg.depths)):
            stage = nn.Sequential(*[self._block(dim, next(dpr)) for _ in range(depth)])
            if i < len(out_dims):
                stage.append(PatchMerge1d(dim, out_dims[i], norm_first=cfg.merge == "prenorm", patches=patches))
                patches = math.ceil(patches / 2)
            self.stages.append(stage)
        self.norm = nn.LayerNorm(cfg.dims[-1]) if cfg.final_norm else nn.Identity()

        if cfg.head_hidden:
            hidden_norm = nn.LayerNorm(cfg.head_hidden) if cfg.head_norm else nn.Identity()
            self.head = nn.Sequential(
                nn.Linear(cfg.head_in, cfg.head_hidden), hidden_norm, nn.ReLU(), Dropout(cfg.drop),
                nn.Linear(cfg.head_hidden, cfg.num_classes),
            )
        else:
            self.head = nn.Sequential(Dropout(cfg.drop), nn.Linear(cfg.head_in, cfg.num_classes))
        if cfg.init == "vit":
            self.apply(_init_weights)
            if self.pos_embed is not None:
                nn.init.trunc_normal_(self.pos_embed, std=0.02)
        # init == "torch": every layer keeps PyTorch's default init and the position
        # embedding starts at zero, as the article's code does.

    def _block(self, dim: int, drop_path: float) -> nn.Module:
        heads = dim // self.cfg.head_dim
        if self.cfg.block == "seed":
            return SeedBlock(dim, heads, drop=self.cfg.drop, drop_path=drop_path)
        return Block(dim, heads, mlp_ratio=self.cfg.mlp_ratio, drop=self.cfg.drop, drop_path=drop_path,
                     conv_kernel=self.cfg.mlp_conv)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Windows ``(B, T, C)`` -> final tokens ``(B, G, N', D)`` (normalised when ``final_norm``)."""
        T, C = self.cfg.window, self.cfg.channels
        # A shape check, not data-dependent flow; skipped under jit.trace, which would
        # record the shapes as tensors and warn.
        if not torch.jit.is_tracing() and (x.ndim != 3 or tuple(x.shape[1:]) != (T, C)):
            raise UsageError(f"the model takes windows of shape (batch, {T}, {C}), got {tuple(x.shape)}; "
                             f"cut windows of {T} samples x {C} channels or build the model for this shape")
        if self.window_scale is not None:
            x = self.window_scale(x)  # (B, T, 3C)
        if self.stem is not None:
            x = self.stem(x)  # (B, T, stem)
        x = self.patch_embed(x)  # (B, G, N, D)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        G = x.shape[1]
        # Each group's sequence attends only to itself: fold groups into the batch.
        x = x.flatten(0, 1)  # (B*G, N, D)
        for stage in self.stages:
            x = stage(x)  # (B*G, N_i, D_i)
        x = self.norm(x)
        return x.unflatten(0, (-1, G))  # (B, G, N', D)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Final tokens ``(B, G, N', D)`` -> logits ``(B, classes)``, or the pooled features."""
        x = x.flatten(1) if self.cfg.pool == "flatten" else x.mean(dim=(1, 2))  # (B, head_in)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def num_params(self, trainable_only: bool = False) -> int:
        """Number of parameters (all of them, or only those with ``requires_grad``)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def flops(self) -> int:
        """fvcore FLOPs of one window (one multiply-add = one FLOP); see :func:`count_flops`."""
        return count_flops(self, torch.zeros(1, self.cfg.window, self.cfg.channels))[0]


def _init_weights(m: nn.Module) -> None:
    # ViT-style: small truncated-normal Linear weights, zero biases; convs and norms keep torch's init.
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        nn.init.zeros_(m.bias)


def _sdpa_flop(inputs: list[Any], outputs: list[Any]) -> int:
    """fvcore handle for ``aten::scaled_dot_product_attention``: q @ k^T plus attn @ v.

    fvcore (0.1.5) has no handle for the fused op and would skip it, dropping the
    attention matmuls from the count.
    """
    from fvcore.nn.jit_handles import get_shape

    q, k, v = (get_shape(t) for t in inputs[:3])  # (..., L, E), (..., S, E), (..., S, Ev)
    batch = math.prod(q[:-2])
    return batch * q[-2] * k[-2] * (q[-1] + v[-1])


def count_flops(model: nn.Module, x: torch.Tensor) -> tuple[int, dict[str, int]]:
    """fvcore FLOPs of ``model(x)`` in eval mode and the ops fvcore did not count.

    fvcore counts one multiply-add as one FLOP (so these are MACs) for matmuls,
    linears, convs and norms; element-wise ops (add, ReLU, GELU, softmax inside
    SDPA, padding) are skipped and listed in the returned dict with their call counts.
    """
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings():
            # fvcore scripts and traces with torch.jit, deprecated in recent torch: not
            # the caller's concern.
            warnings.simplefilter("ignore", DeprecationWarning)
            from fvcore.nn import FlopCountAnalysis

            fca = FlopCountAnalysis(model, x).set_op_handle("aten::scaled_dot_product_attention", _sdpa_flop)
            fca.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            return int(fca.total()), dict(fca.unsupported_ops())
    finally:
        model.train(was_training)


def config_fields() -> list[str]:
    """Names a variant or an override may set."""
    return [f.name for f in dataclasses.fields(ViTConfig)]
