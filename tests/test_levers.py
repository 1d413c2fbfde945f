"""Trainer levers: augmentation, distillation (the teacher is never trained), warm start and freezing."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from har_vit.core.errors import UsageError
from har_vit.stages import evaluate, report
from har_vit.stages.train import TrainConfig, run
from har_vit.stages.windows import WindowConfig, import_npz

BASE = dict(model="tiny", epochs=2, batch_size=32, progress=False, threads=1, warmup_epochs=0)
AUG = dict(jitter=0.05, scale=0.1, rotate=30, time_warp=0.1, mixup=0.2, cutmix=0.2, erase=0.1)


@pytest.fixture
def wdir(tmp_path, windows_npz):
    import_npz(WindowConfig(), windows_npz, tmp_path / "w")
    return tmp_path / "w"


def _weights(path):
    return torch.load(path, weights_only=True)["model"]


def _equal(a, b, keys=None):
    return all(torch.equal(a[k], b[k]) for k in (keys or a))


def test_augmentation_is_seeded_and_resumable(tmp_path, wdir):
    cfg = TrainConfig(**BASE, **AUG)
    m = run(cfg, wdir, tmp_path / "a")
    run(cfg, wdir, tmp_path / "b")
    assert _equal(_weights(tmp_path / "a" / "last.pt"), _weights(tmp_path / "b" / "last.pt"))
    assert m["augment"]["rotate"] == 30
    # Killed after epoch 1 and resumed: the augmentation stream continues where it was.
    run(cfg, wdir, tmp_path / "c", stop_after=1)
    run(cfg, wdir, tmp_path / "c", resume=True)
    assert _equal(_weights(tmp_path / "a" / "last.pt"), _weights(tmp_path / "c" / "last.pt"))
    plain = run(TrainConfig(**BASE, jitter=0, scale=0, rotate=0, time_warp=0), wdir, tmp_path / "p")
    assert plain["augment"] is None
    assert not _equal(_weights(tmp_path / "a" / "last.pt"), _weights(tmp_path / "p" / "last.pt"))


def test_distillation_teacher_never_trained_and_named(tmp_path, wdir):
    run(TrainConfig(**{**BASE, "model": "seed", "epochs": 1}), wdir, tmp_path / "teacher")
    before = (tmp_path / "teacher" / "best.pt").read_bytes()
    t_weights = _weights(tmp_path / "teacher" / "best.pt")
    m = run(TrainConfig(**BASE, teacher=str(tmp_path / "teacher"), distill_alpha=0.7), wdir, tmp_path / "student")
    assert (tmp_path / "teacher" / "best.pt").read_bytes() == before
    assert _equal(t_weights, _weights(tmp_path / "teacher" / "best.pt"))
    assert m["teacher"]["model"] == "seed" and m["teacher"]["params"] > m["params"]
    evaluate.run(evaluate.EvalConfig(skip_latency=True), tmp_path / "student")
    html = report.run(tmp_path / "student", tmp_path / "reports").read_text()
    assert "teacher" in html.lower() and str(tmp_path / "teacher") in html
    hard = run(TrainConfig(**BASE, teacher=str(tmp_path / "teacher"), distill="hard"), wdir, tmp_path / "hard")
    assert hard["teacher"]["run"] == str((tmp_path / "teacher").resolve())


def test_teacher_that_saw_the_test_users_is_refused(tmp_path, wdir):
    run(TrainConfig(**{**BASE, "epochs": 1}, test_users=(1,)), wdir, tmp_path / "t")
    with pytest.raises(UsageError, match="leak the test set"):
        run(TrainConfig(**BASE, test_users=(2,), teacher=str(tmp_path / "t")), wdir, tmp_path / "s")


def test_init_replaces_head_and_freezing_keeps_layers(tmp_path, wdir, windows_npz):
    run(TrainConfig(**BASE), wdir, tmp_path / "pre")
    pre = _weights(tmp_path / "pre" / "best.pt")
    # Fine-tune on a 3-class version of the data: the head must be new, the rest copied.
    z = dict(np.load(windows_npz))
    keep = z["y"] < 3
    np.savez(tmp_path / "three.npz", X=z["X"][keep], y=z["y"][keep], subject=z["subject"][keep],
             class_names=z["class_names"][:3])
    import_npz(WindowConfig(), tmp_path / "three.npz", tmp_path / "w3")
    cfg = TrainConfig(**{**BASE, "batch_size": 16}, init=str(tmp_path / "pre"), freeze_epochs=2)
    m = run(cfg, tmp_path / "w3", tmp_path / "ft")
    ft = _weights(tmp_path / "ft" / "last.pt")
    body = [k for k in pre if not k.startswith("head.")]
    assert _equal(pre, ft, body)  # frozen for every epoch: unchanged
    assert ft["head.1.weight"].shape[0] == 3 and m["init"]["tensors_copied"] == len(body)
    # Unfrozen after one epoch: the body moves.
    cfg = TrainConfig(**{**BASE, "batch_size": 16}, init=str(tmp_path / "pre"), freeze_epochs=1)
    run(cfg, tmp_path / "w3", tmp_path / "ft1")
    assert not _equal(pre, _weights(tmp_path / "ft1" / "last.pt"), body)


def test_bad_lever_options():
    with pytest.raises(UsageError, match="freeze_epochs"):
        TrainConfig(freeze_epochs=2)
    with pytest.raises(UsageError):
        TrainConfig(rotate=-5)
    with pytest.raises(UsageError, match="distill"):
        TrainConfig(distill="warm")


def test_init_from_the_articles_own_weights(tmp_path, wdir):
    """A state_dict saved by the article's code warm-starts seed: every non-head tensor copied as converted."""
    from article_reference import ArticleViT

    from har_vit.model import from_article_state_dict

    torch.manual_seed(7)
    article = ArticleViT(window=32)  # the fixture windows are 32 samples long
    torch.save(article.state_dict(), tmp_path / "article.pt")
    want = from_article_state_dict(article.state_dict()).state_dict()
    cfg = TrainConfig(**{**BASE, "model": "seed", "epochs": 1}, init=str(tmp_path / "article.pt"), freeze_epochs=1)
    m = run(cfg, wdir, tmp_path / "ft")
    got = _weights(tmp_path / "ft" / "last.pt")
    body = [k for k in want if not k.startswith("head.")]
    assert _equal(want, got, body)  # frozen for its one epoch: exactly the article's weights
    assert m["init"]["model"] == "seed (article weights)" and m["init"]["tensors_copied"] == len(body)
