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

import pytest
from test_evaluate import build_run

from har_vit.core import browser
from har_vit.core.errors import ArtefactError, UsageError
from har_vit.model import article
from har_vit.stages.evaluate import EvalConfig
from har_vit.stages.evaluate import run as evaluate
from har_vit.stages.report import (
    Alert,
    Headline,
    Para,
    Table,
    article_section,
    build_report,
    build_summary,
    data_section,
    fmt,
    headline,
    load_chain,
    per_user_section,
    render_html,
    render_markdown,
    run,
)

FAST = EvalConfig(device="cpu", skip_latency=True)
CHROMIUM = browser.find_chromium()
WARN_BOX = '<div class="warn"'
W2019_CLASSES = ["Walking", "Jogging", "Stairs", "Sitting", "Standing", "Typing", "Brushing Teeth", "Eating Soup",
                 "Eating Chips", "Eating Pasta", "Drinking from Cup", "Eating Sandwich", "Kicking (Soccer Ball)",
                 "Playing Catch w/Tennis Ball", "Dribbling (Basketball)", "Writing", "Clapping", "Folding Clothes"]


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    root = tmp_path_factory.mktemp("reports")
    run_a = build_run(root / "a", run_id="run-a", created="2024-01-01T00:00:00+00:00", seed=0)
    run_b = build_run(root / "b", run_id="run-b", protocol="per-stream", created="2024-02-01T00:00:00+00:00", seed=1)
    # An 18-activity run (WISDM 2019's class set), trained last: its own group in the index, no article table.
    run_c = build_run(root / "c", run_id="run-c", created="2024-03-01T00:00:00+00:00", seed=2,
                      class_names=tuple(W2019_CLASSES))
    out = root / "reports"
    metrics = {}
    for run_dir in (run_a, run_b, run_c):
        metrics[run_dir.name] = evaluate(FAST, run_dir)
        assert run(run_dir, out) == out / run_dir.name / "report.html"
    return {"root": root, "out": out, "runs": {"run-a": run_a, "run-b": run_b, "run-c": run_c}, "metrics": metrics}


def _read(reports, run_id, name="report.html"):
    return (reports["out"] / run_id / name).read_text(encoding="utf-8")


def _with_split(chain, **split):
    return dataclasses.replace(chain, metrics={**chain.metrics, "split": {**chain.metrics["split"], **split}})


def test_report_writes_markdown_html_summary_and_plots(reports):
    folder = reports["out"] / "run-a"
    md = _read(reports, "run-a", "report.md")
    for section in ("## Data", "## Windows and split protocol", "## Model and training set-up", "## Results",
                    "## Per test user", "## Per-class results", "## Plots", "## What the model looks at",
                    "## Efficiency", "## Against the article", "## Change since the previous run"):
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


def _with_classes(chain, names):
    return dataclasses.replace(chain, metrics={**chain.metrics, "class_names": names,
                                               "per_class_accuracy": {n: 0.5 for n in names}})


def test_article_comparison_only_where_the_classes_are_the_articles(reports):
    chain = load_chain(reports["runs"]["run-a"])
    blocks = article_section(_with_classes(chain, W2019_CLASSES))
    assert not any(isinstance(b, Table) for b in blocks)
    (why,) = [b.text for b in blocks if isinstance(b, Para)]
    assert "18 classes" in why and "not comparable" in why
    # The same six activities in another case and order are the article's: the table is there.
    six = [n.lower() for n in reversed(article.PER_CLASS_ACCURACY)]
    table = next(b for b in article_section(_with_classes(chain, six)) if isinstance(b, Table))
    rows = {r[0]: r[1:] for r in table.rows}
    assert rows["accuracy: Walking"] == ("0.5000", "0.9863")  # matched by name regardless of case
    assert len([r for r in rows if r.startswith("accuracy: ")]) == 6


def test_headline_box_comes_first_and_says_what_the_scores_mean(reports):
    chain = load_chain(reports["runs"]["run-a"])
    m = chain.metrics
    blocks = build_report(chain, build_summary(chain, "x"), None)
    head = blocks[1]
    assert isinstance(head, Headline)
    rows = dict(head.rows)
    assert list(rows) == ["data", "split", "model", "this model", "baseline", "chance"]
    assert rows["this model"] == f"accuracy {fmt(m['accuracy'])}, macro F1 {fmt(m['macro_f1'])}"
    assert fmt(m["baseline"]["macro_f1"]) in rows["baseline"] and "0.1667" in rows["chance"]
    assert "never seen" in rows["split"] and "5, 6" in rows["split"]
    assert "people the model never saw" in head.sentence and "chance level of 6 classes" in head.sentence
    page = render_html(blocks, "x")
    assert page.index('class="headline"') < page.index("<h2>")  # before any section
    leaky = _with_split(chain, protocol="random", leaky=True)
    assert "LEAKY" in dict(headline(leaky).rows)["split"] and "same people" in headline(leaky).sentence


