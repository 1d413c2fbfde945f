"""Reusable layers of the patch-merging 1D ViT.

Token tensors are ``(B, N, D)``: batch, patches along time, embedding dim. Axis
groups (one per accelerometer axis, or one for all axes together) are folded into
the batch by the model, so every layer here sees plain sequences.

Everything is export-friendly: no Python branch depends on a tensor's values, only
on shapes, module settings and whether an ONNX export is running. ``torch.jit.trace`` and
``torch.export`` record the graph the eager model runs; an ONNX export records the same
function, with one layer (the article's patch embedding) written in a form onnxruntime runs
faster (each export's logits are checked against eager PyTorch before use).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from har_vit.model import noise


class WindowScale(nn.Module):
    """Add each window's own shape and level: ``(B, T, C)`` -> ``(B, T, 3C)``.

    Per axis, the window minus its mean over its std, then the log of that std (constant
    over time), after the input itself. Dataset-wide standardisation leaves the small
    movements of sitting, typing or eating at about 1% of a channel's std (WISDM 2019
    phone: median window std 0.009-0.030 of it for 11 of its 18 activities, in
    ``bench/results/motion.json``), where a network
    hardly tells them apart; these channels show their shape at full scale and their size
    on a log scale, as a forest's per-window statistics do. ``eps`` (a variance, in the
    input's units) keeps a constant window finite.

    >>> WindowScale()(torch.randn(2, 16, 3)).shape
    torch.Size([2, 16, 9])
    """

    def __init__(self, eps: float = 1e-6):
        super().__init__()
        self.eps = eps

    @staticmethod
    def out_channels(channels: int) -> int:
        """Width of the output for ``channels`` input axes: the input, its shape, its log std."""
        return 3 * channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centred = x - x.mean(dim=1, keepdim=True)
        std = (centred.pow(2).mean(dim=1, keepdim=True) + self.eps).sqrt()  # (B, 1, C)
        return torch.cat([x, centred / std, std.log().expand_as(x)], dim=2)


class PatchEmbed(nn.Module):
    """Cut a window into time patches and embed each one.

    The window ``(B, T, C)`` is viewed as a one-channel image ``(B, 1, T, C)`` and a
    Conv2d with stride ``(patch, axes)`` maps each patch to ``dim``. ``axes=1`` embeds
    every accelerometer axis on its own (the article: ``C`` groups of ``T // patch``
    tokens); ``axes=C`` mixes all axes into one token per patch (one group), so tokens
    can hold orientation-independent combinations. ``kernel > patch`` makes patches
    overlap by ``(kernel - patch) / 2`` samples on each side (still ``T // patch`` of them).

    >>> PatchEmbed(dim=8, patch=4, axes=1)(torch.zeros(2, 16, 3)).shape
    torch.Size([2, 3, 4, 8])
    >>> PatchEmbed(dim=8, patch=4, axes=3, kernel=8)(torch.zeros(2, 16, 3)).shape
    torch.Size([2, 1, 4, 8])
    """

    def __init__(self, dim: int, patch: int, axes: int = 1, kernel: int | None = None):
        super().__init__()
        kernel = kernel or patch
        if kernel < patch or (kernel - patch) % 2:
            raise ValueError(f"kernel {kernel} must be patch {patch} plus an even overlap")
        self.proj = nn.Conv2d(1, dim, kernel_size=(kernel, axes), stride=(patch, axes), padding=((kernel - patch) // 2, 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernel, patch = self.proj.kernel_size[0], self.proj.stride[0]
        if torch.onnx.is_in_onnx_export() and kernel == patch and self.proj.kernel_size[1] == 1:
            # The same map for onnxruntime without transposing the conv's output: each axis's
            # patches times the (patch, D) weight. Only in an ONNX export (the parity check holds
            # the graph to eager); training and eager inference keep the conv.
            B, T, C = x.shape
            N = T // patch  # samples past the last whole patch are dropped, as the strided conv drops them
            w = self.proj.weight.reshape(self.proj.out_channels, patch).t()  # (patch, D)
            return x[:, :N * patch].reshape(B, N, patch, C).permute(0, 3, 1, 2) @ w + self.proj.bias  # (B, C, N, D)
        x = self.proj(x.unsqueeze(1))  # (B, 1, T, C) -> (B, D, N, G), G = C // axes
        return x.permute(0, 3, 2, 1)  # (B, G, N, D)


class DilatedStem(nn.Module):
    """Multi-dilation convolutions over time before patching: ``(B, T, C)`` -> ``(B, T, out)``.

    One Conv1d per dilation (same kernel, ``out // len(dilations)`` channels each) sees
    the window at several time scales at once, as ROCKET's kernels do; BatchNorm and GELU
    follow, then a pointwise conv mixes the scales. Length is kept ("same" padding).

    >>> DilatedStem(3, 32, kernel=9, dilations=(1, 2, 4, 8))(torch.zeros(2, 128, 3)).shape
    torch.Size([2, 128, 32])
    """

    def __init__(self, channels: int, out: int, kernel: int = 9, dilations: tuple[int, ...] = (1, 2, 4, 8)):
        super().__init__()
        if out % len(dilations):
            raise ValueError(f"stem width {out} must be a multiple of the {len(dilations)} dilations")
        self.branches = nn.ModuleList(nn.Conv1d(channels, out // len(dilations), kernel, dilation=d,
                                                padding=d * (kernel - 1) // 2) for d in dilations)
        self.norm = nn.BatchNorm1d(out)
        self.act = nn.GELU()
        self.mix = nn.Conv1d(out, out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.transpose(1, 2)  # (B, C, T)
        x = torch.cat([b(x) for b in self.branches], dim=1)  # (B, out, T)
        return self.mix(self.act(self.norm(x))).transpose(1, 2)  # (B, T, out)


class Attention(nn.Module):
    """Multi-head self-attention over a token sequence, fused by SDPA.

    One ``qkv`` Linear(dim, 3*dim) holds exactly the parameters of separate q, k, v
    projections, and one kernel call beats three matmuls.
    """

    def __init__(self, dim: int, heads: int, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads, self.attn_drop = heads, attn_drop
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        # (B, N, 3D) -> (B, 3H, N, hd), cut into q, k and v along the heads: the same views as
        # unbinding a (3, B, H, N, hd) permute, in 3 fewer onnxruntime nodes (no Squeeze).
        q, k, v = self.qkv(x).reshape(B, N, 3 * self.heads, D // self.heads).transpose(1, 2).split(self.heads, dim=1)
        if noise.current() is not None:  # stacked training: the math path, with this model's fed mask
            x = _fed_attention(q, k, v, self.attn_drop if self.training else 0.0)
        else:
            x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        x = x.transpose(1, 2).reshape(B, N, D)  # (B, H, N, hd) -> (B, N, D)
        return self.proj_drop(self.proj(x))


def _fed_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, p: float) -> torch.Tensor:
    """SDPA's math, with the attention dropout mask taken from the noise feed: ``(B, H, N, hd)``."""
    attn = torch.softmax((q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5, dim=-1)  # (B, H, N, N)
    if p > 0:
        attn = attn * noise.take("attention", attn, p) / (1.0 - p)
    return attn @ v


class Dropout(nn.Dropout):
    """``nn.Dropout`` that takes its mask from the noise feed when one is set (stacked training)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.p > 0 and noise.current() is not None:
            return x * noise.take("dropout", x, self.p)
        return super().forward(x)


class Mlp(nn.Module):
    """Feed-forward sublayer: Linear -> [depthwise conv over time] -> GELU -> Linear.

    ``conv_kernel > 0`` adds a residual depthwise conv across neighbouring tokens to the
    hidden layer: cheap locality (a few FLOPs per hidden unit) that plain attention
    lacks, which helps when there is little data to learn it from.
    """

    def __init__(self, dim: int, hidden: int, drop: float = 0.0, conv_kernel: int = 0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.conv = nn.Conv1d(hidden, hidden, conv_kernel, padding=conv_kernel // 2, groups=hidden) if conv_kernel else None
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc1(x)  # (B, N, H)
        if self.conv is not None:
            # The Conv1d's weights run as the same depthwise conv in 2D, over (B, H, N, 1): oneDNN
            # has a fast 2D depthwise kernel for the backward pass, where the 1D call made a CPU
            # training step 1.10-1.16x slower (bench/bench_conv.py), and so has onnxruntime for
            # inference (its 1D kernel is a slow generic one).
            c = self.conv
            y = F.conv2d(x.transpose(1, 2).unsqueeze(-1), c.weight.unsqueeze(-1), c.bias, padding=(c.padding[0], 0),
                         groups=c.groups)
            x = x + y.squeeze(-1).transpose(1, 2)
        return self.drop(self.fc2(self.drop(self.act(x))))


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero a residual branch for a random subset of samples.

    Survivors are scaled by ``1 / (1 - p)`` so the expected output is unchanged.
    """
    if p == 0.0 or not training:
        return x
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    keep = noise.take("drop_path", x, p, shape) if noise.current() is not None else x.new_empty(shape).bernoulli_(1.0 - p)
    return x * keep / (1.0 - p)


class DropPath(nn.Module):
    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class SeedBlock(nn.Module):
    """The article's block: ``relu(x + norm(attn(x)))``.

    Post-norm on the projected attention, no norm before attention and no MLP
    sublayer, then a ReLU after the residual sum: the published network's order.
    """

    def __init__(self, dim: int, heads: int, drop: float = 0.0, drop_path: float = 0.0):
        super().__init__()
        self.attn = Attention(dim, heads, attn_drop=drop, proj_drop=drop)
        self.norm = nn.LayerNorm(dim)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.drop_path(self.norm(self.attn(x))))


class Block(nn.Module):
    """Pre-norm transformer block: attention then MLP, each residual with drop-path."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 2.0, drop: float = 0.0, drop_path: float = 0.0,
                 conv_kernel: int = 0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, attn_drop=drop, proj_drop=drop)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop, conv_kernel=conv_kernel)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerge1d(nn.Module):
    """Halve the number of patches: concatenate neighbours in time, then norm and project.

    An odd patch count is first zero-padded by one patch at the end, so ``N`` patches
    become ``ceil(N / 2)``. ``norm_first=True`` (Swin's order) computes
    ``Linear(LayerNorm(2D))``; ``norm_first=False`` is the article's order,
    ``relu(LayerNorm(Linear(2D)))``.

    >>> PatchMerge1d(8, 16)(torch.zeros(2, 5, 8)).shape
    torch.Size([2, 3, 16])
    >>> PatchMerge1d(8, 16, norm_first=False).norm.normalized_shape
    (16,)
    """

    def __init__(self, dim: int, out_dim: int | None = None, norm_first: bool = True, patches: int | None = None):
        super().__init__()
        out_dim = out_dim or dim
        self.norm_first = norm_first
        # The patch count it takes, when fixed (a model knows it from its window): an even one
        # then needs no padding op, which saves a node per merge in traced and exported graphs.
        self.patches = patches
        self.reduction = nn.Linear(2 * dim, out_dim)
        self.norm = nn.LayerNorm(2 * dim if norm_first else out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        if self.patches is None:
            # Pad unconditionally (by 0 or 1 patch): a shape-only op, so traced graphs stay
            # valid without a Python branch on a traced size.
            x = F.pad(x, (0, 0, 0, N % 2))  # (B, N + N % 2, D)
        elif self.patches % 2:
            x = F.pad(x, (0, 0, 0, 1))  # (B, N + 1, D)
        x = x.reshape(B, -1, 2 * D)  # (B, ceil(N/2), 2D): [x_2i, x_2i+1] side by side
        if self.norm_first:
            return self.reduction(self.norm(x))
        return F.relu(self.norm(self.reduction(x)))
