#!/usr/bin/env python
"""har_vit command line: one command per stage, plus the whole job.

Each command parses options, builds frozen configs (defaults < --config YAML < CLI),
calls one stage function and prints where the result went. No logic lives here.
A HarVitError becomes one line on stderr and its exit code; a traceback means a bug.
"""
from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any, Callable

import click

from har_vit.core.errors import HarVitError

HELP = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def resolve(command: str, kw: dict[str, Any]) -> dict[str, Any]:
    """Every option of ``command``: schema defaults < --config YAML < what was typed, with workspace paths."""
    from har_vit.core import schema
    from har_vit.core.workspace import Workspace

    given = schema.typed(kw)
    yaml_layer = schema.load_yaml(given.pop("config", None), command)
    values = schema.resolve(command, yaml_layer, given, base=dataset_defaults(command, {**yaml_layer, **given}))
    if values.get("trust"):
        from har_vit.core.checkpoint import TRUST

        TRUST.set(True)
    return Workspace.at(values.get("workdir")).fill(values, command)


def dataset_defaults(command: str, chosen: dict[str, Any]) -> dict[str, Any]:
    """The training defaults of the dataset ``command`` works on (``har_vit.datasets.TRAIN_DEFAULTS``),
    and one line on stderr naming those the user did not set. ``train`` learns the dataset from the
    manifest of its --in windows; an unreadable one brings none (the train stage reports it)."""
    from har_vit.core import schema
    from har_vit.datasets import TRAIN_DEFAULTS, windows_dataset

    if command == "train":
        name = windows_dataset(chosen.get("in_dir"))
    elif schema.OPTIONS["dataset"].takes(command):
        name = chosen.get("dataset") or schema.OPTIONS["dataset"].default
    else:
        return {}
    layer = {k: v for k, v in TRAIN_DEFAULTS.get(name, {}).items() if schema.OPTIONS[k].takes(command)}
    used = [f"{schema.OPTIONS[k].cli} {v:g}" if isinstance(v, float) else f"{schema.OPTIONS[k].cli} {v}"
            for k, v in layer.items() if chosen.get(k) is None]
    if used:
        click.echo(f"{command}: {name} data, so its defaults {' '.join(used)} (measured: see the README's accuracy "
                   "section; give the option to override)", err=True)
    return layer


def say(lines: list[str]) -> None:
    """The end-of-command summary, on stdout (progress and warnings go to stderr)."""
    click.echo("\n".join(lines))


def model_folder(v: dict[str, Any]) -> Path:
    """The trained model's folder behind --run: a run folder, any folder inside it, a stored id or production."""
    from har_vit.core.registry import Registry
    from har_vit.core.workspace import Workspace

    runs = Workspace.at(v.get("workdir")).runs
    if v.get("registry"):
        return Registry(v["registry"]).resolve(v["run"] or "production", runs)
    from har_vit.core.runs import find_model_dir

    return find_model_dir(v["run"], runs)


def options(command: str) -> Callable[[Callable], Callable]:
    from har_vit.core.schema import click_options

    return click_options(command)


def handle_errors(f: Callable) -> Callable:
    """Turn a HarVitError into one line on stderr and its exit code."""
    @functools.wraps(f)
    def wrapper(*a: Any, **kw: Any) -> Any:
        try:
            return f(*a, **kw)
        except HarVitError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(e.exit_code)
        except OSError as e:  # a write outside the io helpers (disk full, no permission): still one line
            from har_vit.core.io import DISK_ERRNOS

            if e.errno not in DISK_ERRNOS:
                raise
            click.echo(f"error: {e.filename or ''}: cannot write ({e.strerror}); free space, fix permissions or "
                       "choose another output folder", err=True)
            sys.exit(1)
    return wrapper


@click.group(context_settings=HELP)
@click.version_option(package_name="har_vit", message="har_vit %(version)s")
def cli() -> None:
    """Human-activity recognition from WISDM accelerometer logs with a patch-merging 1D ViT.

    \b
    Whole job:   python pipeline.py run --dataset wisdm
    Stage by stage:
      python pipeline.py ingest  --dataset wisdm2019 --data-path ../shared/data/wisdm2019 --out runs/x/ingest
      python pipeline.py windows --in runs/x/ingest --out runs/x/windows
      python pipeline.py train   --in runs/x/windows --out runs/x/model
      python pipeline.py evaluate --run runs/x/model
      python pipeline.py report  --run runs/x/model
    """


