"""Report stage: sections a reader relies on, run-to-run deltas, the index, self-contained HTML.

Two hand-built runs (see ``build_run`` in test_evaluate.py): ``run-a`` on the subject
split, trained first, and ``run-b`` on the leaky per-stream split, trained a month later.
The browser test needs Debian's ``chromium`` (CI: ``apt-get install -y --no-install-recommends chromium``).
"""
from __future__ import annotations

import dataclasses
import json
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from test_evaluate import build_run

from har_vit.core.errors import ArtefactError, UsageError
from har_vit.model import article
from har_vit.stages.evaluate import EvalConfig
from har_vit.stages.evaluate import run as evaluate
from har_vit.stages.report import (
    DASH,
    Alert,
    Para,
    Table,
    article_section,
    build_report,
    build_summary,
    data_section,
    fmt,
    load_chain,
    render_html,
    render_markdown,
    run,
)

FAST = EvalConfig(device="cpu", skip_latency=True)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
WARN_BOX = '<div class="warn"'


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    root = tmp_path_factory.mktemp("reports")
    run_a = build_run(root / "a", run_id="run-a", created="2024-01-01T00:00:00+00:00", seed=0)
    run_b = build_run(root / "b", run_id="run-b", protocol="per-stream", created="2024-02-01T00:00:00+00:00", seed=1)
    out = root / "reports"
    metrics = {}
    for run_dir in (run_a, run_b):
        metrics[run_dir.name] = evaluate(FAST, run_dir)
        assert run(run_dir, out) == out / run_dir.name / "report.html"
    return {"root": root, "out": out, "runs": {"run-a": run_a, "run-b": run_b}, "metrics": metrics}


def _read(reports, run_id, name="report.html"):
    return (reports["out"] / run_id / name).read_text(encoding="utf-8")


def _with_split(chain, **split):
    return dataclasses.replace(chain, metrics={**chain.metrics, "split": {**chain.metrics["split"], **split}})


def test_report_writes_markdown_html_summary_and_plots(reports):
    folder = reports["out"] / "run-a"
    md = _read(reports, "run-a", "report.md")
    for section in ("## Data", "## Windows and split protocol", "## Model and training set-up", "## Results",
                    "## Per-class results", "## Plots", "## Efficiency", "## Against the article",
                    "## Change since the previous run"):
        assert section in md
    for png in re.findall(r"\]\((plots/[^)]+\.png)\)", md):  # every Markdown image exists beside it
        assert (folder / png).read_bytes()[:4] == b"\x89PNG"
    summary = json.loads((folder / "summary.json").read_text())
    m = reports["metrics"]["run-a"]
    assert summary["run_id"] == "run-a" and summary["split"] == "subject" and summary["leaky"] is False
    assert summary["accuracy"] == m["accuracy"] and summary["macro_f1"] == m["macro_f1"]
    assert summary["params"] == m["params"] and summary["dataset"] == "wisdm"
    assert f"| records quarantined | {fmt(5)} |" in md and "| bad_number | 3 |" in md
    assert f"| accuracy | {fmt(m['accuracy'])} |" in md


def test_leaky_warning_box_on_the_seed_run_only(reports):
    assert WARN_BOX not in _read(reports, "run-a")
    html_b = _read(reports, "run-b")
    assert html_b.count(WARN_BOX) == 2  # at the top and in the split section
    assert "same users" in html_b


@pytest.mark.parametrize("protocol, leaky_flag, warned", [
    ("subject", False, False), ("loso", False, False),
    ("per-stream", False, True),  # the protocol alone is enough: the per-stream cut shares users by construction
    ("random", True, True), ("subject", True, True)])
def test_leaky_warning_follows_protocol_and_flag(reports, protocol, leaky_flag, warned):
    chain = _with_split(load_chain(reports["runs"]["run-a"]), protocol=protocol, leaky=leaky_flag)
    blocks = build_report(chain, build_summary(chain, "x"), None)
    assert any(isinstance(b, Alert) for b in blocks) is warned
    assert (WARN_BOX in render_html(blocks, "x")) is warned
    assert ("> **Warning:**" in render_markdown(blocks)) is warned


