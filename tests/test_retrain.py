"""retrain for cron: promote, keep, skip, refuse while locked; production survives a kill."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import pipeline
from har_vit.core.registry import Registry

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def job(tmp_path, windows_npz, monkeypatch):
    """CLI args and a YAML config for a tiny, fast job on synthetic windows (cwd: tmp_path)."""
    monkeypatch.chdir(tmp_path)  # run folders default to ./runs/<run_id>
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text("model: tiny\nepochs: 1\nbatch_size: 32\nprogress: false\nskip_latency: true\n"
                   "warmup_epochs: 0\n")
    args = ["--dataset", "npz", "--data-path", str(windows_npz), "--config", str(cfg),
            "--registry", str(tmp_path / "models"), "--reports", str(tmp_path / "reports")]
    return args, tmp_path


def _retrain(args, *extra):
    r = CliRunner().invoke(pipeline.cli, ["retrain", *args, *extra])
    return r.exit_code, r.output


def test_promote_skip_keep_promote(job):
    args, tmp = job
    reg = Registry(tmp / "models")
    code, out = _retrain(args)
    assert code == 0 and "promoted" in out, out
    first = reg.production()["run_id"]
    assert (reg.run_dir(first) / "best.pt").is_file() and (reg.run_dir(first) / "windows" / "manifest.json").is_file()

    code, out = _retrain(args)
    assert code == 0 and "skipped" in out and reg.production()["run_id"] == first

    # A changed config trains again; a demanding tolerance keeps production.
    code, out = _retrain(args, "--seed", "1", "--promote-tolerance", "-1.0")
    assert code == 0 and "kept production" in out, out
    assert reg.production()["run_id"] == first

    code, out = _retrain(args, "--seed", "2", "--promote-tolerance", "1.0")
    assert code == 0 and "promoted" in out
    assert reg.production()["run_id"] != first
    assert (reg.run_dir(first) / "best.pt").is_file()  # never deleted
    statuses = [h["status"] for h in reg.history()]
    assert statuses == ["promoted", "skipped", "kept", "promoted"]
    kept = reg.history()[2]
    assert kept["production_run_id"] == first and "compared_on" in kept
    assert (tmp / "reports" / "index.html").is_file()


def test_refuses_while_another_holds_the_lock(job):
    args, tmp = job
    (tmp / "models").mkdir()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; sys.path.insert(0, %r)\n"
        "from har_vit.core.registry import Registry\n"
        "with Registry(%r).lock():\n"
        "    print('locked', flush=True); time.sleep(60)\n") % (str(ROOT), str(tmp / "models"))],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        t0 = time.perf_counter()
        code, out = _retrain(args)
        assert code == 75 and "locked by pid" in out
        assert time.perf_counter() - t0 < 10  # at once, not after waiting
    finally:
        holder.kill()
        holder.wait()
    assert not list((tmp / "models").glob("production*.json"))


def test_killed_retrain_leaves_production_untouched(job):
    args, tmp = job
    code, _ = _retrain(args)
    assert code == 0
    (pointer,) = (tmp / "models").glob("production*.json")
    prod = pointer.read_bytes()
    cfg = tmp / "slow.yaml"
    cfg.write_text("model: tiny\nepochs: 200\nbatch_size: 8\nprogress: false\nskip_latency: true\n")
    a = [x if x != str(tmp / "tiny.yaml") else str(cfg) for x in args]
    p = subprocess.Popen([sys.executable, str(ROOT / "pipeline.py"), "retrain", *a, "--seed", "5"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=tmp)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not list((tmp / "runs").glob("*retrain*/model/last.pt")):
            time.sleep(0.2)
        assert list((tmp / "runs").glob("*retrain*/model/last.pt")), "training never started"
    finally:
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
    assert pointer.read_bytes() == prod
    reg = Registry(tmp / "models")
    assert len(reg.runs()) == 1  # the killed candidate was never stored
    code, out = _retrain(args, "--seed", "6", "--promote-tolerance", "1.0")  # the lock died with the process
    assert code == 0 and "promoted" in out


def test_run_registers_and_predict_resolves_production(job):
    args, tmp = job
    r = CliRunner().invoke(pipeline.cli, ["run", *args, "--out", str(tmp / "r")])
    assert r.exit_code == 0, r.output
    assert r.output.strip().splitlines()[-1].endswith("report.html")
    reg = Registry(tmp / "models")
    assert reg.resolve("production") == reg.run_dir(reg.production()["run_id"])
    config = json.loads((tmp / "r" / "config.json").read_text())
    assert config["train"]["model"] == "tiny" and config["train"]["epochs"] == 1


def test_a_leaky_comparison_never_promotes(job):
    """--test-users that the candidate trains on would score it on its own training users."""
    args, tmp = job
    assert _retrain(args)[0] == 0
    reg = Registry(tmp / "models")
    first = reg.production()["run_id"]
    prod_test = reg.entry(first)["split"]["test_users"]
    others = [str(u) for u in range(1, 7) if u not in prod_test][:1]  # the candidate trains on prod's test users
    code, out = _retrain(args, "--seed", "3", "--promote-tolerance", "1.0", *sum((["--test-users", u] for u in others), []))
    assert code == 0 and "comparison is leaky" in out and "kept production" in out, out
    assert reg.production()["run_id"] == first
    last = reg.history()[-1]
    assert last["status"] == "kept" and last["comparison_leaky"] is True and "trained on users" in last["leak"]


def test_a_failed_comparison_is_recorded_and_the_candidate_not_stored(job):
    args, tmp = job
    assert _retrain(args)[0] == 0
    reg = Registry(tmp / "models")
    first = reg.production()["run_id"]
    (reg.run_dir(first) / "windows" / "windows.npz").write_bytes(b"damaged")
    code, out = _retrain(args, "--seed", "4")
    errors = [line for line in out.splitlines() if line.startswith("error: ")]
    assert code == 1 and len(errors) == 1 and "Traceback" not in out, out
    last = reg.history()[-1]
    assert last["status"] == "failed" and "windows" in last["reason"]
    assert reg.runs() == [first]


@pytest.mark.parametrize("run_id", ["../../etc", "/tmp", "a/../../b", "", 7, None])
def test_production_pointer_must_name_a_run_inside_the_registry(job, run_id):
    args, tmp = job
    assert _retrain(args)[0] == 0
    (pointer,) = (tmp / "models").glob("production*.json")
    pointer.write_text(json.dumps({"run_id": run_id}))
    rc = subprocess.run([sys.executable, str(ROOT / "pipeline.py"), "predict", "--registry", tmp / "models",
                         "--data-path", tmp / "none.txt", "--out", tmp / "p.csv"], capture_output=True, text=True)
    assert rc.returncode == 1 and rc.stderr.startswith("error: ") and len(rc.stderr.strip().splitlines()) == 1, rc.stderr
    assert pointer.name in rc.stderr


def test_a_symlinked_run_folder_is_refused(job):
    args, tmp = job
    assert _retrain(args)[0] == 0
    reg = Registry(tmp / "models")
    first = reg.production()["run_id"]
    real = tmp / "elsewhere"
    reg.run_dir(first).rename(real)
    (tmp / "models" / "runs" / first).symlink_to(real)
    rc = subprocess.run([sys.executable, str(ROOT / "pipeline.py"), "predict", "--registry", tmp / "models",
                         "--data-path", tmp / "none.txt", "--out", tmp / "p.csv"], capture_output=True, text=True)
    assert rc.returncode == 1 and "not a symlink" in rc.stderr, rc.stderr


def test_one_production_per_dataset_and_class_set(job, tmp_path_factory):
    """A model of another class set never becomes production for this one, and the reverse."""
    import numpy as np

    args, tmp = job
    assert _retrain(args)[0] == 0
    reg = Registry(tmp / "models")
    (six,) = reg.pointers()
    src = np.load(args[3])
    four = tmp / "four.npz"  # the same windows, two classes fewer: another class set
    keep = src["y"] < 4
    np.savez(four, X=src["X"][keep], y=src["y"][keep], subject=src["subject"][keep], class_names=src["class_names"][:4])
    code, out = _retrain([a if a != args[3] else str(four) for a in args])
    assert code == 0 and "promoted" in out and "first model" in out, out
    assert len(reg.pointers()) == 2 and six in reg.pointers()
    assert reg.production(six)["run_id"] != reg.production([s for s in reg.pointers() if s != six][0])["run_id"]
    rc = subprocess.run([sys.executable, str(ROOT / "pipeline.py"), "predict", "--registry", tmp / "models",
                         "--data-path", tmp / "none.txt", "--out", tmp / "p.csv"], capture_output=True, text=True)
    assert rc.returncode == 2 and "one production model per dataset" in rc.stderr, rc.stderr
    assert reg.resolve(f"production-{six}") == reg.run_dir(reg.production(six)["run_id"])
