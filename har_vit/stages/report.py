"""Report stage: an evaluated run -> ``reports/<run_id>/report.{md,html}``, ``summary.json``, ``reports/index.html``.

The report walks the chain by manifests (eval -> train -> windows -> ingest) and
writes one document twice: Markdown (images beside it in ``plots/``) and a
self-contained HTML page (images as base64 data URIs, inline CSS, a Content Security
Policy that forbids any network load) that opens from ``file://``. An inline script
marks ``<body>`` with ``data-images-loaded`` / ``data-broken-images`` once the page has
loaded, and lists broken images at the top, for people and for the browser test.

``summary.json`` is the machine-readable line of a run; ``index.html`` is rebuilt
from every ``reports/*/summary.json`` with a trend plot, for scheduled retraining.
"""
from __future__ import annotations

import base64
import html
import json
import os
import re
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import pandas as pd

from har_vit.core import plots
from har_vit.core.errors import ArtefactError, UsageError
from har_vit.core.io import now_iso, read_manifest, write_bytes, write_json, write_text
from har_vit.core.runs import find_model_dir
from har_vit.core.summary import is_leaky, verdict
from har_vit.core.workspace import Workspace
from har_vit.model import article
from har_vit.stages.evaluate import EVAL_DIR, PLOTS_DIR, read_json, upstream_folder

DASH = "—"
PLOT_CAPTIONS = {
    "confusion_counts.png": "Confusion matrix of the test windows (counts; rows true, columns predicted).",
    "confusion_normalized.png": "Confusion matrix, row-normalised: the diagonal is each class's recall.",
    "per_class_accuracy.png": "Per-class accuracy on the test split (= recall of the class).",
    "training_curves.png": "Train and validation loss and accuracy per epoch; dashed: the epoch kept as best.pt.",
    "class_distribution.png": "Class distribution of ingested records (when there was an ingest stage) and of windows.",
    "per_user.png": "Accuracy of each test user (first column), and each user's recall of every activity they "
                    "performed; weakest users on top.",
    "saliency.png": "For each class, its most confident correct test window and its most confident mistake: the three "
                    "axes, and beneath them the gradient saliency of the predicted class over time.",
}
SECTION_PLOTS = ("per_user.png", "saliency.png")  # drawn in their own sections, not under Plots


# --- a tiny document model, rendered to both Markdown and HTML ---------------------

@dataclass(frozen=True)
class Link:
    text: str
    href: str  # relative to the page


Cell = Union[str, Link]


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Para:
    text: str


@dataclass(frozen=True)
class Alert:
    text: str


@dataclass(frozen=True)
class Table:
    header: Sequence[str]
    rows: Sequence[Sequence[Cell]]
    caption: str = ""


@dataclass(frozen=True)
class Figure:
    name: str  # file name under plots/ beside the Markdown
    caption: str
    png: bytes = field(repr=False)


@dataclass(frozen=True)
class Headline:
    """The box a reader sees first: what was run and what its scores mean."""

    rows: Sequence[tuple[str, str]]
    sentence: str


@dataclass(frozen=True)
class Details:
    """Folded-away content (``<details>``): shown on request, after the results."""

    summary: str
    blocks: Sequence[Block]


Block = Union[Heading, Para, Alert, Table, Figure, Headline, Details]


# --- formatting --------------------------------------------------------------------

def fmt(x: Any, digits: int = 4) -> str:
    """A number for a table: ints with thousands separators, floats to ``digits``, None as a dash."""
    if x is None or (isinstance(x, float) and x != x):
        return DASH
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def model_label(m: Mapping[str, Any]) -> str:
    """The model as a reader names it: the variant, or an ensemble of it (``train --members``).

    >>> model_label({"model": "tiny_ws"}), model_label({"model": "tiny_ws", "members": 3})
    ('tiny_ws', 'ensemble of 3 tiny_ws')
    """
    k = m.get("members") or 1
    return f"ensemble of {k} {m.get('model')}" if k > 1 else str(m.get("model"))


def epoch_label(m: Mapping[str, Any]) -> str:
    """Which epoch's weights were evaluated; an ensemble's members each have their own.

    >>> epoch_label({"epoch": 7}), epoch_label({"epoch": 9, "members": 2, "member_epochs": [9, 4]})
    ('epoch 7', 'epochs 9, 4: one per member')
    """
    if (m.get("members") or 1) > 1 and m.get("member_epochs"):
        return f"epochs {', '.join(map(str, m['member_epochs']))}: one per member"
    return f"epoch {fmt(m.get('epoch'))}"


def fmt_delta(new: Any, old: Any, digits: int = 4) -> str:
    if new is None or old is None:
        return DASH
    d = new - old
    return f"{d:+,}" if isinstance(d, int) else f"{d:+.{digits}f}"


def cpu_latency_b1(metrics: Mapping[str, Any]) -> float | None:
    """Median CPU latency of one window (ms), the figure compared across runs and with the article."""
    return ((metrics.get("latency_ms") or {}).get("cpu") or {}).get("batch_1", {}).get("median")