def test_article_table_sits_beside_ours_by_class_name(reports):
    md = _read(reports, "run-b", "report.md")
    m = reports["metrics"]["run-b"]
    assert f"| parameters | {fmt(m['params'])} | 4,367,366 |" in md
    assert "| FLOPs (M) |" in md and "| 58.56 |" in md and "| 2.90 |" in md
    assert f"| accuracy | {fmt(m['accuracy'])} | 0.9781 |" in md and "| 0.9780 |" in md
    for name, value in article.PER_CLASS_ACCURACY.items():
        assert f"| accuracy: {name} | {fmt(m['per_class_accuracy'][name])} | {fmt(value)} |" in md
    assert "leaky" in md.split("## Against the article")[1]


def test_article_rows_show_a_dash_where_classes_differ(reports):
    # WISDM 2019-like names: lower case, no up/down stairs, extra activities.
    names = ["walking", "jogging", "stairs", "sitting", "standing", "typing"]
    chain = load_chain(reports["runs"]["run-a"])
    chain = dataclasses.replace(chain, metrics={**chain.metrics, "class_names": names,
                                                "per_class_accuracy": {n: 0.5 + i / 100 for i, n in enumerate(names)}})
    table = next(b for b in article_section(chain) if isinstance(b, Table))
    rows = {r[0]: r[1:] for r in table.rows}
    assert rows["accuracy: Walking"] == ("0.5000", "0.9863")  # matched regardless of case
    assert rows["accuracy: Upstairs"] == (DASH, "0.9945")
    assert rows["accuracy: stairs"] == ("0.5200", DASH)
    assert rows["accuracy: typing"] == ("0.5500", DASH)
    assert len([r for r in rows if r.startswith("accuracy: ")]) == 8


def test_second_report_shows_the_change_since_the_first(reports):
    a, b = reports["metrics"]["run-a"], reports["metrics"]["run-b"]
    assert "First run in this reports folder" in _read(reports, "run-a", "report.md")
    md_b = _read(reports, "run-b", "report.md")
    assert "First run" not in md_b
    assert f"| accuracy | {fmt(a['accuracy'])} | {fmt(b['accuracy'])} | {b['accuracy'] - a['accuracy']:+.4f} |" in md_b
    assert f"| macro F1 | {fmt(a['macro_f1'])} | {fmt(b['macro_f1'])} | {b['macro_f1'] - a['macro_f1']:+.4f} |" in md_b
    assert "| parameters |" in md_b and "+0 |" in md_b
    assert "Not like for like: split subject -> per-stream" in md_b


def test_previous_run_is_chosen_by_training_time_not_report_order(reports, tmp_path):
    out = tmp_path / "reports"
    run(reports["runs"]["run-b"], out)  # the later run reported first: nothing earlier yet
    assert "First run" in (out / "run-b" / "report.md").read_text()
    run(reports["runs"]["run-a"], out)  # the earlier run is still a first run...
    assert "First run" in (out / "run-a" / "report.md").read_text()
    run(reports["runs"]["run-b"], out)  # ...and run-b now compares with it
    assert "previous (run-a)" in (out / "run-b" / "report.md").read_text()


def test_index_lists_every_run_newest_first_with_the_trend_plot(reports):
    index = (reports["out"] / "index.html").read_text(encoding="utf-8")
    assert 'href="run-a/report.html"' in index and 'href="run-b/report.html"' in index
    assert index.index("run-b/report.html") < index.index("run-a/report.html")
    assert "per-stream (leaky)" in index and fmt(reports["metrics"]["run-a"]["accuracy"]) in index
    assert index.count('<img src="data:image/png;base64,') == 1


def test_html_loads_nothing_from_the_network(reports):
    pages = [_read(reports, "run-a"), _read(reports, "run-b"), (reports["out"] / "index.html").read_text()]
    for page in pages:
        assert not re.search(r"https?://", page, re.IGNORECASE)
        assert not re.search(r"""(src|href)\s*=\s*["']?//""", page)  # protocol-relative
        assert "url(" not in page and "@import" not in page
        for src in re.findall(r'<img[^>]*\ssrc="([^"]*)"', page):
            assert src.startswith("data:image/png;base64,")
        assert "Content-Security-Policy" in page and "default-src 'none'" in page


def test_text_is_escaped_in_html_and_markdown():
    evil = "<script>alert('x')</script> & |pipe|"
    blocks = [Para(evil), Table(("class", "value"), [(evil, "1")], caption=evil), Alert(evil)]
    page = render_html(blocks, evil)
    assert "<script>alert" not in page
    assert page.count("&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; |pipe|") == 5  # title + 4 blocks
    md = render_markdown([Table(("class",), [(evil,)])])
    assert "\\|pipe\\|" in md  # a pipe in a cell does not split the Markdown table


