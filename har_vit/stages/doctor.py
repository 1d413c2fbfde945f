"""``pipeline.py doctor``: what ``run`` would use and where it would write, and whether each part works.

The options are resolved as ``run`` resolves them (workspace, dataset, device, threads).
Nothing is downloaded, unpacked or left behind: the data is only looked for, the workspace
is tried with a temporary file removed at once, and each optional part is probed by using
it (a tensor op on each GPU, an onnxruntime session on a tiny model, ``chromium --version``).
Each check is one line::

    ok       torch 2.13.0+cpu (CPU build)
    missing  aeon: pip install aeon (only the minirocket baseline of bench/bench_accuracy.py uses it)
    info     run would write runs to /x/runs, reports to /x/reports, the registry to /x/models

A required part that is missing or broken (a runtime package, a writable workspace, the
device asked for) makes :attr:`Report.failed` true and the command exit 1. Missing data
is a warning, never a failure: ``--dataset wisdm`` downloads it, and the line says from
where and which file to put where instead.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from har_vit import __version__
from har_vit.core.errors import HarVitError, UsageError
from har_vit.core.workspace import ENV, Workspace

OK, INFO, WARN, MISSING, FAIL = "ok", "info", "warn", "missing", "fail"

# The runtime dependencies of pyproject.toml: (module, distribution, pip requirement, what needs it).
REQUIRED = (
    ("torch", "torch", "torch>=2.2", "the models, training and inference"),
    ("numpy", "numpy", "numpy>=1.24", "every array"),
    ("pandas", "pandas", "pandas>=2.0", "parsing logs, the tables of evaluate and report"),
    ("sklearn", "scikit-learn", "scikit-learn>=1.3", "metrics and the rf baseline"),
    ("fvcore", "fvcore", "fvcore>=0.1.5", "evaluate's FLOP counts"),
    ("seaborn", "seaborn", "seaborn>=0.13", "the plots of evaluate and report"),
    ("matplotlib", "matplotlib", "matplotlib>=3.7", "the plots of evaluate and report"),
    ("click", "click", "click>=8.1", "this command line"),
    ("yaml", "pyyaml", "pyyaml>=6.0", "--config files"),
    ("tqdm", "tqdm", "tqdm>=4.65", "progress bars"),
)
CHROMIUM_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class Check:
    """One line of the report. A ``required`` check that is ``missing`` or ``fail`` makes ``run`` fail."""

    status: str  # ok, info, warn, missing, fail
    text: str
    required: bool = False

    @property
    def line(self) -> str:
        return f"{self.status:<8} {self.text}"

    @property
    def problem(self) -> bool:
        return self.required and self.status in (MISSING, FAIL)


@dataclass(frozen=True)
class Report:
    checks: tuple[Check, ...]

    @property
    def problems(self) -> list[Check]:
        return [c for c in self.checks if c.problem]

    @property
    def failed(self) -> bool:
        return bool(self.problems)

    def summary(self) -> str:
        """One line: what to fix, or that ``run`` has what it needs (and which optional parts are missing)."""
        if self.failed:
            n = len(self.problems)
            return (f"{n} required part{'s' if n > 1 else ''} missing or broken, run would fail: "
                    f"{'; '.join(c.text for c in self.problems)}; fix {'them' if n > 1 else 'it'} and run doctor again")
        absent = [c.text.split(":", 1)[0] for c in self.checks if c.status == MISSING]
        return "run has every required part" + (f"; optional parts missing: {', '.join(absent)}" if absent else "")

    def raise_if_failed(self) -> None:
        if self.failed:
            raise HarVitError(self.summary())


def run(values: Mapping[str, Any], echo: Callable[[str], None] | None = None) -> Report:
    """Every check for the resolved options of ``pipeline.py doctor``; ``echo`` gets each line as it is made."""
    checks = []
    for c in _checks(values):
        checks.append(c)
        if echo is not None:
            echo(c.line)
    return Report(tuple(checks))


def _checks(values: Mapping[str, Any]) -> Iterator[Check]:
    ws = Workspace.at(values.get("workdir"))
    values = {**values, "data_dir": values.get("data_dir") or str(ws.data)}  # as Workspace.fill does for run
    yield from _workspace(ws, values)
    modules: dict[str, ModuleType] = {}
    for module, dist, requirement, use in REQUIRED:
        check, mod = _package(module, dist, f"pip install '{requirement}' (required: {use})", required=True)
        if mod is not None:
            modules[module] = mod
        yield check
    torch = modules.get("torch")
    if torch is None:
        yield Check(WARN, "device: not checked, torch is missing")
    else:
        yield from _device(torch, values.get("device") or "auto", values.get("threads"))
    yield from _onnx()
    yield _chromium()
    yield _package("aeon", "aeon", "pip install aeon (only the minirocket baseline of bench/bench_accuracy.py uses it)",
                   note="benchmarks only")[0]
    yield _data(values)


# --- packages ------------------------------------------------------------------------------------------


def _import(module: str) -> ModuleType:
    """Import ``module``; the one place doctor imports a package it checks (tests replace it)."""
    return importlib.import_module(module)


def _version(module: ModuleType, dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return str(getattr(module, "__version__", "(version unknown)"))


def _package(module: str, dist: str, fix: str, required: bool = False,
             note: str = "") -> tuple[Check, ModuleType | None]:
    """``(check, module or None)``: importable with its version, or missing with ``fix``."""
    try:
        mod = _import(module)
    except Exception as e:  # ImportError, or a broken binary (OSError, AttributeError...): not usable either way
        return Check(MISSING, f"{dist}: {fix}; {_first(e)}", required), None
    version = _version(mod, dist)
    if module == "torch":
        cuda = getattr(getattr(mod, "version", None), "cuda", None)
        note = f"CUDA {cuda} build" if cuda else "CPU build"
    return Check(OK, f"{dist} {version}" + (f" ({note})" if note else ""), required), mod


# --- where run writes ----------------------------------------------------------------------------------


def _workspace(ws: Workspace, values: Mapping[str, Any]) -> Iterator[Check]:
    origin = "--workdir" if values.get("workdir") else f"${ENV}" if os.environ.get(ENV) else "the current folder"
    yield Check(INFO, f"har_vit {__version__} on Python {sys.version.split()[0]} ({sys.executable})")
    yield Check(INFO, f"workspace: {ws.root} (from {origin})")
    yield Check(INFO, f"run would write runs to {ws.runs}, reports to {ws.reports}, the registry to {ws.models}; "
                      f"data lives in {values['data_dir']}")
    yield _writable(ws.root)


def _nearest_existing(path: Path) -> Path:
    while not _exists(path) and path.parent != path:
        path = path.parent
    return path


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # e.g. no permission to look inside the parent: treat as absent, the write test decides
        return False


def _writable(root: Path) -> Check:
    """Try the workspace root (or, before run creates it, its nearest existing parent) with a temporary file."""
    there = _nearest_existing(root)
    fix = "fix its permissions or pass --workdir a folder you can write"
    if not there.is_dir():
        return Check(FAIL, f"workspace {root}: {there} is a file, not a folder; {fix}", required=True)
    try:
        fd, name = tempfile.mkstemp(prefix=".har_vit-doctor-", suffix=".tmp", dir=there)
        os.close(fd)
        os.unlink(name)
    except OSError as e:
        return Check(FAIL, f"workspace {root}: cannot write in {there} ({e.strerror or e}); {fix}", required=True)
    free = shutil.disk_usage(there).free / 1e9
    where = "is writable" if there == root else f"does not exist yet; run creates it in {there}, which is writable"
    return Check(OK, f"workspace {root} {where} ({free:.1f} GB free)", required=True)


# --- compute ---------------------------------------------------------------------------------------------


def _device(torch: ModuleType, name: str, threads: int | None) -> Iterator[Check]:
    from har_vit.core.efficiency import device_label, resolve_device

    n = torch.cuda.device_count()
    try:
        device = resolve_device(name)
    except UsageError as e:
        yield Check(FAIL, f"device: {e} (torch.cuda.device_count() = {n})", required=True)
        device = None
    if device is not None:
        yield Check(INFO, f"device: run would compute on {device.type} ({device_label(device)}), --device {name}; "
                          f"torch.cuda.device_count() = {n}")
    if threads:
        yield Check(INFO, f"threads: run would use {threads} CPU thread{'s' if threads > 1 else ''} (--threads; "
                          f"{os.cpu_count()} CPUs visible)")
    else:
        yield Check(INFO, f"threads: run would use torch's default, {torch.get_num_threads()} CPU threads "
                          f"({os.cpu_count()} CPUs visible; --threads N to change)")
    if n == 0:
        why = "a CPU build of torch" if torch.version.cuda is None else f"torch built for CUDA {torch.version.cuda} sees none"
        yield Check(INFO, f"GPU: none ({why})")
    for i in range(n):
        yield _gpu(torch, i, required=device is not None and device.type == "cuda" and i == torch.cuda.current_device())


def _gpu(torch: ModuleType, index: int, required: bool) -> Check:
    """A small op on GPU ``index``, checked against the answer: a driver that only lists the GPU fails here."""
    try:
        name = torch.cuda.get_device_name(index)
        x = torch.arange(4, dtype=torch.float32, device=f"cuda:{index}")
        got = float((x * 2).sum().item())
        if got != 12.0:
            raise RuntimeError(f"2 * (0+1+2+3) gave {got}, not 12")
        mem = torch.cuda.get_device_properties(index).total_memory / 2**30
    except Exception as e:  # CUDA errors come as RuntimeError, AssertionError, ...
        return Check(FAIL if required else WARN, f"GPU {index}: a tensor op failed ({_first(e)}); check the driver "
                     "(nvidia-smi) or pass --device cpu", required)
    return Check(OK, f"GPU {index}: {name}, {mem:.0f} GiB (a tensor op ran)")


# --- optional parts ---------------------------------------------------------------------------------------


def _onnx() -> Iterator[Check]:
    """onnx, onnxscript and onnxruntime, each used: a tiny model built and checked, then run in a session."""
    check, onnx = _package("onnx", "onnx", "pip install onnx (export --format onnx needs it)")
    model = None
    if onnx is not None:
        try:
            model = _tiny_model(onnx)
        except Exception as e:
            check = Check(WARN, f"onnx {_version(onnx, 'onnx')}: building a tiny model failed ({_first(e)}); "
                                "reinstall onnx")
        else:
            check = Check(OK, check.text + " (built and checked a tiny model)")
    yield check
    yield _package("onnxscript", "onnxscript", "pip install onnxscript (torch's ONNX exporter needs it for "
                   "export --format onnx at --opset >= 18)")[0]
    check, ort = _package("onnxruntime", "onnxruntime", "pip install onnxruntime (export --format onnx checks "
                          "parity with it; without it onnx's slow reference evaluator does)")
    if ort is not None:
        version = _version(ort, "onnxruntime")
        if model is None:
            check = Check(WARN, f"onnxruntime {version} imports, but no session was tried: the test model needs "
                                "onnx (pip install onnx)")
        else:
            try:
                providers = _run_session(ort, model)
            except Exception as e:
                check = Check(WARN, f"onnxruntime {version}: a session on a tiny model failed ({_first(e)}); "
                                    "reinstall onnxruntime")
            else:
                check = Check(OK, f"onnxruntime {version} (ran a session on a tiny model: {providers})")
    yield check


_W = ((1.0, -1.0), (2.0, 0.5), (0.0, 3.0))  # the tiny model is y = x @ W + B, a Linear(3, 2)
_B = (0.25, -0.5)


def _tiny_model(onnx: ModuleType) -> bytes:
    """A Linear(3, 2) as serialised ONNX (opset 17, IR 8 so that older runtimes load it), checked by onnx."""
    helper, TensorProto = onnx.helper, onnx.TensorProto
    w = helper.make_tensor("W", TensorProto.FLOAT, (3, 2), [v for row in _W for v in row])
    b = helper.make_tensor("B", TensorProto.FLOAT, (2,), list(_B))
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "W", "B"], ["y"])], "har_vit_doctor",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ("batch", 3))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ("batch", 2))], initializer=[w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8,
                              producer_name="har_vit doctor")
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


def _run_session(ort: ModuleType, model: bytes) -> str:
    """Run ``model`` in an onnxruntime session on CPU and check its answer; return the providers used."""
    import numpy as np

    x = np.array([[1.0, 2.0, 3.0], [-1.0, 0.0, 0.5]], dtype=np.float32)
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    (y,) = session.run(["y"], {"x": x})
    want = x @ np.array(_W, dtype=np.float32) + np.array(_B, dtype=np.float32)
    if not np.allclose(y, want, atol=1e-5):
        raise RuntimeError(f"wrong answer {np.asarray(y).tolist()}, expected {want.tolist()}")
    return ", ".join(session.get_providers())


def _chromium() -> Check:
    """Headless Chromium, which the report's browser test renders the HTML report with."""
    fix = "apt-get install chromium (only the browser test of the report, tests/test_report.py, uses it)"
    from har_vit.core.browser import find_chromium

    exe = find_chromium()
    if exe is None:
        return Check(MISSING, f"chromium: {fix}")
    try:
        code, out = _run([exe, "--version"], CHROMIUM_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as e:
        return Check(WARN, f"chromium: {exe} did not answer --version ({_first(e)}); reinstall it: {fix}")
    version = out.strip().splitlines()[0] if out.strip() else ""
    if code != 0 or not version:
        return Check(WARN, f"chromium: {exe} --version failed (exit {code}); reinstall it: {fix}")
    return Check(OK, f"chromium: {version} ({exe})")


def _run(cmd: list[str], timeout: float) -> tuple[int, str]:
    """``(exit code, stdout)`` of ``cmd``; on timeout its whole process group is killed.

    Debian's ``chromium`` is a shell script that starts the browser as a child, which would
    keep the output pipe open (and ``subprocess.run`` waiting) after the script is killed.
    """
    with subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                          text=True, start_new_session=True) as p:
        try:
            out, _ = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.communicate()
            raise
    return p.returncode, out


