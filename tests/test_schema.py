"""One declaration per option: the YAML loader, --help and the README table all come from it."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import pipeline
from har_vit.core import schema
from har_vit.core.errors import UsageError
from har_vit.stages.train import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
START = "<!-- options-table: start (python -c 'from har_vit.core.schema import options_table; print(options_table())') -->"
END = "<!-- options-table: end -->"


def cli(*args, cwd=None):
    p = subprocess.run([sys.executable, str(ROOT / "pipeline.py"), *map(str, args)], capture_output=True, text=True,
                       cwd=cwd or ROOT)
    return p.returncode, p.stdout, p.stderr


# Each case of the issue: a YAML line, and what the one-line error must name.
BAD_YAML = [
    ("epoch: 3", "unknown key 'epoch'; did you mean 'epochs'?"),
    ("window: 12.5", "window: 12.5 is not a whole number"),
    ("subjects: 1600", "subjects: 1600 is not a list"),
    ("data_path: 123", "data_path: 123 is not text"),
    ("batch_size: 64.0", "batch_size: 64.0 is not a whole number"),
    ("epochs: 1.5", "epochs: 1.5 is not a whole number"),
    ("epochs: 0", "epochs: 0 is out of range (expected a whole number >= 1)"),
    ("lr: fast", "lr: 'fast' is not a number"),
    ("model: big", "model: 'big' is not a valid choice (expected one of"),
    ("rotate: 200", "rotate: 200 is out of range"),
    ("device: tpu", "device: 'tpu' is not a valid choice"),
    ("test_users: [1, x]", "test_users: [1, 'x'] holds 'x'"),
    ("class_weights: maybe", "class_weights: 'maybe' is not true or false"),
]


@pytest.mark.parametrize("line,needle", BAD_YAML, ids=[b[0] for b in BAD_YAML])
def test_bad_yaml_is_one_line_naming_key_and_value(tmp_path, line, needle):
    (tmp_path / "c.yaml").write_text(line + "\n")
    with pytest.raises(UsageError) as e:
        schema.resolve("run", schema.load_yaml(tmp_path / "c.yaml", "run"), {})
    msg = str(e.value)
    assert needle in msg and "\n" not in msg and str(tmp_path / "c.yaml") in msg


@pytest.mark.parametrize("line,needle", BAD_YAML[:6], ids=[b[0] for b in BAD_YAML[:6]])
def test_bad_yaml_through_the_cli_exits_2_before_any_work(tmp_path, line, needle):
    (tmp_path / "c.yaml").write_text(line + "\n")
    rc, out, err = cli("run", "--workdir", tmp_path / "ws", "--config", tmp_path / "c.yaml")
    assert rc == 2 and err.startswith("error: ") and needle in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "ws").exists()


def test_yaml_number_written_like_1e_3_is_a_number(tmp_path):
    (tmp_path / "c.yaml").write_text("lr: 1e-3\nepochs: 3\nsubjects: [1600, 1601]\n")
    v = schema.resolve("run", schema.load_yaml(tmp_path / "c.yaml", "run"), {})
    assert v["lr"] == 0.001 and v["epochs"] == 3 and v["subjects"] == (1600, 1601)


def test_layers_defaults_then_yaml_then_command_line(tmp_path):
    (tmp_path / "c.yaml").write_text("epochs: 3\nlr: 0.01\n")
    v = schema.resolve("train", schema.load_yaml(tmp_path / "c.yaml", "train"), {"lr": 0.002, "in_dir": "w", "out": "m"})
    assert (v["epochs"], v["lr"], v["batch_size"]) == (3, 0.002, 128)


def test_a_typed_default_value_still_beats_yaml(tmp_path):
    """`--epochs 30` typed on the command line wins over `epochs: 3` in YAML, although 30 is the default."""
    (tmp_path / "c.yaml").write_text("epochs: 3\n")
    seen = {}

    @pipeline.click.command()
    @schema.click_options("train")
    def probe(**kw):
        seen.update(schema.resolve("train", schema.load_yaml(kw.pop("config"), "train"), schema.typed(kw)))

    r = CliRunner().invoke(probe, ["--config", str(tmp_path / "c.yaml"), "--in", "w", "--out", "m", "--epochs", "30"])
    assert r.exit_code == 0, r.output
    assert seen["epochs"] == 30
    r = CliRunner().invoke(probe, ["--config", str(tmp_path / "c.yaml"), "--in", "w", "--out", "m"])
    assert seen["epochs"] == 3


def test_keys_of_other_stages_are_accepted_and_ignored(tmp_path):
    (tmp_path / "c.yaml").write_text("epochs: 3\nwindow: 64\n")
    assert schema.load_yaml(tmp_path / "c.yaml", "windows") == {"window": 64}


def test_required_option_missing_names_both_ways_to_give_it():
    with pytest.raises(UsageError, match=r"train needs --in \(on the command line or as 'in_dir:' in --config\)"):
        schema.resolve("train", {}, {})


def test_config_dataclasses_are_generated_and_checked():
    c = TrainConfig(epochs=3, test_users=[1, 2])
    assert c.epochs == 3 and c.test_users == (1, 2) and isinstance(c.lr, float)
    with pytest.raises(UsageError, match="epochs: 0 is out of range"):
        TrainConfig(epochs=0)
    with pytest.raises(UsageError, match=r"min_lr \(0.1\) must be <= lr"):
        TrainConfig(min_lr=0.1)
    names = {f for f in TrainConfig.__dataclass_fields__}
    assert names == {o.name for o in schema.group_options("train")}


def test_every_option_is_declared_once_with_a_help_and_a_command():
    assert len(schema.OPTIONS) == len({o.cli for o in schema.OPTIONS.values()})
    for o in schema.OPTIONS.values():
        assert o.help.endswith((".", "]")) and any(o.takes(c) for c in schema.COMMANDS), o.name
        if o.default is not None and o.default != ():
            assert schema.check_value(o.name, o.default) is None, o.name


@pytest.mark.parametrize("command", list(schema.COMMANDS))
def test_help_shows_every_option_with_its_default_and_range(command):
    r = CliRunner().invoke(pipeline.cli, [command, "--help"], terminal_width=400)
    assert r.exit_code == 0, r.output
    text = re.sub(r"\s+", " ", r.output.split("Options:", 1)[1])
    opts = schema.options_for(command)
    starts = [text.index(f" {o.cli} " if o.kind is not bool or o.name == "resume" else f" {o.cli} / ") for o in opts]
    for o, a, b in zip(opts, starts, starts[1:] + [text.index(" -h, --help")]):
        seg = text[a:b]  # this option's line of --help
        d = schema.default_text(o)
        if d:
            assert f"[default: {d}" in seg, (o.cli, d, seg)
        if o.min is not None and not o.choice_list():
            assert re.search(r"x\s?>|x\s?<|<=?\s?x", seg), (o.cli, "range not shown", seg)


def test_readme_options_table_is_generated_from_the_schema():
    text = README.read_text()
    assert START in text and END in text, "README lacks the options-table markers"
    block = text.split(START, 1)[1].split(END, 1)[0].strip()
    assert block == schema.options_table().strip(), (
        "README options table is stale: replace the block between the markers with the output of "
        "python -c 'from har_vit.core.schema import options_table; print(options_table())'")


def test_unknown_option_on_the_command_line_is_one_line():
    rc, _, err = cli("train", "--epoch", "3")
    assert rc == 2 and err.startswith("error: No such option '--epoch'") and "'--epochs'" in err and len(err.strip().splitlines()) == 1
