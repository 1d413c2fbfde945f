"""Every option, declared once: name, type, default, range, help and the commands that take it.

From :data:`OPTIONS` come the click options of ``pipeline.py`` (:func:`click_options`),
the YAML loader that refuses unknown keys and wrong types (:func:`load_yaml`), the frozen
config dataclasses of the stages (:func:`config`) and the options table of the README
(:func:`options_table`). Values are layered: defaults < the dataset's own defaults
(``har_vit.datasets.TRAIN_DEFAULTS``) < ``--config`` YAML < command line.

>>> OPTIONS["epochs"].default, OPTIONS["epochs"].min
(30, 1)
>>> check_value("epochs", 1.5)
'epochs: 1.5 is not a whole number (expected a whole number >= 1)'
>>> suggest("epoch", "train")
"unknown key 'epoch'; did you mean 'epochs'?"
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from har_vit.core.errors import UsageError

T = TypeVar("T")
_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")

# Which option groups each command takes. A group is one config dataclass ("train" ->
# TrainConfig) or "paths" (where to read and write; not part of any config).
DATA = ("ingest",)
JOB = ("ingest", "windows", "train", "evaluate", "job")
COMMANDS: dict[str, tuple[str, ...]] = {
    "ingest": ("ingest",), "windows": ("windows",), "train": ("train",), "evaluate": ("evaluate",),
    "report": ("report",), "predict": ("predict",), "export": ("export",),
    "run": JOB, "retrain": JOB + ("retrain",), "doctor": DATA, "cv": ("ingest", "windows", "train", "cv"),
}
DEVICES = ("auto", "cuda", "cpu")
RUNTIMES = ("auto", "onnxruntime", "onnxruntime-int8", "eager")  # predict --runtime (har_vit.core.runtime)
WHICH = ("served", "best", "last")
SERVE = ("best", "last")  # train --serve


@dataclass(frozen=True)
class Option:
    """One option. ``kind`` is int, float, str, bool or "path"; ``multiple`` makes it a tuple of ``kind``."""

    name: str
    kind: Any
    default: Any
    help: str
    groups: tuple[str, ...]  # config dataclasses that carry it, or "paths"
    commands: tuple[str, ...] = ()  # extra commands that take it outside its groups' commands
    choices: tuple[str, ...] | Callable[[], Sequence[str]] | None = None
    min: float | None = None
    max: float | None = None
    min_open: bool = False  # min itself is excluded (lr > 0)
    max_open: bool = False
    multiple: bool = False
    nullable: bool = False  # None is a value (e.g. "unset: torch's default")
    flag: str | None = None  # CLI spelling when not --name-with-dashes
    required: tuple[str, ...] = ()  # commands for which the option must be given (CLI or YAML)
    yaml: bool = True  # False: command line only (e.g. --config itself)

    @property
    def cli(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    def choice_list(self) -> tuple[str, ...] | None:
        if self.choices is None:
            return None
        return tuple(self.choices() if callable(self.choices) else self.choices)

    def takes(self, command: str) -> bool:
        return command in self.commands or any(g in COMMANDS.get(command, ()) for g in self.groups)

    def expected(self) -> str:
        """What a valid value looks like, in words: 'a whole number >= 1'."""
        noun = {int: "a whole number", float: "a number", bool: "true or false", str: "text", "path": "a path"}[self.kind]
        ch = self.choice_list()
        if ch:
            noun = "one of " + ", ".join(ch)
        lo = "" if self.min is None else f"{'>' if self.min_open else '>='} {self.min:g}"
        hi = "" if self.max is None else f"{'<' if self.max_open else '<='} {self.max:g}"
        rng = " and ".join(s for s in (lo, hi) if s)
        text = f"{noun} {rng}".strip()
        if self.multiple:
            text = f"a list of {text.replace('a whole number', 'whole numbers')}"
        return text + (" (or null)" if self.nullable else "")


def _o(name: str, kind: Any, default: Any, help: str, groups: str | tuple[str, ...], **kw: Any) -> Option:
    return Option(name, kind, default, help, (groups,) if isinstance(groups, str) else groups, **kw)


def _models() -> list[str]:
    from har_vit.model import list_models

    return list_models()


def _protocols() -> tuple[str, ...]:
    from har_vit.core.splits import PROTOCOLS

    return PROTOCOLS


def _datasets() -> list[str]:
    from har_vit.datasets import DATASETS

    return sorted(DATASETS)


AUG = ("train", "augment")
_DECLARED = [
    # --- where to read and write -------------------------------------------------------------
    _o("config", "path", None, "YAML file of options; the command line wins over it.", "paths",
       commands=tuple(COMMANDS), yaml=False),
    _o("workdir", "path", None, "Workspace root holding runs/, models/, reports/ and data/ "
       "[env HAR_VIT_HOME, else the current directory].", "paths", commands=tuple(COMMANDS)),
    _o("in_dir", "path", None, "Folder the stage reads: the previous stage's output.", "paths",
       commands=("windows", "train"), flag="--in", required=("train",)),
    _o("out", "path", None, "Where the command writes: a stage folder, the run folder of run [runs/<run id>], "
       "the CSV of predict, the folder of cv [runs/cv-<run id>].", "paths",
       commands=("ingest", "windows", "train", "run", "predict", "export", "cv"),
       required=("ingest", "windows", "train", "predict", "export")),
    _o("run", "path", None, "A trained run: its folder (or any folder inside it); for predict and export also "
       "a stored run id or 'production' [production].", "paths", commands=("evaluate", "report", "predict", "export"),
       required=("evaluate", "report")),
    _o("registry", "path", None, "Model registry: stored runs and the production pointer [<workdir>/models].",
       "paths", commands=("run", "retrain", "predict", "export")),
    _o("reports_dir", "path", None, "Reports folder [<workdir>/reports; under --out for run --out].", "paths",
       commands=("report", "run", "retrain"), flag="--reports"),
    _o("report_name", str, None, "Report folder name [the run's id].", "paths", commands=("report",)),
    _o("trust", bool, False, "Load checkpoints that carry no integrity digest (files you made yourself).",
       "paths", commands=("train", "evaluate", "predict", "export")),
    _o("resume", bool, False, "Continue a killed run from its last checkpoint in --out.", "paths",
       commands=("train",)),
    # --- data ----------------------------------------------------------------------------------
    _o("dataset", str, "wisdm", "wisdm (v1.1, downloaded when absent), wisdm2019 (a folder of raw logs) or npz "
       "(pre-windowed arrays).", "ingest", commands=("windows",), choices=_datasets),
    _o("data_path", "path", None, "Archive, folder or raw log (.txt/.txt.gz); the .npz for --dataset npz; the new "
       "logs for predict.", "ingest", commands=("windows", "predict"), required=("predict",)),
    _o("data_dir", "path", None, "Where downloads and extracted data live [<workdir>/data].", "ingest"),
    _o("sensor_device", str, "phone", "wisdm2019: the phone or the watch accelerometer.", "ingest",
       choices=("phone", "watch")),
    _o("sensor", str, "accel", "Sensor of the logs (only the accelerometer is supported).", "ingest",
       choices=("accel",)),
    _o("subjects", int, (), "wisdm2019: only these subject ids (repeat the option) [all present].", "ingest",
       multiple=True, min=0),
    _o("progress", bool, True, "Progress bars on stderr.", ("ingest", "train")),
    # --- windows --------------------------------------------------------------------------------
    _o("window", int, 128, "Samples per window.", "windows", min=2),
    _o("step", int, 64, "Samples between window starts (predict: for the new logs, whatever step the model's "
       "training windows had).", ("windows", "predict"), min=1),
    _o("gap_s", float, 1.0, "A step over this many seconds between records ends a bout.", "windows",
       min=0, min_open=True),
    _o("ts_per_s", float, 1e9, "Timestamp units per second (WISDM: nanoseconds).", "windows",
       min=0, min_open=True),
    # --- training ---------------------------------------------------------------------------------
    _o("model", str, "tiny_ws", "Model variant (see `pipeline.py models`); seed is the article's network, rf the "
       "random-forest baseline.", "train", choices=_models),
    _o("epochs", int, 30, "Training epochs (the most; early stopping may end sooner).", "train", min=1),
    _o("batch_size", int, 128, "Global training batch; under torchrun each rank takes batch_size / world.", "train",
       min=1),
    _o("lr", float, 5e-4, "Peak learning rate of AdamW.", "train", min=0, min_open=True),
    _o("weight_decay", float, 0.05, "AdamW weight decay (weight matrices only).", "train", min=0),
    _o("warmup_epochs", float, 2.0, "Linear learning-rate warm-up, in epochs.", "train", min=0),
    _o("schedule", str, "cosine", "Learning-rate schedule: cosine decay, step (the article's StepLR) or constant.",
       "train", choices=("cosine", "step", "constant")),
    _o("min_lr", float, 1e-6, "Floor of the cosine decay.", "train", min=0),
    _o("step_epochs", int, 10, "step schedule: multiply the lr by step_gamma every this many epochs.", "train", min=1),
    _o("step_gamma", float, 0.1, "step schedule: the factor.", "train", min=0, min_open=True, max=1),
    _o("label_smoothing", float, 0.0, "Label smoothing of the cross-entropy.", "train", min=0, max=1, max_open=True),
    _o("class_weights", bool, True, "Weight the loss by inverse class frequency on train.", "train"),
    _o("ema", float, 0.0, "Exponential moving average of the weights, decay per step (e.g. 0.999): validation, "
       "best.pt and every later stage use the averaged weights; 0 turns it off.", "train", min=0, max=1, max_open=True),
    _o("patience", int, 10, "Early stopping: epochs without a better validation macro F1; 0 turns it off.", "train",
       min=0, nullable=True),
    _o("drop", float, None, "Dropout, overriding the variant's [the variant's].", "train", min=0, max=1,
       max_open=True, nullable=True),
    _o("drop_path", float, None, "Stochastic depth, overriding the variant's [the variant's].", "train", min=0,
       max=1, max_open=True, nullable=True),
    _o("split", str, "subject", "Split protocol: subject (held-out users), loso (one user out), per-stream (the "
       "article's: same users in train and test, leaky) or random (leaky).", "train", choices=_protocols),
    _o("seed", int, 0, "Random seed: split, initialisation, shuffling, augmentation (export: parity windows).",
       ("train", "export"), min=0),
    _o("split_seed", int, None, "Seed of the split alone (which users validate and test; the random split) [--seed].",
       "train", min=0, nullable=True),
    _o("serve", str, "best", "The checkpoint the run serves to evaluate, predict and export: best (the epoch its "
       "validation users picked) or last (the weights training ended with: after --epochs, or --patience epochs past "
       "the best one).", "train", choices=SERVE),
    _o("members", int, 1, "Train this many networks that differ only in their seed (initialisation, shuffling, "
       "augmentation, dropout; one split, --seed's) and predict with the mean of their class probabilities: an "
       "ensemble, with N times the training time, parameters and latency.", "train", min=1),
    _o("val_frac", float, 0.1, "Share of users (or windows) for validation.", "train", min=0,
       max=1, max_open=True),
    _o("test_frac", float, 0.2, "Share of users (or windows) for test.", "train", min=0, min_open=True, max=1,
       max_open=True),
    _o("test_users", int, (), "subject split: these users are the test set (repeat the option).", "train",
       multiple=True, min=0),
    _o("fold", int, None, "loso split: index of the held-out user.", "train", min=0, nullable=True),
    _o("device", str, "auto", "Where to compute: auto takes CUDA when present.", ("train", "evaluate", "predict"),
       commands=("doctor",), choices=DEVICES),
    _o("compile", bool, False, "torch.compile the model.", "train"),
    _o("cuda_graph", bool, True, "On CUDA, capture the whole training step once as a CUDA graph and replay it "
       "(one process, no --compile; falls back to eager steps with a warning).", "train"),
    _o("threads", int, None, "CPU threads for torch [torch's default].", ("train", "evaluate"), commands=("doctor",),
       min=1, nullable=True),
    _o("eval_batch_size", int, 2048, "Validation forward batch during training (memory only).", "train", min=1),
    _o("jitter", float, 0.0, "Augment: std of Gaussian noise (normalised units); 0 turns it off (the default: "
       "WISDM 2019's still activities move less than such noise).", AUG, min=0),
    _o("scale", float, 0.1, "Augment: std of a per-axis gain around 1; 0 off.", AUG, min=0),
    _o("rotate", float, 30.0, "Augment: max angle (degrees) of a random 3D rotation of the axes; 0 off.", AUG,
       min=0, max=180),
    _o("time_warp", float, 0.1, "Augment: strength of a smooth random time warp; 0 off.", AUG, min=0),
    _o("warp_knots", int, 4, "Augment: speed knots of the time warp.", AUG, min=2),
    _o("mixup", float, 0.0, "Augment: Mixup Beta alpha; 0 off.", AUG, min=0),
    _o("cutmix", float, 0.0, "Augment: CutMix (along time) Beta alpha; 0 off.", AUG, min=0),
    _o("erase", float, 0.0, "Augment: probability of erasing each patch.", AUG, min=0, max=1),
    _o("erase_patch", int, 4, "Augment: time steps per erased patch.", AUG, min=1),
    _o("aug_p", float, 1.0, "Augment: probability that a window gets each transform.", AUG, min=0, max=1),
    _o("teacher", "path", None, "Distil from this trained run (folder); it is never trained.", "train", nullable=True),
    _o("distill", str, "soft", "Distillation targets: soft (KL at a temperature) or hard labels.", "train",
       choices=("soft", "hard")),
    _o("distill_alpha", float, 0.5, "Weight of the distillation term.", "train", min=0, max=1),
    _o("distill_temperature", float, 4.0, "Softmax temperature of soft distillation.", "train", min=0, min_open=True),
    _o("init", "path", None, "Start from this trained run's weights, or a state_dict saved by the article's code "
       "(the head is replaced).", "train", nullable=True),
    _o("freeze_epochs", int, 0, "With --init: keep the copied layers frozen this many epochs.", "train", min=0),
    # --- evaluation -----------------------------------------------------------------------------
    # --- cross-validation -------------------------------------------------------------------------
    _o("folds", int, 6, "cv: folds grouped by user (sorted user ids cut into this many contiguous groups; each "
       "group is the test set once).", "cv", min=2),
    _o("seeds", int, (0, 1, 2), "cv: seeds; every fold is trained once per seed (repeat the option).", "cv",
       multiple=True, min=0),
    _o("sequential", bool, False, "cv: train the models one after another instead of together as one stacked "
       "model (same results to float tolerance; for comparison).", "cv"),
    _o("workers", int, None, "cv: processes that share the stacked models, each training its share as one stack "
       "with its share of --threads [CPU: twice the threads, at most 8 unless there are more threads, one for one "
       "thread; CUDA: one].",
       "cv", min=1, nullable=True),
    _o("runtime", str, "auto", "What runs the model: auto (onnxruntime on the CPU when installed, a CUDA graph on a "
       "GPU, each only when its logits equal PyTorch's, else eager PyTorch), onnxruntime, onnxruntime-int8 (int8 "
       "weights: faster on the CPU, logits within 10% of PyTorch's; never picked by auto), or eager.", "predict",
       choices=RUNTIMES),
    _o("which", str, "served", "Checkpoint of the run: served (the one it was trained to serve, its --serve), best "
       "(validation's pick) or last.", ("evaluate", "predict", "export"),
       choices=WHICH),
    _o("tta", int, 0, "Test-time augmentation: also predict N fixed turned and scaled copies of every window (up to "
       "the run's --rotate and --scale) and average the class probabilities; 0 off. A window costs N + 1 forward "
       "passes (8: see the README's accuracy table).", ("evaluate", "predict"), min=0),
    _o("predict_batch_size", int, 512, "Windows per forward pass when predicting (memory only, not results; except with --runtime "
       "onnxruntime-int8, whose answers move slightly with the windows in the same pass).",
       ("evaluate", "predict"), min=1),
    _o("latency_repeats", int, 100, "Timed runs per latency figure (>= 100 so that the p90 means something).",
       "evaluate", min=100),
    _o("latency_warmup", int, 10, "Untimed calls before timing.", "evaluate", min=0),
    _o("latency_batch_sizes", int, (1, 256), "Batch sizes timed (repeat the option).", "evaluate", multiple=True,
       min=1),
    _o("skip_latency", bool, False, "Params, FLOPs and metrics only, no timing.", "evaluate"),
    _o("baseline", str, "rf", "Fit the random-forest baseline on the run's split and score it beside the model.",
       "evaluate", choices=("rf", "none")),
    # --- export and retrain ---------------------------------------------------------------------
    _o("format", str, "onnx", "Export format.", "export", choices=("torchscript", "onnx")),
    _o("opset", int, 18, "ONNX opset (17 goes through torch's legacy exporter).", "export", min=17),
    _o("parity_tolerance", float, 1e-4, "Largest allowed |logit difference| of the export against PyTorch.",
       "export", min=0),
    _o("parity_windows", int, 512, "Windows compared (onnxruntime or TorchScript).", "export", min=1),
    _o("reference_windows", int, 32, "Windows compared by onnx's slow pure-Python reference evaluator.", "export",
       min=1),
    _o("promote_tolerance", float, 0.01, "Promote when the candidate's macro F1 >= production's minus this "
       "(negative: the candidate must be better by that much).", "retrain", min=-1, max=1),
    _o("lock_timeout", float, 60.0, "Seconds a short registry write waits for the lock before giving up.",
       "job", min=0),
]
OPTIONS: dict[str, Option] = {o.name: o for o in _DECLARED}
assert len(OPTIONS) == len(_DECLARED), "an option is declared twice"


def options_for(command: str) -> list[Option]:
    """The options ``command`` takes, in declaration order."""
    return [o for o in _DECLARED if o.takes(command)]


def group_options(group: str) -> list[Option]:
    return [o for o in _DECLARED if group in o.groups]


# --- values ---------------------------------------------------------------------------------------


def _plain(kind: Any, v: Any) -> tuple[bool, Any]:
    """``(ok, value)`` for one scalar of ``kind``; floats take ints, paths and text take text."""
    if kind is bool:
        return isinstance(v, bool), v
    if kind is int:
        return isinstance(v, int) and not isinstance(v, bool), v
    if kind is float:
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        return ok, float(v) if ok else v
    if kind in (str, "path"):
        if isinstance(v, os.PathLike):
            v = os.fspath(v)
        return isinstance(v, str), v
    raise TypeError(kind)


def coerce(name: str, value: Any) -> Any:
    """``value`` checked against option ``name`` and normalised (lists to tuples, ints to floats).

    Raises UsageError with one line naming the key, the value and what was expected.
    """
    msg, out = _check(OPTIONS[name], value)
    if msg:
        raise UsageError(msg)
    return out


def check_value(name: str, value: Any) -> str | None:
    """The one-line complaint about ``value`` for option ``name``, or None when it is fine."""
    return _check(OPTIONS[name], value)[0]


def _check(o: Option, value: Any) -> tuple[str | None, Any]:
    def bad(why: str) -> tuple[str, Any]:
        return f"{o.name}: {value!r} {why} (expected {o.expected()})", value

    if value is None:
        return (None, None) if o.nullable or o.default is None else bad("is empty")
    if o.multiple:
        if not isinstance(value, (list, tuple)):
            return bad("is not a list")
        items = []
        for v in value:
            msg, v = _check(dataclasses.replace(o, multiple=False, nullable=False), v)
            if msg:
                return bad(f"holds {v!r}, which is not {o.expected().removeprefix('a list of ')}")
            items.append(v)
        return None, tuple(items)
    ok, v = _plain(o.kind, value)
    if not ok:
        what = {int: "is not a whole number", float: "is not a number", bool: "is not true or false"}.get(o.kind, "is not text")
        return bad(what)
    ch = o.choice_list()
    if ch and v not in ch:
        return bad("is not a valid choice")
    if o.min is not None and (v < o.min or (o.min_open and v == o.min)):
        return bad("is out of range")
    if o.max is not None and (v > o.max or (o.max_open and v == o.max)):
        return bad("is out of range")
    return None, v


def suggest(key: str, command: str | None = None) -> str:
    """'unknown key ...; did you mean ...?' for a key no option has."""
    names = [o.name for o in (options_for(command) if command else _DECLARED) if o.yaml]
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
    hint = f"did you mean '{close[0]}'?" if close else f"valid keys: {', '.join(names)}"
    return f"unknown key '{key}'; {hint}"


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """A YAML file that must hold a mapping; any problem is one UsageError line naming the file."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{p}: config file not found; pass an existing YAML file to --config")
    try:
        body = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise UsageError(f"{p}: not valid YAML ({str(e).splitlines()[0]}); fix the file") from None
    if not isinstance(body, dict):
        raise UsageError(f"{p}: a config file must be a mapping of option: value")
    return body


