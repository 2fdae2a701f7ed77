"""How many (slice, target, sample) items one model call of the synthesis takes (``--batch-size`` auto).

On the CPU a fixed :data:`CPU_BATCH` (larger batches do not run faster on a few cores; it was the default
before the choice became automatic). On CUDA as many as fit into :data:`CUDA_FRACTION` of the free memory,
from what one call on a small probe batch took (``torch.cuda.max_memory_allocated`` around it): a full
scheme then runs in few, large calls that keep the GPU busy. Items mix volumes and slices, so the batch is
not limited to one volume. The synthesis does not depend on the batch size (per-item noise generators).
"""

from __future__ import annotations

import logging
from typing import Callable

import torch

log = logging.getLogger(__name__)

CPU_BATCH = 16
CUDA_FRACTION = 0.5
"""Of the free GPU memory; the rest is headroom for the allocator's fragmentation and other processes."""
PROBE_ITEMS = 4
MAX_BATCH = 2048


def batch_for_memory(free_bytes: float, bytes_per_item: float, items: int, fraction: float = CUDA_FRACTION,
                     cap: int = MAX_BATCH) -> int:
    """Items per call so that ``bytes_per_item`` each fill at most ``fraction`` of ``free_bytes``; at least 1,
    at most ``items`` and ``cap``."""
    limit = min(int(items), int(cap))
    if bytes_per_item <= 0:
        return max(1, limit)
    return max(1, min(limit, int(fraction * free_bytes // bytes_per_item)))


def auto_batch_size(device: torch.device, items: int, probe: Callable[[int], object]) -> int:
    """The batch for ``items`` items on ``device``. ``probe(n)``: one model call on ``n`` real items (CUDA
    only; its result is discarded)."""
    if device.type != "cuda":
        return max(1, min(CPU_BATCH, items))
    n = max(1, min(PROBE_ITEMS, items))
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    probe(n)
    torch.cuda.synchronize(device)
    per_item = (torch.cuda.max_memory_allocated(device) - base) / n
    free, _ = torch.cuda.mem_get_info(device)
    size = batch_for_memory(free, per_item, items)
    log.info("batch size %d (auto: %.1f MiB per item measured on %d, %.0f MiB free on %s)", size,
             per_item / 2**20, n, free / 2**20, device)
    return size
