"""The seed variant is the article's network: logits equal to a reference written from its description."""
from __future__ import annotations

import pytest
import torch
from article_reference import ArticleViT

from har_vit.core.errors import UsageError
from har_vit.model import create_model, from_article_state_dict, to_article_state_dict


def _randomised(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every tensor random, norms and the position embedding included: no default init can hide an error."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 if p.ndim > 1 else 1.0) / max(1, p.shape[-1]) ** 0.25)
    return model.eval()


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / max(1.0, float(b.abs().max())))


@pytest.mark.parametrize("classes", [6, 18])
def test_seed_logits_equal_the_articles(classes):
    ref = _randomised(ArticleViT(classes=classes), seed=classes)
    ours = from_article_state_dict(ref.state_dict()).eval()
    assert type(ours) is type(create_model("seed")) and ours.name == "seed"
    assert ours.cfg.num_classes == classes and ours.cfg.window == 128 and ours.cfg.channels == 3
    x = torch.randn(16, 128, 3, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, got = ref(x.unsqueeze(1)), ours(x)
    assert want.abs().max() > 1.0  # logits large enough that a wrong layer would show
    assert _rel_err(got, want) < 1e-5


def test_round_trip_to_the_articles_names_keeps_the_logits():
    ref = _randomised(ArticleViT(), seed=3)
    ours = from_article_state_dict(ref.state_dict()).eval()
    back = to_article_state_dict(ours)
    assert back.keys() == ref.state_dict().keys()
    fresh = ArticleViT().eval()
    fresh.load_state_dict(back)
    x = torch.randn(8, 128, 3)
    with torch.no_grad():
        assert _rel_err(fresh(x.unsqueeze(1)), ref(x.unsqueeze(1))) == 0.0


def test_other_window_and_channels_come_from_the_shapes():
    ref = _randomised(ArticleViT(window=64, channels=6, classes=4), seed=5)
    ours = from_article_state_dict(ref.state_dict()).eval()
    assert (ours.cfg.window, ours.cfg.channels, ours.cfg.num_classes) == (64, 6, 4)
    x = torch.randn(4, 64, 6)
    with torch.no_grad():
        assert _rel_err(ours(x), ref(x.unsqueeze(1))) < 1e-5


def test_the_articles_initialisation():
    """PyTorch's default init everywhere and a zero position embedding, as the article's code starts."""
    torch.manual_seed(0)
    ours = create_model("seed")
    torch.manual_seed(0)
    ref = ArticleViT()
    assert torch.count_nonzero(ours.pos_embed) == 0
    assert ref.position_embedding.numel() + sum(p.numel() for n, p in ref.named_parameters()
                                                if n != "position_embedding") == ours.num_params() == 4_367_366
    # Same default-init distributions: a LayerNorm starts at (1, 0), a Linear's weights are
    # uniform in +-1/sqrt(fan_in) (kaiming_uniform with a=sqrt(5)).
    w = ours.head[0].weight
    assert w.abs().max() <= 1 / 3072 ** 0.5 and w.std() > 0.5 / 3072 ** 0.5
    assert torch.equal(ours.stages[0][0].norm.weight, torch.ones(256))


def test_a_non_article_state_dict_is_a_clear_error():
    with pytest.raises(UsageError, match="not a state_dict of the article"):
        from_article_state_dict(create_model("tiny").state_dict())
    sd = ArticleViT().state_dict()
    del sd["msa_layer.1.key.bias"]
    with pytest.raises(UsageError, match="key.bias"):
        from_article_state_dict(sd)
    with pytest.raises(UsageError, match="only 'seed' converts"):
        to_article_state_dict(create_model("tiny"))
