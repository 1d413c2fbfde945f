"""``train --members K``: K networks on one split, kept as one ensemble run folder.

Member ``i`` is an ordinary run in ``OUT/members/m<i>/`` with the run's options and seed
:func:`~har_vit.model.ensemble.member_seed` (initialisation, shuffling, augmentation,
dropout); every member draws the split from the run's own seed (``split_seed``), so all
train, validate and stop on the same users. They train together as stacked models where a
stack can hold them (:mod:`har_vit.training.workers`), else one after another. A finished
member is kept when the run is resumed (``--resume``); an unfinished one resumes from its
``last.pt``.

``OUT`` then holds what every run folder holds, for the ensemble
(:class:`~har_vit.model.ensemble.Ensemble`): ``best.pt`` (each member's best weights),
``last.pt`` (each member's last weights; no optimizer state: resume works on the
members), ``split.npz``, ``history.json`` / ``history.csv`` (every member's epochs, with
``member`` and ``seed`` columns), and ``manifest.json``, written last, with the
ensemble's validation scores and one entry per member.
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from har_vit.core.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from har_vit.core.errors import ArtefactError, UsageError
from har_vit.core.io import MANIFEST, begin_stage, file_entry, read_manifest, write_bytes, write_manifest
from har_vit.core.runid import new_run_id
from har_vit.core.schema import as_dict
from har_vit.model.ensemble import member_seed
from har_vit.model.variants import CLASSICAL
from har_vit.training.distributed import DistContext
from har_vit.training.loop import evaluate_split, prepare_data
from har_vit.training.resume import checkpoint_header, write_history

if TYPE_CHECKING:
    from har_vit.stages.train import TrainConfig

MEMBERS = "members"


def member_configs(cfg: TrainConfig) -> list[TrainConfig]:
    """The members' own configs: one network each, its own seed, the run's split."""
    split_seed = cfg.seed if cfg.split_seed is None else cfg.split_seed
    return [dataclasses.replace(cfg, members=1, seed=member_seed(cfg.seed, i), split_seed=split_seed)
            for i in range(cfg.members)]


def member_dirs(out: Path, k: int) -> list[Path]:
    return [out / MEMBERS / f"m{i}" for i in range(k)]


def check_folder(out: Path, resume: bool) -> None:
    """``out`` can take a new ensemble run, or holds one to resume."""
    if resume and not (out / MEMBERS).is_dir():
        raise UsageError(f"{out / MEMBERS}: nothing to resume; run without --resume to start training in {out}")
    if not resume and ((out / "last.pt").exists() or (out / MANIFEST).exists() or (out / MEMBERS).exists()):
        raise UsageError(f"{out} already holds a training run; pass --resume to continue it, or choose a new --out folder")


def train_members(cfg: TrainConfig, windows_dir: Path, out: Path, resume: bool, ctx: DistContext,
                  device: torch.device) -> dict[str, Any]:
    """Train (or resume) the members, then write ``out`` as the ensemble's run folder; return its manifest."""
    from har_vit.stages import train
    from har_vit.training.stacked import why_not_stacked
    from har_vit.training.workers import train_stacks

    if cfg.model in CLASSICAL:
        raise UsageError(f"--members: --model {cfg.model} is not a network; ensembles are of network variants")
    if ctx.enabled:
        raise UsageError("--members trains its members in one process; run it without torchrun")
    check_folder(out, resume)
    cfgs, dirs = member_configs(cfg), member_dirs(out, cfg.members)
    todo = [i for i, d in enumerate(dirs) if not (d / MANIFEST).is_file()]
    reason = why_not_stacked(cfgs[0])  # a member's: one network each
    say = (lambda line: print(line, file=sys.stderr))
    if todo:
        say(f"har_vit train: {len(todo)} of {cfg.members} members to train ({cfg.model}, seeds "
            f"{', '.join(str(cfgs[i].seed) for i in todo)}; split of seed {cfgs[0].split_seed})"
            + (f", one after another ({reason})" if reason and len(todo) > 1 else ""))
    created = not out.exists()
    begin_stage(out)  # a stale manifest must not vouch for a run being rewritten
    try:
        if reason is None and len(todo) > 1:
            train_stacks([cfgs[i] for i in todo], windows_dir, [dirs[i] for i in todo],
                         resume=[(dirs[i] / "last.pt").is_file() for i in todo], echo=say)
        else:
            for i in todo:
                train.run(cfgs[i], windows_dir, dirs[i], resume=(dirs[i] / "last.pt").is_file())
    except BaseException:
        for d in (out / MEMBERS, out) if created else ():  # bad input: leave no empty folder behind
            if d.is_dir() and not any(d.iterdir()):
                d.rmdir()
        raise
    return assemble(cfg, windows_dir, out, dirs, ctx, device)