@cli.command(context_settings=HELP)
@options("ingest")
@handle_errors
def ingest(**kw: Any) -> None:
    """Parse raw WISDM logs; every record is kept or quarantined with a reason.

    \b
    Example:
      python pipeline.py ingest --dataset wisdm2019 --data-path ../shared/data/wisdm2019 --out runs/x/ingest
    """
    from har_vit.core.schema import build
    from har_vit.stages import ingest as stage

    from har_vit.core.summary import command_summary

    v = resolve("ingest", kw)
    m = stage.run(build(stage.IngestConfig, v), v["out"])
    q = sum(m["records_quarantined"].values())
    out = Path(v["out"])
    say(command_summary(
        f"ingest of {v['dataset']}: {m['records_kept']:,} of {m['records_total']:,} records kept, {q:,} quarantined "
        f"({', '.join(f'{k}: {n}' for k, n in m['records_quarantined'].items()) or 'none'})",
        extra=(f"written: {out} (records.npz, quarantine.csv, manifest.json)",),
        next_step=f"python pipeline.py windows --in {out} --out {out.parent / 'windows'}"))


@cli.command(context_settings=HELP)
@options("windows")
@handle_errors
def windows(**kw: Any) -> None:
    """Cut records into windows inside bouts (no window crosses a user, activity or gap).

    \b
    Examples:
      python pipeline.py windows --in runs/x/ingest --out runs/x/windows
      python pipeline.py windows --dataset npz --data-path my_windows.npz --out runs/y/windows
    """
    from har_vit.core.errors import UsageError
    from har_vit.core.schema import build
    from har_vit.stages import windows as stage

    v = resolve("windows", kw)
    cfg = build(stage.WindowConfig, v)
    is_npz = str(v["data_path"] or "").lower().endswith(".npz")
    if not v["in_dir"] and is_npz and v.get("dataset") not in ("npz", "wisdm"):  # wisdm: the default, so not a choice
        raise UsageError(f"--dataset {v['dataset']} with --data-path {v['data_path']}: an .npz holds windows; pass "
                         f"--dataset npz to import it, or ingest the {v['dataset']} logs first (python pipeline.py "
                         f"ingest --dataset {v['dataset']} --data-path ...)")
    if v["in_dir"]:
        m = stage.run(cfg, v["in_dir"], v["out"])
    elif v.get("dataset") == "npz" or is_npz:
        from har_vit import datasets
        from har_vit.core.workspace import Workspace
        from har_vit.stages.ingest import IngestConfig

        # The same checks and messages as ingest and run give for --dataset npz.
        ing = build(IngestConfig, {"data_dir": Workspace.at(v.get("workdir")).data}, v, {"progress": False})
        source = datasets.resolve("npz", ing.dataset_options())
        m = stage.import_npz(cfg, source.windows_npz, v["out"])
    elif v["data_path"]:
        raise UsageError(f"windows reads windows, not raw logs: for {v['data_path']} run ingest first (python "
                         "pipeline.py ingest --dataset ... --data-path ...), or pass --dataset npz for an .npz of windows")
    else:
        raise UsageError("give --in INGEST_FOLDER (or --dataset npz --data-path FILE.npz)")
    from har_vit.core.summary import command_summary

    out = Path(v["out"])
    say(command_summary(f"windows: {m['windows_total']:,} windows of {m['window']} (step {m['step']})",
                        extra=(f"written: {out}",),
                        next_step=f"python pipeline.py train --in {out} --out {out.parent / 'model'}"))


@cli.command(context_settings=HELP)
@options("train")
@handle_errors
def train(**kw: Any) -> None:
    """Train a model on the train split; select and stop early on validation only.

    \b
    Example:
      python pipeline.py train --in runs/x/windows --out runs/x/model --model seed --epochs 30
      python pipeline.py train --in runs/x/windows --out runs/x/student --model tiny --teacher runs/x/model
      python pipeline.py train --in runs/y/windows --out runs/y/ft --init runs/x/model --freeze-epochs 5
      torchrun --nproc_per_node 2 pipeline.py train --in runs/x/windows --out runs/x/model
    """
    import os

    from har_vit.core.schema import build
    from har_vit.stages import train as stage

    from har_vit.core.summary import command_summary

    v = resolve("train", kw)
    m = stage.run(build(stage.TrainConfig, v), v["in_dir"], v["out"], resume=v["resume"])
    if os.environ.get("RANK", "0") == "0":  # under torchrun every rank returns; rank 0 speaks
        say(command_summary(
            f"train: {m['model']} on {m['device']}, {m['epochs_run']} epochs, best val macro F1 "
            f"{m['best_val_macro_f1']:.4f} (epoch {m['best_epoch']}; validation users only, the test split untouched)"
            + ("" if v["serve"] == "best" else f"; the run serves last.pt (epoch {m['epochs_run']})"),
            run_dir=v["out"], next_step=f"python pipeline.py evaluate --run {v['out']}"))


