"""Which samples and which noise each training step uses, as pure functions of (seed, step).

Drawing every random choice from generators seeded by the step (not from a running stream) makes a
resumed run repeat exactly what an uninterrupted one would do, and lets K data-parallel processes
each take a shard of the same global batch with the same per-sample noise as a single process.
"""

from __future__ import annotations

import torch

_STEP_STRIDE = 1_000_003
_SAMPLE_STRIDE = 7_919


def step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """A CPU generator for one purpose (``stream``) at one step."""
    g = torch.Generator()
    g.manual_seed((seed * 31 + stream) * _STEP_STRIDE + step)
    return g


def global_batch(seed: int, step: int, dataset_size: int, batch_size: int) -> torch.Tensor:
    """Indices ``(batch_size,)`` of the global batch at ``step`` (with replacement across steps,
    without replacement within a step when the dataset is large enough)."""
    g = step_generator(seed, step, stream=1)
    if dataset_size >= batch_size:
        return torch.randperm(dataset_size, generator=g)[:batch_size]
    return torch.randint(dataset_size, (batch_size,), generator=g)


def shard(indices: torch.Tensor, rank: int, world_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's part of a global batch: ``(positions in the batch, dataset indices)``."""
    positions = torch.arange(rank, indices.numel(), world_size)
    return positions, indices[positions]


def sample_noise(seed: int, step: int, positions: torch.Tensor, shape: tuple[int, ...], timesteps: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample timestep ``(B,)`` and noise ``(B, *shape)``, each a function of (seed, step, position
    in the global batch) only, so they do not depend on how the batch is split across processes."""
    ts, noises = [], []
    for p in positions.tolist():
        g = step_generator(seed, step * _SAMPLE_STRIDE + p, stream=2)
        ts.append(torch.randint(timesteps, (1,), generator=g))
        noises.append(torch.randn(shape, generator=g))
    return torch.cat(ts), torch.stack(noises)
