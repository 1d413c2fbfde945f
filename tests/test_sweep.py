"""sweep: every combination x seed is trained; the choice uses validation only."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

import pipeline
from har_vit.core.errors import UsageError
from har_vit.stages import sweep
from har_vit.stages.windows import WindowConfig, import_npz


def test_grid_sweep_table_and_choice(tmp_path, windows_npz, monkeypatch):
    import_npz(WindowConfig(), windows_npz, tmp_path / "w")
    spec = tmp_path / "s.yaml"
    spec.write_text(f"windows: {tmp_path / 'w'}\nout: {tmp_path / 'sw'}\nsplit: subject\nseeds: [0, 1]\n"
                    "base: {model: tiny, epochs: 1, batch_size: 32, threads: 1, warmup_epochs: 0}\n"
                    "grid: {rotate: [0, 90]}\n")
    r = CliRunner().invoke(pipeline.cli, ["sweep", "--config", str(spec)])
    assert r.exit_code == 0, r.output
    result = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    assert [row["name"] for row in result["rows"]] == ["rotate=0", "rotate=90"]
    assert all(row["n_runs"] == 2 for row in result["rows"])
    assert result["stacked"] == [4] and result["trained_now"] == 4  # 2 settings x 2 seeds in one stack
    best = max(result["rows"], key=lambda row: row["val_macro_f1_mean"])
    assert result["chosen"] == best["name"] and "validation" in result["chosen_by"]
    assert "±" in (tmp_path / "sw" / "table.md").read_text()
    assert "summary: sweep of 2 settings x 2 seeds (subject split" in r.stdout
    assert f"chose {best['name']} by mean validation macro F1" in r.stdout
    assert "trained now: 4 runs (4 of them together as stacked models)" in r.stdout
    assert f"val macro F1 {best['val_macro_f1_mean']:.4f}" in r.stdout and f"table: {tmp_path / 'sw' / 'table.md'}" in r.stdout
    # Re-running keeps finished runs instead of training them again.
    mtime = (tmp_path / "sw" / "runs" / "rotate=0" / "s0" / "best.pt").stat().st_mtime
    sweep.run(sweep.SweepSpec.from_mapping(pipeline_yaml(spec)), echo=lambda s: None)
    assert (tmp_path / "sw" / "runs" / "rotate=0" / "s0" / "best.pt").stat().st_mtime == mtime


def pipeline_yaml(path):
    from har_vit.core.schema import read_yaml
    return read_yaml(path)


@pytest.mark.parametrize("body,msg", [
    ({"windows": "w", "out": "o", "split": "random", "grid": {"lr": [1]}}, "honest"),
    ({"windows": "w", "out": "o"}, "exactly one"),
    ({"windows": "w", "out": "o", "grid": {"lr": [1]}, "random": {"n": 2}}, "exactly one"),
    ({"out": "o", "grid": {"lr": [1]}}, "'windows' is required"),
    ({"windows": "w", "out": "o", "grid": {"lr": [1]}, "workers": 0}, "workers must be a whole number"),
    ({"windows": "w", "out": "o", "grid": {"lr": [1]}, "workers": "2"}, "workers must be a whole number"),
])
def test_bad_sweep_files(body, msg):
    with pytest.raises(UsageError, match=msg):
        sweep.SweepSpec.from_mapping(body)


def test_random_sweep_draws_distinct_combinations():
    spec = sweep.SweepSpec.from_mapping({"windows": "w", "out": "o", "random": {"n": 4, "space": {
        "lr": [1e-4, 1e-3, 1e-2], "rotate": [0, 90]}}})
    combos = spec.combinations()
    assert len(combos) == 4 and len({json.dumps(c, sort_keys=True) for c in combos}) == 4
    assert combos == spec.combinations()  # seeded


def test_a_sequential_sweep_trains_the_same_runs(tmp_path, windows_npz):
    """``sequential: true`` trains each run alone; the stacked default gives the same weights."""
    import torch

    from har_vit.core.checkpoint import load_checkpoint

    import_npz(WindowConfig(), windows_npz, tmp_path / "w")
    body = {"windows": str(tmp_path / "w"), "split": "subject", "seeds": [0],
            "base": {"model": "tiny", "epochs": 2, "batch_size": 16, "threads": 1},
            "grid": {"lr": [0.0005, 0.002], "jitter": [0, 0.1]}}
    stacked = sweep.run(sweep.SweepSpec.from_mapping({**body, "out": str(tmp_path / "a")}), echo=lambda s: None)
    alone = sweep.run(sweep.SweepSpec.from_mapping({**body, "out": str(tmp_path / "b"), "sequential": True}),
                      echo=lambda s: None)
    assert stacked["stacked"] == [4] and alone["stacked"] == []
    for row in stacked["rows"]:
        for k, v in load_checkpoint(tmp_path / "a" / "runs" / row["name"] / "s0" / "last.pt")["model"].items():
            w = load_checkpoint(tmp_path / "b" / "runs" / row["name"] / "s0" / "last.pt")["model"][k]
            torch.testing.assert_close(v, w, rtol=1e-4, atol=1e-4)
