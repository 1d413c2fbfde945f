"""Many models trained together in one process, as one stacked model.

Cross-validation and sweeps train many small models of one architecture. One after
another, each step of each model is a handful of small kernels; together, every layer
runs once for all of them. Here the models' parameters are stacked along a leading
model dimension (``torch.func.stack_module_state``), one forward runs all of them with
``torch.func.vmap`` over ``functional_call``, each on its own batch of its own data, and
one AdamW step updates them all. AdamW is element-wise, so that step equals one AdamW
per model; it is written out here because each model keeps its own step count and
learning rate (folds of different sizes have epochs of different lengths, so their
schedules differ). The current trainer does not clip gradients, so neither does this.

Everything random stays per model and equal to the model's own run (``train.run``):
its initial weights, its shuffle and augmentation generators, and its dropout masks,
which come from a generator holding the state torch's global one would have in the
model's own run, fed to the layers by :mod:`har_vit.model.noise`. So each model ends
with the weights of its own run, to float tolerance (tests/test_stacked.py): on the
CPU, that is the only difference; on CUDA, dropout masks differ in draw (same law).

Each model keeps the contract of its own run folder: validation, ``best.pt``,
``last.pt`` (with its optimizer state and RNGs, so ``train --resume`` can continue it
alone), history and manifest, written at its own epoch ends. A model that stops early
leaves the stack, and the others continue without it.

>>> from har_vit.stages.train import TrainConfig
>>> cfgs = [TrainConfig(seed=s, epochs=2) for s in (0, 1)]            # doctest: +SKIP
>>> manifests = train_together(cfgs, "out/windows", ["out/s0", "out/s1"])  # doctest: +SKIP
"""
from __future__ import annotations

import copy
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from har_vit.core.efficiency import device_label, resolve_device
from har_vit.core.errors import UsageError
from har_vit.core.io import begin_stage, read_manifest, save_npz
from har_vit.core.runid import new_run_id
from har_vit.model import noise
from har_vit.model.variants import CLASSICAL
from har_vit.training import distributed
from har_vit.training import parts as parts_of
from har_vit.training.loop import Data, autocast_for, epoch_batches, lr_factor, prepare_data
from har_vit.training.resume import CheckpointWriter, RunState, checkpoint_header, epoch_files

if TYPE_CHECKING:
    from har_vit.stages.train import TrainConfig


def why_not_stacked(cfg: TrainConfig) -> str | None:
    """Why ``cfg`` cannot train in a stack (it then trains alone), or None when it can."""
    if cfg.model in CLASSICAL:
        return f"--model {cfg.model} is not trained by gradient"
    if cfg.members > 1:
        return "--members: each ensemble trains its members as a stack of their own"
    for opt in ("teacher", "init", "freeze_epochs", "compile", "ema"):
        if getattr(cfg, opt):
            return f"--{opt.replace('_', '-')} is not supported in a stack"
    return None


def stack_key(cfg: TrainConfig) -> tuple[Any, ...]:
    """Configs with equal keys build one architecture and batch shape, so they can share a stack."""
    return (cfg.model, cfg.batch_size, cfg.drop, cfg.drop_path, cfg.device)


@dataclass
class Member:
    """One model of the stack and where its own run stands."""

    cfg: TrainConfig
    windows_dir: Path
    out: Path
    data: Data
    parts: parts_of.Parts
    state: RunState
    dropout: torch.Generator  # this model's dropout stream: the global generator of its own run
    factor: Callable[[int], float]  # its learning-rate schedule, per optimizer step
    writer: CheckpointWriter
    fixed: dict[str, Any]
    step: int = 0  # optimizer steps done
    pos: int = 0  # next batch within the epoch
    batches: torch.Tensor | None = None  # (steps, B) indices of this epoch
    t0: float = 0.0
    lr: float = 0.0
    sums: list[torch.Tensor] = field(default_factory=list)  # [loss * B summed, correct]
    manifest: dict[str, Any] | None = None


