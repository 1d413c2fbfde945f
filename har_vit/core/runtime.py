"""The fastest runtime present for a trained model, used only after its logits match eager PyTorch.

On the CPU, onnxruntime runs the model (with its train normalisation inside, as
``export`` writes it) several times faster than eager PyTorch at batch 1: there is no
Python between the operators and its graph optimiser fuses them. The ONNX graph is made
in memory with torch's TorchScript-based exporter (opset 17, well under a second; the
dynamo exporter takes seconds), the session is set for small batches (``threads``
intra-op threads, one inter-op thread, sequential execution, every graph optimisation,
and optionally one fixed batch size, so that shape arithmetic folds away),
and the model is used only if its logits on check windows equal eager PyTorch's within
``tolerance`` (largest absolute difference over ``max(1, largest absolute logit)``).
On a GPU the forward pass is captured once as a CUDA graph for a fixed batch
(:func:`cuda_graph_runtime`: a batch-1 call is one replay instead of a few hundred kernel
launches), held to the same check. Otherwise, or without onnxruntime, eager PyTorch runs,
and the reason is kept in :attr:`Runtime.note`.

``onnxruntime-int8`` is never picked by ``auto``: it is the same graph with its MatMul/Gemm
weights quantised to int8 (onnxruntime's dynamic quantisation: activations quantised per call),
which runs the article's network 2-4x faster at batch 1 on CPUs with VNNI, but whose
logits are not eager PyTorch's. It is held to :data:`INT8_TOLERANCE` instead, and the cost in
accuracy on real test windows is measured by ``bench/bench_int8.py``. Activations are scaled
by each call's range, so a window's int8 logits also depend on the windows in the same call.

>>> from har_vit.model import create_model
>>> rt = fast_runtime(create_model("tiny", window=32), {"mean": [0, 0, 0], "std": [1, 1, 1]}, "eager")
>>> rt.name, rt(np.zeros((2, 32, 3), np.float32)).shape
('eager PyTorch', (2, 6))
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn

from har_vit.core.errors import UsageError
from har_vit.core.schema import RUNTIMES

GRAPH_BATCH = 256  # a CUDA graph's batch when none is asked for: bigger calls are cut, smaller ones padded
OPSET = 17  # the TorchScript-based exporter: fast, and enough for these models
TOLERANCE = 1e-4
# int8 weights move logits by a few percent of the largest one (0.017-0.053 on the article's
# network trained on WISDM v1.1, bench/results/int8_accuracy.json); more than this is a bad quantisation.
INT8_TOLERANCE = 0.1
CHECK_WINDOWS = 64


@dataclass
class Runtime:
    """Raw windows ``(B, T, C)`` float32 -> logits ``(B, K)`` as a NumPy array."""

    name: str  # e.g. "onnxruntime 1.32.0 (CPU, 2 threads)" or "eager PyTorch"
    run: Callable[[np.ndarray], np.ndarray]
    parity: float | None = None  # relative max |logit difference| against eager PyTorch on the check windows
    note: str | None = None  # why eager PyTorch runs although something faster was asked for

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.run(np.ascontiguousarray(x, dtype=np.float32))


def eager(model: nn.Module, norm: Mapping[str, Any], device: torch.device | None = None) -> Runtime:
    """Eager PyTorch with the checkpoint's normalisation (the reference every other runtime is held to)."""
    from har_vit.core.inference import logits

    device = device or torch.device("cpu")
    model = model.to(device).eval()

    def run(x: np.ndarray) -> np.ndarray:
        return logits(model, x, device, batch_size=max(1, len(x)), norm=norm).cpu().numpy()

    return Runtime("eager PyTorch", run)


def onnxruntime_session(model: nn.Module, norm: Mapping[str, Any], window: int, channels: int,
                        threads: int | None = None, batch: int | None = None, int8: bool = False,
                        optimised_to: Path | None = None) -> tuple[Any, str]:
    """An onnxruntime session of ``model`` with ``norm`` inside, and its description. ImportError without onnxruntime.

    ``batch``: fix the graph's batch dimension to this size. The session then takes only
    batches of that size, and its optimiser folds away the shape arithmetic a symbolic batch
    needs (about half the graph's nodes), which is most of the time at batch 1.
    ``int8``: quantise the graph's MatMul/Gemm weights to int8 first (:func:`quantise_int8`).
    ``optimised_to``: also write the graph as onnxruntime's optimiser left it to this path.
    """
    import onnxruntime as ort

    from har_vit.stages.export import BATCH_AXIS, INPUT_NAME, RawInputModel, write_onnx

    threads = threads or torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="har-vit-onnx-") as tmp:
        path = Path(tmp) / "model.onnx"
        write_onnx(RawInputModel(model.cpu().eval(), norm), torch.zeros(1, window, channels), path, OPSET)
        if int8:
            path = quantise_int8(path, Path(tmp) / "model.int8.onnx")
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        if batch is not None:
            so.add_free_dimension_override_by_name(BATCH_AXIS, batch)
        if optimised_to is not None:
            so.optimized_model_filepath = str(optimised_to)
        sess = ort.InferenceSession(path.read_bytes(), so, providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].name == INPUT_NAME
    extras = (["int8 weights"] if int8 else []) + ([] if batch is None else [f"batch fixed to {batch}"])
    return sess, describe_onnxruntime(threads, ", ".join(extras))


