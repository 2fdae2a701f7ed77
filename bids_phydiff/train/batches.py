"""Which samples and which noise each training step uses, as pure functions of (seed, step).

Drawing every random choice from generators seeded by the step (not from a running stream) makes a
resumed run repeat exactly what an uninterrupted one would do, and lets K data-parallel processes
each take a shard of the same global batch with the same per-sample noise as a single process.
"""

from __future__ import annotations

import torch

_STEP_STRIDE = 1_000_003
SAMPLE_STRIDE = 7_919


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
        g = step_generator(seed, step * SAMPLE_STRIDE + p, stream=2)
        ts.append(torch.randint(timesteps, (1,), generator=g))
        noises.append(torch.randn(shape, generator=g))
    return torch.cat(ts), torch.stack(noises)


def validation_indices(seed: int, dataset_size: int, count: int) -> torch.Tensor:
    """The fixed validation samples ``(min(count, dataset_size),)``: the same at every evaluation."""
    g = step_generator(seed, 0, stream=3)
    return torch.randperm(dataset_size, generator=g)[: min(count, dataset_size)]


def validation_noise(seed: int, positions: torch.Tensor, count: int, shape: tuple[int, ...], timesteps: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed timestep ``(B,)`` and noise ``(B, *shape)`` of validation samples at ``positions`` (of ``count``).

    Timesteps are stratified over ``[0, timesteps)`` (sample i at ``(i + 0.5) * T / count``) so the
    validation loss averages the whole schedule with little variance; noise is a function of
    (seed, position) only.
    """
    t = ((positions.double() + 0.5) * timesteps / count).long().clamp(0, timesteps - 1)
    noises = [torch.randn(shape, generator=step_generator(seed, int(p), stream=4)) for p in positions.tolist()]
    return t, torch.stack(noises) if noises else torch.zeros((0, *shape))


class StepBatchSampler(torch.utils.data.Sampler):
    """For a ``DataLoader``: yields this rank's dataset indices (a list) for each step ``start..stop-1``.

    The loop recomputes the matching positions in the global batch with :func:`shard`, so workers can
    prefetch freely.
    """

    def __init__(self, seed: int, dataset_size: int, batch_size: int, start: int, stop: int,
                 rank: int = 0, world_size: int = 1):
        self.seed, self.size, self.batch = seed, dataset_size, batch_size
        self.start, self.stop, self.rank, self.world = start, stop, rank, world_size

    def __len__(self) -> int:
        return max(self.stop - self.start, 0)

    def __iter__(self):
        for step in range(self.start, self.stop):
            _, idx = shard(global_batch(self.seed, step, self.size, self.batch), self.rank, self.world)
            yield idx.tolist()
