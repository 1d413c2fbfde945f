"""Export a trained run as TorchScript or ONNX, with a parity check on real windows.

The exported network is :class:`RawInputModel`: the checkpoint's model with its train
normalisation baked in, so a user feeds windows of raw accelerometer values exactly
as logged, ``(batch, window, 3)`` float32, and gets logits ``(batch, classes)``. We
bake it in rather than hand out mean/std beside the file because a forgotten or
mis-copied normalisation fails silently (plausible, wrong predictions), while the
cost is one subtract and divide per input value, nothing next to the attention.
The manifest still records mean/std for reference.

The batch dimension is free in both formats: TorchScript is traced at batch 2 (the
tracer records shapes as ops, and batch 1 would invite size-1 specialisations) and
ONNX is exported with a symbolic ``batch`` axis. Both claims are checked, not
assumed: parity runs batches of 1, 3 and larger sizes, none equal to the trace's.

Parity: the largest absolute logit difference between the exported file (loaded back
from disk, run by onnxruntime, or by ``onnx.reference.ReferenceEvaluator`` when
onnxruntime is absent, or by ``torch.jit.load``) and the eager PyTorch module, on the
run's test-split windows (synthetic ones, noted, when the windows folder is gone).
Above the tolerance the export fails with :class:`ParityError` and nothing is kept:
the file is written under a temporary name and renamed only after the check passes;
``manifest.json`` (stage ``export``) is written last.

>>> summary = run(ExportConfig(format="onnx"), Path("runs/tiny"), Path("exports/tiny"))  # doctest: +SKIP
>>> summary["max_abs_diff"] <= summary["tolerance"], summary["runtime"]                   # doctest: +SKIP
(True, 'onnxruntime 1.32.0')
"""
from __future__ import annotations

import contextlib
import logging
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch
from torch import nn

from har_vit.core import schema
from har_vit.core.errors import ArtefactError, UsageError
from har_vit.core.io import (
    atomic_path,
    begin_stage,
    file_entry,
    load_npz,
    read_manifest,
    write_manifest,
)
from har_vit.core.runs import RunInfo, load_run
from har_vit.core.schema import as_dict

FORMATS = ("torchscript", "onnx")
FILENAMES = {"torchscript": "model.torchscript.pt", "onnx": "model.onnx"}
INPUT_NAME, OUTPUT_NAME = "windows", "logits"
BATCH_AXIS = "batch"  # the name of the symbolic batch dimension (onnxruntime can fix it by this name)
MIN_OPSET = 17
DYNAMO_MIN_OPSET = 18  # torch's dynamo ONNX exporter has no opset-17 translations (its down-conversion fails on Pad)
TRACE_BATCH = 2
PARITY_BATCH = 64  # largest parity batch; the first two batches are 1 and 3 windows

Runner = Callable[[np.ndarray], np.ndarray]  # (B, T, C) float32 -> (B, K) logits


@schema.config("export")
class ExportConfig:
    """Format and parity check of an export: the ``export`` options of :mod:`har_vit.core.schema`."""


class ParityError(ArtefactError):
    """The exported model's logits differ from PyTorch's by more than the tolerance."""


class RawInputModel(nn.Module):
    """A classifier with its train normalisation inside: raw windows ``(B, T, C)`` -> logits ``(B, K)``.

    >>> from har_vit.model import create_model
    >>> m = RawInputModel(create_model("tiny", window=32), {"mean": [0, 0, 9.8], "std": [4, 4, 4]})
    >>> m(torch.zeros(2, 32, 3)).shape
    torch.Size([2, 6])
    """

    def __init__(self, model: nn.Module, norm: Mapping[str, Any]):
        super().__init__()
        self.model = model
        # Buffers, not constants: they travel with .to(device) and appear in the graph as initialisers.
        self.register_buffer("mean", torch.as_tensor(norm["mean"], dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(norm["std"], dtype=torch.float32))

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        # Same arithmetic as har_vit.core.checkpoint.normalise, so predict and the export agree.
        return self.model((windows - self.mean) / self.std)


@contextlib.contextmanager
def _quiet_exporters() -> Iterator[None]:
    """Silence deprecation notices and the ONNX exporter's progress logging (not the user's concern)."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", UserWarning)
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)


def write_torchscript(module: nn.Module, example: torch.Tensor, path: Path) -> None:
    """Trace ``module`` on ``example`` and save the TorchScript file to ``path``.

    ``check_trace`` is off: it re-runs the same batch, which proves less than the
    parity check over other batch sizes that follows.
    """
    with _quiet_exporters(), torch.no_grad():
        traced = torch.jit.trace(module.eval(), example, check_trace=False)
        torch.jit.save(traced, str(path))


def write_onnx(module: nn.Module, example: torch.Tensor, path: Path, opset: int) -> None:
    """Export ``module`` to ONNX at ``opset`` with a symbolic batch axis; weights inside the one file."""
    module = module.eval()
    with _quiet_exporters(), torch.no_grad():
        if opset >= DYNAMO_MIN_OPSET:
            torch.onnx.export(module, (example,), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              opset_version=opset, dynamo=True, external_data=False, verbose=False,
                              dynamic_shapes=({0: torch.export.Dim(BATCH_AXIS)},))
        else:
            torch.onnx.export(module, (example,), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              opset_version=opset, dynamo=False,
                              dynamic_axes={INPUT_NAME: {0: BATCH_AXIS}, OUTPUT_NAME: {0: BATCH_AXIS}})


def check_onnx(path: Path, opset: int, window: int, channels: int) -> None:
    """``onnx.checker`` (full check, with shape inference) plus the contract: opset, input name and shape."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ArtefactError(f"exported ONNX model fails onnx.checker: {str(e).splitlines()[0][:300]}; "
                            f"try another --opset than {opset}") from None
    proto = onnx.load(str(path), load_external_data=False)
    got = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if got != opset:
        raise ArtefactError(f"the ONNX exporter wrote opset {got}, not the requested {opset}; pass --opset {got}")
    inputs = [i for i in proto.graph.input if i.name == INPUT_NAME]
    dims = [(d.dim_param or d.dim_value) for d in inputs[0].type.tensor_type.shape.dim] if inputs else []
    if len(dims) != 3 or not isinstance(dims[0], str) or dims[1:] != [window, channels]:
        raise ArtefactError(f"exported ONNX input {INPUT_NAME!r} has shape {dims}, expected [batch, {window}, "
                            f"{channels}] with a symbolic batch; this is a bug in har_vit.stages.export")


