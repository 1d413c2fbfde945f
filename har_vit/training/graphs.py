"""The whole training step as one CUDA graph: captured once, replayed for every batch.

A small model's step on a GPU is a few hundred short kernels, and launching them from
Python costs more than their math (issue "Speed": the 15x smaller ``tiny`` trained slower
than ``seed``). Capturing forward, loss, backward and the optimizer step once with
:mod:`torch.cuda.graphs` and replaying the graph per batch removes the launches.

What a graph needs, the trainer already gives: every batch has the same shape and lives on
the device (:func:`har_vit.training.loop.epoch_batches` drops the last partial batch, and
the shuffle changes which windows fall out), AdamW is fused and keeps its step counts on
the device. Two things change at capture (:func:`make_capturable`): the optimizer is
marked ``capturable``, and the learning rate becomes a float32 device tensor that the
schedule fills in place before each replay (a Python float would be frozen into the graph
at its capture-time value). Augmentation, the schedule and the loss bookkeeping run eagerly
around the replay; dropout and drop-path draw from the CUDA generator, which the graph
advances on every replay, so each replay gets fresh masks.

The first ``warmup`` steps run eagerly on the side stream the graph is then captured on
(they are real steps on real batches; they create the optimizer's state outside the graph,
and let cuBLAS and autograd set themselves up, as capture requires). If capture fails (an
op that syncs with the host, a teacher that runs on the CPU) training goes on eagerly
after one warning line, with the optimizer put back exactly as it was. A change of the
trainable set (``--freeze-epochs`` ending) warms up and captures again.
"""
from __future__ import annotations

import sys
from typing import Any, Callable

import torch
from torch import nn

from har_vit.training.loop import step_body

WARMUP_STEPS = 3


def make_capturable(optimizer: torch.optim.Optimizer, device: torch.device) -> list[float]:
    """Mark ``optimizer`` safe to capture: ``capturable`` groups, each lr a fresh 0-d float32 tensor on ``device``.

    (Fused AdamW reads a CUDA lr tensor as float32 on the parameters' device.) Returns the
    learning rates as they were, for :func:`make_plain`.
    """
    before = [float(group["lr"]) for group in optimizer.param_groups]
    for group, lr in zip(optimizer.param_groups, before, strict=True):
        group["capturable"] = True
        group["lr"] = torch.tensor(lr, dtype=torch.float32, device=device)
        for p in group["params"]:  # a restored state may hold its step counts on the host
            state = optimizer.state.get(p)
            if state and isinstance(state.get("step"), torch.Tensor) and state["step"].device != p.device:
                state["step"] = state["step"].to(p.device, torch.float32)
    return before


def make_plain(optimizer: torch.optim.Optimizer, lrs: list[float] | None = None,
               scheduler: Any | None = None) -> None:
    """Undo :func:`make_capturable`: float learning rates (``lrs`` when given), ``capturable`` off.

    Run on a restored optimizer and schedule (a graphed run saves tensor learning rates) and
    on the fallback to eager steps. The schedule's last learning rates become floats too.
    """
    for i, group in enumerate(optimizer.param_groups):
        if lrs is not None:
            group["lr"] = lrs[i]
        elif isinstance(group["lr"], torch.Tensor):
            group["lr"] = float(group["lr"].item())
        if group.get("capturable"):
            group["capturable"] = False
            fused = bool(group.get("fused"))
            for p in group["params"]:
                state = optimizer.state.get(p)
                if state and isinstance(state.get("step"), torch.Tensor) and not fused:
                    state["step"] = state["step"].to("cpu", torch.float32)
    last = getattr(scheduler, "_last_lr", None)
    if last is not None:
        scheduler._last_lr = [float(v) for v in last]


