"""Data-parallel training across processes, detected from ``torchrun``'s environment.

``torchrun --nproc_per_node N`` (or any launcher that sets ``WORLD_SIZE``, ``RANK`` and
``LOCAL_RANK``) starts N copies of the same command. Each copy calls :func:`setup`,
which joins the process group (NCCL on GPUs, gloo on CPU) and pins the copy to its
GPU. Without those variables everything here is a no-op for a world of one, so the
trainer reads the same either way.

>>> ctx = from_env({})
>>> (ctx.rank, ctx.world, ctx.is_main)
(0, 1, True)
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.distributed as dist

from har_vit.core.errors import UsageError


@dataclass(frozen=True)
class DistContext:
    """Where this process sits: global ``rank`` of ``world``, ``local_rank`` on its node."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 alone prints and writes artefacts."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def from_env(env: Mapping[str, str] | None = None) -> DistContext:
    """Read ``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` (torchrun's variables); a world of one without them."""
    env = os.environ if env is None else env
    try:
        world = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
        local = int(env.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise UsageError(f"WORLD_SIZE/RANK/LOCAL_RANK must be integers (got {env.get('WORLD_SIZE')!r}, "
                         f"{env.get('RANK')!r}, {env.get('LOCAL_RANK')!r}); launch with torchrun") from None
    if world < 1 or not 0 <= rank < world:
        raise UsageError(f"RANK {rank} is outside WORLD_SIZE {world}; launch with torchrun")
    return DistContext(rank, world, local)


def setup(ctx: DistContext, device: torch.device) -> torch.device:
    """Join the process group when ``ctx`` spans several processes; returns this rank's device.

    On CUDA each process takes GPU ``local_rank`` (NCCL); on CPU processes talk over gloo.
    A process group someone else already initialised is reused and left alone.
    """
    if device.type == "cuda":
        if ctx.local_rank >= torch.cuda.device_count():
            raise UsageError(f"LOCAL_RANK {ctx.local_rank} has no GPU ({torch.cuda.device_count()} visible); "
                             "start at most one process per GPU (--nproc_per_node)")
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
    if ctx.enabled and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=ctx.rank, world_size=ctx.world)
    return device


def teardown(ctx: DistContext, owned: bool) -> None:
    """Leave the process group if :func:`setup` created it."""
    if ctx.enabled and owned and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum ``t`` over all ranks in place (identity for a world of one)."""
    if ctx.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast(t: torch.Tensor, ctx: DistContext, src: int = 0) -> torch.Tensor:
    """Copy rank ``src``'s ``t`` to every rank in place (identity for a world of one)."""
    if ctx.enabled:
        dist.broadcast(t, src=src)
    return t


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module under DistributedDataParallel and/or ``torch.compile`` wrappers."""
    while True:
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model


def describe(ctx: DistContext) -> dict[str, Any]:
    """JSON-ready record of the process layout, for manifests."""
    return {"world_size": ctx.world, "backend": dist.get_backend() if ctx.enabled and dist.is_initialized() else None}
