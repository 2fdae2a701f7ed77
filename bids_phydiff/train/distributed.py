"""Data-parallel training across processes launched by ``torchrun`` (or spawned by a test).

Every rank holds the same seed and data and computes its shard of the same global batch
(:func:`~.batches.shard`). DistributedDataParallel averages gradients over ranks (divides the sum by the
world size), so each rank scales its shard's mean loss by ``world_size * shard_size / global_batch``
(:func:`shard_loss_weight`): the averaged gradient is then exactly the gradient of the global-batch mean,
whatever the shard sizes, and K processes equal one process with the same global batch.
Only rank 0 writes files.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class World:
    """This process's place: ``rank`` of ``world_size`` (``local_rank`` on its node)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that logs progress and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


SINGLE = World()


def world_from_env() -> World:
    """Rank and world size from the ``torchrun`` environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    if size < 1 or not 0 <= rank < size:
        raise RuntimeError(f"invalid torchrun environment: RANK={rank} WORLD_SIZE={size}")
    return World(rank, size, local)


def init(device: torch.device, world: World | None = None, timeout_s: float = 1800.0) -> World:
    """Join the process group when ``WORLD_SIZE > 1`` (nccl on CUDA, gloo on CPU); a no-op otherwise.

    On CUDA the returned world's device is ``cuda:LOCAL_RANK`` (see :func:`rank_device`).
    """
    world = world or world_from_env()
    if not world.distributed or (dist.is_available() and dist.is_initialized()):
        return world
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but torch.distributed is not available in this torch build")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(world.local_rank)
    dist.init_process_group(backend=backend, rank=world.rank, world_size=world.world_size,
                            timeout=datetime.timedelta(seconds=timeout_s))
    LOGGER.info("rank %d of %d joined the %s process group", world.rank, world.world_size, backend)
    return world


def rank_device(device: torch.device, world: World) -> torch.device:
    """The device of this rank: ``cuda:LOCAL_RANK`` when training on CUDA with several processes."""
    if device.type == "cuda" and world.distributed:
        return torch.device("cuda", world.local_rank)
    return device


def shutdown() -> None:
    """Leave the process group if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def wrap(module: nn.Module, world: World, device: torch.device) -> nn.Module:
    """``module`` in DistributedDataParallel when distributed (only parameters that require gradients
    take part), else ``module`` itself."""
    if not world.distributed:
        return module
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids, broadcast_buffers=False)


def shard_loss_weight(shard_size: int, global_batch: int, world: World) -> float:
    """Factor on a shard's mean loss so that DDP's averaged gradient is the global-batch mean's gradient."""
    return world.world_size * shard_size / global_batch


def all_reduce_sum(value: torch.Tensor, world: World) -> torch.Tensor:
    """Sum of ``value`` over ranks (a copy; ``value`` itself when not distributed)."""
    if not world.distributed:
        return value
    out = value.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def barrier(world: World) -> None:
    """Wait for every rank (e.g. while rank 0 writes caches the others then read)."""
    if world.distributed:
        dist.barrier()


def broadcast_flag(flag: bool, world: World, device: torch.device) -> bool:
    """Rank 0's ``flag`` on every rank (so that every rank takes the same branch)."""
    if not world.distributed:
        return flag
    t = torch.tensor([1 if flag else 0], device=device)
    dist.broadcast(t, src=0)
    return bool(t.item())
