"""Split protocols: no user in two parts (subject/loso), no sample in two parts (seed)."""
from __future__ import annotations

import numpy as np
import pytest

from har_vit.core.errors import UsageError
from har_vit.core.splits import loso_folds, make_split


def _windows(n_users=8, n_classes=4, per=20, T=16, step=8):
    y, s, start = [], [], []
    pos = 0
    for u in range(1, n_users + 1):
        for c in range(n_classes):
            for k in range(per):
                y.append(c), s.append(u), start.append(pos + k * step)
            pos += per * step + T + 1000
    n = len(y)
    return {"X": np.zeros((n, T, 3), np.float32), "y": np.array(y), "subject": np.array(s), "start": np.array(start),
            "bout": np.zeros(n, int)}


def _disjoint(sp):
    parts = [set(sp.train.tolist()), set(sp.val.tolist()), set(sp.test.tolist())]
    return not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])


@pytest.mark.parametrize("seed", range(4))
def test_subject_split_no_user_in_two_parts_all_classes(seed):
    w = _windows()
    sp = make_split("subject", w, seed=seed)
    users = [set(w["subject"][p].tolist()) for p in (sp.train, sp.val, sp.test)]
    assert not (users[0] & users[1] or users[0] & users[2] or users[1] & users[2])
    assert all(set(w["y"][p].tolist()) == {0, 1, 2, 3} for p in (sp.train, sp.val, sp.test))
    assert sp.train.size + sp.val.size + sp.test.size == w["y"].size and not sp.leaky
    assert make_split("subject", w, seed=seed).test.tolist() == sp.test.tolist()  # seeded


def test_explicit_test_users_and_loso():
    w = _windows()
    sp = make_split("subject", w, test_users=[7, 8])
    assert set(w["subject"][sp.test].tolist()) == {7, 8}
    for k, u in enumerate(loso_folds(w)):
        f = make_split("loso", w, fold=k)
        assert set(w["subject"][f.test].tolist()) == {u}
        assert u not in set(w["subject"][f.train].tolist()) | set(w["subject"][f.val].tolist())
    with pytest.raises(UsageError, match="--fold"):
        make_split("loso", w)


def test_seed_protocol_no_sample_in_two_parts():
    T = 16
    w = _windows(T=T, step=8)  # 50% overlap, like 128/64
    sp = make_split("per-stream", w, val_frac=0.1, test_frac=0.2)
    assert sp.leaky and _disjoint(sp) and sp.dropped > 0
    samples = {}
    for name, part in (("train", sp.train), ("val", sp.val), ("test", sp.test)):
        for i in part:
            for t in range(w["start"][i], w["start"][i] + T):
                assert samples.setdefault(t, name) == name, f"sample {t} in {samples[t]} and {name}"
    # Test is the tail of each stream: every test window starts after every train window of its stream.
    for u in np.unique(w["subject"]):
        for c in np.unique(w["y"]):
            m = (w["subject"] == u) & (w["y"] == c)
            tr, te = np.intersect1d(np.flatnonzero(m), sp.train), np.intersect1d(np.flatnonzero(m), sp.test)
            assert w["start"][te].min() >= w["start"][tr].max() + T
            assert 0.15 < te.size / m.sum() <= 0.25


def test_random_is_leaky_and_complete():
    w = _windows()
    sp = make_split("random", w, seed=3)
    assert sp.leaky and "LEAKY" in sp.description and _disjoint(sp)
    assert sp.train.size + sp.val.size + sp.test.size == w["y"].size


def test_bad_split_options():
    w = _windows(n_users=2)
    with pytest.raises(UsageError, match="at least 3 users"):
        make_split("subject", w)
    with pytest.raises(UsageError, match="unknown split"):
        make_split("nope", w)