# --- rendering ---------------------------------------------------------------------

def _md_cell(c: Cell) -> str:
    text = f"[{c.text}]({c.href})" if isinstance(c, Link) else str(c)
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(blocks: Sequence[Block]) -> str:
    out: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            out.append("#" * b.level + " " + b.text)
        elif isinstance(b, Para):
            out.append(b.text)
        elif isinstance(b, Alert):
            out.append("> **Warning:** " + b.text)
        elif isinstance(b, Table):
            lines = ["| " + " | ".join(map(_md_cell, b.header)) + " |", "|" + "---|" * len(b.header)]
            lines += ["| " + " | ".join(map(_md_cell, row)) + " |" for row in b.rows]
            out.append("\n".join(([f"*{b.caption}*", ""] if b.caption else []) + lines))
        elif isinstance(b, Figure):
            out.append(f"![{b.caption}]({PLOTS_DIR}/{b.name})\n\n*{b.caption}*")
        elif isinstance(b, Headline):
            out.append("\n".join([f"> **{_md_cell(k)}:** {_md_cell(v)}  " for k, v in b.rows] + [">", f"> {b.sentence}"]))
        elif isinstance(b, Details):
            out.append(f"<details><summary>{html.escape(b.summary)}</summary>\n\n" + render_markdown(b.blocks)
                       + "\n</details>")
    return "\n\n".join(out) + "\n"


def _html_cell(c: Cell, tag: str) -> str:
    if isinstance(c, Link):
        return f'<{tag}><a href="{html.escape(c.href)}">{html.escape(c.text)}</a></{tag}>'
    return f"<{tag}>{html.escape(str(c))}</{tag}>"