def _weights(ckpts: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    return {f"members.{i}.{k}": v for i, c in enumerate(ckpts) for k, v in c["model"].items()}


def training_seconds(mans: list[dict[str, Any]]) -> float:
    """The members' training time: members trained together in a stack count once (the longest, as
    their epochs ran side by side, each timing the whole stack's), members trained alone add up.

    >>> training_seconds([{"train_seconds": 30, "training_step": "stacked (vmap)"},
    ...                   {"train_seconds": 28, "training_step": "stacked (vmap)"}, {"train_seconds": 9}])
    39
    """
    stacked = [str(m.get("training_step", "")).startswith("stacked") for m in mans]
    return (max((m["train_seconds"] for m, st in zip(mans, stacked) if st), default=0)
            + sum(m["train_seconds"] for m, st in zip(mans, stacked) if not st))


def assemble(cfg: TrainConfig, windows_dir: Path, out: Path, dirs: list[Path], ctx: DistContext,
             device: torch.device) -> dict[str, Any]:
    """Write ``out``'s checkpoints, split, history and manifest from the finished members in ``dirs``."""
    mans = [read_manifest(d, "train") for d in dirs]
    best = [load_checkpoint(d / "best.pt") for d in dirs]
    last = [load_checkpoint(d / "last.pt") for d in dirs]
    splits = [np.load(d / "split.npz") for d in dirs]
    for i, d in enumerate(dirs[1:], 1):
        same = (best[i]["norm"] == best[0]["norm"] and best[i]["class_names"] == best[0]["class_names"]
                and all(np.array_equal(splits[i][k], splits[0][k]) for k in ("train", "val", "test")))
        if not same:
            raise ArtefactError(f"{d}: this member was trained on another split than {dirs[0]}; delete {out} "
                                "and train the ensemble again")
    kwargs = {**best[0]["model_kwargs"], "members": len(dirs)}
    best_weights = _weights(best)
    model = model_from_checkpoint({"model_name": best[0]["model_name"], "model_kwargs": kwargs, "model": best_weights})
    data = prepare_data(cfg, windows_dir, ctx, device)  # the members' split: cfg.seed drew it for all
    header = checkpoint_header(cfg, model, data, device)  # what every run's checkpoints carry, for the ensemble
    val = evaluate_split(model.to(device), data.X_val, data.y_val, cfg.eval_batch_size, device)
    seeds = [int(m["config"]["seed"]) for m in mans]
    per_member = [{"member": i, "seed": s, "run": str(d.relative_to(out)), "epochs_run": m["epochs_run"],
                   "best_epoch": m["best_epoch"], "best_val_macro_f1": m["best_val_macro_f1"],
                   "stopped_early": m["stopped_early"], "train_seconds": m["train_seconds"]}
                  for i, (s, d, m) in enumerate(zip(seeds, dirs, mans, strict=True))]
    save_checkpoint(out / "best.pt", {**header, "model": best_weights, "epoch": max(int(c["epoch"]) for c in best),
                                      "val": val, "member_epochs": [int(c["epoch"]) for c in best]})
    save_checkpoint(out / "last.pt", {**header, "model": _weights(last), "epoch": max(int(c["epoch"]) for c in last),
                                      "member_epochs": [int(c["epoch"]) for c in last]})
    write_bytes(out / "split.npz", (dirs[0] / "split.npz").read_bytes())
    history = [{"member": i, "seed": s, **row} for i, (s, c) in enumerate(zip(seeds, last, strict=True))
               for row in c["history"]]
    write_history(out, history, lead=("member", "seed"))
    first = mans[0]
    keep = ("device", "device_name", "world_size", "backend", "split", "class_names", "norm", "class_weights",
            "inputs", "augment", "teacher", "init", "ema", "training_step")
    write_manifest(
        out, "train", config=as_dict(cfg), run_id=new_run_id(cfg.model, cfg.split, f"s{cfg.seed}", f"x{len(dirs)}"),
        model=model.name, model_kwargs=kwargs, params=model.num_params(), **{k: first[k] for k in keep if k in first},
        epochs_run=max(m["epochs_run"] for m in mans), best_epoch=None, best_val_macro_f1=val["val_macro_f1"],
        best_val=val, stopped_early=all(m["stopped_early"] for m in mans),
        train_seconds=round(training_seconds(mans), 3),
        windows_per_s=None, members=per_member,
        outputs=[file_entry(out / f) for f in ("last.pt", "best.pt", "history.json", "history.csv", "split.npz")],
    )
    scores = ", ".join(f"{m['best_val_macro_f1']:.4f}" for m in mans)
    print(f"har_vit train: ensemble of {len(dirs)} {cfg.model} -> {out}; validation macro F1 "
          f"{val['val_macro_f1']:.4f} (members alone: {scores})", file=sys.stderr)
    return read_manifest(out, "train")
