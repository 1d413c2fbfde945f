"""The patch-merging 1D ViT in timm's order: ``layers`` -> ``vit`` (model) -> ``variants`` (registry).

>>> import torch
>>> model = create_model("seed")
>>> model(torch.zeros(2, 128, 3)).shape
torch.Size([2, 6])
"""
from har_vit.model.article_weights import (
           from_article_state_dict,
           is_article_state_dict,
           to_article_state_dict,
)
from har_vit.model.variants import VARIANTS, create_model, list_models
from har_vit.model.vit import HarViT, ViTConfig, count_flops

__all__ = ["VARIANTS", "HarViT", "ViTConfig", "count_flops", "create_model", "from_article_state_dict",
           "is_article_state_dict", "list_models", "to_article_state_dict"]
