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


def _cli_layer(kw: dict[str, Any]) -> dict[str, Any]:
    """Options the user actually gave (click passes None for the others)."""
    return {k: v for k, v in kw.items() if v is not None and v != ()}


def _layers(kw: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    from har_vit.core.config import load_yaml

    return load_yaml(kw.pop("config", None)), _cli_layer(kw)


# Options shared by every command that takes them, so they read the same everywhere.
def opt_config(f: Callable) -> Callable:
    return click.option("--config", type=click.Path(dir_okay=False), help="YAML file of options (the command line wins).")(f)


def opts_data(f: Callable) -> Callable:
    f = click.option("--data-dir", type=click.Path(file_okay=False), help="Where downloads and data live [data].")(f)
    f = click.option("--sensor-device", type=click.Choice(["phone", "watch"]), help="wisdm2019: phone or watch accelerometer [phone].")(f)
    f = click.option("--subjects", type=int, multiple=True, help="wisdm2019: only these subject ids (repeat the option).")(f)
    f = click.option("--data-path", type=click.Path(), help="Archive, folder or raw log (.txt/.txt.gz); .npz for --dataset npz.")(f)
    return click.option("--dataset", type=str, help="wisdm (v1.1), wisdm2019 or npz [wisdm].")(f)


def opts_windows(f: Callable) -> Callable:
    f = click.option("--window", type=int, help="Samples per window [128].")(f)
    f = click.option("--step", type=int, help="Samples between window starts [64].")(f)
    return click.option("--gap-s", type=float, help="A step over this many seconds ends a bout [1.0].")(f)


def opts_train(f: Callable) -> Callable:
    f = click.option("--model", type=str, help="Model variant (see `pipeline.py models`).")(f)
    f = click.option("--epochs", type=int, help="Training epochs.")(f)
    f = click.option("--batch-size", type=int, help="Global batch size.")(f)
    f = click.option("--lr", type=float, help="Peak learning rate (AdamW).")(f)
    f = click.option("--split", type=click.Choice(["subject", "seed", "random", "loso"]), help="Split protocol [subject].")(f)
    f = click.option("--test-users", type=int, multiple=True, help="subject split: these users are the test set.")(f)
    f = click.option("--fold", type=int, help="loso split: index of the held-out user.")(f)
    f = click.option("--seed", type=int, help="Random seed for split, init and shuffling [0].")(f)
    f = click.option("--threads", type=int, help="CPU threads for torch [torch's default].")(f)
    return click.option("--device", type=click.Choice(["auto", "cuda", "cpu"]), help="Where to train [auto: CUDA when present].")(f)


def opt_registry(f: Callable) -> Callable:
    return click.option("--registry", type=click.Path(file_okay=False), default="models", show_default=True,
                        help="Model registry folder (stored runs and the production pointer).")(f)


def opts_levers(f: Callable) -> Callable:
    """Accuracy levers: augmentation (light, on by default), distillation, warm start."""
    for name, kind, text in reversed([
        ("--jitter", float, "Augment: std of Gaussian noise (normalised units) [0.05; 0 turns it off]."),
        ("--scale", float, "Augment: std of a per-axis gain around 1 [0.1; 0 off]."),
        ("--rotate", float, "Augment: max angle (degrees) of a random 3D rotation of the axes [30; 0 off]."),
        ("--time-warp", float, "Augment: strength of a smooth random time warp [0.1; 0 off]."),
        ("--mixup", float, "Augment: Mixup Beta alpha."),
        ("--cutmix", float, "Augment: CutMix (along time) Beta alpha."),
        ("--erase", float, "Augment: probability of erasing each patch."),
        ("--teacher", str, "Distil from this trained run (folder); it is never trained."),
        ("--distill", click.Choice(["soft", "hard"]), "Distillation targets [soft: KL at a temperature]."),
        ("--distill-alpha", float, "Weight of the distillation term [0.5]."),
        ("--distill-temperature", float, "Softmax temperature of soft distillation [4]."),
        ("--init", str, "Start from this trained run's weights, or a state_dict saved by the article's code (the head is replaced)."),
        ("--freeze-epochs", int, "With --init: keep the copied layers frozen this many epochs."),
        ("--label-smoothing", float, "Label smoothing of the cross-entropy."),
        ("--patience", int, "Early stopping: epochs without a better validation macro F1 [10]; 0 turns it off."),
    ]):
        f = click.option(name, type=kind, help=text)(f)
    return f


def handle_errors(f: Callable) -> Callable:
    """Turn a HarVitError into one line on stderr and its exit code."""
    @functools.wraps(f)
    def wrapper(*a: Any, **kw: Any) -> Any:
        try:
            return f(*a, **kw)
        except HarVitError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(e.exit_code)
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
@opt_config
@opts_data
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Output folder of the ingest stage.")
@handle_errors
def ingest(out: str, **kw: Any) -> None:
    """Parse raw WISDM logs; every record is kept or quarantined with a reason.

    \b
    Example:
      python pipeline.py ingest --dataset wisdm2019 --data-path ../shared/data/wisdm2019 --out runs/x/ingest
    """
    from har_vit.stages import ingest as stage
    from har_vit.core.config import build

    cfg = build(stage.IngestConfig, *_layers(kw))
    m = stage.run(cfg, out)
    q = sum(m["records_quarantined"].values())
    click.echo(f"ingest: {m['records_kept']:,} of {m['records_total']:,} records kept, {q:,} quarantined "
               f"({', '.join(f'{k}: {v}' for k, v in m['records_quarantined'].items()) or 'none'}) -> {out}")


@cli.command(context_settings=HELP)
@opt_config
@click.option("--in", "in_dir", type=click.Path(file_okay=False), help="Ingest output folder.")
@click.option("--dataset", type=str, help="Only `npz`: import pre-windowed arrays from --data-path.")
@click.option("--data-path", type=click.Path(), help="With --dataset npz: the .npz file (X, y, subject, class_names).")
@opts_windows
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Output folder of the windows stage.")
@handle_errors
def windows(in_dir: str | None, dataset: str | None, data_path: str | None, out: str, **kw: Any) -> None:
    """Cut records into windows inside bouts (no window crosses a user, activity or gap).

    \b
    Examples:
      python pipeline.py windows --in runs/x/ingest --out runs/x/windows
      python pipeline.py windows --dataset npz --data-path my_windows.npz --out runs/y/windows
    """
    from har_vit.stages import windows as stage
    from har_vit.core.config import build
    from har_vit.core.errors import UsageError

    cfg = build(stage.WindowConfig, *_layers(kw))
    if dataset == "npz" or (data_path and not in_dir):
        if not data_path:
            raise UsageError("--dataset npz needs --data-path FILE.npz")
        m = stage.import_npz(cfg, data_path, out)
    elif in_dir:
        m = stage.run(cfg, in_dir, out)
    else:
        raise UsageError("give --in INGEST_FOLDER (or --dataset npz --data-path FILE.npz)")
    click.echo(f"windows: {m['windows_total']:,} windows of {m['window']} (step {m['step']}) -> {out}")


@cli.command(context_settings=HELP)
@opt_config
@click.option("--in", "in_dir", type=click.Path(file_okay=False), required=True, help="Windows folder.")
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Run folder for checkpoints and history.")
@opts_train
@opts_levers
@click.option("--resume", is_flag=True, help="Continue a killed run from its last checkpoint in --out.")
@handle_errors
def train(in_dir: str, out: str, resume: bool, **kw: Any) -> None:
    """Train a model on the train split; select and stop early on validation only.

    \b
    Example:
      python pipeline.py train --in runs/x/windows --out runs/x/model --model seed --epochs 30
      python pipeline.py train --in runs/x/windows --out runs/x/student --model tiny --teacher runs/x/model
      python pipeline.py train --in runs/y/windows --out runs/y/ft --init runs/x/model --freeze-epochs 5
      torchrun --nproc_per_node 2 pipeline.py train --in runs/x/windows --out runs/x/model
    """
    from har_vit.stages import train as stage
    from har_vit.core.config import build

    cfg = build(stage.TrainConfig, *_layers(kw))
    import os

    m = stage.run(cfg, in_dir, out, resume=resume)
    if os.environ.get("RANK", "0") == "0":  # under torchrun every rank returns; rank 0 speaks
        click.echo(f"train: {m['model']} on {m['device']}, best val macro F1 {m['best_val_macro_f1']:.4f} "
                   f"(epoch {m['best_epoch']}) -> {out}")


@cli.command(context_settings=HELP)
@opt_config
@click.option("--run", "run_dir", type=click.Path(file_okay=False), required=True, help="Train run folder.")
@click.option("--device", type=click.Choice(["auto", "cuda", "cpu"]), help="Where to measure [auto].")
@click.option("--latency-repeats", type=int, help="Timed runs per latency figure [100].")
@click.option("--baseline", type=click.Choice(["rf", "none"]),
              help="Fit the random-forest baseline on the run's split and score it beside the model [rf].")
@handle_errors
def evaluate(run_dir: str, **kw: Any) -> None:
    """Metrics on the test split, efficiency (params, FLOPs, latency) and plots.

    \b
    Example:
      python pipeline.py evaluate --run runs/x/model
    """
    from har_vit.stages import evaluate as stage
    from har_vit.core.config import build

    cfg = build(stage.EvalConfig, *_layers(kw))
    m = stage.run(cfg, run_dir)
    click.echo(f"evaluate: accuracy {m['accuracy']:.4f}, macro F1 {m['macro_f1']:.4f} on {m['n_test']:,} test windows "
               f"({m['split']['protocol']} split) -> {Path(run_dir) / 'eval'}")


@cli.command(context_settings=HELP)
@click.option("--run", "run_dir", type=click.Path(file_okay=False), required=True, help="Evaluated train run folder.")
@click.option("--reports", "reports_dir", type=click.Path(file_okay=False), default="reports", show_default=True)
@click.option("--run-id", type=str, help="Report folder name [the run's id].")
@handle_errors
def report(run_dir: str, reports_dir: str, run_id: str | None) -> None:
    """Write reports/<run_id>/report.md and report.html, and refresh reports/index.html.

    \b
    Example:
      python pipeline.py report --run runs/x/model
    """
    from har_vit.stages import report as stage

    path = stage.run(run_dir, reports_dir, run_id)
    click.echo(f"report: {path}")


@cli.command(context_settings=HELP)
@opt_config
@opts_data
@opts_windows
@opts_train
@opts_levers
@click.option("--out", type=click.Path(file_okay=False), help="Run folder [runs/<run_id>].")
@click.option("--reports", "reports_dir", type=click.Path(file_okay=False), help="Reports folder [reports].")
@opt_registry
@handle_errors
def run(registry: str, **kw: Any) -> None:
    """The whole job: find or download the data, ingest, windows, train, evaluate, report.

    \b
    Examples:
      python pipeline.py run --dataset wisdm
      python pipeline.py run --dataset wisdm2019 --data-path ../shared/data/wisdm2019 --epochs 20
      python pipeline.py run --dataset npz --data-path ../shared/data/wisdm_v1.1/wisdm_v1.1_windows128.npz
    """
    from har_vit.stages import job

    yaml_layer, cli_layer = _layers(kw)
    result = job.run(yaml_layer, cli_layer, echo=lambda s: click.echo(s, err=True), registry=registry)
    click.echo(result.report)


@cli.command(context_settings=HELP)
@opt_config
@opts_data
@opts_windows
@opts_train
@opts_levers
@click.option("--tolerance", type=float, default=0.01, show_default=True,
              help="Promote when candidate macro F1 >= production's minus this.")
@click.option("--reports", "reports_dir", type=click.Path(file_okay=False), help="Reports folder [reports].")
@opt_registry
def retrain(registry: str, tolerance: float, **kw: Any) -> None:
    """Train a candidate and promote it only if it is not worse than production (for cron).

    \b
    Exit codes: 0 finished (promoted, kept or skipped: said on stdout and in
    <registry>/retrain_history.jsonl), 75 another retrain holds the lock,
    1 failure, 2 bad usage.
    Example (cron, nightly at 03:00):
      0 3 * * *  cd /srv/har_vit && .venv/bin/python pipeline.py retrain --dataset wisdm
    """
    from har_vit.stages import retrain as stage

    try:
        yaml_layer, cli_layer = _layers(kw)
        result = stage.run(yaml_layer, cli_layer, registry, tolerance, echo=lambda s: click.echo(s, err=True))
    except HarVitError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
    click.echo(f"retrain: {result.message}")
    if result.report:
        click.echo(f"report: {result.report}")
    sys.exit(result.exit_code)


@cli.command(context_settings=HELP)
@opt_config
@click.option("--model", "model", type=str, default="production", show_default=True,
              help="'production', a stored run id, or a run folder.")
@opt_registry
@click.option("--data-path", type=click.Path(), required=True, help="WISDM-format log (.txt/.txt.gz) or a folder of them.")
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="CSV of predicted windows.")
@click.option("--device", type=click.Choice(["auto", "cuda", "cpu"]), help="Where to run the model [auto].")
@click.option("--batch-size", type=int, help="Windows per forward pass [512].")
@handle_errors
def predict(model: str, registry: str, data_path: str, out: str, **kw: Any) -> None:
    """Predict the activity of every window of new logs (the activity column may be absent).

    \b
    Example:
      python pipeline.py predict --model production --data-path new_log.txt --out predictions.csv
    """
    from har_vit.stages import predict as stage
    from har_vit.core.config import build
    from har_vit.core.registry import Registry

    cfg = build(stage.PredictConfig, *_layers(kw))
    m = stage.run(cfg, Registry(registry).resolve(model), data_path, out)
    for w in m.get("warnings", []):
        click.echo(f"warning: {w}", err=True)
    q = sum(m["records_quarantined"].values())
    click.echo(f"predict: {m['windows_total']:,} windows from {m['records_kept']:,} of {m['records_total']:,} records "
               f"({q:,} quarantined) -> {out}")