@cli.command(context_settings=HELP)
@options("evaluate")
@handle_errors
def evaluate(**kw: Any) -> None:
    """Metrics on the test split, efficiency (params, FLOPs, latency) and plots.

    \b
    Example:
      python pipeline.py evaluate --run runs/x/model
    """
    from har_vit.core.schema import build
    from har_vit.stages import evaluate as stage

    from har_vit.core.summary import command_summary, evaluated, run_folder

    v = resolve("evaluate", kw)
    model_dir = model_folder(v)
    m = stage.run(build(stage.EvalConfig, v), model_dir)
    _, dataset = evaluated(model_dir)
    say(command_summary(f"evaluate: {m['n_test']:,} test windows -> {model_dir / stage.EVAL_DIR}", m,
                        run_dir=run_folder(model_dir), dataset=dataset,
                        next_step=f"python pipeline.py report --run {run_folder(model_dir)}"))


@cli.command(context_settings=HELP)
@options("report")
@handle_errors
def report(**kw: Any) -> None:
    """Write <reports>/<run id>/report.md and report.html, and refresh <reports>/index.html.

    \b
    Example:
      python pipeline.py report --run runs/x/model
    """
    from har_vit.stages import report as stage

    from har_vit.core.summary import command_summary, evaluated, run_folder

    v = resolve("report", kw)
    model_dir = model_folder(v)
    page = stage.run(model_dir, v["reports_dir"], v["report_name"])
    m, dataset = evaluated(model_dir)
    say(command_summary(f"report of {run_folder(model_dir).name} (index: {Path(v['reports_dir']) / 'index.html'})", m,
                        run_dir=run_folder(model_dir), report=page, dataset=dataset))


@cli.command(context_settings=HELP)
@options("run")
@handle_errors
def run(**kw: Any) -> None:
    """The whole job: find or download the data, ingest, windows, train, evaluate, report.

    \b
    Everything goes under the workspace (--workdir, $HAR_VIT_HOME or the current folder):
    the run in runs/<run id>/, its report in reports/, the model in the registry models/.
    With --out D the run and its report go under D.
    Examples:
      python pipeline.py run --dataset wisdm
      python pipeline.py run --dataset wisdm2019 --data-path ../shared/data/wisdm2019 --epochs 20
      python pipeline.py run --dataset npz --data-path ../shared/data/wisdm_v1.1/wisdm_v1.1_windows128.npz
    """
    from har_vit.stages import job

    from har_vit.core.summary import command_summary, evaluated

    result = job.run(resolve("run", kw), echo=lambda s: click.echo(s, err=True))
    _, dataset = evaluated(result.model_dir)
    say(command_summary(f"run {result.run_id}: ingest, windows, train, evaluate, report", result.metrics,
                        run_dir=result.out, report=result.report, dataset=dataset))


@cli.command(context_settings=HELP)
@options("retrain")
def retrain(**kw: Any) -> None:
    """Train a candidate and promote it only if it is not worse than production (for cron).

    \b
    Exit codes: 0 finished (promoted, kept or skipped: said on stdout and in
    <registry>/retrain_history.jsonl), 75 another retrain holds the lock,
    1 failure, 2 bad usage.
    Example (cron, nightly at 03:00):
      0 3 * * *  /srv/har_vit/.venv/bin/python /srv/har_vit/pipeline.py retrain --workdir /srv/har_vit --dataset wisdm
    """
    from har_vit.stages import retrain as stage

    try:
        result = stage.run(resolve("retrain", kw), echo=lambda s: click.echo(s, err=True))
    except HarVitError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
    from har_vit.core.summary import command_summary, evaluated

    m, dataset = evaluated(Path(result.run_dir) / "model") if result.run_dir else (None, None)
    say(command_summary(f"retrain {result.status}: {result.message}", m, run_dir=result.run_dir,
                        report=result.report, dataset=dataset))
    sys.exit(result.exit_code)


