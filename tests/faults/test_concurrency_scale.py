"""Concurrency on one registry, and ingest of a log 10x WISDM v1.1 within a memory bound."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from faultkit import PIPELINE, ROOT, cli


def _popen(args, cwd):
    return subprocess.Popen([sys.executable, PIPELINE, *map(str, args)], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.fixture
def job(tmp_path, windows_npz):
    (tmp_path / "c.yaml").write_text("model: tiny\nepochs: 3\nbatch_size: 16\nprogress: false\nskip_latency: true\n")
    return ["--dataset", "npz", "--data-path", windows_npz, "--config", tmp_path / "c.yaml",
            "--registry", tmp_path / "models", "--reports", tmp_path / "reports"]


def test_two_retrains_at_once_one_waits_out(tmp_path, job):
    """A retrain that finds the registry locked exits 75 in one line and writes nothing; the next one runs.

    The test holds the lock itself while the second retrain arrives, so the overlap is certain
    rather than a race between two process start-ups.
    """
    from har_vit.core.registry import Registry

    with Registry(tmp_path / "models").lock():
        refused = _popen(["retrain", *job, "--seed", "3"], tmp_path)
        rc, _, err = refused.wait(timeout=600), *refused.communicate()
    assert rc == 75, err
    assert "locked by pid" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "models" / "retrain_history.jsonl").exists()  # the refused one wrote nothing
    done = _popen(["retrain", *job], tmp_path)
    rc, out, err = done.wait(timeout=600), *done.communicate()
    assert rc == 0, err
    history = [json.loads(x) for x in (tmp_path / "models" / "retrain_history.jsonl").read_text().splitlines()]
    assert [h["status"] for h in history] == ["promoted"]


def test_many_predicts_at_once_on_one_registry(tmp_path, job):
    rc, _, err = cli("run", *job, "--out", tmp_path / "r", cwd=tmp_path)
    assert rc == 0, err
    log = tmp_path / "log.txt"
    rng = np.random.default_rng(0)
    log.write_text("".join(f"{1 + i // 400},{10**12 + i * 50_000_000},{x:.4f},{y:.4f},{z:.4f};\n"
                           for i, (x, y, z) in enumerate(rng.normal(size=(2000, 3)))))
    procs = [_popen(["predict", "--registry", tmp_path / "models", "--data-path", log, "--out", tmp_path / f"p{k}.csv"],
                    tmp_path) for k in range(6)]
    results = [(p.wait(timeout=600), *p.communicate()) for p in procs]
    assert all(rc == 0 for rc, _, _ in results), results
    first = (tmp_path / "p0.csv").read_text()
    assert all((tmp_path / f"p{k}.csv").read_text() == first for k in range(6))
    assert len(first.splitlines()) > 10


SCALE_RECORDS = 11_000_000  # 10x the 1,098,207 records of WISDM v1.1
RSS_BOUND_MB = 2000


@pytest.mark.slow
def test_ingest_ten_times_wisdm_within_memory_bound(tmp_path):
    """Generate ~10x WISDM v1.1 (11 M records, ~600 MB), ingest it in a child, report peak RSS."""
    log = tmp_path / "big.txt"
    rng = np.random.default_rng(0)
    with open(log, "w") as fh:
        step = 1_000_000
        for start in range(0, SCALE_RECORDS, step):
            n = min(step, SCALE_RECORDS - start)
            i = np.arange(start, start + n)
            xyz = rng.normal(size=(n, 3)).round(4)
            user = 1 + (i // 300_000) % 36
            act = np.array(["Walking", "Jogging", "Sitting", "Standing", "Upstairs", "Downstairs"])[(i // 50_000) % 6]
            ts = 10**12 + i * 50_000_000
            fh.write("".join(f"{u},{a},{t},{x},{y},{z};\n" for u, a, t, (x, y, z) in zip(user, act, ts, xyz)))
    probe = (
        "import resource, sys, time, json\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from har_vit import ingest\n"
        "t = time.perf_counter()\n"
        f"m = ingest.run(ingest.IngestConfig(data_path={str(log)!r}, progress=False), {str(tmp_path / 'i')!r})\n"
        "print(json.dumps({'seconds': time.perf_counter() - t, 'records': m['records_total'],"
        " 'kept': m['records_kept'], 'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))\n")
    p = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=1800)
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout.strip().splitlines()[-1])
    r["bytes"] = log.stat().st_size
    print(f"\ningest of {r['records']:,} records ({r['bytes'] / 2**20:.0f} MiB): {r['seconds']:.1f} s, "
          f"peak RSS {r['peak_rss_mb']:.0f} MB (bound {RSS_BOUND_MB} MB)")
    import os
    import platform

    from har_vit.core.efficiency import cpu_model_name
    out = Path(ROOT / "bench" / "results" / "ingest_scale.json")
    machine = {"cpu": cpu_model_name(), "cores": os.cpu_count(), "python": platform.python_version()}
    out.write_text(json.dumps({**r, "bound_mb": RSS_BOUND_MB, "test": __name__, "machine": machine}, indent=2) + "\n")
    assert r["records"] == SCALE_RECORDS == r["kept"]
    assert r["peak_rss_mb"] < RSS_BOUND_MB
