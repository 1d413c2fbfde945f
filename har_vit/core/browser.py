"""Headless Chromium for looking at reports: what a page's own script found, and screenshots.

Headless Chromium does not lay a page out narrower than 500 CSS pixels, whatever
``--window-size`` says. For a phone width the report is therefore shown inside an
``<iframe srcdoc>`` of that width on a wrapper page: the frame is a real viewport of the
asked width (the report's media queries and ``innerWidth`` see it), and ``srcdoc``
keeps it same-origin, so the wrapper can copy the ``data-*`` attributes that the report's
own script sets on its ``<body>``. Screenshots are cropped to the frame.
"""
from __future__ import annotations

import html
import io
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

MIN_WIDTH = 500  # narrowest layout headless Chromium does by itself

_WRAPPER = """<!DOCTYPE html><html><head><meta charset="utf-8"><style>
html,body{{margin:0;background:#fff}}iframe{{border:0;display:block;width:{width}px;height:{height}px}}
</style></head><body><iframe id="page" srcdoc="{doc}"></iframe><script>
document.getElementById("page").addEventListener("load", function () {{
  var inner = this.contentDocument.body;
  for (var i = 0; i < inner.attributes.length; i++) {{
    var a = inner.attributes[i];
    if (a.name.indexOf("data-") === 0) document.body.setAttribute(a.name, a.value);
  }}
}});
</script></body></html>
"""


def find_chromium() -> str | None:
    """Path of a Chromium binary on PATH (Debian: ``chromium``), or None."""
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def _run(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--hide-scrollbars", "--run-all-compositor-stages-before-draw", f"--user-data-dir={profile}"]
    return subprocess.run([binary, *flags, *args], capture_output=True, text=True, timeout=120)


def _framed(page: Path, width: int, height: int, folder: Path) -> Path:
    wrapper = folder / f"frame-{width}.html"
    doc = html.escape(page.read_text(encoding="utf-8"), quote=True)
    wrapper.write_text(_WRAPPER.format(width=width, height=height, doc=doc), encoding="utf-8")
    return wrapper


def body_attributes(page: str | Path, width: int = 1280, height: int = 900, binary: str | None = None) -> dict[str, str]:
    """The ``data-*`` attributes on ``<body>`` after the page loaded at ``width`` CSS pixels."""
    binary = binary or find_chromium()
    if binary is None:
        raise FileNotFoundError("chromium not found; install it (Debian: apt-get install chromium)")
    page = Path(page)
    with tempfile.TemporaryDirectory(prefix="har-vit-chromium-") as tmp:
        target = _framed(page, width, height, Path(tmp)) if width < MIN_WIDTH else page
        proc = _run(binary, Path(tmp) / "profile", f"--window-size={max(width, MIN_WIDTH)},{height}",
                    "--virtual-time-budget=5000", "--dump-dom", target.resolve().as_uri())
    body = re.search(r"<body([^>]*)>", proc.stdout)
    if body is None:
        raise RuntimeError(f"chromium dumped no DOM for {page}: {proc.stderr[-500:]}")
    return dict(re.findall(r'(data-[\w-]+)="([^"]*)"', body.group(1)))


def dom(page: str | Path, binary: str | None = None) -> str:
    """The page's DOM after load, as Chromium serialises it."""
    binary = binary or find_chromium()
    if binary is None:
        raise FileNotFoundError("chromium not found; install it (Debian: apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="har-vit-chromium-") as tmp:
        return _run(binary, Path(tmp) / "profile", "--virtual-time-budget=5000", "--dump-dom",
                    Path(page).resolve().as_uri()).stdout


def screenshot(page: str | Path, out: str | Path, width: int, height: int, binary: str | None = None) -> Path:
    """A PNG of the first ``height`` CSS pixels of ``page`` laid out at ``width``."""
    from PIL import Image  # matplotlib's dependency

    binary = binary or find_chromium()
    if binary is None:
        raise FileNotFoundError("chromium not found; install it (Debian: apt-get install chromium)")
    out = Path(out)
    with tempfile.TemporaryDirectory(prefix="har-vit-chromium-") as tmp:
        target = _framed(Path(page), width, height, Path(tmp)) if width < MIN_WIDTH else Path(page)
        shot = Path(tmp) / "shot.png"
        proc = _run(binary, Path(tmp) / "profile", f"--window-size={max(width, MIN_WIDTH)},{height}",
                    "--virtual-time-budget=5000", f"--screenshot={shot}", target.resolve().as_uri())
        if not shot.is_file():
            raise RuntimeError(f"chromium wrote no screenshot of {page}: {proc.stderr[-500:]}")
        img = Image.open(shot)
        img.load()
    buf = io.BytesIO()
    img.crop((0, 0, width, height)).save(buf, format="PNG", optimize=True)
    from har_vit.core.io import write_bytes

    return write_bytes(out, buf.getvalue())
