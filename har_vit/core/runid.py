"""Run ids: one function makes every id the project writes.

An id is ``<UTC yyyymmdd-HHMMSS-ffffff>-<6 hex>`` followed by optional labels, e.g.
``20261129-141503-123456-a3f9c1-npz-tiny-subject``. The fixed-width time prefix makes ids
sort by creation time; the microsecond clock is forced to advance within a process, so two
calls there never share a prefix; the 24 random bits keep parallel processes apart.

>>> a, b = new_run_id("tiny"), new_run_id("tiny")
>>> a != b and a < b and a.endswith("-tiny")
True
"""
from __future__ import annotations

import re
import secrets
import threading
from datetime import datetime, timedelta, timezone

_LOCK = threading.Lock()
_last: datetime | None = None
_LABEL = re.compile(r"[^A-Za-z0-9._]+")
PATTERN = re.compile(r"^\d{8}-\d{6}-\d{6}-[0-9a-f]{6}(-[A-Za-z0-9._-]+)?$")


def new_run_id(*labels: object) -> str:
    """A new, unique, time-sortable run id; ``labels`` (model, split, ...) are appended, sanitised."""
    global _last
    with _LOCK:
        now = datetime.now(timezone.utc)
        if _last is not None and now <= _last:
            now = _last + timedelta(microseconds=1)
        _last = now
    parts = [now.strftime("%Y%m%d-%H%M%S-%f"), secrets.token_hex(3)]
    parts += [s for s in (_LABEL.sub("_", str(x)).strip("._") for x in labels if x not in (None, "")) if s]
    return "-".join(parts)
