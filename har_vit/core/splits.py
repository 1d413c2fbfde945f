"""Split protocols over windows, named in every artefact that uses them.

- ``subject`` (default, honest): held-out users for test, other held-out users for
  validation, chosen by seed, every class present in each part where possible.
- ``per-stream``: the article's protocol. Per user-activity stream, the first 80% of windows
  train and the last 20% test; windows straddling a cut are dropped so no sample is in
  two parts. Same users on both sides: leaky.
- ``random``: random windows. Overlapping windows of one bout land on both sides: leaky.
- ``loso``: leave-one-subject-out; ``fold`` picks the held-out user.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from har_vit.core.errors import UsageError

PROTOCOLS = ("subject", "loso", "per-stream", "random")


@dataclass(frozen=True)
class Split:
    protocol: str
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    leaky: bool
    description: str
    test_users: tuple[int, ...] = ()
    val_users: tuple[int, ...] = ()
    dropped: int = 0  # windows straddling a cut (per-stream protocol)
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """JSON-ready description for manifests and reports."""
        return {"protocol": self.protocol, "leaky": self.leaky, "description": self.description,
                "n_train": int(self.train.size), "n_val": int(self.val.size), "n_test": int(self.test.size),
                "test_users": list(self.test_users), "val_users": list(self.val_users),
                "dropped_straddling": int(self.dropped), **self.extra}


def make_split(protocol: str, w: dict[str, np.ndarray], seed: int = 0, val_frac: float = 0.1,
               test_frac: float = 0.2, test_users: Sequence[int] | None = None, fold: int | None = None) -> Split:
    """Split windows ``w`` (arrays ``y``, ``subject``, ``bout``, ``start``, ``X``) by ``protocol``."""
    if protocol not in PROTOCOLS:
        raise UsageError(f"unknown split {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    if not (0 < test_frac < 1 and 0 <= val_frac < 1 and val_frac + test_frac < 1):
        raise UsageError(f"split fractions must satisfy 0 < test < 1, 0 <= val, val + test < 1 (got {val_frac}, {test_frac})")
    y, subject = np.asarray(w["y"]), np.asarray(w["subject"])
    if protocol == "random":
        return _random(y, seed, val_frac, test_frac)
    if protocol == "per-stream":
        return _stream_cut(w, val_frac, test_frac)
    users = np.unique(subject)
    if protocol == "loso":
        if fold is None or not 0 <= fold < users.size:
            raise UsageError(f"--split loso needs --fold between 0 and {users.size - 1} (one per user)")
        test_u = np.array([users[fold]])
    elif test_users:
        test_u = np.array(sorted(set(int(u) for u in test_users)))
        unknown = set(test_u.tolist()) - set(users.tolist())
        if unknown:
            raise UsageError(f"--test-users {sorted(unknown)} are not in the data (users: {users.min()}..{users.max()})")
    else:
        test_u = None
    return _by_subject(protocol, y, subject, users, seed, val_frac, test_frac, test_u)


def loso_folds(w: dict[str, np.ndarray]) -> list[int]:
    """Users in fold order: fold ``k`` holds out ``loso_folds(w)[k]``."""
    return [int(u) for u in np.unique(w["subject"])]


def _by_subject(protocol: str, y: np.ndarray, subject: np.ndarray, users: np.ndarray, seed: int,
                val_frac: float, test_frac: float, test_u: np.ndarray | None) -> Split:
    if users.size < 3:
        raise UsageError(f"split {protocol!r} needs at least 3 users (train, val, test); found {users.size}: use --split per-stream or random")
    rng = np.random.default_rng(seed)
    n_classes = int(y.max()) + 1
    classes_of = {int(u): set(np.unique(y[subject == u]).tolist()) for u in users}
    n_test = max(1, round(test_frac * users.size)) if test_u is None else test_u.size
    n_val = max(1, round(val_frac * users.size)) if val_frac > 0 else 0
    if n_test + n_val >= users.size:
        raise UsageError(f"{users.size} users cannot give {n_test} test and {n_val} validation users and leave any to train")

    def coverage(part: np.ndarray) -> int:
        return len(set().union(*(classes_of[int(u)] for u in part))) if part.size else n_classes

    best, best_score = None, -1
    for _ in range(200):  # seeded draws; keep the first that covers every class in every part
        perm = rng.permutation(users)
        t = test_u if test_u is not None else perm[:n_test]
        rest = perm[~np.isin(perm, t)]
        v, tr = rest[:n_val], rest[n_val:]
        score = coverage(t) + coverage(v) + coverage(tr)
        if score > best_score:
            best, best_score = (t, v, tr), score
        if score == 3 * n_classes:
            break
    t, v, tr = best
    idx = np.arange(y.size)
    desc = {"subject": f"held-out users: {len(t)} test, {len(v)} validation, {len(tr)} train (seed {seed})",
            "loso": f"leave-one-subject-out: user {int(t[0])} is test, {len(v)} validation users (seed {seed})"}[protocol]
    return Split(protocol, idx[np.isin(subject, tr)], idx[np.isin(subject, v)], idx[np.isin(subject, t)],
                 False, desc, tuple(int(u) for u in np.sort(t)), tuple(int(u) for u in np.sort(v)))


def _random(y: np.ndarray, seed: int, val_frac: float, test_frac: float) -> Split:
    perm = np.random.default_rng(seed).permutation(y.size)
    n_test, n_val = round(test_frac * y.size), round(val_frac * y.size)
    return Split("random", np.sort(perm[n_test + n_val:]), np.sort(perm[n_test:n_test + n_val]), np.sort(perm[:n_test]),
                 True, f"random windows {1 - val_frac - test_frac:.0%}/{val_frac:.0%}/{test_frac:.0%} (seed {seed}); "
                       "LEAKY: the same users, and overlapping windows of one bout, are in train and test")


def _stream_cut(w: dict[str, np.ndarray], val_frac: float, test_frac: float) -> Split:
    """The article's protocol, cut by window rank inside each (user, activity) stream."""
    y, subject, start = np.asarray(w["y"]), np.asarray(w["subject"]), np.asarray(w["start"])
    T = int(np.asarray(w["X"]).shape[1])
    # Sort windows by stream, then by position (records of one stream are in time order).
    order = np.lexsort((start, y, subject))
    s_key = subject[order] * (int(y.max()) + 1) + y[order]
    new = np.concatenate(([True], s_key[1:] != s_key[:-1]))
    sid = np.cumsum(new) - 1
    counts = np.bincount(sid)
    first = np.flatnonzero(new)
    n = counts[sid]
    pos, end = start[order], start[order] + T

    def cut_at(frac: float, n_part: np.ndarray) -> np.ndarray:
        # Start position of the first window after the cut, per stream (inf when none).
        c = np.floor((1 - frac) * n_part + 1e-9).astype(np.int64)
        k = first[sid] + np.minimum(c, n - 1)
        return np.where(c < n_part, pos[k], np.iinfo(np.int64).max)

    test_cut = cut_at(test_frac, n)
    is_test = pos >= test_cut
    before = end <= test_cut
    # Validation: the same cut inside each stream's train part.
    n_train_part = np.bincount(sid, weights=before).astype(np.int64)[sid]
    vfrac = val_frac / (1 - test_frac)
    vc = np.floor((1 - vfrac) * n_train_part + 1e-9).astype(np.int64)
    val_cut = np.where((vc < n_train_part) & (vfrac > 0), pos[first[sid] + np.minimum(vc, np.maximum(n_train_part - 1, 0))],
                       np.iinfo(np.int64).max)
    is_val = before & (pos >= val_cut)
    is_train = before & (end <= val_cut)
    dropped = int(order.size - is_test.sum() - is_val.sum() - is_train.sum())
    return Split("per-stream", np.sort(order[is_train]), np.sort(order[is_val]), np.sort(order[is_test]), True,
                 f"article protocol: per user-activity stream first {1 - test_frac:.0%} of windows train "
                 f"(last {val_frac:.0%} of all as validation), last {test_frac:.0%} test; {dropped} windows "
                 "straddling a cut dropped; LEAKY: the same users are in train and test", dropped=dropped)
