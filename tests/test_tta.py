"""Test-time augmentation: fixed views, averaged probabilities, the same answer from evaluate and predict."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from test_evaluate import build_run as build_evaluated_run
from test_predict import build_run as build_predict_run
from test_predict import make_unlabelled_log, one_thread  # noqa: F401 (autouse fixture)

from har_vit.core import tta
from har_vit.core.checkpoint import load_model
from har_vit.core.runtime import eager
from har_vit.model import create_model
from har_vit.stages import evaluate, predict

AUGMENTED = {"rotate": 30.0, "scale": 0.1}


def angle_deg(R: np.ndarray) -> float:
    return math.degrees(math.acos(np.clip((np.trace(R) - 1) / 2, -1, 1)))


def test_views_are_fixed_the_window_first_then_turns_within_the_training_angle():
    A = tta.views(8, rotate=30.0, scale=0.0)
    assert A.shape == (9, 3, 3) and A.dtype == np.float32
    np.testing.assert_array_equal(A[0], np.eye(3))
    for R in A[1:]:  # pure rotations: orthonormal, det +1, by at most the training angle
        np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-6)
        assert np.linalg.det(R) == pytest.approx(1.0, abs=1e-6)
        assert 0 < angle_deg(R) <= 30.0 + 1e-3
    np.testing.assert_array_equal(A, tta.views(8, rotate=30.0, scale=0.0))  # the same views on every call
    gains = tta.views(4, rotate=0.0, scale=0.1)[1:]
    np.testing.assert_allclose(gains, np.stack([np.diag(np.diag(g)) for g in gains]))  # scale only: diagonal
    assert not np.allclose(gains, np.eye(3))


def test_sensors_in_groups_of_three_channels_turn_together():
    A3, A6 = tta.views(3, 30.0, 0.1), tta.views(3, 30.0, 0.1, channels=6)
    np.testing.assert_array_equal(A6[:, :3, :3], A3)
    np.testing.assert_array_equal(A6[:, 3:, 3:], A3)
    assert not A6[:, :3, 3:].any() and not A6[:, 3:, :3].any()


def test_a_view_maps_the_axes_of_every_step():
    quarter = np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1]], np.float32)  # 90 degrees about z
    x = np.zeros((2, 4, 3), np.float32)
    x[..., 0] = 1.0
    np.testing.assert_array_equal(tta.turned(x, quarter)[..., :], np.broadcast_to([0, 1, 0], (2, 4, 3)))


def test_averaged_views_give_the_mean_probability_and_one_view_the_plain_answer():
    z = torch.randn(5, 7, 4, generator=torch.Generator().manual_seed(0)) * 3
    out = tta.mean_log_proba(z)
    torch.testing.assert_close(out.softmax(-1), z.softmax(-1).mean(0), rtol=0, atol=1e-6)
    torch.testing.assert_close(tta.mean_log_proba(z[:1]), z[0].log_softmax(-1))


@pytest.mark.parametrize("ckpt,n,channels,why", [
    ({"model_name": "tiny", "train_config": AUGMENTED}, 0, 3, "--tta 0"),
    ({"model_name": "rf", "train_config": AUGMENTED}, 8, 3, "does not train on augmented windows"),
    ({"model_name": "tiny", "train_config": {"rotate": 0.0, "scale": 0.0}}, 8, 3, "neither --rotate nor --scale"),
    ({"model_name": "tiny", "train_config": {"scale": 0.1}}, 8, 4, "not groups of (x, y, z)"),
])
def test_tta_is_off_where_it_cannot_help_and_says_why(ckpt, n, channels, why):
    A, note = tta.views_for(ckpt, n, channels)
    np.testing.assert_array_equal(A, np.eye(channels)[None])
    assert why in note


def test_a_wrapped_runtime_equals_the_views_predicted_one_by_one():
    torch.manual_seed(0)
    model = create_model("tiny", window=32, num_classes=5).eval()
    norm = {"mean": [0.5, 9.8, -1.0], "std": [2.0, 3.0, 2.5]}
    X = np.random.default_rng(0).normal([0.5, 9.8, -1.0], 2.0, (6, 32, 3)).astype(np.float32)
    A = tta.views(4, 30.0, 0.1)
    wrapped = tta.wrap(eager(model, norm), A)
    reference = tta.mean_log_proba(tta.view_logits(model, X, torch.device("cpu"), 4, norm, A)).numpy()
    np.testing.assert_allclose(wrapped(X), reference, atol=1e-5)
    np.testing.assert_allclose(wrapped(X[:1]), reference[:1], atol=1e-5)  # batch 1: one call of 5 views
    assert wrapped(X[:0]).shape[0] == 0


def by_hand(model: torch.nn.Module, norm: dict, X: np.ndarray, A: np.ndarray) -> np.ndarray:
    """Mean class probability over the views, computed apart from har_vit.core.tta."""
    mean, std = np.asarray(norm["mean"], np.float32), np.asarray(norm["std"], np.float32)
    with torch.no_grad():
        p = [torch.softmax(model(torch.from_numpy(((X @ a.T - mean) / std).astype(np.float32))), 1).numpy()
             for a in A]
    return np.mean(p, axis=0)


def test_evaluate_scores_the_averaged_views_and_keeps_the_plain_scores_beside(tmp_path):
    run_dir = build_evaluated_run(tmp_path, augment=AUGMENTED)
    plain = evaluate.run(evaluate.EvalConfig(device="cpu", skip_latency=True, baseline="none"), run_dir)  # default: off
    m = evaluate.run(evaluate.EvalConfig(device="cpu", skip_latency=True, baseline="none", tta=8), run_dir)
    assert plain["tta"] == {"views": 1, "description": "off (--tta 0)"}
    assert m["tta"]["views"] == 9 and "9 views per window" in m["tta"]["description"]
    assert m["tta"]["without_tta"] == {"accuracy": plain["accuracy"], "macro_f1": plain["macro_f1"]}

    model, ckpt = load_model(run_dir)
    w = np.load(run_dir.parent.parent / "windows" / "windows.npz")
    test = np.load(run_dir / "split.npz")["test"]
    proba = by_hand(model, ckpt["norm"], w["X"][test], tta.views(8, 30.0, 0.1))
    written = pd.read_csv(run_dir / "eval" / "test_predictions.csv")
    names = np.asarray(ckpt["class_names"])
    assert (written["predicted"].to_numpy() == names[proba.argmax(1)]).all()
    np.testing.assert_allclose(written["confidence"], proba.max(1), atol=1e-5)
    assert m["accuracy"] == pytest.approx(float(np.mean(proba.argmax(1) == w["y"][test])))

    # The report says what was averaged and shows the plain scores beside the averaged ones.
    from har_vit.stages import report

    md = (report.run(run_dir, tmp_path / "reports").parent / "report.md").read_text(encoding="utf-8")
    assert "test-time augmentation: 9 views per window" in md
    assert f"| this model (tiny), the window alone (--tta 0) | {report.fmt(plain['accuracy'])} | " in md


def test_predict_averages_the_same_views_in_any_batch_size(tmp_path):
    run_dir = build_predict_run(tmp_path, augment=AUGMENTED)
    log = tmp_path / "phone.txt"
    make_unlabelled_log(log)
    on = predict.run(predict.PredictConfig(device="cpu", step=8, runtime="eager", tta=8), run_dir, log,
                     tmp_path / "on.csv")
    small = predict.run(predict.PredictConfig(device="cpu", step=8, runtime="eager", tta=8, predict_batch_size=3),
                        run_dir, log, tmp_path / "small.csv")
    off = predict.run(predict.PredictConfig(device="cpu", step=8, runtime="eager"), run_dir, log,
                      tmp_path / "off.csv")
    assert on["tta"]["views"] == 9 and off["tta"]["views"] == 1
    a, b, c = (pd.read_csv(tmp_path / f"{n}.csv") for n in ("on", "small", "off"))
    np.testing.assert_allclose(a.filter(like="p_"), b.filter(like="p_"), atol=1e-5)
    assert not np.allclose(a.filter(like="p_"), c.filter(like="p_"), atol=1e-3)  # the views do change the answer

    # Any runtime takes the views: onnxruntime with TTA answers as eager PyTorch with TTA.
    pytest.importorskip("onnxruntime", reason="onnxruntime not installed: pip install -e '.[export]'")
    fast = predict.run(predict.PredictConfig(device="cpu", step=8, runtime="onnxruntime", tta=8), run_dir, log,
                       tmp_path / "fast.csv")
    assert fast["runtime"].startswith("onnxruntime ") and fast["tta"]["views"] == 9
    np.testing.assert_allclose(pd.read_csv(tmp_path / "fast.csv").filter(like="p_"), a.filter(like="p_"), atol=1e-4)


def test_the_latency_table_shows_what_a_prediction_with_its_views_costs(tmp_path):
    pytest.importorskip("onnxruntime", reason="onnxruntime not installed: pip install -e '.[export]'")
    run_dir = build_evaluated_run(tmp_path, augment=AUGMENTED)
    m = evaluate.run(evaluate.EvalConfig(device="cpu", baseline="none", latency_batch_sizes=(1, 4), threads=1, tta=8),
                     run_dir)
    lat = m["latency_ms"]
    assert set(lat["cpu_onnxruntime"]) >= {"batch_1", "batch_4"}
    assert set(k for k in lat["cpu_onnxruntime_tta"] if k.startswith("batch_")) == {"batch_1"}
    assert "9 views in one call" in lat["cpu_onnxruntime_tta"]["runtime"]
    assert lat["cpu_onnxruntime_tta"]["parity"] <= 1e-4
    csv = (run_dir / "eval" / "efficiency.csv").read_text()
    assert "latency_cpu_onnxruntime_tta_batch_1_median" in csv
