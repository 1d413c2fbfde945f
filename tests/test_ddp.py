"""Data-parallel training: two gloo processes on CPU follow a single process's loss curve.

``torchrun --nproc_per_node 2`` runs the real ``har_vit.stages.train.run`` on tiny synthetic
windows; each rank takes half of every global batch of 32. Against a single process with
the same global batch, with dropout off (each rank would draw its own masks), the
gradients agree up to float summation order, so the loss curves must match to a
relative 1e-5 over 3 epochs (measured: at most 1.2e-7) and the final weights to a
relative L2 distance of 1e-4 (measured: 1e-5; Adam's normalised steps amplify the
rounding differences of small gradients, so weights drift more than losses).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from har_vit.core.io import read_manifest
from har_vit.stages.train import TrainConfig, run
from har_vit.stages.windows import WindowConfig, import_npz

REPO = Path(__file__).resolve().parents[1]
# No randomness that differs between ranks by design: dropout and augmentation off (each rank
# draws its own augmentation stream, so only the deterministic path can match one process).
CFG = dict(model="tiny", epochs=3, batch_size=32, warmup_epochs=1, device="cpu", drop=0.0, drop_path=0.0,
           split="random", progress=False, jitter=0.0, scale=0.0, rotate=0.0, time_warp=0.0)
RTOL_CURVE = 1e-5
RTOL_WEIGHTS = 1e-4

SCRIPT = textwrap.dedent("""
    import json, os, sys
    from har_vit.stages.train import TrainConfig, run
    manifest = run(TrainConfig(**json.loads(sys.argv[3])), sys.argv[1], sys.argv[2])
    with open(os.path.join(sys.argv[4], f"rank{os.environ['RANK']}.json"), "w") as fh:
        json.dump(manifest, fh)
""")


@pytest.fixture(scope="module")
def windows(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ddp")
    rng = np.random.default_rng(0)
    n, T = 200, 16
    y = rng.integers(0, 3, n)
    X = np.sin(2 * np.pi * (y[:, None] + 1) * np.arange(T) / T)[:, :, None] + rng.standard_normal((n, T, 3))
    np.savez(root / "input.npz", X=X.astype(np.float32), y=y, subject=rng.integers(1, 7, n),
             class_names=np.array(["a", "b", "c"]))
    import_npz(WindowConfig(), root / "input.npz", root / "windows")
    return root / "windows"


def torchrun(windows: Path, out: Path, cfg: dict, nproc: int, side: Path) -> subprocess.CompletedProcess:
    script = side / "train_ddp.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1"}
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(script), str(windows), str(out), json.dumps(cfg), str(side)]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_two_gloo_ranks_match_a_single_process(windows, tmp_path):
    single = run(TrainConfig(**CFG, threads=1), windows, tmp_path / "single")
    proc = torchrun(windows, tmp_path / "ddp", CFG, 2, tmp_path)
    if proc.returncode != 0:
        # One launch in about a dozen failed here while other suites ran on the same cores (its
        # stderr was not kept). Retry once; the warning carries the first stderr, so it shows.
        warnings.warn(f"torchrun failed once (rc {proc.returncode}), retrying: {proc.stderr[-1500:]}")
        shutil.rmtree(tmp_path / "ddp", ignore_errors=True)
        proc = torchrun(windows, tmp_path / "ddp", CFG, 2, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]

    # Rank 0 wrote the run folder; rank 1 waited and returned the same manifest.
    manifest = read_manifest(tmp_path / "ddp", "train")
    assert manifest["world_size"] == 2 and manifest["backend"] == "gloo"
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["run_id"] == ranks[1]["run_id"] == manifest["run_id"]
    assert proc.stderr.count("har_vit train: device") == 1  # only rank 0 speaks
    assert manifest["split"] == single["split"]

    ref, ddp = (json.loads((tmp_path / d / "history.json").read_text()) for d in ("single", "ddp"))
    assert len(ref) == len(ddp) == 3
    for key in ("train_loss", "val_loss", "lr"):
        np.testing.assert_allclose([r[key] for r in ddp], [r[key] for r in ref], rtol=RTOL_CURVE, err_msg=key)
    # The loss must actually move, or matching curves would prove nothing.
    assert ref[-1]["train_loss"] < 0.8 * ref[0]["train_loss"]

    a, b = (torch.load(tmp_path / d / "last.pt", weights_only=True)["model"] for d in ("single", "ddp"))
    flat_a, flat_b = (torch.cat([t.flatten().double() for t in sd.values()]) for sd in (a, b))
    rel = ((flat_a - flat_b).norm() / flat_a.norm()).item()
    assert rel < RTOL_WEIGHTS, rel
