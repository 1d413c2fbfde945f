"""The whole job behind ``pipeline.py run``: data -> ingest -> windows -> train -> evaluate -> report.

Every stage writes its own folder under the run folder and reads only what the one
before wrote (through its manifest), so the job is the stages called in order.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from har_vit.core.io import write_json
from har_vit.core.registry import scope_of
from har_vit.core.runid import new_run_id
from har_vit.core.schema import as_dict, build


@dataclass(frozen=True)
class JobResult:
    run_id: str
    out: Path
    model_dir: Path
    report: Path
    metrics: dict[str, Any]
    stored: Path | None = None  # the run's folder in the model registry
    promoted: bool = False


def run(values: Mapping[str, Any], echo: Callable[[str], None] = print, run_id: str | None = None,
        register: bool = True) -> JobResult:
    """Run every stage with the resolved options of ``pipeline.py run``; returns where things went.

    ``values`` holds every option of the command (:func:`har_vit.core.schema.resolve`). The
    run folder is ``out``, else ``<workdir>/runs/<run id>``. With ``register``, the trained
    run is stored in the registry and, when the registry has no production model yet,
    promoted (retrain decides promotions after that).
    """
    from har_vit.core.workspace import Workspace
    from har_vit.datasets import resolve
    from har_vit.stages import evaluate, ingest, report, train, windows

    ws = Workspace.at(values.get("workdir"))
    values = ws.fill(values, "run")
    ing_cfg = build(ingest.IngestConfig, values)
    win_cfg = build(windows.WindowConfig, values)
    train_cfg = build(train.TrainConfig, values)
    eval_cfg = build(evaluate.EvalConfig, values)
    run_id = run_id or new_run_id(ing_cfg.dataset, train_cfg.model, train_cfg.split)
    out = Path(values.get("out") or ws.runs / run_id)
    reports_dir = Path(values["reports_dir"])
    source = resolve(ing_cfg.dataset, ing_cfg.dataset_options())  # first: missing data leaves no run folder
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", {"run_id": run_id, "ingest": as_dict(ing_cfg), "windows": as_dict(win_cfg),
                                     "train": as_dict(train_cfg), "evaluate": as_dict(eval_cfg),
                                     "out": str(out), "reports_dir": str(reports_dir)})

    if source.prewindowed:
        m = windows.import_npz(win_cfg, source.windows_npz, out / "windows")
        echo(f"[1/5] data: {source.windows_npz} is pre-windowed; ingest skipped")
    else:
        mi = ingest.run(ing_cfg, out / "ingest", source)
        echo(f"[1/5] ingest: {mi['records_kept']:,} of {mi['records_total']:,} records kept, "
             f"{sum(mi['records_quarantined'].values()):,} quarantined")
        m = windows.run(win_cfg, out / "ingest", out / "windows")
    echo(f"[2/5] windows: {m['windows_total']:,} windows of {m['window']} x {m['channels']}, step {m['step']}")
    mt = train.run(train_cfg, out / "windows", out / "model")
    echo(f"[3/5] train: {mt['model']} on {mt['device']}, best val macro F1 {mt['best_val_macro_f1']:.4f}"
         + ("" if train_cfg.serve == "best" else f"; serves last.pt (epoch {mt['epochs_run']})"))
    me = evaluate.run(eval_cfg, out / "model")
    echo(f"[4/5] evaluate: test accuracy {me['accuracy']:.4f}, macro F1 {me['macro_f1']:.4f} "
         f"({me['split']['protocol']} split{', LEAKY' if me['split'].get('leaky') else ''})")
    path = report.run(out / "model", reports_dir, run_id)
    echo(f"[5/5] report: {path}")
    result = JobResult(run_id, out, out / "model", Path(path), me)
    if not register:
        return result
    scope = scope_of(ing_cfg.dataset, mt["class_names"])
    return _register(result, Path(values["registry"]), values["lock_timeout"], scope, echo)


def _register(result: JobResult, root: Path, wait: float, scope: str, echo: Callable[[str], None]) -> JobResult:
    from dataclasses import replace

    from har_vit.core.registry import Registry

    reg = Registry(root)
    with reg.lock(wait=wait):  # a short write: wait for a retrain or another run to finish theirs
        stored = reg.store(result.model_dir, result.run_id, accuracy=result.metrics["accuracy"],
                           macro_f1=result.metrics["macro_f1"], split=result.metrics.get("split"),
                           report=str(result.report))
        promoted = reg.production(scope) is None  # the first model of a dataset and class set serves it
        if promoted:
            reg.promote(result.run_id, f"first model of {scope}: no production model yet", scope)
    echo(f"registry: stored {stored}" + (f"; promoted to production-{scope} (first model of it)" if promoted else
                                         f"; production-{scope} unchanged (use 'retrain' to compare and promote)"))
    return replace(result, stored=stored, promoted=promoted)