def _first(e: BaseException) -> str:
    return str(e).splitlines()[0][:160] if str(e) else type(e).__name__


# --- data ---------------------------------------------------------------------------------------------------


def _data(values: Mapping[str, Any]) -> Check:
    """Whether the chosen dataset is where run would look, found without downloading or unpacking anything."""
    name = values.get("dataset") or "wisdm"
    try:
        from har_vit.core.schema import build
        from har_vit.datasets import resolve, run_now
        from har_vit.stages.ingest import IngestConfig

        opts = build(IngestConfig, {**values, "progress": False}).dataset_options()
        if name == "wisdm":
            return _wisdm_data(opts, run_now("wisdm", opts))
        source = resolve(name, opts)  # wisdm2019 and npz only look: nothing to download or unpack
    except ImportError as e:
        return Check(WARN, f"data: not checked ({_first(e)}); install the required packages first")
    except HarVitError as e:
        return Check(WARN, f"data: {e}")
    if source.prewindowed:
        return _npz_data(source.windows_npz)
    folders = sorted({str(f.parent) for f in source.files})
    n = len(source.files)
    return Check(OK, f"data: {name}, {n} log{'s' if n > 1 else ''} in {', '.join(folders[:2])}"
                     f"{' ...' if len(folders) > 2 else ''}, {len(source.class_names)} activities")


