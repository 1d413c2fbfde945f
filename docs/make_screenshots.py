#!/usr/bin/env python
"""Screenshots of a report as headless Chromium draws it, at a desktop and a phone width.

    python docs/make_screenshots.py reports/<run id>/report.html     # -> docs/report-desktop.png, docs/report-phone.png

Needs Debian's ``chromium``. The phone width is drawn in a 390-pixel frame (headless Chromium
lays nothing out narrower than 500 pixels by itself; see ``har_vit/core/browser.py``).
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from har_vit.core import browser  # noqa: E402

SHOTS = {"report-desktop.png": (1280, 1500), "report-phone.png": (390, 1700)}


def main() -> None:
    if len(sys.argv) != 2 or not Path(sys.argv[1]).is_file():
        sys.exit("usage: python docs/make_screenshots.py reports/<run id>/report.html")
    page = Path(sys.argv[1])
    for name, (width, height) in SHOTS.items():
        attrs = browser.body_attributes(page, width, height)
        if attrs.get("data-broken-images") or attrs.get("data-page-overflows") == "true":
            sys.exit(f"{page} at {width} px: broken images {attrs.get('data-broken-images')!r}, "
                     f"page scrolls sideways: {attrs.get('data-page-overflows')}")
        out = browser.screenshot(page, ROOT / "docs" / name, width, height)
        print(f"{out} ({width} x {height} CSS px, viewport {attrs['data-viewport-width']} px)")


if __name__ == "__main__":
    main()
