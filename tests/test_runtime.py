"""The fast runtime: used only when its logits equal eager PyTorch's; otherwise eager, and it says why."""
from __future__ import annotations

import builtins
import re

import numpy as np
import pytest
import torch

from har_vit.core import runtime
from har_vit.core.errors import UsageError
from har_vit.model import create_model

ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed: pip install -e '.[export]'")
NORM = {"mean": [0.5, -1.0, 9.8], "std": [4.0, 3.0, 5.0]}


def trained_like(name: str, seed: int = 0) -> torch.nn.Module:
    """A model with random (not default-initialised) weights, so parity is not checked on a trivial function."""
    torch.manual_seed(seed)
    m = create_model(name, window=64)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m.eval()


@pytest.mark.parametrize("name", ["tiny", "seed"])
def test_onnxruntime_logits_equal_eager_pytorch(name):
    model = trained_like(name)
    rt = runtime.fast_runtime(model, NORM, "auto", threads=1)
    assert rt.name.startswith(f"onnxruntime {ort.__version__}") and rt.note is None
    assert rt.parity is not None and rt.parity <= runtime.TOLERANCE
    x = (np.random.default_rng(1).standard_normal((37, 64, 3)) * 4 + NORM["mean"]).astype(np.float32)
    ref = runtime.eager(model, NORM)(x)
    got = rt(x)
    assert runtime.relative_diff(got, ref) <= runtime.TOLERANCE
    assert (got.argmax(1) == ref.argmax(1)).all()
    assert rt(x[:1]).shape == (1, 6)  # batch 1, as in the latency table


@pytest.mark.parametrize("name", ["tiny", "seed"])
def test_a_session_with_its_batch_fixed_equals_eager_and_takes_only_that_batch(name):
    model = trained_like(name)
    x = (np.random.default_rng(2).standard_normal((6, 64, 3)) * 4 + NORM["mean"]).astype(np.float32)
    ref = runtime.eager(model, NORM)(x)
    one = runtime.fast_runtime(model, NORM, "auto", threads=1, batch=1)
    assert one.name.endswith(", batch fixed to 1)") and one.parity <= runtime.TOLERANCE
    got = np.concatenate([one(x[i:i + 1]) for i in range(len(x))])
    assert runtime.relative_diff(got, ref) <= 1e-5 and (got.argmax(1) == ref.argmax(1)).all()
    with pytest.raises(Exception, match="(?i)dimension|shape"):  # onnxruntime refuses another batch size
        one(x[:2])
    three = runtime.fast_runtime(model, NORM, "auto", threads=1, batch=3)  # 64 check windows: not whole batches of 3
    assert three.parity <= runtime.TOLERANCE and runtime.relative_diff(three(x[:3]), ref[:3]) <= 1e-5


def test_the_onnx_graph_has_no_one_dimensional_convolution(tmp_path):
    """onnxruntime runs 1-D depthwise convs on a slow generic kernel: the export writes them as 2-D ones."""
    import onnx

    from har_vit.stages.export import RawInputModel, write_onnx

    for name in ("tiny", "seed"):
        model = trained_like(name)
        write_onnx(RawInputModel(model, NORM), torch.zeros(1, 64, 3), tmp_path / f"{name}.onnx", runtime.OPSET)
        graph = onnx.load(str(tmp_path / f"{name}.onnx")).graph
        ranks = {i.name: len(i.dims) for i in graph.initializer}
        convs = [n for n in graph.node if n.op_type == "Conv"]
        assert all(ranks.get(n.input[1], 4) == 4 for n in convs), name
    assert any(isinstance(m, torch.nn.Conv1d) for m in trained_like("tiny").modules())  # training keeps its Conv1d


def test_eager_when_asked_and_on_a_gpu_device():
    model = trained_like("tiny")
    assert runtime.fast_runtime(model, NORM, "eager").name == "eager PyTorch"
    with pytest.raises(UsageError, match="--runtime onnxruntime runs on the CPU"):
        runtime.fast_runtime(model, NORM, "onnxruntime", device=torch.device("cuda"))


def test_int8_weights_are_quantised_close_to_eager_and_only_when_asked_for():
    model = trained_like("seed")
    q = runtime.fast_runtime(model, NORM, "onnxruntime-int8", threads=1, batch=1)
    assert q.name.endswith(", int8 weights, batch fixed to 1)") and q.note is None
    # Really quantised (float32 onnxruntime is within 1e-5), and within the int8 bound.
    assert runtime.TOLERANCE < q.parity <= runtime.INT8_TOLERANCE
    x = (np.random.default_rng(3).standard_normal((5, 64, 3)) * 4 + NORM["mean"]).astype(np.float32)
    got = np.concatenate([q(x[i:i + 1]) for i in range(len(x))])
    assert got.shape == (5, 6) and runtime.relative_diff(got, runtime.eager(model, NORM)(x)) <= runtime.INT8_TOLERANCE
    assert "int8" not in runtime.fast_runtime(model, NORM, "auto", threads=1).name
    with pytest.raises(UsageError, match="--runtime onnxruntime-int8 runs on the CPU"):
        runtime.fast_runtime(model, NORM, "onnxruntime-int8", device=torch.device("cuda"))


