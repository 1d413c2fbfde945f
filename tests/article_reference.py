"""The article's network, written here from its description as a slow, plain reference.

Input ``(B, 1, T, C)`` (the window as a one-channel image). Module and tensor names are
the article's own, so a state_dict of this module is what the article's code saves.
Attention is written out head by head with an explicit softmax: slow and obvious.
"""
from __future__ import annotations

import torch
from torch import nn


class ArticleMSA(nn.Module):
    def __init__(self, dim: int = 256, heads: int = 4, head_dim: int = 64):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.query = nn.Linear(dim, heads * head_dim)
        self.key = nn.Linear(dim, heads * head_dim)
        self.value = nn.Linear(dim, heads * head_dim)
        self.att_mlp = nn.Sequential(nn.Linear(heads * head_dim, dim), nn.LayerNorm(dim))
        self.downsample_mlp = nn.Sequential(nn.Linear(2 * dim, dim), nn.LayerNorm(dim), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, N, D)
        q, k, v = self.query(x), self.key(x), self.value(x)
        outs = []
        for h in range(self.heads):
            s = slice(h * self.head_dim, (h + 1) * self.head_dim)
            scores = q[..., s] @ k[..., s].transpose(-1, -2) / self.head_dim ** 0.5  # (B, C, N, N)
            outs.append(torch.softmax(scores, dim=-1) @ v[..., s])
        z = torch.relu(x + self.att_mlp(torch.cat(outs, dim=-1)))
        if z.shape[2] % 2:  # zero-pad one patch at the end
            z = torch.cat([z, torch.zeros_like(z[:, :, :1])], dim=2)
        pairs = torch.cat([z[:, :, 0::2], z[:, :, 1::2]], dim=-1)  # patches 2i and 2i+1 side by side
        return self.downsample_mlp(pairs)


class ArticleViT(nn.Module):
    def __init__(self, window: int = 128, channels: int = 3, classes: int = 6):
        super().__init__()
        self.patch_conv = nn.Conv2d(1, 256, kernel_size=(4, 1), stride=(4, 1))
        self.position_embedding = nn.Parameter(torch.zeros(1, channels, window // 4, 256))
        self.msa_layer = nn.ModuleList([ArticleMSA() for _ in range(3)])
        final = window // 4
        for _ in range(3):
            final = (final + 1) // 2
        self.dense_tower = nn.Sequential(nn.Linear(channels * final * 256, 1024), nn.LayerNorm(1024), nn.ReLU(),
                                         nn.Linear(1024, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1, T, C)
        x = self.patch_conv(x).permute(0, 3, 2, 1)  # (B, 256, N, C) -> (B, C, N, 256)
        x = x + self.position_embedding
        for layer in self.msa_layer:
            x = layer(x)
        return self.dense_tower(x.flatten(1))