def test_results_first_and_the_configuration_folded_away_at_the_end(reports):
    md = _read(reports, "run-a", "report.md")
    order = [md.index(h) for h in ("## Results", "## Per test user", "## Per-class results", "## Plots",
                                   "## What the model looks at", "## Data", "## Model and training set-up",
                                   "<details>")]
    assert order == sorted(order)
    details = md[md.index("<details>"):]
    assert "| lr |" in details and "| lr |" not in md[:md.index("<details>")]
    page = _read(reports, "run-a")
    assert page.count('<details id="configuration">') == 1 and page.rindex("<details") > page.rindex("<figure>")


def test_per_user_section_lists_every_test_user_weakest_first(reports):
    chain = load_chain(reports["runs"]["run-a"])
    per_user = chain.metrics["per_user"]
    blocks = per_user_section(chain)
    table = next(b for b in blocks if isinstance(b, Table))
    assert [r[0] for r in table.rows] == sorted(per_user, key=lambda u: (per_user[u]["accuracy"], u))
    for row in table.rows:
        u = per_user[row[0]]
        assert row[2] == fmt(u["accuracy"]) and row[1] == fmt(u["windows"])
        if u["top_confusion"]:
            assert row[5].startswith(f"{u['top_confusion']['true']} taken for {u['top_confusion']['predicted']}")
    assert any(getattr(b, "name", "") == "per_user.png" for b in blocks)


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

def test_index_groups_runs_by_dataset_and_class_set(reports):
    index = (reports["out"] / "index.html").read_text(encoding="utf-8")
    assert "<h2>wisdm, 6 classes (2 run(s))</h2>" in index and "<h2>wisdm, 18 classes (1 run(s))</h2>" in index
    six, eighteen = index.split("<h2>wisdm, 6 classes")[1], index.split("<h2>wisdm, 18 classes")[1]
    assert "run-c/report.html" in eighteen.split("<h2>")[0] and "run-c/report.html" not in six.split("<h2>")[0]
    assert index.index("18 classes") < index.index("6 classes (2")  # the group with the newest run first


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed: apt-get install chromium")
@pytest.mark.parametrize("width", [1280, 390])
def test_report_reads_well_in_headless_chromium_at_desktop_and_phone_width(reports, width):
    for run_id in ("run-a", "run-c"):
        page = reports["out"] / run_id / "report.html"
        attrs = browser.body_attributes(page, width, 900)
        assert attrs["data-viewport-width"] == str(width), attrs
        assert attrs["data-page-overflows"] == "false", f"{run_id} scrolls sideways at {width} px"
        order = attrs["data-order"].split("|")
        # The headline box first, results and the per-user section next, the configuration folded at the end.
        assert order[0] == "headline" and order[-1] == "details", order
        assert order.index("Results") < order.index("Per test user") < order.index("Data")
        assert attrs["data-broken-images"] == "" and attrs["data-images-total"] == attrs["data-images-loaded"]
        n_img = page.read_text(encoding="utf-8").count("<img ")
        assert attrs["data-images-total"] == str(n_img) and n_img >= 6
    dom = browser.dom(reports["out"] / "run-c" / "report.html")
    article_part = dom.split("<h2>Against the article</h2>")[1].split("<h2>")[0]
    assert "<table>" not in article_part and "not comparable" in article_part  # 18 classes: no article table
    per_user = dom.split("<h2>Per test user</h2>")[1].split("<h2>")[0]
    assert per_user.count("<tr>") == 1 + len(reports["metrics"]["run-c"]["per_user"])
    assert '<section class="headline" id="headline">' in dom.split("<h2>")[0]
    dom_a = browser.dom(reports["out"] / "run-a" / "report.html")
    assert "<table>" in dom_a.split("<h2>Against the article</h2>")[1].split("<h2>")[0]


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed: apt-get install chromium")
def test_every_image_loads_in_chromium_and_a_broken_one_is_named(reports, tmp_path):
    for target in (reports["out"] / "run-b" / "report.html", reports["out"] / "index.html"):
        attrs = browser.body_attributes(target)
        n_img = target.read_text(encoding="utf-8").count("<img ")
        assert n_img >= 1
        assert attrs["data-images-total"] == attrs["data-images-loaded"] == str(n_img), attrs
        assert attrs["data-broken-images"] == ""
        assert int(attrs["data-tables"]) == target.read_text(encoding="utf-8").count("<table>")
    # The check can fail: a page with one undecodable image lists it as broken.
    html_text = (reports["out"] / "run-b" / "report.html").read_text(encoding="utf-8")
    bad = tmp_path / "broken.html"
    bad.write_text(html_text.replace('src="data:image/png;base64,', 'src="data:image/png;base64,AAAA', 1),
                   encoding="utf-8")
    attrs = browser.body_attributes(bad)
    assert attrs["data-broken-images"] == "per_user.png"  # the first figure of the page
    assert int(attrs["data-images-loaded"]) == int(attrs["data-images-total"]) - 1


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed: apt-get install chromium")
@pytest.mark.parametrize("width, height", [(1280, 900), (390, 844)])
def test_screenshot_is_the_asked_size(reports, tmp_path, width, height):
    shot = browser.screenshot(reports["out"] / "run-a" / "report.html", tmp_path / "s.png", width, height)
    head = shot.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", head[16:24]) == (width, height)