class StackedAdamW:
    """AdamW over stacked parameters ``(M, ...)``, with a step count and learning rate per model.

    The update is torch's AdamW (decoupled weight decay, bias correction), applied with
    per-model ``lr``, ``step`` and weight decay (``decay[name]``: (M,)) broadcast over each
    model's slice.
    """

    def __init__(self, params: dict[str, torch.Tensor], decay: dict[str, torch.Tensor], betas: tuple[float, float],
                 eps: float):
        self.params, self.decay, self.betas, self.eps = params, decay, betas, eps
        self._decays = {n: bool((d != 0).any()) for n, d in decay.items()}  # known once, not synced per step
        self.exp_avg = {n: torch.zeros_like(p) for n, p in params.items()}
        self.exp_avg_sq = {n: torch.zeros_like(p) for n, p in params.items()}

    @torch.no_grad()
    def step(self, grads: dict[str, torch.Tensor], lr: torch.Tensor, step: torch.Tensor) -> None:
        """``lr`` (M,) float64 and ``step`` (M,) (1-based, after this update) per model."""
        b1, b2 = self.betas
        step = step.to(torch.float64)
        step_size = lr / (1 - b1 ** step)  # (M,)
        bc2_sqrt = (1 - b2 ** step).sqrt()  # (M,)
        for n, p in self.params.items():
            g = grads[n]
            shape = (-1,) + (1,) * (p.dim() - 1)
            if self._decays[n]:
                p.mul_((1 - lr * self.decay[n]).to(p.dtype).view(shape))
            m, v = self.exp_avg[n], self.exp_avg_sq[n]
            m.lerp_(g, 1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = (v.sqrt() / bc2_sqrt.to(p.dtype).view(shape)).add_(self.eps)
            p.sub_(step_size.to(p.dtype).view(shape) * m / denom)

    def keep(self, rows: torch.Tensor) -> None:
        """Keep only the models at ``rows`` (the others have finished)."""
        for d in (self.exp_avg, self.exp_avg_sq, self.decay):
            for n in d:
                d[n] = d[n][rows].contiguous()
        self._decays = {n: bool((d != 0).any()) for n, d in self.decay.items()}


def train_together(cfgs: Sequence[TrainConfig], windows_dir: str | Path, outs: Sequence[str | Path],
                   resume: Sequence[bool] | None = None, echo: Callable[[str], None] | None = None,
                   threads: Callable[[], int] | None = None) -> list[dict[str, Any]]:
    """Train every ``cfgs[i]`` into run folder ``outs[i]`` together; return their manifests.

    The configs must build one architecture (same model, window, channels, classes,
    batch size, dropout); data, split, seed, learning rate, weight decay, schedule, epochs,
    augmentation and loss options may differ. ``resume[i]``
    continues ``outs[i]/last.pt``, as ``train --resume`` would. ``threads``, when given, is
    asked before every step how many CPU threads torch may use (a stack that shares the
    machine with others takes the cores they leave: :mod:`har_vit.training.workers`).
    """
    if not cfgs:
        return []
    resume = list(resume) if resume is not None else [False] * len(cfgs)
    if not len(cfgs) == len(outs) == len(resume):
        raise UsageError(f"{len(cfgs)} configs need as many run folders and resume flags "
                         f"(got {len(outs)} and {len(resume)})")
    ctx = distributed.from_env()
    if ctx.enabled:
        raise UsageError("stacked training runs in one process; run it without torchrun")
    for cfg in cfgs:
        reason = why_not_stacked(cfg)
        if reason:
            raise UsageError(f"cannot train {cfg.model} (seed {cfg.seed}) in a stack: {reason}; train it alone")
    if any(stack_key(c) != stack_key(cfgs[0]) for c in cfgs):
        raise UsageError("stacked models must share --model, --batch-size, --drop, --drop-path and --device; "
                         "train the others in another stack")
    device = resolve_device(cfgs[0].device)
    parts_of.set_up_process(cfgs[0], device)
    B = cfgs[0].batch_size
    members = [_member(cfg, Path(windows_dir), Path(out), r, device, ctx) for cfg, out, r in zip(cfgs, outs, resume, strict=True)]
    active = [m for m in members if m.manifest is None]
    if any(m.fixed["model_kwargs"] != active[0].fixed["model_kwargs"] for m in active):
        raise UsageError("stacked models must have one shape (window, channels, classes): train them on one "
                         "windows folder")
    for m in active:  # nothing is written before every model of the stack is known to fit
        begin_stage(m.out)
        save_npz(m.out / "split.npz", train=m.data.split.train, val=m.data.split.val, test=m.data.split.test)
    if not active:
        return [m.manifest for m in members]
    first = active[0].parts.model
    if any(True for _ in first.buffers()):
        raise UsageError(f"model {active[0].cfg.model} has buffers (batch-norm statistics), which a stack does not "
                         "update; train it alone")
    names = [n for n, _ in first.named_parameters()]
    params, _ = stack_module_state([m.parts.model for m in active])  # name -> (M, ...) leaves with grad
    template = copy.deepcopy(first).to("meta").train()
    per_model = [_decay(m.parts) for m in active]
    decay = {n: torch.tensor([d[n] for d in per_model], dtype=torch.float64, device=device) for n in names}
    opt = StackedAdamW(params, decay, active[0].parts.optimizer.defaults["betas"],
                       active[0].parts.optimizer.defaults["eps"])
    for name in names:  # a resumed model brings its optimizer state
        for row, m in enumerate(active):
            st = m.parts.optimizer.state.get(m.parts.model.get_parameter(name), {})
            if st:
                opt.exp_avg[name][row] = st["exp_avg"]
                opt.exp_avg_sq[name][row] = st["exp_avg_sq"]
    spec = _mask_spec(first, active[0].data.X_train[:B], device)

    def forward(p: dict[str, torch.Tensor], x: torch.Tensor, masks: tuple[torch.Tensor, ...]) -> torch.Tensor:
        with noise.feeding(masks):
            return functional_call(template, p, (x,))

    run_forward = vmap(forward)
    say = echo or (lambda line: print(line, file=sys.stderr))
    say(f"har_vit train: {len(active)} models of {active[0].cfg.model} stacked on {device.type} "
        f"({device_label(device)}); batch {B} each")
    try:
        while active:
            if threads is not None and (want := threads()) != torch.get_num_threads():
                torch.set_num_threads(want)
            for m in active:
                if m.pos == 0:
                    _begin_epoch(m, device, ctx)
                m.writer.check()
            xs, ys, targets = [], [], []
            for m in active:
                idx = m.batches[m.pos]
                xb, yb = m.data.X_train[idx], m.data.y_train[idx]
                target = yb
                if hasattr(m.parts.loss_fn, "prepare"):
                    xb, target = m.parts.loss_fn.prepare(xb, yb)
                xs.append(xb)
                ys.append(yb)
                targets.append(target)
            drawn = [noise.draw(spec, m.dropout, device) for m in active]
            masks = tuple(torch.stack([d[i] for d in drawn]) for i in range(len(spec)))
            x = torch.stack(xs)  # (M, B, T, C)
            with autocast_for(device):
                logits = run_forward(params, x, masks)  # (M, B, K)
            losses = [m.parts.loss_fn(logits[i], targets[i], xs[i]) for i, m in enumerate(active)]
            grads = torch.autograd.grad(torch.stack(losses).sum(), [params[n] for n in names])
            lr = torch.tensor([m.cfg.lr * m.factor(m.step) for m in active], dtype=torch.float64, device=device)
            for m in active:
                m.step += 1
            steps = torch.tensor([m.step for m in active], device=device)
            opt.step(dict(zip(names, grads, strict=True)), lr, steps)
            with torch.no_grad():
                for i, m in enumerate(active):
                    m.sums[0] += losses[i].detach() * ys[i].shape[0]
                    m.sums[1] += (logits[i].argmax(1) == ys[i]).sum()
                    m.pos += 1
            done = [i for i, m in enumerate(active) if m.pos == m.parts.steps and _end_epoch(m, params, opt, i,
                                                                                                device, ctx)]
            if done:
                for i in done:
                    say(f"har_vit train: {active[i].out.name}: finished after epoch {active[i].state.epoch} (best "
                        f"{active[i].state.best['epoch']}, val macro F1 {active[i].state.best['val_macro_f1']:.4f})")
                keep = torch.tensor([i for i in range(len(active)) if i not in done], dtype=torch.long, device=device)
                active = [m for i, m in enumerate(active) if i not in done]
                params = {n: p.detach()[keep].contiguous().requires_grad_() for n, p in params.items()}
                opt.params = params
                opt.keep(keep)
    finally:
        for m in members:
            m.writer.close()
    return [m.manifest for m in members]


# --- pieces ---------------------------------------------------------------------------------------------


def _member(cfg: TrainConfig, windows_dir: Path, out: Path, resume: bool, device: torch.device,
            ctx: distributed.DistContext) -> Member:
    last = parts_of.check_run_folder(out, resume)
    data = prepare_data(cfg, windows_dir, ctx, device)
    parts = parts_of.build_parts(cfg, data, device, ctx)
    # build_parts left the global generator where this model's own run starts drawing dropout masks.
    dropout = torch.Generator(device=device)
    dropout.set_state(torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state())
    state = RunState(new_run_id(cfg.model, cfg.split, f"s{cfg.seed}"))
    if resume:
        state = parts_of.restore(parts, cfg, data, last, device, ctx)
        dropout.set_state(torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state())
    m = Member(cfg, windows_dir, out, data, parts, state, dropout, lr_factor(cfg, parts.steps), CheckpointWriter(),
               checkpoint_header(cfg, parts.model, data, device), step=int(parts.scheduler.last_epoch))
    if state.stopped_early or state.epoch >= cfg.epochs:  # finished, but killed before its manifest
        _finish(m, device, ctx)
    return m


def _decay(parts: parts_of.Parts) -> dict[str, float]:
    """Each parameter's weight decay, as the model's own optimizer groups it."""
    by_id = {id(p): g["weight_decay"] for g in parts.optimizer.param_groups for p in g["params"]}
    return {n: float(by_id[id(p)]) for n, p in parts.model.named_parameters()}


def _mask_spec(model: nn.Module, x: torch.Tensor, device: torch.device) -> list[noise.Draw]:
    """The random draws one training forward of ``model`` on a batch like ``x`` makes, in order."""
    was = model.training
    model.train()
    try:
        with torch.no_grad(), autocast_for(device), noise.feeding(None) as rec:
            model(x)
    finally:
        model.train(was)
    return rec.drawn


def _begin_epoch(m: Member, device: torch.device, ctx: distributed.DistContext) -> None:
    m.t0 = time.perf_counter()
    m.lr = m.cfg.lr * m.factor(m.step)
    m.batches = epoch_batches(m.data.X_train.shape[0], m.cfg.batch_size, m.parts.shuffle, device, ctx)
    m.sums = [torch.zeros((), device=device, dtype=torch.float64), torch.zeros((), device=device, dtype=torch.int64)]


def _end_epoch(m: Member, params: dict[str, torch.Tensor], opt: StackedAdamW, row: int, device: torch.device,
               ctx: distributed.DistContext) -> bool:
    """Validate and checkpoint ``m``'s finished epoch from its stack row; True when its run is over."""
    train_s = time.perf_counter() - m.t0
    _sync(m, params, opt, row, device)
    m.state.epoch += 1
    seen = m.parts.steps * m.cfg.batch_size
    totals = [float(m.sums[0]), float(m.sums[1])]
    _, improved = parts_of.end_epoch(m.cfg, m.state, m.data, m.parts.model, device, m.lr, totals, seen, train_s, m.t0)
    m.writer.submit(epoch_files(m.out, m.fixed, m.parts.model, m.parts.optimizer, m.parts.scheduler,
                                m.parts.shuffle, device, m.state, improved, m.parts.aug_gen, dropout=m.dropout))
    m.pos = 0
    if m.state.stopped_early or m.state.epoch >= m.cfg.epochs:
        _finish(m, device, ctx)
        return True
    return False


@torch.no_grad()
def _sync(m: Member, params: dict[str, torch.Tensor], opt: StackedAdamW, row: int, device: torch.device) -> None:
    """Copy row ``row`` of the stack into ``m``'s own model, optimizer and schedule (what last.pt saves)."""
    optimizer, lr = m.parts.optimizer, m.cfg.lr * m.factor(m.step)
    fused = bool(optimizer.defaults.get("fused"))
    for name, p in m.parts.model.named_parameters():
        p.copy_(params[name][row])
        optimizer.state[p] = {
            "step": torch.tensor(float(m.step), dtype=torch.float32, device=device if fused else "cpu"),
            "exp_avg": opt.exp_avg[name][row].clone(), "exp_avg_sq": opt.exp_avg_sq[name][row].clone()}
    for g in optimizer.param_groups:
        g["lr"] = lr
    m.parts.scheduler.last_epoch = m.step
    m.parts.scheduler._last_lr = [lr for _ in optimizer.param_groups]


def _finish(m: Member, device: torch.device, ctx: distributed.DistContext) -> None:
    m.writer.close()
    parts_of.write_run_manifest(m.cfg, m.out, m.windows_dir, m.data, m.parts.model, device, ctx, m.state,
                               {**parts_of.levers_of(m.parts), "training_step": "stacked (vmap)"})
    m.manifest = read_manifest(m.out, "train")
