"""The patch-merging 1D ViT in timm's order: ``layers`` -> ``vit`` (model) -> ``variants`` (registry).

>>> import torch
>>> model = create_model("seed")
>>> model(torch.zeros(2, 128, 3)).shape
torch.Size([2, 6])
"""
from har_vit.model.variants import VARIANTS, create_model, list_models
from har_vit.model.vit import HarViT, ViTConfig, count_flops

__all__ = ["VARIANTS", "HarViT", "ViTConfig", "count_flops", "create_model", "list_models"]
