"""Export: TorchScript and ONNX files that match PyTorch on the run's test windows, or nothing.

The exported file is loaded back from disk and compared against the checkpoint's
model on normalised inputs (``model(normalise(x))``), which is independent of the
wrapper the export bakes the normalisation into.
"""
from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from test_predict import C, T, build_run, one_thread  # noqa: F401 (autouse fixture)

from har_vit.core.checkpoint import load_model, normalise
from har_vit.core.errors import HarVitError, UsageError
from har_vit.core.io import sha256_file, write_json
from har_vit.model import list_models
from har_vit.stages import export
from har_vit.stages.export import ExportConfig, ParityError, parity_batches, run


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("export")
    out = {}
    for name in list_models(classical=False):
        (root / name).mkdir()
        out[name] = build_run(root / name, model_name=name)
    return out


def _reference(run_dir: Path, x: np.ndarray) -> np.ndarray:
    model, ckpt = load_model(run_dir)
    with torch.no_grad():
        return model(normalise(torch.from_numpy(x), ckpt["norm"])).numpy()


def _load(path: Path, fmt: str):
    """A (B, T, C) -> logits function over the file on disk, independent of har_vit.stages.export."""
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated, still supported
            m = torch.jit.load(str(path))
        return lambda x: m(torch.from_numpy(x)).detach().numpy()
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: sess.run(None, {"windows": x})[0]


@pytest.mark.parametrize("name", list_models(classical=False))
@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_matches_pytorch_for_every_variant(runs, tmp_path, name, fmt):
    run_dir = runs[name]
    summary = run(ExportConfig(format=fmt), run_dir, tmp_path / "out")
    path = tmp_path / "out" / summary["file"]

    assert summary["stage"] == "export" and summary["format"] == fmt
    assert 0 <= summary["max_abs_diff"] <= summary["tolerance"] == 1e-4
    assert summary["parity_data"].startswith("test split") and summary["n_windows"] == 24  # user 3: 6 classes x 4
    assert summary["warnings"] == [] and summary["argmax_agreement"] == 1.0
    assert summary["batch_sizes_checked"] == [1, 3, 20]  # none is the trace's batch of 2
    assert summary["outputs"][0]["sha256"] == sha256_file(path)
    assert summary["inputs"]["checkpoint"]["sha256"] == sha256_file(run_dir / "best.pt")
    assert summary["opset"] == (18 if fmt == "onnx" else None)
    assert summary["runtime"].startswith("onnxruntime" if fmt == "onnx" else "torch.jit")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted([path.name, "manifest.json"])

    # Raw windows in, the same logits as model(normalise(x)) out, at batch sizes the trace never saw.
    forward = _load(path, fmt)
    rng = np.random.default_rng(1)
    for b in (1, 5, 17):
        x = (np.array([0.5, 9.8, -1.0]) + 3 * rng.standard_normal((b, T, C))).astype(np.float32)
        np.testing.assert_allclose(forward(x), _reference(run_dir, x), atol=1e-4, rtol=0)


def test_onnx_graph_has_a_symbolic_batch_and_opset_17_works(runs, tmp_path):
    import onnx

    summary = run(ExportConfig(format="onnx", opset=17), runs["tiny"], tmp_path)
    proto = onnx.load(str(tmp_path / "model.onnx"))
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [17]
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [T, C]
    assert summary["opset"] == 17 and summary["max_abs_diff"] <= 1e-4


def test_reference_evaluator_when_onnxruntime_is_absent(runs, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    summary = run(ExportConfig(format="onnx", opset=17, reference_windows=6), runs["tiny"], tmp_path)
    assert summary["runtime"].startswith("onnx.reference.ReferenceEvaluator")
    assert summary["n_windows"] == 6 and summary["batch_sizes_checked"] == [1, 2, 3]
    assert summary["max_abs_diff"] <= 1e-4


def test_synthetic_windows_when_the_windows_folder_is_gone(runs, tmp_path):
    run_dir = runs["tiny"]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    moved = tmp_path / "run"
    moved.mkdir()
    for f in ("best.pt", "split.npz"):
        (moved / f).write_bytes((run_dir / f).read_bytes())
    write_json(moved / "manifest.json", {**manifest, "inputs": {"upstream": str(tmp_path / "gone")}})
    summary = run(ExportConfig(format="torchscript", parity_windows=10), moved, tmp_path / "out")
    assert summary["parity_data"].startswith("synthetic") and summary["n_windows"] == 10
    assert summary["inputs"]["windows"] is None
    assert any("synthetic" in w for w in summary["warnings"])


def _perturbing(writer):
    """Wrap an export writer so that the file holds a slightly different model (a bad exporter)."""
    def write(module, example, path, *args):
        bad = export.RawInputModel(module.model, {"mean": module.mean.tolist(), "std": (module.std * 1.01).tolist()})
        return writer(bad.eval(), example, path, *args)
    return write


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_parity_failure_keeps_nothing(runs, tmp_path, monkeypatch, fmt):
    name = "write_torchscript" if fmt == "torchscript" else "write_onnx"
    monkeypatch.setattr(export, name, _perturbing(getattr(export, name)))
    out = tmp_path / "new"
    with pytest.raises(ParityError, match="exceeds the tolerance") as e:
        run(ExportConfig(format=fmt, opset=17), runs["tiny"], out)
    assert isinstance(e.value, HarVitError) and e.value.exit_code != 0
    assert not out.exists()  # not even the empty folder, nor a temp file


def test_failed_reexport_leaves_the_previous_export_intact(runs, tmp_path, monkeypatch):
    first = run(ExportConfig(format="torchscript"), runs["tiny"], tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    monkeypatch.setattr(export, "write_torchscript", _perturbing(export.write_torchscript))
    with pytest.raises(ParityError):
        run(ExportConfig(format="torchscript"), runs["tiny"], tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert first["outputs"][0]["sha256"] == sha256_file(tmp_path / first["file"])


def test_options_are_checked():
    for bad in (dict(format="tflite"), dict(opset=16), dict(parity_tolerance=-1.0), dict(parity_tolerance=float("nan")),
                dict(parity_windows=0), dict(which="worst")):
        with pytest.raises(UsageError):
            ExportConfig(**bad)


def test_parity_batches_cover_every_window_and_start_small():
    for n in range(1, 200):
        sizes = parity_batches(n)
        assert sum(sizes) == n and sizes[0] == 1 and all(s >= 1 for s in sizes)
        assert sizes[:2] == [1, min(3, n - 1)] if n > 1 else sizes == [1]
