"""The learning-rate schedule: linear warm-up, then cosine decay to a floor, as a pure function of the step.

Being a function of the step alone (no scheduler object with hidden state), the schedule resumes exactly
from a checkpoint that records only the step.
"""

from __future__ import annotations

import math


def learning_rate(step: int, total_steps: int, peak: float, warmup_steps: int, min_fraction: float) -> float:
    """The learning rate for 0-based ``step`` of a stage of ``total_steps`` steps.

    Steps ``0..warmup-1`` rise linearly to ``peak`` (step ``warmup - 1`` uses ``peak``); then cosine from
    ``peak`` down to ``peak * min_fraction`` at the last step ``total_steps - 1``.
    """
    if total_steps < 1 or not 0 <= step < total_steps:
        raise ValueError(f"step {step} outside a stage of {total_steps} steps")
    warmup = min(warmup_steps, total_steps)
    if step < warmup:
        return peak * (step + 1) / warmup
    decay_steps = total_steps - warmup
    if decay_steps <= 1:
        return peak
    progress = (step - warmup) / (decay_steps - 1)
    floor = peak * min_fraction
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