def _html_block(b: Block) -> str:
    if isinstance(b, Heading):
        return f"<h{b.level}>{html.escape(b.text)}</h{b.level}>"
    if isinstance(b, Para):
        return f"<p>{html.escape(b.text)}</p>"
    if isinstance(b, Alert):
        return f'<div class="warn" role="alert"><strong>Warning:</strong> {html.escape(b.text)}</div>'
    if isinstance(b, Table):
        # The caption goes above as a paragraph: a <caption> would wrap at the table's width.
        cap = f'<p class="tcap">{html.escape(b.caption)}</p>' if b.caption else ""
        head = "<tr>" + "".join(_html_cell(h, "th") for h in b.header) + "</tr>"
        body = "".join("<tr>" + "".join(_html_cell(c, "td") for c in row) + "</tr>" for row in b.rows)
        return f"{cap}<table><thead>{head}</thead><tbody>{body}</tbody></table>"
    if isinstance(b, Headline):
        rows = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in b.rows)
        return (f'<section class="headline" id="headline"><dl>{rows}</dl>'
                f'<p class="verdict">{html.escape(b.sentence)}</p></section>')
    if isinstance(b, Details):
        inner = "\n".join(_html_block(x) for x in b.blocks)
        return f'<details id="configuration"><summary>{html.escape(b.summary)}</summary>{inner}</details>'
    data = base64.b64encode(b.png).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(b.name)}">'
            f"<figcaption>{html.escape(b.caption)}</figcaption></figure>")


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2329;background:#fff}
main{max-width:1100px;margin:0 auto;padding:1.5rem 2rem 4rem}
h1{font-size:1.7rem;border-bottom:2px solid #d0d7de;padding-bottom:.3rem}
h2{font-size:1.3rem;margin-top:2.2rem;border-bottom:1px solid #d0d7de;padding-bottom:.2rem}
table{border-collapse:collapse;margin:.8rem 0 1.2rem;font-size:.92rem}
.tcap{font-style:italic;color:#57606a;margin:.8rem 0 -.4rem}
th,td{border:1px solid #d0d7de;padding:.3rem .6rem;text-align:left;vertical-align:top}
th{background:#f3f5f7}
tbody tr:nth-child(even){background:#fafbfc}
.warn{background:#fff4e5;border:1px solid #f0b45a;border-left:6px solid #d9480f;padding:.7rem 1rem;margin:1rem 0;
      border-radius:4px}
figure{margin:1rem 0 2rem}
img{max-width:100%;height:auto;border:1px solid #eaeef2}
figcaption{color:#57606a;font-size:.9rem}
.headline{background:#f6f8fa;border:1px solid #d0d7de;border-left:6px solid #0969da;border-radius:6px;
          padding:.8rem 1.2rem;margin:1rem 0 1.5rem}
.headline dl{display:grid;grid-template-columns:max-content 1fr;gap:.25rem 1.2rem;margin:0}
.headline dt{font-weight:600;color:#57606a}
.headline dd{margin:0}
.verdict{font-size:1.05rem;margin:.8rem 0 0;font-weight:500}
details{margin:2rem 0;border:1px solid #d0d7de;border-radius:6px;padding:.5rem 1rem}
summary{cursor:pointer;font-weight:600}
.scroll{overflow-x:auto}
@media (max-width:640px){main{padding:1rem .8rem 3rem}h1{font-size:1.3rem}
  .headline dl{grid-template-columns:1fr}.headline dd{margin-bottom:.4rem}
  table{display:block;overflow-x:auto;font-size:.85rem}}
"""

# Runs once the page (and every image) has loaded: records what loaded on <body> for
# the browser test and tells a reader which figure is broken.
_CHECK_IMAGES = """
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var broken = imgs.filter(function (im) { return !(im.complete && im.naturalWidth > 0); });
  var names = broken.map(function (im) { return im.alt || "(unnamed)"; });
  var b = document.body;
  b.setAttribute("data-images-total", String(imgs.length));
  b.setAttribute("data-images-loaded", String(imgs.length - broken.length));
  b.setAttribute("data-broken-images", names.join(", "));
  b.setAttribute("data-tables", String(document.getElementsByTagName("table").length));
  // Layout facts for the browser test: no sideways scrolling of the page at this width, and the
  // order of the sections as a reader meets them.
  b.setAttribute("data-page-overflows", String(document.documentElement.scrollWidth > window.innerWidth));
  b.setAttribute("data-viewport-width", String(window.innerWidth));
  b.setAttribute("data-order", Array.prototype.map.call(
    document.querySelectorAll("main > h2, main > .headline, main > details"),
    function (e) { return e.tagName === "H2" ? e.textContent : e.className || e.tagName.toLowerCase(); }).join("|"));
  if (broken.length) {
    var d = document.createElement("div");
    d.className = "warn";
    d.textContent = "Images that failed to load: " + names.join(", ");
    document.querySelector("main").insertBefore(d, document.querySelector("main").firstChild);
  }
});
"""

# Nothing may come from the network: images are data: URIs, CSS and script inline.
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"


def render_html(blocks: Sequence[Block], title: str) -> str:
    body = "\n".join(_html_block(b) for b in blocks)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<meta http-equiv=\"Content-Security-Policy\" content=\"{_CSP}\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n"
        f"<body>\n<main>\n{body}\n</main>\n<script>{_CHECK_IMAGES}</script>\n</body>\n</html>\n"
    )


# --- the chain of manifests --------------------------------------------------------

@dataclass
class Chain:
    """Everything a report reads, walked back from the eval folder by manifests."""

    run_dir: Path
    eval_dir: Path
    metrics: dict[str, Any]
    train: dict[str, Any]
    windows: dict[str, Any] | None
    ingest: dict[str, Any] | None
    notes: list[str]  # upstream artefacts that could not be read, said in the report


def _optional_manifest(folder: Path | None, stage: str, notes: list[str]) -> dict[str, Any] | None:
    # Data folders get cleaned up; a finished eval should still report, saying what is missing.
    if folder is None:
        return None
    try:
        return read_manifest(folder, stage)
    except ArtefactError as e:
        notes.append(str(e))
        return None


def load_chain(run_dir: str | os.PathLike) -> Chain:
    """Read eval, train, windows and (if any) ingest manifests; eval and train are required."""
    run_dir = Path(run_dir)
    eval_dir = run_dir / EVAL_DIR
    read_manifest(eval_dir, "evaluate")
    metrics = read_json(eval_dir / "metrics.json")
    train = read_manifest(run_dir, "train")
    notes: list[str] = []
    windows = _optional_manifest(upstream_folder(train), "windows", notes)
    ingest = _optional_manifest(upstream_folder(windows), "ingest", notes) if windows else None
    return Chain(run_dir, eval_dir, metrics, train, windows, ingest, notes)


def dataset_name(chain: Chain) -> str:
    for man in (chain.ingest, chain.windows):
        if man:
            inputs = man.get("inputs") if isinstance(man.get("inputs"), Mapping) else {}
            name = man.get("dataset") or inputs.get("dataset") or (man.get("config") or {}).get("dataset")
            if name:
                return str(name)
    return DASH


# --- sections ----------------------------------------------------------------------

def _leak_text(split: Mapping[str, Any]) -> str:
    return (f"the '{split.get('protocol')}' split puts windows of the same users in train and test, so the "
            "model is scored on people it was trained on and accuracy is flattered; it does not estimate "
            "accuracy on new users. Use the 'subject' (or 'loso') split for that.")


def data_section(chain: Chain) -> list[Block]:
    blocks: list[Block] = [Heading("Data")]
    ing = chain.ingest
    if ing is None:
        blocks.append(Para("No ingest stage in this chain (pre-windowed input, or its folder is gone); "
                           "record counts are not available."))
        return blocks
    quarantined = ing.get("records_quarantined") or {}
    blocks.append(Table(("figure", "value"), [
        ("dataset", dataset_name(chain)),
        ("records total", fmt(ing.get("records_total"))),
        ("records kept", fmt(ing.get("records_kept"))),
        ("records quarantined", fmt(sum(int(v) for v in quarantined.values()))),
        ("users", fmt(len(ing.get("per_user") or {}))),
        ("classes", fmt(len(ing.get("class_names") or []))),
    ], caption="Ingested records"))
    if quarantined:
        blocks.append(Table(("reason", "records"), [(str(k), fmt(int(v))) for k, v in quarantined.items()],
                            caption="Quarantined records by reason (see quarantine.csv in the ingest folder)"))
    per_activity = ing.get("per_activity") or {}
    if per_activity:
        blocks.append(Table(("class", "records"), [(str(k), fmt(int(v))) for k, v in per_activity.items()],
                            caption="Records per class"))
    return blocks


def split_section(chain: Chain) -> list[Block]:
    split = chain.metrics.get("split") or chain.train.get("split") or {}
    win = chain.windows or {}
    leaky = is_leaky(split)
    blocks: list[Block] = [Heading("Windows and split protocol")]
    if leaky:
        blocks.append(Alert("leaky split: " + _leak_text(split)))
    blocks.append(Table(("figure", "value"), [
        ("window (samples)", fmt(win.get("window"))),
        ("step (samples)", fmt(win.get("step"))),
        ("gap that ends a bout (s)", fmt(win.get("gap_s"), 2)),
        ("windows total", fmt(win.get("windows_total"))),
        ("protocol", str(split.get("protocol", DASH))),
        ("description", str(split.get("description", DASH))),
        ("leaky (users shared by train and test)", "yes" if leaky else "no"),
        ("train / val / test windows",
         " / ".join(fmt(split.get(k)) for k in ("n_train", "n_val", "n_test"))),
        ("test users", ", ".join(map(str, split.get("test_users") or [])) or DASH),
    ]))
    return blocks


def model_section(chain: Chain) -> list[Block]:
    tr, m = chain.train, chain.metrics
    cfg = tr.get("config") or {}
    rows = [
        ("variant", model_label({**m, "model": tr.get("model", m.get("model"))})),
        ("parameters", fmt(m.get("params", tr.get("params")))),
        ("epochs run / best epoch", f"{fmt(tr.get('epochs_run'))} / {fmt(tr.get('best_epoch'))}"),
        ("best validation macro F1", fmt(tr.get("best_val_macro_f1"))),
        ("checkpoint evaluated", f"{m.get('checkpoint', DASH)}.pt ({epoch_label(m)})"),
        ("training device", str(tr.get("device", DASH))),
        ("seed", fmt(cfg.get("seed"))),
        ("training time (s)", fmt(tr.get("train_seconds"), 1)),
        ("training throughput (windows/s)", fmt(tr.get("windows_per_s"), 1)),
    ]
    teacher, init, aug = tr.get("teacher"), tr.get("init"), tr.get("augment")
    if teacher:
        rows.append(("distilled from (teacher)", f"{model_label(teacher)} ({fmt(teacher.get('params'))} params), "
                                                 f"run {teacher.get('run')}; {cfg.get('distill', 'soft')} targets, "
                                                 f"alpha {cfg.get('distill_alpha')}, T {cfg.get('distill_temperature')}"))
    if init:
        rows.append(("initialised from", f"{init.get('model')} run {init.get('run')}: {init.get('tensors_copied')} "
                                         f"tensors copied, {init.get('tensors_new')} new (head); frozen for "
                                         f"{cfg.get('freeze_epochs', 0)} epochs"))
    if aug:
        strengths = ("jitter", "scale", "rotate", "time_warp", "mixup", "cutmix", "erase")
        rows.append(("augmentation", ", ".join(f"{k} {aug[k]}" for k in strengths if aug.get(k)) or DASH))
    return [Heading("Model and training set-up"), Table(("figure", "value"), rows)]


def configuration_details(chain: Chain) -> list[Block]:
    """Every resolved option of the training and evaluation, folded away at the end."""
    blocks: list[Block] = []
    for title, cfg in (("Training configuration (optimizer, schedule, regularisation) as resolved",
                        chain.train.get("config") or {}),
                       ("Evaluation configuration", (_optional_manifest(chain.eval_dir, "evaluate", []) or {})
                        .get("config") or {})):
        if cfg:
            blocks.append(Table(("option", "value"), [(str(k), str(v)) for k, v in cfg.items()], caption=title))
    return [Details(f"Full configuration ({sum(len(b.rows) for b in blocks if isinstance(b, Table))} options)",
                    blocks)] if blocks else []


def _source_file(chain: Chain) -> str:
    """`` (file.npz)`` for pre-windowed input, so a reader knows which arrays were used."""
    inputs = (chain.windows or {}).get("inputs")
    path = inputs.get("path") if isinstance(inputs, Mapping) else None
    return f" ({Path(str(path)).name})" if path else ""


def headline(chain: Chain) -> Headline:
    """Data, split and its leakiness, model, scores beside the baseline and chance, and what they mean."""
    m = chain.metrics
    split = m.get("split") or {}
    k = len(m.get("class_names") or [])
    users = split.get("test_users") or []
    rows = [
        ("data", f"{dataset_name(chain)}{_source_file(chain)}: {k} classes, {fmt(m.get('n_test'))} test windows"),
        ("split", f"{split.get('protocol', DASH)}" + (" (LEAKY: the same people in train and test)" if is_leaky(split)
                                                      else f" ({len(users)} test users never seen in training: "
                                                           f"{', '.join(map(str, users))})")),
        ("model", f"{model_label(m)} ({fmt(m.get('params'))} parameters), checkpoint {m.get('checkpoint', DASH)} "
                  f"({epoch_label(m)})"),
        ("this model", f"accuracy {fmt(m.get('accuracy'))}, macro F1 {fmt(m.get('macro_f1'))}"),
    ]
    base, chance = m.get("baseline"), m.get("chance")
    if base:
        rows.append(("baseline", f"accuracy {fmt(base['accuracy'])}, macro F1 {fmt(base['macro_f1'])} (random forest "
                                 "on window statistics, same split)"))
    if chance:
        rows.append(("chance", f"accuracy {fmt(chance['uniform_accuracy'])} (uniform guess), "
                               f"{fmt(chance['majority_accuracy'])} (always the most frequent class)"))
    return Headline(rows, verdict(m))


def per_user_section(chain: Chain) -> list[Block]:
    """Which test users the model fails on, and on which activities."""
    m = chain.metrics
    per_user = m.get("per_user") or {}
    blocks: list[Block] = [Heading("Per test user")]
    if not per_user:
        return blocks + [Para("Not measured for this run (evaluated before per-user figures existed; re-run evaluate).")]
    png = chain.eval_dir / PLOTS_DIR / "per_user.png"
    if png.is_file():
        blocks.append(Figure(png.name, PLOT_CAPTIONS[png.name], png.read_bytes()))
    rows = []
    for user in sorted(per_user, key=lambda u: (per_user[u]["accuracy"], u)):
        u = per_user[user]
        weakest = min(u["recall"].items(), key=lambda kv: kv[1], default=None)
        top = u.get("top_confusion")
        rows.append((user, fmt(u["windows"]), fmt(u["accuracy"]), fmt(u["macro_f1"]),
                     DASH if weakest is None else f"{weakest[0]} ({weakest[1]:.2f})",
                     DASH if not top else f"{top['true']} taken for {top['predicted']} ({top['windows']} windows)"))
    blocks.append(Table(("test user", "windows", "accuracy", "macro F1", "weakest activity (recall)",
                         "most frequent mistake"), rows,
                        caption="Weakest users first. Unseen people are the difficulty of activity recognition: the "
                                "spread between users is the spread a new user can expect."))
    return blocks


def saliency_section(chain: Chain) -> list[Block]:
    png = chain.eval_dir / PLOTS_DIR / "saliency.png"
    blocks: list[Block] = [Heading("What the model looks at")]
    if not png.is_file():
        return blocks + [Para("No saliency for this model (a random forest has no gradients), or the run was evaluated "
                              "before saliency existed.")]
    return blocks + [Figure(png.name, PLOT_CAPTIONS[png.name], png.read_bytes())]


def _split_name(metrics: Mapping[str, Any]) -> str:
    split = metrics.get("split") or {}
    users = ", ".join(map(str, split.get("test_users") or [])) or DASH
    return (f"test split of protocol '{split.get('protocol', DASH)}'{' (leaky)' if is_leaky(split) else ''}: "
            f"{fmt(metrics.get('n_test'))} windows, test users {users}")


def results_section(chain: Chain) -> list[Block]:
    m = chain.metrics
    rows = [(name, fmt(m.get(key))) for name, key in (
        ("accuracy", "accuracy"), ("macro F1", "macro_f1"), ("weighted F1", "weighted_f1"),
        ("macro precision", "macro_precision"), ("macro recall", "macro_recall"),
        ("weighted precision", "weighted_precision"), ("weighted recall", "weighted_recall"))]
    tta = m.get("tta") or {}
    caption = _split_name(m) + (f"; test-time augmentation: {tta['description']}" if tta.get("description") else "")
    blocks: list[Block] = [Heading("Results"), Table(("metric", "value"), rows, caption=caption)]
    base, chance, plain = m.get("baseline"), m.get("chance"), tta.get("without_tta")
    if base or chance or plain:
        side = [(f"this model ({model_label(m)})" + (f", {tta['views']} views (TTA)" if plain else ""),
                 fmt(m.get("accuracy")), fmt(m.get("macro_f1")))]
        if plain:
            side.append((f"this model ({model_label(m)}), the window alone (--tta 0)", fmt(plain["accuracy"]),
                         fmt(plain["macro_f1"])))
        if base:
            side.append((f"baseline: {base['description']}", fmt(base["accuracy"]), fmt(base["macro_f1"])))
        if chance:
            side.append(("chance: uniform guess", fmt(chance["uniform_accuracy"]), DASH))
            side.append(("chance: always the most frequent test class", fmt(chance["majority_accuracy"]), DASH))
        blocks.append(Table(("on the same test windows", "accuracy", "macro F1"), side,
                            caption="The network beside what a user would pick instead, and beside guessing."))
    return blocks


def per_class_section(chain: Chain) -> list[Block]:
    m = chain.metrics
    rows = []
    for name in m["class_names"]:
        pc = m["per_class"][name]
        rows.append((name, fmt(m["per_class_accuracy"][name]), fmt(pc["precision"]), fmt(pc["recall"]),
                     fmt(pc["f1"]), fmt(pc["support"])))
    return [Heading("Per-class results"),
            Table(("class", "accuracy", "precision", "recall", "F1", "test windows"), rows,
                  caption="Per-class accuracy is the recall of the class (the share of its windows predicted "
                          "correctly), which is how the article's per-class accuracy reads.")]


def plot_blocks(eval_dir: Path) -> list[Block]:
    files = sorted((p for p in (eval_dir / PLOTS_DIR).glob("*.png") if p.name not in SECTION_PLOTS),
                   key=lambda p: (list(PLOT_CAPTIONS).index(p.name) if p.name in PLOT_CAPTIONS else 99, p.name))
    return [Heading("Plots")] + [Figure(p.name, PLOT_CAPTIONS.get(p.name, p.stem.replace("_", " ")), p.read_bytes())
                                 for p in files]


def efficiency_section(chain: Chain) -> list[Block]:
    path = chain.eval_dir / "efficiency.csv"
    if not path.is_file():
        raise ArtefactError(f"{path}: missing; re-run the evaluate stage")
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    rows = [(r.metric, _number_text(r.value), r.unit, r.how) for r in df.itertuples()]
    blocks: list[Block] = [Heading("Efficiency")]
    lat = chain.metrics.get("latency_ms") or {}
    if lat:
        blocks.append(runtime_table(lat))
    blocks.append(Table(("figure", "value", "unit", "how it was measured"), rows))
    if not lat:
        blocks.append(Para("Latency was not measured for this run (evaluate ran with skip_latency)."))
    return blocks


def runtime_table(lat: Mapping[str, Any]) -> Table:
    """Median latency per runtime side by side, with the speed-up over eager PyTorch on the same device."""
    names = {"cpu": "eager PyTorch, CPU", "cuda": "eager PyTorch, CUDA"}
    batches = sorted({k for d in lat.values() for k in d if k.startswith("batch_")}, key=lambda k: int(k[6:]))
    rows = []
    for dev, d in lat.items():
        name = d.get("runtime") or names.get(dev, dev)
        base = lat.get(dev.split("_")[0], {})
        cells = [name, str(d.get("threads", DASH))]
        for b in batches:
            ms = (d.get(b) or {}).get("median")
            ref = (base.get(b) or {}).get("median")
            speed = f" ({ref / ms:.1f}x)" if ms and ref and d is not base else ""
            cells.append(DASH if ms is None else f"{ms:.3f}{speed}")
        rows.append(tuple(cells))
    return Table(("runtime", "threads", *(f"ms per call, batch {b[6:]} (median)" for b in batches)), rows,
                 caption="Each runtime beside eager PyTorch on the same device (speed-up in brackets). A runtime other "
                         "than PyTorch is used only when its logits match PyTorch's (see the rows below).")


def _number_text(text: str) -> str:
    """A CSV number for reading: thousands separators, four significant digits for decimals."""
    try:
        return f"{int(text):,}"
    except ValueError:
        pass
    try:
        return f"{float(text):,.4g}" if abs(float(text)) < 1e4 else f"{float(text):,.0f}"
    except ValueError:
        return text


def _norm(name: str) -> str:
    return name.strip().lower()


def comparable_with_article(chain: Chain) -> str | None:
    """None when the run is comparable with the article (WISDM v1.1's six activities, 3 axes); else why not."""
    names = {_norm(n) for n in chain.metrics.get("class_names") or []}
    theirs = {_norm(n) for n in article.PER_CLASS_ACCURACY}
    if names != theirs:
        return (f"this run has {len(names)} classes on {dataset_name(chain)}; the article reports WISDM v1.1's six "
                "activities, so its figures are not comparable")
    channels = (chain.windows or {}).get("channels")
    if channels not in (None, 3):
        return f"this run has {channels} channels; the article uses the 3 accelerometer axes"
    return None


def article_section(chain: Chain) -> list[Block]:
    why_not = comparable_with_article(chain)
    if why_not:
        return [Heading("Against the article"), Para(f"No comparison: {why_not}.")]
    m = chain.metrics
    split = m.get("split") or {}
    lat = cpu_latency_b1(m)
    lat_text = DASH if lat is None else f"{lat:.2f} (CPU, batch 1, median; {m['latency_ms']['cpu']['device_name']})"
    flops = m.get("flops")
    rows: list[tuple[str, str, str]] = [
        ("dataset", dataset_name(chain), article.DATASET),
        ("protocol", f"{split.get('protocol', DASH)}{' (leaky)' if is_leaky(split) else ''}: "
                     f"{split.get('description', DASH)}", f"{article.PROTOCOL} (leaky)"),
        ("parameters", fmt(m.get("params")), fmt(article.PARAMS)),
        ("FLOPs (M)", DASH if flops is None else f"{flops / 1e6:.2f}", f"{article.FLOPS / 1e6:.2f}"),
        ("inference (ms per window)", lat_text, f"{article.INFERENCE_MS:.2f}"),
        ("accuracy", fmt(m.get("accuracy")), fmt(article.ACCURACY)),
        ("macro F1", fmt(m.get("macro_f1")), fmt(article.MACRO_F1)),
    ]
    ours = {_norm(n): v for n, v in m["per_class_accuracy"].items()}
    theirs = {_norm(n): v for n, v in article.PER_CLASS_ACCURACY.items()}
    for name in list(article.PER_CLASS_ACCURACY) + [n for n in m["class_names"] if _norm(n) not in theirs]:
        rows.append((f"accuracy: {name}", fmt(ours.get(_norm(name))), fmt(theirs.get(_norm(name)))))
    return [Heading("Against the article"),
            Table(("figure", "this run", "article"), rows,
                  caption="Article figures are quoted (har_vit/model/article.py), not measured here; its split shares "
                          "users between train and test (leaky). Per-class rows match by class name; a dash "
                          "means the class is not in that set. Our FLOPs count one multiply-add as one FLOP; "
                          "latency depends on hardware and threads (ours: see Efficiency).")]


CHANGE_ROWS = (("accuracy", "accuracy", 4), ("macro F1", "macro_f1", 4), ("parameters", "params", 0),
               ("latency (ms, CPU batch 1 median)", "latency_ms", 3))


def change_section(summary: Mapping[str, Any], previous: Mapping[str, Any] | None) -> list[Block]:
    """Deltas against the previous run (by training time) in the same reports folder."""
    blocks: list[Block] = [Heading("Change since the previous run")]
    if previous is None:
        return blocks + [Para("First run in this reports folder: nothing to compare with yet.")]
    rows = [(name, fmt(previous.get(key), d), fmt(summary.get(key), d),
             fmt_delta(summary.get(key), previous.get(key), d)) for name, key, d in CHANGE_ROWS]
    header = ("figure", f"previous ({previous['run_id']})", f"this run ({summary['run_id']})", "change")
    blocks.append(Table(header, rows,
                        caption=f"Previous run: {previous['run_id']}, trained {previous.get('run_created', DASH)}"))
    differ = [f"{k} {previous.get(k)} -> {summary.get(k)}" for k in ("dataset", "split", "model")
              if previous.get(k) != summary.get(k)]
    if differ:
        blocks.append(Para("Not like for like: " + "; ".join(differ) + ". The change mixes these with the model's."))
    return blocks


def build_report(chain: Chain, summary: Mapping[str, Any], previous: Mapping[str, Any] | None) -> list[Block]:
    """The report as blocks, in reading order."""
    m = chain.metrics
    split = m.get("split") or {}
    blocks: list[Block] = [Heading(f"HAR-ViT report: {summary['run_id']}", 1), headline(chain)]
    if is_leaky(split):
        blocks.append(Alert(f"leaky split '{split.get('protocol')}': the same users are in train and test, so these "
                            "scores are flattered (see Windows and split protocol)."))
    blocks += [Para("Not available: " + n) for n in chain.notes]
    # Results and plots first; how the data was cut and the model trained after; the full configuration folded away.
    for part in (results_section(chain), per_user_section(chain), per_class_section(chain), plot_blocks(chain.eval_dir),
                 saliency_section(chain), data_section(chain), split_section(chain), model_section(chain),
                 efficiency_section(chain), article_section(chain), change_section(summary, previous)):
        blocks += part
    blocks.append(Para(f"Trained {chain.train.get('created', DASH)}; report generated {summary['created']} from "
                       f"{chain.run_dir}."))
    return blocks + configuration_details(chain)


# --- summaries and the index -------------------------------------------------------

def build_summary(chain: Chain, run_id: str) -> dict[str, Any]:
    m = chain.metrics
    split = m.get("split") or {}
    return {
        "run_id": run_id, "created": now_iso(), "run_created": chain.train.get("created"),
        "dataset": dataset_name(chain), "model": m.get("model"), "split": split.get("protocol"),
        "leaky": is_leaky(split), "accuracy": m.get("accuracy"), "macro_f1": m.get("macro_f1"),
        "weighted_f1": m.get("weighted_f1"), "params": m.get("params"), "flops": m.get("flops"),
        "latency_ms": cpu_latency_b1(m), "latency_setting": "CPU, batch 1, median", "n_test": m.get("n_test"),
        "class_names": m.get("class_names"), "report": "report.html", "run_dir": str(chain.run_dir),
    }


def _order(s: Mapping[str, Any]) -> tuple[str, str]:
    # ISO-8601 UTC strings sort in time order; the run id breaks ties within a second.
    return (str(s.get("run_created") or ""), str(s["run_id"]))


def load_summaries(reports_dir: Path) -> list[dict[str, Any]]:
    """Every ``reports_dir/*/summary.json``, oldest run first."""
    out = []
    for path in sorted(reports_dir.glob("*/summary.json")):
        s = read_json(path)
        if not isinstance(s, dict) or "run_id" not in s:
            raise ArtefactError(f"{path}: not a report summary; delete its folder or re-run the report for that run")
        out.append(s)
    return sorted(out, key=_order)


def previous_run(summaries: Sequence[Mapping[str, Any]], summary: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The latest run created before ``summary``'s run, or None."""
    earlier = [s for s in summaries if s["run_id"] != summary["run_id"] and _order(s) < _order(summary)]
    return max(earlier, key=_order, default=None)


def group_of(summary: Mapping[str, Any]) -> str:
    """The group a run is compared within: its dataset and class set."""
    names = summary.get("class_names") or []
    return f"{summary.get('dataset') or DASH}, {len(names)} classes"


def write_index(reports_dir: Path) -> Path:
    """Rebuild ``reports_dir/index.html``: one trend line and one table (newest first) per dataset and class set."""
    runs = load_summaries(reports_dir)
    trend_png = plots.trend(runs, reports_dir / "trend.png", group_of).read_bytes()
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for s in reversed(runs):
        groups.setdefault(group_of(s), []).append(s)
    blocks: list[Block] = [
        Heading("HAR-ViT runs", 1),
        Para(f"{len(runs)} run(s) in {len(groups)} group(s) of dataset and class set, newest first. Scores are on each "
             "run's test split and compare only within a group; a run marked leaky shares users between train and "
             f"test, so its scores are not comparable with subject-split runs either. Updated {now_iso()}."),
        Figure("trend.png", "Test accuracy and macro F1 over runs in training order, one line per dataset and class set "
                            "(leaky runs ringed).", trend_png),
    ]
    for name, members in groups.items():
        classes = ", ".join(map(str, members[0].get("class_names") or [])) or DASH
        rows = [(Link(s["run_id"], urllib.parse.quote(s["run_id"]) + "/" + s.get("report", "report.html")),
                 str(s.get("run_created") or DASH), str(s.get("model") or DASH),
                 f"{s.get('split') or DASH}{' (leaky)' if s.get('leaky') else ''}", fmt(s.get("accuracy")),
                 fmt(s.get("macro_f1")), fmt(s.get("params")), fmt(s.get("latency_ms"), 3)) for s in members]
        blocks += [Heading(f"{name} ({len(members)} run(s))"),
                   Table(("run", "trained", "model", "split", "accuracy", "macro F1", "params",
                          "latency (ms, CPU b1 median)"), rows, caption=f"Classes: {classes}")]
    return write_text(reports_dir / "index.html", render_html(blocks, "HAR-ViT runs"))


def _job_run_id(model_dir: Path) -> str | None:
    """The id ``pipeline.py run`` gave the run around ``model_dir`` (its ``config.json``), so that a report
    written again later lands in the same folder as the first."""
    from har_vit.core.summary import run_folder

    folder = run_folder(model_dir)
    if folder == model_dir:
        return None
    try:
        value = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("run_id")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def run(run_dir: str | os.PathLike, reports_dir: str | os.PathLike | None = None,
        run_id: str | None = None) -> Path:
    """Write ``reports_dir/<run_id>/report.{md,html}`` and ``summary.json``, rebuild the index; return report.html.

    ``reports_dir`` defaults to the workspace's ``reports/`` (:class:`har_vit.core.workspace.Workspace`).
    """
    run_dir = find_model_dir(run_dir)
    chain = load_chain(run_dir)
    run_id = str(run_id or _job_run_id(run_dir) or chain.train.get("run_id") or Path(run_dir).resolve().name)
    if not _RUN_ID.match(run_id):
        raise UsageError(f"run id '{run_id}' must be a plain folder name (letters, digits, '.', '_', '-')")
    reports_dir = Path(reports_dir) if reports_dir is not None else Workspace.at().reports
    out = reports_dir / run_id
    summary = build_summary(chain, run_id)
    previous = previous_run(load_summaries(reports_dir), summary)
    blocks = build_report(chain, summary, previous)

    for fig in (b for b in blocks if isinstance(b, Figure)):
        write_bytes(out / PLOTS_DIR / fig.name, fig.png)  # the Markdown links them
    write_text(out / "report.md", render_markdown(blocks))
    html_path = write_text(out / "report.html", render_html(blocks, f"HAR-ViT report: {run_id}"))
    write_json(out / "summary.json", summary)  # after the report: the index only lists complete reports
    write_index(reports_dir)
    return html_path
