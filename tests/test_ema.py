"""--ema: the averaged weights are what validation scores and checkpoints keep; resume stays exact."""
from __future__ import annotations

import pytest
import torch
from test_train import FAST, assert_same_tensors, history_without_timing, synthetic_arrays, windows_folder

from har_vit.core.checkpoint import load_checkpoint, load_model
from har_vit.model import create_model
from har_vit.stages.train import TrainConfig, run
from har_vit.training import distributed
from har_vit.training.average import WeightEMA
from har_vit.training.loop import evaluate_split, prepare_data
from har_vit.training.stacked import why_not_stacked

CPU = torch.device("cpu")
EMA = TrainConfig(epochs=3, ema=0.9, **FAST)


@pytest.fixture(scope="module")
def windows(tmp_path_factory):
    return windows_folder(tmp_path_factory.mktemp("data"), synthetic_arrays())


@pytest.fixture(scope="module")
def ema_run(windows, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "ema"
    return out, run(EMA, windows, out)


def test_the_average_follows_its_formula_with_the_early_ramp():
    torch.manual_seed(0)
    live = create_model("tiny", window=16, channels=3, num_classes=3)
    ema = WeightEMA(live, decay=0.95)
    expected = {k: v.clone() for k, v in live.state_dict().items()}
    for n in range(30):
        with torch.no_grad():
            for p in live.parameters():
                p.add_(torch.randn_like(p))
        ema.update()
        d = min(0.95, (1 + n) / (10 + n))
        live_sd = live.state_dict()
        for name, _ in live.named_parameters():
            expected[name] = d * expected[name] + (1 - d) * live_sd[name]
    for name, _ in live.named_parameters():
        torch.testing.assert_close(ema.model.state_dict()[name], expected[name], rtol=1e-5, atol=1e-6)
    assert ema.updates == 30 and not any(p.requires_grad for p in ema.model.parameters())


def test_validation_and_checkpoints_use_the_averaged_weights(ema_run, windows):
    out, manifest = ema_run
    assert manifest["ema"]["decay"] == 0.9
    last = load_checkpoint(out / "last.pt")
    live, averaged = last["ema"]["live"], last["model"]
    assert last["ema"]["updates"] == 3 * (manifest["split"]["n_train"] // FAST["batch_size"])  # one per step
    assert any(not torch.equal(live[k], averaged[k]) for k in averaged)
    # The last epoch's validation figures are those of the weights last.pt keeps as its model.
    data = prepare_data(EMA, windows, distributed.from_env(), CPU)
    model, _ = load_model(out, "last")
    scored = evaluate_split(model, data.X_val, data.y_val, 512, CPU)
    row = history_without_timing(out)[-1]
    assert scored["val_loss"] == pytest.approx(row["val_loss"], rel=1e-6)
    assert scored["val_macro_f1"] == row["val_macro_f1"]
    # best.pt, what evaluate and predict load, holds averaged weights too.
    best = load_checkpoint(out / "best.pt")
    if best["epoch"] == last["epoch"]:
        assert_same_tensors(best["model"], averaged)


def test_resume_with_ema_ends_exactly_as_an_uninterrupted_run(ema_run, windows, tmp_path):
    whole, _ = ema_run
    run(EMA, windows, tmp_path / "cut", stop_after=1)
    run(EMA, windows, tmp_path / "cut", resume=True)
    a, b = load_checkpoint(whole / "last.pt"), load_checkpoint(tmp_path / "cut" / "last.pt")
    for key in ("model", "ema", "optimizer", "scheduler", "best", "epoch"):
        assert_same_tensors(a[key], b[key], key)
    assert history_without_timing(whole) == history_without_timing(tmp_path / "cut")


def test_an_ema_run_trains_alone_in_cv_and_sweeps():
    assert why_not_stacked(EMA) == "--ema is not supported in a stack"
    assert why_not_stacked(TrainConfig(**FAST)) is None
