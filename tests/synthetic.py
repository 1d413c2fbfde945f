"""Synthetic WISDM-format logs with every documented quirk, and what a parser must find."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

ACTIVITIES = ("Downstairs", "Jogging", "Sitting", "Standing", "Upstairs", "Walking")
LABELS = {a: i for i, a in enumerate(ACTIVITIES)}
STEP_NS = 50_000_000  # 20 Hz


@dataclass
class SynthLog:
    text: bytes
    kept: int  # records a correct parser keeps (clean bouts plus two per quirk block)
    quarantined: Counter = field(default_factory=Counter)  # reason -> count
    bouts: list[int] = field(default_factory=list)  # lengths of the clean bouts, in order

    @property
    def total(self) -> int:
        return self.kept + sum(self.quarantined.values())


def make_log(seed: int = 0, users: tuple[int, ...] = (1, 2, 3), bout_len: tuple[int, int] = (150, 400),
             bouts_per_user: int = 3, quirks: bool = True) -> SynthLog:
    """A log of clean bouts separated by gaps, with quirky records sprinkled in between.

    Quirky records are placed only between bouts (after a gap), so the expected bout
    lengths stay exact: the kept records of each bout are exactly ``bouts``.
    """
    rng = np.random.default_rng(seed)
    out: list[str] = []
    q: Counter = Counter()
    kept, bouts = 0, []
    t = 1_000_000_000_000
    for u in users:
        for b in range(bouts_per_user):
            act = ACTIVITIES[int(rng.integers(len(ACTIVITIES)))]
            n = int(rng.integers(*bout_len))
            recs = [f"{u},{act},{t + i * STEP_NS},{rng.normal():.6f},{9.8 + rng.normal():.6f},{rng.normal():.6f};"
                    for i in range(n)]
            t += n * STEP_NS + 5_000_000_000  # a 5 s gap ends the bout
            bouts.append(n)
            kept += n
            # Several records on one physical line, sometimes.
            i = 0
            while i < n:
                k = int(rng.integers(1, 4)) if quirks else 1
                out.append("".join(recs[i:i + k]))
                i += k
            if quirks:
                out += _quirks(u, act, t, q, rng)
                kept += 2  # the ',;' record and the backward one (see _quirks)
                t += 5_000_000_000
    text = "\n".join(out) + "\n"
    return SynthLog(text.encode(), kept, q, bouts)


def _quirks(u: int, act: str, t: int, q: Counter, rng: np.random.Generator) -> list[str]:
    lines = ["", "   "]  # blank lines are not records
    bad = [
        (f"{u},{act},{t},1.0,2.0,;", "missing value"),
        (f"{u},{act},{t},NaN,2.0,3.0;", "nan"),
        (f"{u},{act},{t},abc,2.0,3.0;", "non-numeric value"),
        (f"{u},Flying,{t},1.0,2.0,3.0;", "unknown activity"),
        (f"{u},{act},0,1.0,2.0,3.0;", "zero timestamp"),
        (f"{u},{act},{t},1.0,2.0,3.0,4.0;", "wrong number of fields"),
        (f"{u},{act},{t};", "wrong number of fields"),
        ("\x01\x02 garbage", "wrong number of fields"),
        (f"{u}.5,{act},{t},1.0,2.0,3.0;", "invalid user id"),
        (f"{u},{act},12.5,1.0,2.0,3.0;", "invalid timestamp"),
    ]
    pick = rng.permutation(len(bad))[: int(rng.integers(2, len(bad)))]
    for i in pick:
        rec, reason = bad[i]
        lines.append(rec)
        q[reason] += 1
    # A lone good record with ',;' ending, then its duplicate timestamp, then a backward one:
    # one kept, one quarantined as duplicate; the backward one is kept (it starts a new bout).
    lines.append(f"{u},{act},{t + 1},0.1,0.2,0.3,;")
    lines.append(f"{u},{act},{t + 1},0.4,0.5,0.6;")
    lines.append(f"{u},{act},{t - 10},0.4,0.5,0.6;")
    q["duplicate timestamp"] += 1
    return lines + [""]
