"""Train stage: the run folder contract, exact resume, no test leakage, early stopping, errors.

Every training here is the real ``har_vit.stages.train.run`` on CPU over a tiny synthetic
windows folder (16 samples x 3 axes, 3 classes, 10 users), one to three epochs.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from har_vit.core.checkpoint import load_model, normalise
from har_vit.core.errors import ArtefactError, UsageError
from har_vit.core.io import read_manifest, verify_outputs
from har_vit.core.runid import PATTERN
from har_vit.stages.train import TrainConfig, run
from har_vit.training.loop import fit_norm, inverse_frequency, lr_factor
from har_vit.stages.windows import WindowConfig, import_npz, load_windows

# jitter: every augmentation stream on, as before its default became 0 (resume must replay it exactly)
FAST = dict(model="tiny", batch_size=32, warmup_epochs=1, device="cpu", progress=False, threads=1, jitter=0.05)
BEST_KEYS = {"model", "model_name", "model_kwargs", "class_names", "norm", "train_config", "epoch"}
LAST_KEYS = BEST_KEYS | {"optimizer", "scheduler", "rng", "history", "best"}
TIMING = ("seconds", "windows_per_s")


def synthetic_arrays(n: int = 320, T: int = 16, seed: int = 0) -> dict[str, np.ndarray]:
    """Class k is a sine of k+1 cycles per window plus noise, with a per-user offset; 10 users."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    subject = rng.integers(1, 11, n)
    t = np.arange(T)
    X = np.sin(2 * np.pi * (y[:, None] + 1) * t / T)[:, :, None] + 0.8 * rng.standard_normal((n, T, 3))
    X += subject[:, None, None] * 0.1  # users differ, so per-channel means are not zero
    return {"X": X.astype(np.float32), "y": y, "subject": subject, "class_names": np.array(["sit", "walk", "jog"])}


def windows_folder(root: Path, arrays: dict[str, np.ndarray]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    np.savez(root / "input.npz", **arrays)
    import_npz(WindowConfig(), root / "input.npz", root / "windows")
    return root / "windows"


def history_without_timing(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING} for row in json.loads((run_dir / "history.json").read_text())]


