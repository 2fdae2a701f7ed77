"""The ``"flex"`` neighborhood-attention backend: torch's FlexAttention with NATTEN's window rule.

FlexAttention skips the blocks of the score matrix that its block mask marks empty, so on CUDA it runs as a
fused kernel that touches only the tokens' windows. Two conditions make it fast, both kept here: it runs
under ``torch.compile`` (eager FlexAttention computes the full score matrix), and the block mask is built
once per token grid, outside the compiled region, and reused (a new mask per call costs as much as the
attention). One compilation per grid shape (``dynamic=False``): a training run sees one or two grids per
level. On the CPU torch compiles the forward only; there is no backward.

Layout ``(B, H, W, heads, D)`` in and out, as everywhere in :mod:`.attention`.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor


@functools.lru_cache(maxsize=None)
def _compiled():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def _window_mask_mod(height: int, width: int, kernel_size: int):
    """``mask_mod(b, h, q, kv)``: key ``kv`` lies in query ``q``'s clamped window (tokens row-major)."""
    kh, kw = min(kernel_size, height), min(kernel_size, width)

    def inside(q, kv, n, k, stride, size):
        qi, ki = (q // stride) % size, (kv // stride) % size
        start = (qi - k // 2).clamp(0, n - k)
        return (ki >= start) & (ki < start + k)

    def mask_mod(b, h, q, kv):
        return inside(q, kv, height, kh, width, height) & inside(q, kv, width, kw, 1, width)

    return mask_mod


@functools.lru_cache(maxsize=64)
def block_mask(height: int, width: int, kernel_size: int, device: str):
    """The FlexAttention block mask of a ``height x width`` token grid, built once per grid and device."""
    from torch.nn.attention.flex_attention import create_block_mask

    tokens = height * width
    return create_block_mask(_window_mask_mod(height, width, kernel_size), None, None, tokens, tokens,
                             device=device)


def flex_neighborhood_attention(
    q: Tensor, k: Tensor, v: Tensor, kernel_size: int, scale: float | None = None
) -> Tensor:
    """Neighborhood attention on ``(B, H, W, heads, D)`` through compiled FlexAttention."""
    b, h, w, heads, d = q.shape
    mask = block_mask(h, w, kernel_size, str(q.device))

    def flat(x: Tensor) -> Tensor:
        return x.reshape(b, h * w, heads, d).transpose(1, 2)

    out = _compiled()(flat(q), flat(k), flat(v), block_mask=mask, scale=scale)
    return out.transpose(1, 2).reshape(b, h, w, heads, d)
