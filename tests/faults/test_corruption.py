"""Corrupted artefacts: flipped or truncated bytes give one clear error naming the file."""
from __future__ import annotations

import random

import pytest
from faultkit import cli, make_rng

from har_vit.stages import evaluate, train


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    import numpy as np
    from synthetic import ACTIVITIES
    tmp = tmp_path_factory.mktemp("corrupt")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(240, 32, 3)).astype(np.float32)
    y = np.tile(np.arange(6), 40)
    X += y[:, None, None] * 0.5
    np.savez(tmp / "w.npz", X=X, y=y, subject=np.repeat(np.arange(1, 7), 40), class_names=np.array(ACTIVITIES))
    rc, _, err = cli("windows", "--dataset", "npz", "--data-path", tmp / "w.npz", "--out", tmp / "w")
    assert rc == 0, err
    train.run(train.TrainConfig(model="tiny", epochs=1, batch_size=32, progress=False), tmp / "w", tmp / "m")
    evaluate.run(evaluate.EvalConfig(skip_latency=True), tmp / "m")
    return tmp


def _damage(path, how: str, rng: random.Random) -> None:
    b = bytearray(path.read_bytes())
    if how == "truncate":
        del b[rng.randrange(1, len(b)):]
    else:  # flip bytes in the body (past any header)
        for _ in range(8):
            b[rng.randrange(len(b) // 4, len(b))] ^= 0xFF
    path.write_bytes(bytes(b))


def _one_clear_line(rc, err, name):
    assert rc == 1, err
    assert err.startswith("error: ") and name in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize("how", ["flip", "truncate"])
@pytest.mark.parametrize("target,command", [
    ("m/best.pt", ["evaluate", "--run", "{m}"]),
    ("m/best.pt", ["predict", "--run", "{m}", "--data-path", "{log}", "--out", "{tmp}/p.csv"]),
    ("m/best.pt", ["export", "--run", "{m}", "--format", "torchscript", "--out", "{tmp}/x"]),
    ("m/last.pt", ["train", "--in", "{tmp}/w", "--out", "{m}", "--resume", "--epochs", "2"]),
    ("w/windows.npz", ["train", "--in", "{tmp}/w", "--out", "{tmp}/m2"]),
    ("m/manifest.json", ["evaluate", "--run", "{m}"]),
    ("w/manifest.json", ["train", "--in", "{tmp}/w", "--out", "{tmp}/m3"]),
])
def test_damaged_artefact_is_named(trained, tmp_path, how, target, command):
    import shutil
    rng = make_rng()
    work = tmp_path / "copy"
    shutil.copytree(trained, work)
    (work / "log.txt").write_text("".join(f"1,Walking,{10**9 + i * 50_000_000},0.1,9.8,0.3;\n" for i in range(100)))
    _damage(work / target, how, rng)
    args = [a.format(m=work / "m", tmp=work, log=work / "log.txt") for a in command]
    rc, _, err = cli(*args)
    _one_clear_line(rc, err, target.split("/")[-1])