class GraphedStep:
    """A drop-in for :func:`har_vit.training.loop.train_step` that replays one CUDA graph.

    Call it with ``train_step``'s arguments; the model, optimizer, schedule and loss must
    stay the ones given here. ``status``: ``"replayed"`` once a graph is captured,
    ``"not captured"`` before (fewer steps than the warm-up), ``"eager: <why>"`` after a
    failed capture.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: Callable, device: torch.device,
                 warmup: int = WARMUP_STEPS, warn: Callable[[str], None] | None = None) -> None:
        self.model, self.optimizer, self.loss_fn, self.device = model, optimizer, loss_fn, device
        # On a GPU at least one eager step precedes every capture: the optimizer's lazily made
        # state (zeros) must exist before, or the graph would zero it again on every replay.
        self.warmup, self.eager_steps = (max(1, warmup) if device.type == "cuda" else warmup), 0
        self.warn = warn or (lambda line: print(line, file=sys.stderr))
        self.side = torch.cuda.Stream(device) if device.type == "cuda" else None  # warm-up and capture stream
        self.graph: torch.cuda.CUDAGraph | None = None
        self.key: tuple[Any, ...] | None = None
        self.static: dict[str, torch.Tensor] = {}
        self.failed: str | None = None
        self.lrs: list[float] | None = None  # the float learning rates make_capturable replaced

    @property
    def status(self) -> str:
        if self.failed:
            return f"eager: {self.failed}"
        return "replayed" if self.graph is not None else "not captured"

    def _key(self, xb: torch.Tensor, target: torch.Tensor) -> tuple[Any, ...]:
        """What a captured graph is only valid for: input shapes and dtypes, the trainable set, train mode."""
        return (tuple(xb.shape), xb.dtype, tuple(target.shape), target.dtype, self.model.training,
                tuple(p.requires_grad for p in self.model.parameters()))

    def _body(self, xb: torch.Tensor, target: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # No autocast weight cache: a captured graph must recast the weights the optimizer just changed.
        return step_body(self.model, self.optimizer, self.loss_fn, xb, target, yb, self.device, autocast_cache=False)

    def _warm_up(self, xb: torch.Tensor, target: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.side is None:
            return self._body(xb, target, yb)
        current = torch.cuda.current_stream(self.device)
        self.side.wait_stream(current)
        with torch.cuda.stream(self.side):
            loss, correct = self._body(xb, target, yb)
        current.wait_stream(self.side)
        loss.record_stream(current)  # made on the side stream, read on this one
        correct.record_stream(current)
        return loss, correct

    def _capture(self, xb: torch.Tensor, target: torch.Tensor, yb: torch.Tensor) -> None:
        self.graph, self.static = None, {}
        self.lrs = make_capturable(self.optimizer, self.device)
        torch.cuda.synchronize(self.device)
        static = {"x": xb.clone(), "target": target.clone(), "y": yb.clone()}
        graph = torch.cuda.CUDAGraph()
        # Gradients of the captured backward live in the graph's memory pool, written (not
        # accumulated) on every replay: they must start unset.
        self.optimizer.zero_grad(set_to_none=True)
        with torch.cuda.graph(graph, stream=self.side):
            static["loss"], static["correct"] = self._body(static["x"], static["target"], static["y"])
        self.graph, self.static = graph, static

    def _fall_back(self, err: BaseException, stream: Any) -> None:
        self.failed = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"[:200]
        self.graph, self.static = None, {}
        if self.device.type == "cuda":
            torch.cuda.set_stream(stream)  # a failed capture can leave its stream current
            torch.cuda.synchronize(self.device)
        make_plain(self.optimizer, self.lrs)  # exactly the floats the schedule had written
        self.optimizer.zero_grad(set_to_none=True)
        self.warn(f"har_vit train: warning: CUDA graph capture failed ({self.failed}); training eagerly")

    def _release(self) -> None:
        """Drop the graph before a new warm-up: float learning rates again, ``capturable`` off."""
        self.graph, self.static, self.eager_steps = None, {}, 0
        make_plain(self.optimizer)
        self.optimizer.zero_grad(set_to_none=True)  # the old graph's gradients live in its pool

    def __call__(self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, loss_fn: Callable,
                 xb: torch.Tensor, yb: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        target = yb
        if hasattr(self.loss_fn, "prepare"):  # augmentation runs eagerly, into the static input
            xb, target = self.loss_fn.prepare(xb, yb)
        key = None if self.failed else self._key(xb, target)
        if self.graph is not None and key != self.key:  # e.g. frozen layers thawed
            self._release()
        if self.graph is None and not self.failed and self.eager_steps >= self.warmup:
            stream = torch.cuda.current_stream(self.device) if self.device.type == "cuda" else None
            try:
                self._capture(xb, target, yb)
                self.key = key
            except Exception as err:  # noqa: BLE001 - any capture failure means: train eagerly
                self._fall_back(err, stream)
        if self.graph is not None:
            s = self.static
            s["x"].copy_(xb)
            s["target"].copy_(target)
            s["y"].copy_(yb)
            self.graph.replay()
            out = (s["loss"].clone(), s["correct"].clone())
        elif self.failed:
            out = self._body(xb, target, yb)
        else:
            self.eager_steps += 1
            out = self._warm_up(xb, target, yb)
        scheduler.step()  # fills the lr tensor the next replay reads
        return out


def graphed_step_or_none(model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: Callable, device: torch.device,
                         wanted: bool, distributed: bool, compiled: bool) -> GraphedStep | None:
    """A :class:`GraphedStep` where one can run (one CUDA process, no ``torch.compile``), else None."""
    if not wanted or device.type != "cuda" or distributed or compiled:
        return None
    return GraphedStep(model, optimizer, loss_fn, device)