def _wisdm_data(opts: Any, alternatives: str) -> Check:
    from har_vit.datasets.wisdm import (
        ARCHIVE_NAME,
        OFFICIAL_URL,
        RAW_NAME,
        _effective_url,
        _find_raw,
    )

    raw_dir = opts.data_dir / "raw"
    p = opts.data_path
    if p is not None:
        what = f"pass {ARCHIVE_NAME}, the folder it unpacks to or {RAW_NAME}"
        if not p.exists():
            return Check(WARN, f"data: --data-path {p} does not exist; {what}; {alternatives}")
        if p.is_dir():
            found = _find_raw(p)
            if found is None:
                return Check(WARN, f"data: {p} holds no {RAW_NAME}; {what}")
            return Check(OK, f"data: wisdm raw log {found}")
        if p.name.lower().endswith((".tar.gz", ".tgz")):
            return Check(OK, f"data: wisdm archive {p} (run checks it and unpacks it into {raw_dir}/)")
        if p.name.lower().endswith((".txt", ".txt.gz")):
            return Check(OK, f"data: wisdm raw log {p}")
        return Check(WARN, f"data: {p} is not a .tar.gz/.tgz archive, a folder or a .txt/.txt.gz file; {what}")
    found = _find_raw(raw_dir)
    if found is not None:
        return Check(OK, f"data: wisdm raw log {found}")
    archive = raw_dir / ARCHIVE_NAME
    if archive.is_file():
        return Check(OK, f"data: wisdm archive {archive} (cached; run checks it and unpacks it beside it)")
    return Check(WARN, f"data: no WISDM v1.1 in {raw_dir}; run would download {_effective_url(OFFICIAL_URL)} "
                       f"(needs network); offline, put the archive by hand at {archive} or pass --data-path; "
                       f"{alternatives}")


def _npz_data(path: Path) -> Check:
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as z:  # reads the zip directory only, not the arrays
            keys = set(z.files)
    except Exception as e:  # BadZipFile, ValueError, OSError...
        return Check(WARN, f"data: {path} is not a readable .npz ({_first(e)}); pass an .npz with arrays "
                           "X, y, subject, class_names")
    missing = [k for k in ("X", "y", "subject", "class_names") if k not in keys]
    if missing:
        return Check(WARN, f"data: {path} lacks arrays {missing}; pass an .npz with arrays X, y, subject, class_names")
    return Check(OK, f"data: npz {path} (pre-windowed: X, y, subject, class_names)")