@cli.command(context_settings=HELP)
@options("predict")
@handle_errors
def predict(**kw: Any) -> None:
    """Predict the activity of every window of new logs (the activity column may be absent).

    \b
    Example:
      python pipeline.py predict --run production --data-path new_log.txt --out predictions.csv
    """
    from har_vit.core.schema import build
    from har_vit.core.summary import command_summary, run_folder
    from har_vit.stages import predict as stage
    from har_vit.stages.report import model_label

    v = resolve("predict", kw)
    model_dir = model_folder(v)
    m = stage.run(build(stage.PredictConfig, v), model_dir, v["data_path"], v["out"])
    for w in m.get("warnings", []):
        click.echo(f"warning: {w}", err=True)
    q = sum(m["records_quarantined"].values())
    top = sorted(m["per_predicted"].items(), key=lambda kv: -kv[1])[:3]
    trained = f"; the training windows had step {m['training_step']}" if m.get("training_step") else ""
    say(command_summary(
        f"predict: {m['windows_total']:,} windows of {m['window']} samples, step {m['step']}{trained}, from "
        f"{m['records_kept']:,} of {m['records_total']:,} records ({q:,} quarantined) with {model_label(m)} "
        f"(run {m['run_id']}) on {m['runtime']}",
        run_dir=run_folder(model_dir),
        extra=("most predicted: " + ", ".join(f"{k} {n:,}" for k, n in top),
               f"written: {v['out']} (one row per window), {stage.sidecar(v['out'], 'quarantine.csv')}")))


@cli.command(context_settings=HELP)
@options("export")
@handle_errors
def export(**kw: Any) -> None:
    """Export a model (normalisation built in) and check its logits against PyTorch.

    \b
    Example:
      python pipeline.py export --run production --format onnx --out exported/
    """
    from har_vit.core.schema import build
    from har_vit.core.summary import command_summary, run_folder
    from har_vit.stages import export as stage

    v = resolve("export", kw)
    cfg = build(stage.ExportConfig, v)
    model_dir = model_folder(v)
    m = stage.run(cfg, model_dir, v["out"])
    for w in m.get("warnings", []):
        click.echo(f"warning: {w}", err=True)
    say(command_summary(f"export: {cfg.format}, max |logit diff| {m['max_abs_diff']:.2e} <= {m['tolerance']:.0e} "
                        f"against PyTorch on {m['n_windows']} windows ({m['parity_data']}; {m['runtime']})",
                        run_dir=run_folder(model_dir), extra=(f"written: {Path(v['out']) / m['file']}",)))


@cli.command(context_settings=HELP)
@options("cv")
@handle_errors
def cv(**kw: Any) -> None:
    """Cross-validation grouped by user: every fold for every seed, one results row (DIR/cv.json).

    \b
    The sorted user ids are cut into --folds groups; each is the test set once. The models
    train together as stacked models (each as it would alone, to float tolerance), on the
    CPU in twice as many processes as threads (--workers), on CUDA in one; --sequential: one after
    another. A rerun keeps the finished ones.
    Example (the cv6 protocol of bench/bench_accuracy.py, 18 models):
      python pipeline.py cv --dataset npz --data-path ../shared/data/wisdm_v1.1/wisdm_v1.1_windows128.npz --folds 6 --seeds 0 --seeds 1 --seeds 2 --out cv6/
    """
    import shlex

    from har_vit.core.summary import command_summary
    from har_vit.stages import cv as stage

    result = stage.run(resolve("cv", kw), echo=lambda s: click.echo(s, err=True),
                       command=shlex.join(["python", "pipeline.py", *sys.argv[1:]]))
    row = result["rows"][0]
    say(command_summary(
        f"cv: {len(row['per_seed'])} models ({len(result['folds'])} folds grouped by user x {len(result['seeds'])} "
        f"seeds, trained {_how_stacked(result)}) in "
        f"{result['seconds']:.0f} s",
        extra=(f"accuracy {row['accuracy_mean']:.4f} ± {row['accuracy_std']:.4f}, macro F1 {row['macro_f1_mean']:.4f} "
               f"± {row['macro_f1_std']:.4f} ({row['model']}, recipe {row['recipe']}, mean ± sd over every fold "
               "and seed; each fold's test users unseen in its training)",
               f"written: {Path(result['out']) / stage.CV_JSON} (one row in the format of bench/results/accuracy.json)"),
        run_dir=result["out"]))