def onnx_runner(path: Path) -> tuple[Runner, str]:
    """``(run, runtime name)``: onnxruntime when installed, else onnx's exact but slow reference evaluator."""
    try:
        import onnxruntime as ort
    except ImportError:
        import onnx
        from onnx.reference import ReferenceEvaluator

        ref = ReferenceEvaluator(str(path))
        return (lambda x: np.asarray(ref.run(None, {INPUT_NAME: x})[0]),
                f"onnx.reference.ReferenceEvaluator (onnx {onnx.__version__})")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return (lambda x: sess.run([OUTPUT_NAME], {INPUT_NAME: x})[0]), f"onnxruntime {ort.__version__}"


def torchscript_runner(path: Path) -> tuple[Runner, str]:
    with _quiet_exporters():
        loaded = torch.jit.load(str(path), map_location="cpu").eval()

    def go(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return loaded(torch.from_numpy(x)).numpy()

    return go, f"torch.jit {torch.__version__}"


def parity_batches(n: int, largest: int = PARITY_BATCH) -> list[int]:
    """Batch sizes covering ``n`` windows: 1, then 3, then ``largest`` at a time (never the trace's 2 first)."""
    sizes, left = [], n
    for size in (1, 3):
        if left > 0:
            sizes.append(min(size, left))
            left -= sizes[-1]
    while left > 0:
        sizes.append(min(largest, left))
        left -= sizes[-1]
    return sizes


def max_abs_diff(reference: nn.Module, runner: Runner, X: np.ndarray) -> tuple[float, float, list[int]]:
    """``(largest |logit difference|, argmax agreement, batch sizes)`` of ``runner`` vs ``reference`` on ``X``."""
    worst, agree, sizes, i = 0.0, 0, parity_batches(len(X)), 0
    with torch.inference_mode():
        for b in sizes:
            x = np.ascontiguousarray(X[i:i + b], dtype=np.float32)  # (b, T, C)
            want = reference(torch.from_numpy(x)).numpy()
            got = np.asarray(runner(x), dtype=np.float32)
            if got.shape != want.shape:
                raise ParityError(f"exported model returned shape {got.shape} for a batch of {b}, expected "
                                  f"{want.shape}: its batch axis is not free")
            d = float(np.max(np.abs(got.astype(np.float64) - want)))
            worst = d if not np.isfinite(d) or d > worst else worst  # NaN/inf sticks: it must fail
            agree += int((got.argmax(1) == want.argmax(1)).sum())
            i += b
    return worst, agree / max(len(X), 1), sorted(set(sizes))


def parity_windows(info: RunInfo, n: int, seed: int = 0) -> tuple[np.ndarray, str, dict[str, Any] | None]:
    """Up to ``n`` raw windows ``(n, T, C)`` to compare on, what they are, and the windows file used.

    The run's test split (evenly spaced over it, so every test user and class shows up)
    when its windows folder and ``split.npz`` are there; otherwise synthetic windows
    drawn with the train mean and std, noted in ``info.notes``.
    """
    from har_vit.stages.windows import WINDOWS, load_windows

    T, C = int(info.model.cfg.window), int(info.model.cfg.channels)
    split_path = info.ckpt_path.parent / "split.npz"
    wdir = info.windows_dir
    why = None
    if wdir is None or not wdir.exists():
        why = f"the run's windows folder {wdir} is gone" if wdir else "the run names no windows folder"
    elif not split_path.is_file():
        why = f"{split_path} is missing"
    if why is None:
        w = load_windows(wdir)  # present but corrupt: an ArtefactError, not a silent fallback
        test = load_npz(split_path, ("test",))["test"].astype(np.int64)
        if w["X"].shape[1:] != (T, C):
            raise ArtefactError(f"{wdir}: windows of shape {w['X'].shape[1:]} but {info.ckpt_path} takes "
                                f"({T}, {C}); the windows folder was rebuilt after training - retrain")
        if test.size and (test.min() < 0 or test.max() >= len(w["X"])):
            raise ArtefactError(f"{split_path}: test indices outside the {len(w['X'])} windows of {wdir}; retrain")
        if test.size:
            pick = np.unique(np.linspace(0, test.size - 1, min(n, test.size)).round().astype(np.int64))
            entry = file_entry(wdir / WINDOWS)
            return w["X"][test[pick]].astype(np.float32), f"test split of {wdir} ({pick.size} of {test.size})", entry
        why = f"{split_path} holds no test windows"
    rng = np.random.default_rng(seed)
    mean, std = (np.asarray(info.ckpt["norm"][k], np.float64) for k in ("mean", "std"))
    X = (mean + std * rng.standard_normal((n, T, C))).astype(np.float32)
    info.notes.append(f"{why}: parity checked on {n} synthetic windows (train mean/std Gaussian), not real ones")
    return X, f"synthetic ({why})", None


def run(cfg: ExportConfig, model_dir: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """Export checkpoint ``cfg.which`` (best, last or the one it serves) of the run in ``model_dir`` to ``out_dir``; returns the manifest dict.

    Raises :class:`ParityError` (nothing written) when the exported logits differ from
    PyTorch's by more than ``cfg.parity_tolerance``.
    """
    t0 = time.perf_counter()
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"{out_dir}: is a file; pass the folder to export into")
    info = load_run(model_dir, cfg.which)
    module = RawInputModel(info.model, info.ckpt["norm"]).eval()
    T, C, K = (int(getattr(info.model.cfg, k)) for k in ("window", "channels", "num_classes"))

    n_max = cfg.parity_windows
    if cfg.format == "onnx" and _onnxruntime_missing():
        n_max = min(n_max, cfg.reference_windows)
    X, data_desc, windows_entry = parity_windows(info, n_max, cfg.seed)
    example = torch.from_numpy(X[:TRACE_BATCH]) if len(X) >= TRACE_BATCH else torch.zeros(TRACE_BATCH, T, C)

    target = out_dir / FILENAMES[cfg.format]
    created = not out_dir.exists()
    try:
        with atomic_path(target) as tmp:
            if cfg.format == "onnx":
                write_onnx(module, example, tmp, cfg.opset)
                check_onnx(tmp, cfg.opset, T, C)
                runner, runtime = onnx_runner(tmp)
            else:
                write_torchscript(module, example, tmp)
                runner, runtime = torchscript_runner(tmp)
            diff, agreement, sizes = max_abs_diff(module, runner, X)
            if not diff <= cfg.parity_tolerance:
                raise ParityError(
                    f"{cfg.format} export of {info.ckpt_path}: largest |logit difference| {diff:.3g} vs PyTorch on "
                    f"{len(X)} windows ({data_desc}; {runtime}) exceeds the tolerance {cfg.parity_tolerance:g}; the export "
                    "was discarded. If this is float noise raise --parity-tolerance, else report an exporter bug")
            # From here the new file replaces the old; an old manifest must not vouch for it meanwhile.
            begin_stage(out_dir, clean=False)  # the export's own temporary file is in flight
    except BaseException:
        if created and out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()  # we made it and left nothing in it
        raise

    summary = {
        "config": as_dict(cfg), "run_id": info.run_id, "model": info.ckpt["model_name"],
        "model_kwargs": info.ckpt.get("model_kwargs", {}), "checkpoint": info.ckpt_path.stem, "epoch": info.ckpt.get("epoch"),
        "inputs": {"upstream": str(model_dir), "checkpoint": file_entry(info.ckpt_path), "windows": windows_entry},
        "outputs": [file_entry(target)],
        "format": cfg.format, "file": target.name, "opset": cfg.opset if cfg.format == "onnx" else None,
        "input": {"name": INPUT_NAME, "shape": ["batch", T, C], "dtype": "float32",
                  "values": "raw accelerometer readings as logged; normalisation is inside the model"},
        "output": {"name": OUTPUT_NAME, "shape": ["batch", K], "dtype": "float32", "values": "logits"},
        "class_names": info.class_names, "norm": info.ckpt["norm"], "normalisation": "baked into the model",
        "tolerance": cfg.parity_tolerance, "max_abs_diff": diff, "argmax_agreement": agreement,
        "n_windows": int(len(X)), "parity_data": data_desc, "runtime": runtime, "batch_sizes_checked": sizes,
        "warnings": list(info.notes),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    write_manifest(out_dir, "export", **summary)
    return read_manifest(out_dir, "export")


def _onnxruntime_missing() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return True
    return False


__all__ = ["ExportConfig", "FORMATS", "ParityError", "RawInputModel", "check_onnx", "max_abs_diff", "onnx_runner",
           "parity_batches", "parity_windows", "run", "torchscript_runner", "write_onnx", "write_torchscript"]