def quantise_int8(src: Path, dst: Path) -> Path:
    """``src`` with its MatMul/Gemm weights quantised to signed int8 (onnxruntime's dynamic quantisation), at ``dst``.

    Activations are quantised on the fly per call; norms, softmax and the rest stay float32.
    """
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    # The quantiser logs a warning for every shape tensor it cannot type (they are not weights).
    quiet = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)
    try:
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"])
    finally:
        logging.getLogger().setLevel(quiet)
    return dst


def describe_onnxruntime(threads: int, extras: str = "") -> str:
    """How an onnxruntime session here runs, e.g. ``onnxruntime 1.32.0 (CPU, 2 threads, opset 17)``."""
    import onnxruntime as ort

    return f"onnxruntime {ort.__version__} (CPU, {threads} thread{'s' if threads > 1 else ''}, opset {OPSET}" + (
        f", {extras})" if extras else ")")


def in_fixed_batches(run: Callable[[np.ndarray], np.ndarray], x: np.ndarray, batch: int) -> np.ndarray:
    """``run`` (which takes exactly ``batch`` windows) over any number of windows ``x`` (N, T, C).

    ``x`` is cut into batches of ``batch``; the last is padded with zeros, and the padding's
    outputs are dropped, so the result is ``(N, K)`` whatever N.
    """
    if len(x) == 0:
        return np.zeros((0, 0), np.float32)
    out = []
    for i in range(0, len(x), batch):
        chunk = x[i:i + batch]
        if len(chunk) < batch:
            chunk = np.concatenate([chunk, np.zeros((batch - len(chunk), *x.shape[1:]), x.dtype)])
        out.append(run(chunk)[:min(batch, len(x) - i)])
    return np.concatenate(out)


def cuda_graph_runtime(model: nn.Module, norm: Mapping[str, Any], device: torch.device, batch: int) -> Runtime:
    """``model`` (normalisation inside) on ``device``, its forward captured once as a CUDA graph for ``batch`` windows.

    A call copies the windows into the graph's static input, replays, and copies the logits
    back; any number of windows runs in batches of ``batch`` (:func:`in_fixed_batches`). fp32,
    as eager PyTorch runs it, so the parity check compares like with like. The graph runs a
    private copy of the model, held by the runtime: the graph reads its weights' memory, so
    neither a later ``model.cpu()`` nor the end of this function may free it.
    """
    import copy

    from har_vit.stages.export import RawInputModel

    cfg = getattr(model, "cfg", None)
    window, channels = int(getattr(cfg, "window", 0)), int(getattr(cfg, "channels", 0))
    m = RawInputModel(copy.deepcopy(model), norm).to(device).eval()
    static = torch.zeros(batch, window, channels, device=device)
    with torch.inference_mode():
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # warm-up off the capture: lazy initialisation, cuBLAS workspaces
            for _ in range(3):
                m(static)
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = m(static)  # (batch, K), rewritten by every replay

    def one(x: np.ndarray) -> np.ndarray:
        static.copy_(torch.from_numpy(x))
        graph.replay()
        return out.cpu().numpy()

    one.keep_alive = m  # type: ignore[attr-defined]  # the weights and buffers the graph reads

    return Runtime(f"CUDA graph (torch {torch.__version__}, batch fixed to {batch})",
                   lambda x: in_fixed_batches(one, x, batch))