def _how_stacked(result: dict[str, Any]) -> str:
    """How cv or sweep trained its models, for the summary line."""
    if not result["stacked"]:
        return "one after another"
    procs = result.get("processes") or {}
    if procs.get("workers", 1) > 1:
        return (f"in {procs['workers']} processes (stacks of {' + '.join(map(str, procs['models']))} models, "
                f"{procs['threads']} threads in all)")
    return "together as one stacked model"


@cli.command(context_settings=HELP)
@click.option("--config", "config", type=click.Path(dir_okay=False), required=True, help="Sweep file (YAML).")
@handle_errors
def sweep(config: str) -> None:
    """Grid or random search over train options with several seeds; chooses by validation only.

    \b
    Example (sweep.yaml: windows, out, split: subject|loso, seeds, base, grid or random):
      python pipeline.py sweep --config sweep.yaml
    """
    from har_vit.core.schema import read_yaml
    from har_vit.stages import sweep as stage

    from har_vit.core.summary import command_summary

    result = stage.run(stage.SweepSpec.from_mapping(read_yaml(config)), echo=lambda s: click.echo(s, err=True))
    best = next(r for r in result["rows"] if r["name"] == result["chosen"])
    out = Path(read_yaml(config)["out"])
    say(command_summary(
        f"sweep of {len(result['rows'])} settings x {len(result['seeds'])} seeds ({result['split']} split, "
        f"{result['seconds']:.0f} s): chose {result['chosen']} by {result['chosen_by']}",
        extra=(f"chosen: val macro F1 {best['val_macro_f1_mean']:.4f} ± {best['val_macro_f1_std']:.4f}, test accuracy "
               f"{best['test_accuracy_mean']:.4f} ± {best['test_accuracy_std']:.4f}, test macro F1 "
               f"{best['test_macro_f1_mean']:.4f} ± {best['test_macro_f1_std']:.4f}",
               f"trained now: {result['trained_now']} runs"
               + (f" ({' + '.join(map(str, result['stacked']))} of them together as stacked models)"
                  if result["stacked"] else ""),
               f"table: {out / 'table.md'} (all settings; sweep.json, table.csv beside it)")))


@cli.command(context_settings=HELP)
def models() -> None:
    """List the model variants with their parameter counts at 128 x 3, 6 classes."""
    from har_vit.core.schema import OPTIONS
    from har_vit.model import create_model, list_models

    default = OPTIONS["model"].default
    for name in list_models(classical=False):
        m = create_model(name)
        click.echo(f"{name:12s} {sum(p.numel() for p in m.parameters()):>12,} params"
                   + ("        the default --model" if name == default else ""))
    click.echo(f"{'rf':12s} {'fitted':>12s}        random forest (300 trees) on per-window statistics: the classical baseline")


@cli.command(context_settings=HELP)
@options("doctor")
@handle_errors
def doctor(**kw: Any) -> None:
    """Say what run would use and where it would write; probe every part; download nothing.

    \b
    One line per check: ok, info, warn, missing (optional part: how to install it) or fail.
    Exit codes: 0 run has every required part, 1 a required one is missing or broken
    (the last line says what to fix), 2 bad usage.
    Examples:
      python pipeline.py doctor
      python pipeline.py doctor --workdir /srv/har_vit --dataset wisdm2019 --data-path ../shared/data/wisdm2019
    """
    from har_vit.stages import doctor as stage

    report = stage.run(resolve("doctor", kw), echo=click.echo)
    report.raise_if_failed()
    click.echo(f"doctor: {report.summary()}")


def main() -> None:
    """Run the CLI; a usage error (unknown option, bad value) is one line and exit 2, like a HarVitError."""
    try:
        rc = cli.main(prog_name="pipeline.py", standalone_mode=False)
    except click.UsageError as e:
        hint = f" (see 'pipeline.py {e.ctx.info_name} --help')" if e.ctx and e.ctx.parent else ""
        click.echo(f"error: {e.format_message()}{hint}", err=True)
        sys.exit(e.exit_code)
    except click.ClickException as e:
        click.echo(f"error: {e.format_message()}", err=True)
        sys.exit(e.exit_code)
    except click.Abort:
        click.echo("error: aborted", err=True)
        sys.exit(1)
    sys.exit(rc if isinstance(rc, int) else 0)


if __name__ == "__main__":
    main()