def test_chain_without_ingest_says_so(reports):
    chain = dataclasses.replace(load_chain(reports["runs"]["run-a"]), ingest=None)
    paras = [b.text for b in data_section(chain) if isinstance(b, Para)]
    assert any("No ingest stage" in t for t in paras)


def test_unevaluated_run_is_an_artefact_error_naming_the_eval_folder(reports, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(reports["runs"]["run-a"], run_dir, ignore=shutil.ignore_patterns("eval"))
    with pytest.raises(ArtefactError, match=r"eval[/\\]manifest\.json"):
        run(run_dir, tmp_path / "reports")


def test_run_id_must_be_a_plain_folder_name(reports, tmp_path):
    with pytest.raises(UsageError, match="run id"):
        run(reports["runs"]["run-a"], tmp_path / "reports", run_id="../escape")


def test_real_windows_train_evaluate_report_chain(windows_npz, tmp_path):
    """The real upstream stages honour the contract this stage reads (pre-windowed input: no ingest)."""
    from har_vit.core.schema import build
    from har_vit.stages import train, windows

    windows.import_npz(windows.WindowConfig(), windows_npz, tmp_path / "windows")
    cfg = build(train.TrainConfig, {"model": "tiny", "epochs": 1, "batch_size": 32, "device": "cpu",
                                    "progress": False, "threads": 1})
    manifest = train.run(cfg, tmp_path / "windows", tmp_path / "run")
    m = evaluate(FAST, tmp_path / "run")
    assert m["run_id"] == manifest["run_id"] and m["n_test"] == manifest["split"]["n_test"]
    page = run(tmp_path / "run", tmp_path / "reports")
    md = (page.parent / "report.md").read_text(encoding="utf-8")
    assert "No ingest stage" in md and "| protocol | subject |" in md
    summary = json.loads((page.parent / "summary.json").read_text())
    assert summary["dataset"] == "npz" and summary["accuracy"] == m["accuracy"]


# --- headless Chromium ---------------------------------------------------------------

def _chromium(tmp_path: Path, name: str, *args: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / ('profile-' + name)}"]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=120)


def _rendered_body(tmp_path: Path, page: Path, name: str) -> dict[str, str]:
    """``data-*`` attributes the page's inline script set on <body> after load, read from the dumped DOM."""
    proc = _chromium(tmp_path, name, "--virtual-time-budget=5000", "--dump-dom", page.as_uri())
    body = re.search(r"<body([^>]*)>", proc.stdout)
    assert body, f"chromium dumped no DOM for {page}: {proc.stderr[-500:]}"
    return dict(re.findall(r'(data-[\w-]+)="([^"]*)"', body.group(1)))


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed: apt-get install chromium")
def test_report_renders_in_headless_chromium_with_every_image_loaded(reports, tmp_path):
    page = reports["out"] / "run-b" / "report.html"
    html_text = page.read_text(encoding="utf-8")

    shot = tmp_path / "report.png"
    proc = _chromium(tmp_path, "shot", f"--screenshot={shot}", "--window-size=1280,4000", page.as_uri())
    assert shot.is_file(), f"no screenshot: {proc.stderr[-500:]}"
    head = shot.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", head[16:24]) == (1280, 4000)

    for name, target in (("report", page), ("index", reports["out"] / "index.html")):
        attrs = _rendered_body(tmp_path, target, name)
        n_img = target.read_text(encoding="utf-8").count("<img ")
        assert n_img >= 1
        assert attrs["data-images-total"] == attrs["data-images-loaded"] == str(n_img), attrs
        assert attrs["data-broken-images"] == ""
        assert int(attrs["data-tables"]) == target.read_text(encoding="utf-8").count("<table>")
    assert html_text.count("<table>") >= 10

    # The check can fail: a page with one undecodable image lists it as broken.
    bad = tmp_path / "broken.html"
    bad.write_text(html_text.replace('src="data:image/png;base64,', 'src="data:image/png;base64,AAAA', 1),
                   encoding="utf-8")
    attrs = _rendered_body(tmp_path, bad, "broken")
    assert attrs["data-broken-images"] == "confusion_counts.png"
    assert int(attrs["data-images-loaded"]) == int(attrs["data-images-total"]) - 1
