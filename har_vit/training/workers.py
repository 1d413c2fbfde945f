"""Stacked models shared among a few processes: on the CPU, twice as many as threads (8 at most).

A stack of small models (:mod:`har_vit.training.stacked`) leaves CPU cores half idle:
its kernels are too small for torch's threads to split well. On a 2-core VM, an epoch of
the 18 ``tiny_ws`` models of a 6-fold x 3-seed CV took 218.5 s as one stack with 2
threads and 167.1 s as two stacks of 9 in two processes of 1 thread
(``bench/bench_train.py --stack-workers 2``, ``bench/results/train_cpu_stacked.json``);
the whole ``cv`` of the default: 37 min 5 s in one stack, 33 min 12 s in 2 processes and
29 min 4 s in 4 (``bench/results/cv6_stacked_cpu_tiny_ws*.json``). So on the CPU the models
are dealt to ``workers`` processes, each trains its share as one stack with its share of
the threads, and when a process finishes, the ones still training take the threads it
leaves. Models stop early at different epochs, so processes of equal shares finish
at different times; twice as many processes as threads (two of them time-sharing a core)
keep every core busy until fewer processes than cores are left. On CUDA one process
(one stack) keeps the GPU busy, so the default there is one.

Each model trains exactly as in a single stack (to float tolerance: thread counts change
the order of float sums), into its own run folder, resumable on its own; a worker
that fails stops the others, and a rerun carries on from each model's ``last.pt``.

>>> plan_workers(None, "cpu", threads=2, models=18)
4
>>> plan_workers(None, "cpu", threads=16, models=18)
16
>>> plan_workers(None, "cpu", threads=1, models=18)
1
>>> plan_workers(None, "cuda", threads=16, models=18)
1
>>> deal(5, 2)  # snake order: each process gets a mix of the folds of every seed
[[0, 3, 4], [1, 2]]
"""
from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import queue
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch

from har_vit.core.efficiency import resolve_device
from har_vit.core.errors import HarVitError, UsageError
from har_vit.training import parts as parts_of
from har_vit.training.stacked import train_together

if TYPE_CHECKING:
    from har_vit.stages.train import TrainConfig


def plan_workers(workers: int | None, device: str, threads: int, models: int) -> int:
    """Processes to use: ``workers`` if given, else on the CPU twice the threads (at most 8, at least one per
    thread; one for one thread), on CUDA one; at most one per model."""
    if workers is not None and workers < 1:
        raise UsageError(f"--workers must be at least 1 (got {workers})")
    if workers is None:  # one thread asked for: one process (and one stack)
        workers = 1 if device != "cpu" or threads == 1 else max(threads, min(2 * threads, 8))
    want = workers
    return max(1, min(want, models))


def deal(n: int, workers: int) -> list[list[int]]:
    """Indices 0..n-1 dealt to ``workers`` groups back and forth (0, 1, 1, 0, 0, 1, ...)."""
    groups: list[list[int]] = [[] for _ in range(workers)]
    for i in range(n):
        lap, pos = divmod(i, workers)
        groups[pos if lap % 2 == 0 else workers - 1 - pos].append(i)
    return [g for g in groups if g]


def train_stacks(cfgs: Sequence[TrainConfig], windows_dir: str | Path, outs: Sequence[str | Path],
                 resume: Sequence[bool] | None = None, workers: int | None = None,
                 echo: Callable[[str], None] | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Train the models as stacks in ``workers`` processes; return their manifests and how they were split.

    The threads (``cfgs[0].threads``, else torch's count) are shared among the processes.
    """
    resume = list(resume) if resume is not None else [False] * len(cfgs)
    if not len(cfgs) == len(outs) == len(resume):
        raise UsageError(f"{len(cfgs)} configs need as many run folders and resume flags "
                         f"(got {len(outs)} and {len(resume)})")
    device = resolve_device(cfgs[0].device) if cfgs else torch.device("cpu")
    total = cfgs[0].threads if cfgs and cfgs[0].threads else torch.get_num_threads()
    n = plan_workers(workers, device.type, total, len(cfgs))
    if n == 1:
        return train_together(cfgs, windows_dir, outs, resume, echo), {"workers": 1, "models": [len(cfgs)],
                                                                       "threads": total}
    for out, r in zip(outs, resume, strict=True):  # every folder fits before any process starts
        parts_of.check_run_folder(Path(out), r)
    groups = deal(len(cfgs), n)
    shares = [max(1, total // n + (k < total % n)) for k in range(n)]  # more processes than threads: 1 each
    say = echo or (lambda line: print(line, file=sys.stderr))
    say(f"har_vit train: {len(cfgs)} models in {n} processes ({' + '.join(str(len(g)) for g in groups)} models, "
        f"{' + '.join(map(str, shares))} threads; a process that finishes leaves its threads to the others)")
    ctx = mp.get_context("spawn")  # fork would copy torch's thread pools; spawn starts clean
    live = ctx.Value("i", n)
    results: Any = ctx.Queue()
    procs = [ctx.Process(target=_worker, daemon=True, name=f"har_vit-stack-{k}",
                         args=(k, n, [dataclasses.replace(cfgs[i], threads=shares[k]) for i in g],
                               str(windows_dir), [str(outs[i]) for i in g], [resume[i] for i in g], total, live,
                               results))
             for k, g in enumerate(groups)]
    manifests: list[dict[str, Any] | None] = [None] * len(cfgs)
    try:
        for p in procs:
            p.start()
        pending = set(range(n))
        while pending:
            try:
                k, kind, payload = results.get(timeout=1.0)
            except queue.Empty:
                dead = [k for k in pending if not procs[k].is_alive() and procs[k].exitcode is not None]
                if dead and results.empty():
                    raise RuntimeError(f"training process {dead[0] + 1} of {n} died (exit code "
                                       f"{procs[dead[0]].exitcode}) without a word; rerun to carry on from each "
                                       "model's last.pt") from None
                continue
            pending.discard(k)
            if kind == "error":
                raise payload
            if kind == "crash":
                raise RuntimeError(f"training process {k + 1} of {n} failed:\n{payload}")
            for i, man in zip(groups[k], payload, strict=True):
                manifests[i] = man
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join()
    return [m for m in manifests if m is not None], {"workers": n, "models": [len(g) for g in groups],
                                                     "threads": total}


def _worker(k: int, n: int, cfgs: list[TrainConfig], windows_dir: str, outs: list[str], resume: list[bool],
            total: int, live: Any, results: Any) -> None:
    """One process: its models as one stack, taking a larger share of the threads as the others finish."""
    parent, base = os.getppid(), cfgs[0].threads or 1

    def share() -> int:
        if os.getppid() != parent:  # the parent was killed: stop too (each model resumes from its last.pt)
            raise SystemExit(1)
        return max(base, total // max(1, live.value))

    def say(line: str) -> None:
        print(f"[process {k + 1}/{n}] {line}", file=sys.stderr, flush=True)

    try:
        manifests = train_together(cfgs, windows_dir, outs, resume, echo=say, threads=share)
        results.put((k, "done", manifests))
    except HarVitError as e:
        results.put((k, "error", e))
    except (KeyboardInterrupt, SystemExit):  # Ctrl-C reached the whole group; the parent reports it
        pass
    except BaseException:  # noqa: BLE001 - a bug: its traceback goes to the parent, which raises it
        results.put((k, "crash", traceback.format_exc()))
    finally:
        with live.get_lock():
            live.value -= 1