def load_yaml(path: str | os.PathLike | None, command: str | None = None) -> dict[str, Any]:
    """Read and check a YAML options file: unknown keys and wrong types are one-line UsageErrors.

    Keys of options that other commands take are accepted and ignored here, so one file can
    feed every stage.
    """
    if path is None:
        return {}
    p, body = Path(path), read_yaml(path)
    out: dict[str, Any] = {}
    for k, v in body.items():
        key = str(k).replace("-", "_")
        o = OPTIONS.get(key)
        if o is None or not o.yaml:
            raise UsageError(f"{p}: {suggest(key, command)}")
        if command and not o.takes(command):
            continue
        if o.kind is float and isinstance(v, str) and _FLOAT.fullmatch(v.strip()):
            v = float(v)  # YAML 1.1 reads 1e-3 (no dot) as text; to the user it is a number
        msg, v = _check(o, v)
        if msg:
            raise UsageError(f"{p}: {msg}")
        out[key] = v
    return out


def resolve(command: str, yaml_layer: Mapping[str, Any] | None, cli_layer: Mapping[str, Any] | None,
            base: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Every option of ``command``: defaults < ``base`` (a dataset's own defaults) < YAML < command line,
    checked; a missing required one is an error."""
    values: dict[str, Any] = {}
    for o in options_for(command):
        v = o.default
        for layer in (base or {}, yaml_layer or {}, cli_layer or {}):
            if layer.get(o.name) is not None and layer.get(o.name) != ():
                v = layer[o.name]
        values[o.name] = coerce(o.name, v) if v is not None else None
        if values[o.name] is None and command in o.required:
            raise UsageError(f"{command} needs {o.cli} (on the command line or as '{o.name}:' in --config)")
    return values


# --- config dataclasses ----------------------------------------------------------------------------


def config(group: str) -> Callable[[type[T]], type[T]]:
    """Class decorator: the frozen dataclass of ``group``'s options, checked on construction.

    The decorated class holds only methods; ``check(self) -> list[str]`` may add
    complaints that involve several options. Every field is checked by :func:`coerce`.
    """
    def wrap(cls: type[T]) -> type[T]:
        opts = group_options(group)
        ann = {o.name: _annotation(o) for o in opts}
        cls.__annotations__ = ann
        for o in opts:
            setattr(cls, o.name, field(default=o.default))
        user_check = getattr(cls, "check", None)

        def __post_init__(self: Any) -> None:
            bad = []
            for o in opts:
                msg, v = _check(o, getattr(self, o.name))
                if msg:
                    bad.append(msg)
                else:
                    object.__setattr__(self, o.name, v)
            if not bad and user_check is not None:
                bad = list(user_check(self))
            if bad:
                raise UsageError(f"bad {group} option: " + "; ".join(bad))

        cls.__post_init__ = __post_init__  # type: ignore[attr-defined]
        return dataclass(frozen=True)(cls)
    return wrap


def _annotation(o: Option) -> str:
    base = {int: "int", float: "float", bool: "bool", str: "str", "path": "str"}[o.kind]
    if o.multiple:
        base = f"tuple[{base}, ...]"
    return f"{base} | None" if o.nullable or o.default is None else base


def build(cls: type[T], *layers: Mapping[str, Any] | None) -> T:
    """``cls`` from layered mappings (later wins; None is skipped). Keys ``cls`` lacks are ignored."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    for layer in layers:
        for k, v in (layer or {}).items():
            k = k.replace("-", "_")
            if k in names and v is not None:
                values[k] = v
    return cls(**values)


def as_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


# --- the command line and the README -----------------------------------------------------------------


def click_options(command: str) -> Callable[[Callable], Callable]:
    """Decorator adding every option of ``command`` to a click command.

    Each click option carries the schema default, so ``--help`` shows it; :func:`typed`
    keeps only what the user typed, so a default never hides a YAML value.
    """
    import click

    def deco(f: Callable) -> Callable:
        for o in reversed(options_for(command)):
            if o.kind is bool and o.name != "resume":
                f = click.option(f"{o.cli}/--no-{o.cli[2:]}", o.name, **_click_kwargs(o))(f)
            else:
                f = click.option(o.cli, o.name, **_click_kwargs(o))(f)
        return f
    return deco


def typed(kw: Mapping[str, Any]) -> dict[str, Any]:
    """The options of the running click command that came from the command line (not defaults)."""
    import click
    from click.core import ParameterSource

    ctx = click.get_current_context()
    return {k: v for k, v in kw.items() if ctx.get_parameter_source(k) not in (ParameterSource.DEFAULT, None)}


def _click_kwargs(o: Option) -> dict[str, Any]:
    import click

    shown = o.default is not None and o.default != () and o.name != "resume"
    kw: dict[str, Any] = {"default": o.default, "help": o.help, "show_default": shown}
    ch = o.choice_list()
    if o.name == "resume":  # a switch, not a setting
        return {"is_flag": True, "default": False, "help": o.help}
    if o.kind is bool:
        return kw
    if ch:
        kw["type"] = click.Choice(ch)
    elif o.kind == "path":
        kw["type"] = click.Path()
    elif o.kind in (int, float) and (o.min is not None or o.max is not None):
        rng = click.IntRange if o.kind is int else click.FloatRange
        kw["type"] = rng(o.min, o.max, min_open=o.min_open, max_open=o.max_open)
    else:
        kw["type"] = o.kind
    if o.multiple:
        kw["multiple"] = True
    return kw


def default_text(o: Option) -> str:
    """The default as the README shows it ('' when there is none)."""
    d = o.default
    if d is None or d == () or o.name == "resume":
        return ""
    if isinstance(d, tuple):
        return ", ".join(map(str, d))
    if isinstance(d, bool):  # click names the flag that is on by default
        return o.cli[2:] if d else "no-" + o.cli[2:]
    return str(d)


def options_table() -> str:
    """The README's options table, generated from :data:`OPTIONS`."""
    rows = ["| option | commands | value | default | what it does |", "|---|---|---|---|---|"]
    for o in _DECLARED:
        cmds = [c for c in COMMANDS if o.takes(c)]
        d = default_text(o)
        rows.append(f"| `{o.cli}` | {', '.join(cmds)} | {o.expected()} | {f'`{d}`' if d else ''} "
                    f"| {o.help.replace('|', '/')} |")
    return "\n".join(rows) + "\n"