def assert_same_tensors(a, b, where: str = "") -> None:
    """Nested dicts/lists of tensors are bit-identical."""
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same_tensors(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tensors(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


@pytest.fixture(scope="module")
def windows(tmp_path_factory) -> Path:
    return windows_folder(tmp_path_factory.mktemp("data"), synthetic_arrays())


@pytest.fixture(scope="module")
def trained(windows, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("runs") / "run"
    return out, run(TrainConfig(epochs=2, **FAST), windows, out)


# --- the run folder contract ----------------------------------------------------------------------


def test_run_folder_holds_the_contract(trained, windows):
    out, manifest = trained
    assert manifest == read_manifest(out, "train")
    verify_outputs(out, manifest)  # every listed output has its size and sha256
    for key in ("run_id", "model", "params", "device", "device_name", "split", "epochs_run", "best_epoch",
                "best_val_macro_f1", "class_names", "norm", "train_seconds", "windows_per_s", "inputs", "config"):
        assert key in manifest, key
    assert manifest["device"] == "cpu" and manifest["model"] == "tiny" and manifest["epochs_run"] == 2
    assert manifest["inputs"]["upstream"] == str(windows.resolve())
    assert PATTERN.match(manifest["run_id"]) and manifest["run_id"].split("-")[4:7] == ["tiny", "subject", "s0"]
    assert {"protocol", "leaky", "description", "n_train", "n_val", "n_test", "test_users"} <= manifest["split"].keys()
    assert manifest["windows_per_s"] > 0 and manifest["train_seconds"] > 0

    best = torch.load(out / "best.pt", weights_only=True)
    last = torch.load(out / "last.pt", weights_only=True)
    assert BEST_KEYS <= best.keys() and LAST_KEYS <= last.keys()
    assert best["epoch"] == manifest["best_epoch"] and last["epoch"] == 2
    assert best["model_kwargs"] == {"window": 16, "channels": 3, "num_classes": 3}
    assert best["class_names"] == ["sit", "walk", "jog"] == manifest["class_names"]
    assert best["norm"] == manifest["norm"]

    model, ckpt = load_model(out)
    x = normalise(torch.from_numpy(load_windows(windows)["X"][:5]), ckpt["norm"])
    assert model(x).shape == (5, 3)


def test_history_has_every_epoch_and_no_test_metric(trained):
    out, _ = trained
    rows = json.loads((out / "history.json").read_text())
    assert [r["epoch"] for r in rows] == [1, 2]
    assert list(rows[0]) == ["epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "val_macro_f1",
                             "seconds", "windows_per_s"]
    assert not any("test" in k for r in rows for k in r)
    csv_lines = (out / "history.csv").read_text().splitlines()
    assert csv_lines[0] == ",".join(rows[0]) and len(csv_lines) == 3
    assert all(math.isfinite(r["train_loss"]) and 0 <= r["val_macro_f1"] <= 1 for r in rows)


def test_split_file_parts_are_disjoint_and_match_manifest(trained, windows):
    out, manifest = trained
    z = np.load(out / "split.npz")
    train, val, test = z["train"], z["val"], z["test"]
    assert not (set(train) & set(test) or set(val) & set(test) or set(train) & set(val))
    assert (train.size, val.size, test.size) == tuple(manifest["split"][k] for k in ("n_train", "n_val", "n_test"))
    subject = load_windows(windows)["subject"]
    assert not set(subject[test]) & (set(subject[train]) | set(subject[val]))  # subject split: no shared user


def test_normalisation_is_fitted_on_train_only(trained, windows):
    out, manifest = trained
    X = load_windows(windows)["X"]
    train = np.load(out / "split.npz")["train"]
    assert manifest["norm"] == fit_norm(X[train])
    assert not np.allclose(manifest["norm"]["mean"], fit_norm(X)["mean"])


def test_test_windows_never_influence_training(trained, windows, tmp_path):
    """Scrambling the test windows' signal leaves every trained weight bit-identical."""
    out, _ = trained
    test = np.load(out / "split.npz")["test"]
    arrays = synthetic_arrays()
    arrays["X"][test] = 50.0 * np.random.default_rng(1).standard_normal(arrays["X"][test].shape)
    scrambled = windows_folder(tmp_path / "scrambled", arrays)
    other = run(TrainConfig(epochs=2, **FAST), scrambled, tmp_path / "run")
    assert np.array_equal(np.load(tmp_path / "run" / "split.npz")["test"], test)
    assert other["norm"] == read_manifest(out, "train")["norm"]
    assert_same_tensors(torch.load(out / "last.pt", weights_only=True)["model"],
                        torch.load(tmp_path / "run" / "last.pt", weights_only=True)["model"])
    assert history_without_timing(out) == history_without_timing(tmp_path / "run")


# --- resume -----------------------------------------------------------------------------------------


def test_resume_ends_with_exactly_the_weights_of_an_uninterrupted_run(windows, tmp_path):
    # The tiny variant has dropout and stochastic depth, so this also checks the RNG states travel.
    cfg = TrainConfig(epochs=3, **FAST)
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    run(cfg, windows, whole)
    cut = run(cfg, windows, parts, stop_after=1)
    assert cut["finished"] is False and cut["epochs_run"] == 1
    assert not (parts / "manifest.json").exists()  # an unfinished run is not an artefact
    assert torch.load(parts / "last.pt", weights_only=True)["epoch"] == 1
    resumed = run(cfg, windows, parts, resume=True)

    a, b = (torch.load(d / "last.pt", weights_only=True) for d in (whole, parts))
    for key in ("model", "optimizer", "scheduler", "rng", "best", "epoch"):
        assert_same_tensors(a[key], b[key], key)
    assert_same_tensors(torch.load(whole / "best.pt", weights_only=True)["model"],
                        torch.load(parts / "best.pt", weights_only=True)["model"])
    assert history_without_timing(whole) == history_without_timing(parts)
    assert resumed["run_id"] == cut["run_id"] and resumed["epochs_run"] == 3


def test_resume_with_other_options_is_a_usage_error(trained, windows):
    out, _ = trained
    before = (out / "last.pt").read_bytes()
    with pytest.raises(UsageError, match=r"epochs=2 \(now 5\)"):
        run(TrainConfig(epochs=5, **FAST), windows, out, resume=True)
    with pytest.raises(UsageError, match="already holds a training run"):
        run(TrainConfig(epochs=2, **FAST), windows, out)
    assert (out / "last.pt").read_bytes() == before


def test_resume_without_a_run_is_a_usage_error(windows, tmp_path):
    with pytest.raises(UsageError, match="nothing to resume"):
        run(TrainConfig(epochs=1, **FAST), windows, tmp_path / "empty", resume=True)


# --- early stopping and schedules -------------------------------------------------------------------


def test_early_stopping_stops_after_patience_epochs_without_improvement(windows, tmp_path):
    # An lr this small leaves the predictions, hence val macro F1, unchanged after epoch 1.
    cfg = TrainConfig(epochs=10, lr=1e-12, min_lr=0.0, schedule="constant", patience=2, **{**FAST, "warmup_epochs": 0})
    manifest = run(cfg, windows, tmp_path / "run")
    assert manifest["stopped_early"] is True
    assert (manifest["epochs_run"], manifest["best_epoch"]) == (3, 1)
    # Resuming a run that stopped early trains nothing more.
    again = run(cfg, windows, tmp_path / "run", resume=True)
    assert again["epochs_run"] == 3 and len(json.loads((tmp_path / "run" / "history.json").read_text())) == 3


def test_schedules_match_torch_reference_schedulers():
    spe, epochs = 3, 6
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    cos = TrainConfig(epochs=epochs, lr=1.0, min_lr=0.1, warmup_epochs=0, schedule="cosine")
    ref = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * spe, eta_min=0.1)
    for k in range(epochs * spe):
        assert lr_factor(cos, spe)(k) == pytest.approx(opt.param_groups[0]["lr"], abs=1e-12)
        opt.step()
        ref.step()
    step = TrainConfig(epochs=epochs, lr=1.0, warmup_epochs=0, schedule="step", step_epochs=2, step_gamma=0.5)
    opt.param_groups[0]["lr"] = 1.0
    ref = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)  # stepped per epoch, as the article
    for e in range(epochs):
        assert all(lr_factor(step, spe)(e * spe + s) == pytest.approx(opt.param_groups[0]["lr"]) for s in range(spe))
        opt.step()
        ref.step()
    warm = lr_factor(TrainConfig(epochs=epochs, warmup_epochs=2, schedule="constant"), spe)
    assert [warm(k) for k in range(7)] == pytest.approx([1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6, 1.0, 1.0])


def test_inverse_frequency_weights():
    assert inverse_frequency(np.array([0, 0, 0, 1]), 3) == pytest.approx([4 / 9, 4 / 3, 0.0])  # absent class: 0
    y = np.array([0, 0, 0, 1, 2, 2])
    w = inverse_frequency(y, 3)
    assert w == pytest.approx([6 / 9, 6 / 3, 6 / 6])  # n / (K n_c)
    assert np.mean(np.take(w, y)) == pytest.approx(1.0)  # mean weight over the windows is 1


# --- errors -------------------------------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_a_usage_error(windows, tmp_path):
    with pytest.raises(UsageError, match="cuda"):
        run(TrainConfig(**{**FAST, "device": "cuda"}), windows, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_too_few_windows_or_no_validation_is_a_usage_error(windows, tmp_path):
    with pytest.raises(UsageError, match="lower --batch-size"):
        run(TrainConfig(**{**FAST, "batch_size": 100_000}), windows, tmp_path / "a")
    with pytest.raises(UsageError, match="no validation windows"):
        run(TrainConfig(val_frac=0.0, **FAST), windows, tmp_path / "b")


def test_missing_windows_folder_is_an_artefact_error(tmp_path):
    with pytest.raises(ArtefactError, match="no manifest"):
        run(TrainConfig(**FAST), tmp_path / "nowhere", tmp_path / "run")


def test_bad_options_are_usage_errors():
    for bad in (dict(schedule="linear"), dict(model="nope"), dict(min_lr=1.0, lr=0.1), dict(patience=-1),
                dict(device="tpu"), dict(split="users")):
        with pytest.raises(UsageError):
            TrainConfig(**bad)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_trains_on_cuda_with_bf16_and_loads_on_cpu(windows, tmp_path):
    manifest = run(TrainConfig(**{**FAST, "device": "auto", "epochs": 2}), windows, tmp_path / "run")
    assert manifest["device"] == "cuda" and manifest["device_name"] == torch.cuda.get_device_name(0)
    model, ckpt = load_model(tmp_path / "run", map_location="cpu")
    assert ckpt["epoch"] >= 1 and next(model.parameters()).device.type == "cpu"
