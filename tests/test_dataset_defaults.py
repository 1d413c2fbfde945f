"""A dataset's own training defaults (``har_vit.datasets.TRAIN_DEFAULTS``): WISDM 2019 data trains with full
rotations and serves its last weights unless the user says otherwise, and the command says so."""
from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from har_vit.datasets import TRAIN_DEFAULTS
from har_vit.stages.windows import WindowConfig, import_npz
from pipeline import cli

QUICK = ["--epochs", "1", "--batch-size", "16", "--no-progress", "--threads", "1"]
NOTE = "wisdm2019 data, so its defaults"


def make_wisdm2019(root, users=10, per_bout=300):
    """A WISDM 2019-shaped release folder: activity key, one phone accelerometer log per subject."""
    acc = root / "raw" / "phone" / "accel"
    acc.mkdir(parents=True)
    (root / "activity_key.txt").write_text("walking = A\njogging = B\nsitting = D\n")
    rng = np.random.default_rng(0)
    for sid in range(1600, 1600 + users):
        lines, t = [], 1_000_000_000
        for k, code in enumerate("ABD"):
            xyz = rng.normal([0.5 * k, 9.8, -k], 1.0 + k, size=(per_bout, 3)).round(4)
            lines += [f"{sid},{code},{t + i * 50_000_000},{x},{y},{z};\n" for i, (x, y, z) in enumerate(xyz)]
            t += per_bout * 50_000_000 + 10_000_000_000
        (acc / f"data_{sid}_accel_phone.txt").write_text("".join(lines))
    return root


@pytest.fixture(scope="module")
def wisdm2019_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("w2019")
    root = make_wisdm2019(tmp / "wisdm-dataset")
    res = CliRunner().invoke(cli, ["run", "--workdir", str(tmp / "ws"), "--dataset", "wisdm2019", "--data-path",
                                   str(root), "--out", str(tmp / "run"), "--model", "tiny", *QUICK, "--skip-latency",
                                   "--baseline", "none"])
    assert res.exit_code == 0, res.output
    return tmp / "run", res.output


def test_wisdm2019_runs_train_with_full_rotations_and_serve_their_last_weights(wisdm2019_run):
    run_dir, output = wisdm2019_run
    config = json.loads((run_dir / "model" / "manifest.json").read_text())["config"]
    assert (config["rotate"], config["serve"]) == (180.0, "last")
    metrics = json.loads((run_dir / "model" / "eval" / "metrics.json").read_text())
    assert metrics["checkpoint"] == "last"  # evaluate tested what the run serves
    assert f"run: {NOTE} --rotate 180 --serve last" in output


def test_an_option_given_wins_over_the_dataset_default_and_is_not_announced(wisdm2019_run, tmp_path):
    run_dir, _ = wisdm2019_run
    windows = run_dir / "windows"
    res = CliRunner().invoke(cli, ["train", "--in", str(windows), "--out", str(tmp_path / "a"), "--model", "tiny",
                                   *QUICK, "--rotate", "30"])
    assert res.exit_code == 0, res.output
    config = json.loads((tmp_path / "a" / "manifest.json").read_text())["config"]
    assert (config["rotate"], config["serve"]) == (30.0, "last")  # train learns the dataset from its windows
    assert f"train: {NOTE} --serve last (" in res.output and "--rotate 180" not in res.output
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"rotate": 45.0, "serve": "best"}))
    res = CliRunner().invoke(cli, ["train", "--in", str(windows), "--out", str(tmp_path / "b"), "--model", "tiny",
                                   *QUICK, "--config", str(tmp_path / "c.yaml")])
    assert res.exit_code == 0, res.output
    config = json.loads((tmp_path / "b" / "manifest.json").read_text())["config"]
    assert (config["rotate"], config["serve"]) == (45.0, "best") and NOTE not in res.output


def test_other_data_keeps_the_schema_defaults(tmp_path, windows_npz):
    assert set(TRAIN_DEFAULTS) == {"wisdm2019"}
    windows = tmp_path / "windows"
    import_npz(WindowConfig(), windows_npz, windows)
    res = CliRunner().invoke(cli, ["train", "--in", str(windows), "--out", str(tmp_path / "m"), "--model", "tiny", *QUICK])
    assert res.exit_code == 0, res.output
    config = json.loads((tmp_path / "m" / "manifest.json").read_text())["config"]
    assert (config["rotate"], config["serve"]) == (30.0, "best") and "its defaults" not in res.output


def test_a_sweep_on_wisdm2019_windows_takes_the_defaults_it_does_not_set(wisdm2019_run, tmp_path):
    run_dir, _ = wisdm2019_run
    spec = tmp_path / "s.yaml"
    spec.write_text(f"windows: {run_dir / 'windows'}\nout: {tmp_path / 'sw'}\nsplit: subject\nseeds: [0]\n"
                    "base: {model: tiny, epochs: 1, batch_size: 16, threads: 1, progress: false}\n"
                    "grid: {rotate: [0, 90]}\n")
    res = CliRunner().invoke(cli, ["sweep", "--config", str(spec)])
    assert res.exit_code == 0, res.output
    assert "sweep: wisdm2019 data, so its defaults serve=last (put them in base: to override)" in res.output
    for rotate in (0, 90):
        config = json.loads((tmp_path / "sw" / "runs" / f"rotate={rotate}" / "s0" / "manifest.json").read_text())["config"]
        assert (config["rotate"], config["serve"]) == (rotate, "last")