@cli.command(context_settings=HELP)
@opt_config
@click.option("--model", "model", type=str, default="production", show_default=True,
              help="'production', a stored run id, or a run folder.")
@opt_registry
@click.option("--format", "format", type=click.Choice(["torchscript", "onnx"]), help="Export format [onnx].")
@click.option("--tolerance", type=float, help="Largest allowed |logit difference| against PyTorch [1e-4].")
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Folder for the exported model.")
@handle_errors
def export(model: str, registry: str, out: str, **kw: Any) -> None:
    """Export a model (normalisation built in) and check its logits against PyTorch.

    \b
    Example:
      python pipeline.py export --model production --format onnx --out exported/
    """
    from har_vit.stages import export as stage
    from har_vit.core.config import build
    from har_vit.core.registry import Registry

    cfg = build(stage.ExportConfig, *_layers(kw))
    m = stage.run(cfg, Registry(registry).resolve(model), out)
    for w in m.get("warnings", []):
        click.echo(f"warning: {w}", err=True)
    click.echo(f"export: {cfg.format}, max |logit diff| {m['max_abs_diff']:.2e} <= {m['tolerance']:.0e} "
               f"on {m['n_windows']} windows -> {out}")


@cli.command(context_settings=HELP)
@click.option("--config", "config", type=click.Path(dir_okay=False), required=True, help="Sweep file (YAML).")
@handle_errors
def sweep(config: str) -> None:
    """Grid or random search over train options with several seeds; chooses by validation only.

    \b
    Example (sweep.yaml: windows, out, split: subject|loso, seeds, base, grid or random):
      python pipeline.py sweep --config sweep.yaml
    """
    from har_vit.stages import sweep as stage
    from har_vit.core.config import load_yaml

    result = stage.run(stage.SweepSpec.from_mapping(load_yaml(config)), echo=lambda s: click.echo(s, err=True))
    click.echo(f"sweep: chose {result['chosen']} ({result['chosen_by']}) -> {load_yaml(config)['out']}/table.md")


@cli.command(context_settings=HELP)
def models() -> None:
    """List the model variants with their parameter counts at 128 x 3, 6 classes."""
    from har_vit.model import create_model, list_models

    for name in list_models(classical=False):
        m = create_model(name)
        click.echo(f"{name:12s} {sum(p.numel() for p in m.parameters()):>12,} params")
    click.echo(f"{'rf':12s} {'fitted':>12s}        random forest (300 trees) on per-window statistics: the classical baseline")


def main() -> None:
    cli(prog_name="pipeline.py")


if __name__ == "__main__":
    main()