def test_the_int8_graph_multiplies_in_integers(tmp_path):
    import onnx

    from har_vit.stages.export import RawInputModel, write_onnx

    write_onnx(RawInputModel(trained_like("seed"), NORM), torch.zeros(1, 64, 3), tmp_path / "f.onnx", runtime.OPSET)
    ops = {n.op_type for n in onnx.load(str(runtime.quantise_int8(tmp_path / "f.onnx", tmp_path / "q.onnx"))).graph.node}
    assert ops & {"MatMulInteger", "DynamicQuantizeMatMul"} and "DynamicQuantizeLinear" in ops


def test_a_runtime_that_differs_is_not_used(monkeypatch):
    model = trained_like("tiny")
    real = runtime.onnxruntime_session

    def off_by(skew):
        def session(*a, **kw):
            sess, name = real(*a, **kw)

            class Skewed:
                def run(self, names, feeds):
                    return [sess.run(names, feeds)[0] + skew]

                def get_inputs(self):
                    return sess.get_inputs()
            return Skewed(), name
        return session

    monkeypatch.setattr(runtime, "onnxruntime_session", off_by(1e-2))
    rt = runtime.fast_runtime(model, NORM, "auto")
    assert rt.name == "eager PyTorch" and re.search(r"differs from eager PyTorch by \d\.\de-0[23] \(> 0.0001\)", rt.note)
    with pytest.raises(UsageError, match="differs from eager PyTorch"):
        runtime.fast_runtime(model, NORM, "onnxruntime")
    assert runtime.fast_runtime(model, NORM, "onnxruntime-int8").parity <= runtime.INT8_TOLERANCE  # within int8's bound
    monkeypatch.setattr(runtime, "onnxruntime_session", off_by(1.0))
    with pytest.raises(UsageError, match=r"--runtime onnxruntime-int8: .*int8 weights\) differs .* \(> 0.1\)"):
        runtime.fast_runtime(model, NORM, "onnxruntime-int8")


def test_without_onnxruntime_auto_falls_back_and_onnxruntime_is_a_usage_error(monkeypatch):
    real_import = builtins.__import__

    def no_ort(name, *a, **kw):
        if name == "onnxruntime":
            raise ImportError("No module named 'onnxruntime'")
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_ort)
    model = trained_like("tiny")
    rt = runtime.fast_runtime(model, NORM, "auto")
    assert rt.name == "eager PyTorch" and "not installed" in rt.note
    with pytest.raises(UsageError, match="onnxruntime is not installed"):
        runtime.fast_runtime(model, NORM, "onnxruntime")
    with pytest.raises(UsageError, match="--runtime onnxruntime-int8: onnxruntime is not installed"):
        runtime.fast_runtime(model, NORM, "onnxruntime-int8")


@pytest.mark.parametrize("n", [1, 5, 8, 13])
def test_fixed_batches_give_every_window_its_own_logits_whatever_the_count(n):
    # What a CUDA graph (one static batch size) relies on: cut, pad the last batch, drop the padding.
    model = create_model("tiny", window=32).eval()
    ref = runtime.eager(model, NORM)
    calls = []

    def exactly_four(x):
        calls.append(len(x))
        return ref(x)

    x = np.random.default_rng(n).standard_normal((n, 32, 3)).astype(np.float32)
    got = runtime.in_fixed_batches(exactly_four, x, 4)
    assert got.shape == (n, 6) and set(calls) == {4} and len(calls) == -(-n // 4)
    assert runtime.relative_diff(got, ref(x)) <= 1e-5


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["tiny", "seed"])
def test_cuda_graph_logits_equal_eager_cuda(name):
    cuda = torch.device("cuda")
    model = create_model(name).eval()
    rt = runtime.fast_runtime(model, NORM, "auto", device=cuda, batch=1)
    assert rt.name.startswith("CUDA graph") and rt.parity is not None and rt.parity <= runtime.TOLERANCE, rt.note
    x = np.random.default_rng(0).standard_normal((5, 128, 3)).astype(np.float32)
    ref = runtime.eager(model, NORM, cuda)(x)
    assert runtime.relative_diff(rt(x), ref) <= runtime.TOLERANCE
    big = runtime.fast_runtime(model, NORM, "auto", device=cuda)  # batch 256, a call of 5 is padded
    assert big.name.endswith("batch fixed to 256)") and runtime.relative_diff(big(x), ref) <= runtime.TOLERANCE