def relative_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Largest absolute difference over ``max(1, largest absolute value of b)``."""
    return float(np.max(np.abs(a - b)) / max(1.0, float(np.max(np.abs(b))))) if a.size else 0.0


def fast_runtime(model: nn.Module, norm: Mapping[str, Any], runtime: str = "auto", device: torch.device | None = None,
                 threads: int | None = None, check: np.ndarray | None = None, tolerance: float = TOLERANCE,
                 batch: int | None = None) -> Runtime:
    """The runtime to use for ``model`` (see the module docstring).

    ``runtime``: ``auto`` (onnxruntime on the CPU when installed and equal, else eager),
    ``onnxruntime`` (a UsageError when it is not installed), ``onnxruntime-int8`` (the same with
    int8 weights, held to :data:`INT8_TOLERANCE`; never picked by ``auto``) or ``eager``. ``check``: the
    windows the parity check runs on (default: 64 random windows at the model's scale).
    ``batch``: an onnxruntime session for batches of exactly this size (faster at batch 1,
    see :func:`onnxruntime_session`); the parity check then runs in batches of that size.
    On CUDA, ``auto`` captures a CUDA graph for ``batch`` windows (:data:`GRAPH_BATCH` when
    None) and keeps it when its logits equal eager PyTorch's.
    The choice never depends on timing, so the same input gives the same output on a machine
    (``bench/bench_latency.py`` measures which is faster where).
    """
    if runtime not in RUNTIMES:
        raise UsageError(f"--runtime {runtime!r}: choose one of {', '.join(RUNTIMES)}")
    device = device or torch.device("cpu")
    if device.type != "cpu" and runtime.startswith("onnxruntime"):
        raise UsageError(f"--runtime {runtime} runs on the CPU; use --device cpu, or --runtime eager on the GPU")
    explicit = runtime != "auto"  # asked for by name: a runtime that cannot run is an error, not a fallback
    int8 = runtime == "onnxruntime-int8"
    if int8:
        tolerance = max(tolerance, INT8_TOLERANCE)
    reference = eager(model, norm, device)
    if runtime == "eager" or device.type not in ("cpu", "cuda"):
        return reference
    cfg = getattr(model, "cfg", None)
    window, channels = int(getattr(cfg, "window", 0)), int(getattr(cfg, "channels", 0))
    if check is None:
        mean, std = np.asarray(norm["mean"], np.float32), np.asarray(norm["std"], np.float32)
        check = (np.random.default_rng(0).standard_normal((CHECK_WINDOWS, window, channels)) * std + mean)
    check = np.ascontiguousarray(check[:CHECK_WINDOWS], dtype=np.float32)
    if device.type == "cuda":
        try:
            graphed = cuda_graph_runtime(model, norm, device, batch or GRAPH_BATCH)
        except Exception as e:  # noqa: BLE001 - an op that cannot be captured: say so, run eager
            return Runtime(reference.name, reference.run,
                           note=f"CUDA graph capture failed ({type(e).__name__}: {str(e)[:200]}): eager PyTorch")
        diff = relative_diff(graphed(check), reference(check))
        if diff > tolerance:
            return Runtime(reference.name, reference.run,
                           note=f"{graphed.name} differs from eager PyTorch by {diff:.1e} (> {tolerance:g}): eager PyTorch")
        return Runtime(graphed.name, graphed.run, parity=diff)
    try:
        sess, name = onnxruntime_session(model, norm, window, channels, threads, batch, int8=int8)
    except ImportError:
        if explicit:
            raise UsageError(f"--runtime {runtime}: onnxruntime is not installed (pip install onnxruntime, "
                             "or pip install -e '.[export]')") from None
        return Runtime(reference.name, reference.run, note="onnxruntime is not installed: eager PyTorch")
    except Exception as e:  # noqa: BLE001 - an export the exporter cannot do: say so, run eager
        if explicit:
            raise UsageError(f"--runtime {runtime}: the model could not be exported ({type(e).__name__}: "
                             f"{str(e)[:200]}); use --runtime eager") from None
        return Runtime(reference.name, reference.run, note=f"ONNX export failed ({type(e).__name__}): eager PyTorch")
    from har_vit.stages.export import INPUT_NAME

    def run(x: np.ndarray) -> np.ndarray:
        return sess.run(None, {INPUT_NAME: x})[0]

    step = batch or 16
    if batch is not None and len(check) % batch:  # whole batches of the fixed size: repeat windows to fill the last
        check = np.resize(check, (-(-len(check) // batch) * batch, *check.shape[1:]))
    diff = max(relative_diff(run(check[i:i + step]), reference(check[i:i + step])) for i in range(0, len(check), step))
    if diff > tolerance:
        note = f"{name} differs from eager PyTorch by {diff:.1e} (> {tolerance:g}): eager PyTorch"
        if explicit:
            raise UsageError(f"--runtime {runtime}: {note}; use --runtime eager")
        return Runtime(reference.name, reference.run, note=note)
    return Runtime(name, run, parity=diff)
