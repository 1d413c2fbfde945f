"""The classical baseline: a random forest on window statistics, stored as tensors, through the whole pipeline."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from har_vit.core.checkpoint import load_model
from har_vit.model import create_model
from har_vit.model.forest import fit_forest, num_features, window_features
from har_vit.stages import evaluate, report
from har_vit.stages.train import TrainConfig, run
from har_vit.stages.windows import WindowConfig, import_npz


def _data(n=300, T=32, C=3, K=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, K, (n,), generator=g)
    t = torch.arange(T) / T
    X = torch.sin(2 * torch.pi * (y[:, None, None] + 1) * t[None, :, None]) + 0.5 * torch.randn(n, T, C, generator=g)
    return X, y.numpy()


def _reference_features(x: np.ndarray) -> np.ndarray:
    """Slow per-window numpy version of the statistics, written from the docstring."""
    out = []
    for w in x.astype(np.float64):
        sig = np.concatenate([w, np.linalg.norm(w, axis=1, keepdims=True)], 1).T  # (C+1, T)
        stats, bands = [], []
        T = sig.shape[1]
        for s in sig:
            srt, c = np.sort(s), s - s.mean()
            stats += [s.mean(), s.std(), s.min(), s.max(), *[srt[int(round(q * (T - 1)))] for q in (.1, .25, .5, .75, .9)],
                      np.abs(np.diff(s)).mean(), np.mean(c[1:] * c[:-1] < 0)]
            p = np.abs(np.fft.rfft(c)) ** 2
            p = p[1:]
            e = np.linspace(0, T // 2, 9).round().astype(int)
            b = np.array([p[a:z].sum() for a, z in zip(e[:-1], e[1:])])
            bands += list(b / max(b.sum(), 1e-12))
        corr = [np.corrcoef(w[:, i], w[:, j])[0, 1] for i in range(w.shape[1]) for j in range(i + 1, w.shape[1])]
        out.append(stats + bands + corr)
    return np.array(out)


def test_features_match_a_slow_reference():
    X, _ = _data(n=20, T=64, C=3)
    got = window_features(X).numpy()
    assert got.shape == (20, num_features(3))
    np.testing.assert_allclose(got, _reference_features(X.numpy()), rtol=1e-4, atol=1e-4)


def test_forest_tensors_give_sklearns_probabilities():
    from sklearn.ensemble import RandomForestClassifier

    X, y = _data()
    model = fit_forest(X[:200], y[:200], num_classes=4, seed=3, trees=25, threads=1)
    ref = RandomForestClassifier(25, random_state=3, n_jobs=1).fit(window_features(X[:200]).numpy(), y[:200])
    with torch.no_grad():
        ours = model(X[200:]).exp().numpy()
    np.testing.assert_allclose(ours, ref.predict_proba(window_features(X[200:]).numpy()), atol=2e-6)
    assert model.num_params() > 0 and model.num_params(trainable_only=True) == 0


def test_statistics_are_taken_in_sensor_units_when_the_input_is_normalised():
    """The pipeline feeds normalised windows; the forest undoes that, so |a| is the physical magnitude."""
    from sklearn.ensemble import RandomForestClassifier

    X, y = _data()
    X = X * torch.tensor([2.0, 0.5, 1.0]) + torch.tensor([0.0, 9.8, -3.0])  # gravity on one axis, unequal spreads
    norm = {"mean": X[:200].mean((0, 1)).tolist(), "std": X[:200].std((0, 1)).tolist()}
    Xn = (X - torch.tensor(norm["mean"])) / torch.tensor(norm["std"])
    model = fit_forest(Xn[:200], y[:200], num_classes=4, seed=3, trees=25, threads=1, norm=norm)
    raw = RandomForestClassifier(25, random_state=3, n_jobs=1).fit(window_features(X[:200]).numpy(), y[:200])
    with torch.no_grad():
        ours = model(Xn[200:]).exp().numpy()
    np.testing.assert_allclose(ours, raw.predict_proba(window_features(X[200:]).numpy()), atol=2e-6)
    # the magnitude feature of normalised windows is a different number: the statistics would differ
    assert not np.allclose(window_features(Xn[:5]).numpy(), window_features(X[:5]).numpy(), atol=1e-2)
    # the units travel in the checkpoint's kwargs, and a forest without them (older checkpoints) reads its input as is
    rebuilt = create_model("rf", **model.kwargs)
    rebuilt.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(rebuilt(Xn[200:]), model(Xn[200:]))
        old = create_model("rf", **{k: v for k, v in model.kwargs.items() if k not in ("mean", "std")})
        old.load_state_dict(model.state_dict())
        assert not torch.equal(old(Xn[200:]), model(Xn[200:]))


def test_a_class_absent_from_train_gets_no_probability():
    X, y = _data(K=4)
    keep = y != 2
    model = fit_forest(X[keep], y[keep], num_classes=4, seed=0, trees=10, threads=1)
    with torch.no_grad():
        probs = model(X).exp()
    assert probs[:, 2].max() <= 1e-6 and probs.shape == (len(X), 4)


def test_rf_runs_through_train_evaluate_report(tmp_path, windows_npz):
    import_npz(WindowConfig(), windows_npz, tmp_path / "w")
    m = run(TrainConfig(model="rf", progress=False, batch_size=16, threads=1), tmp_path / "w", tmp_path / "run")
    assert m["model"] == "rf" and m["epochs_run"] == 1 and m["params"] > 0
    model, ckpt = load_model(tmp_path / "run")  # a plain torch checkpoint: loads with weights_only
    assert ckpt["model_kwargs"]["mean"] == ckpt["norm"]["mean"] and ckpt["model_kwargs"]["std"] == ckpt["norm"]["std"]
    rebuilt = create_model(ckpt["model_name"], **ckpt["model_kwargs"])
    assert type(rebuilt) is type(model)
    ev = evaluate.run(evaluate.EvalConfig(skip_latency=True), tmp_path / "run")
    assert ev["accuracy"] > 0.5 and ev["model"] == "rf"
    html = report.run(tmp_path / "run", tmp_path / "reports").read_text()
    assert "rf" in html


def test_rf_with_wrong_shape_says_what_it_takes():
    from har_vit.core.errors import UsageError

    with pytest.raises(UsageError, match=r"\(batch, 128, 3\)"):
        create_model("rf")(torch.zeros(2, 64, 3))


def test_a_network_report_shows_the_baseline_and_chance_on_the_same_split(tmp_path, windows_npz):
    import_npz(WindowConfig(), windows_npz, tmp_path / "w")
    run(TrainConfig(model="tiny", epochs=1, progress=False, batch_size=16, threads=1), tmp_path / "w", tmp_path / "net")
    ev = evaluate.run(evaluate.EvalConfig(skip_latency=True), tmp_path / "net")
    base = ev["baseline"]
    assert base["model"] == "rf" and 0 <= base["accuracy"] <= 1 and 0 <= base["macro_f1"] <= 1
    assert ev["chance"]["uniform_accuracy"] == pytest.approx(1 / 6)
    # The baseline is the same forest that --model rf fits on this split: same seed, same windows.
    run(TrainConfig(model="rf", progress=False, batch_size=16, threads=1), tmp_path / "w", tmp_path / "rf")
    alone = evaluate.run(evaluate.EvalConfig(skip_latency=True), tmp_path / "rf")
    assert alone["baseline"] is None and alone["accuracy"] == pytest.approx(base["accuracy"])
    html = report.run(tmp_path / "net", tmp_path / "reports").read_text()
    assert "baseline: random forest" in html and "chance: uniform guess" in html
    assert evaluate.run(evaluate.EvalConfig(skip_latency=True, baseline="none"), tmp_path / "net")["baseline"] is None
