"""2-D neighborhood attention with NATTEN's window rule, and global attention.

Layout everywhere: ``(B, H, W, heads, D)`` (the layout of ``natten.na2d``), tokens on an H x W grid.

Window rule (NATTEN's, kernel k odd, R = k // 2): along an axis of length n >= k, query i attends to the
k keys ``[s_i, s_i + k)`` with ``s_i = clamp(i - R, 0, n - k)``; windows are clamped at the borders, never
zero-padded, so every query sees exactly k x k keys. Along an axis shorter than the kernel the window is
the whole axis (NATTEN refuses such inputs; this module accepts them so tiny grids work).

Backends behind :class:`NeighborhoodAttention`:

- ``"torch"``: blocked ("halo") attention in plain torch. The query grid is cut into tiles of t x t; each
  tile attends to the union of its queries' windows, a (t + k - 1)^2 block of keys, through one batched
  attention call with a small per-tile mask. Memory grows with tokens * (t + k - 1)^2, not tokens^2; the
  work runs in fused SDPA kernels (CPU and CUDA). Forward and backward on both.
- ``"natten"``: ``natten.na2d``, imported lazily. Chosen by ``"auto"`` on CUDA when libnatten (the fused
  kernels) is present; otherwise ``"auto"`` uses ``"torch"``. Asking for ``"natten"`` when natten cannot
  be imported raises. NATTEN's CPU (Flex) backend runs forward only.
- ``"flex"``: torch's FlexAttention, compiled, with a block mask cached per grid (:mod:`.flex_attention`).
  Only when asked for: for CUDA without libnatten; on the CPU it runs forward only. ``"auto"`` does not
  choose it until its speed on a GPU has been measured against the halo path (docs/benchmarks.md).

:func:`dense_neighborhood_attention` (SDPA with a dense HW x HW mask) is the reference the backends are
tested and benchmarked against.
"""

from __future__ import annotations

import functools
import importlib
import logging

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import BACKENDS

log = logging.getLogger(__name__)

_natten_module = None  # cached module, or False once an import failed
_logged_choices: set[tuple[str, str, str]] = set()


def _check_kernel(kernel_size: int) -> None:
    if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"neighborhood attention needs an odd kernel size >= 1, got {kernel_size!r}")


def _check_qkv(q: Tensor, k: Tensor, v: Tensor) -> None:
    if q.ndim != 5 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(
            "q, k, v must share the shape (B, H, W, heads, D); got "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )


def window_starts(n: int, kernel_size: int, device: torch.device | str | None = None) -> Tensor:
    """First key index of every query's window along one axis of length ``n``; shape (n,), int64."""
    _check_kernel(kernel_size)
    width = min(kernel_size, n)
    i = torch.arange(n, device=device)
    return (i - kernel_size // 2).clamp(0, n - width)


def neighborhood_mask(
    height: int, width: int, kernel_size: int, device: torch.device | str | None = None
) -> Tensor:
    """Dense boolean mask (H*W, H*W), row = query, column = key, True where the key is in the window."""

    def axis(n: int) -> Tensor:
        start = window_starts(n, kernel_size, device)
        span = min(kernel_size, n)
        key = torch.arange(n, device=device)
        return (key[None, :] >= start[:, None]) & (key[None, :] < start[:, None] + span)

    my, mx = axis(height), axis(width)
    return (my[:, None, :, None] & mx[None, :, None, :]).reshape(height * width, height * width)


# Cached tensors are built outside inference mode: SDPA saves its mask for backward, and a mask first
# built under torch.inference_mode() could not be used for training later in the same process.
@functools.lru_cache(maxsize=8)
@torch.inference_mode(False)
def _cached_neighborhood_mask(height: int, width: int, kernel_size: int, device: torch.device) -> Tensor:
    return neighborhood_mask(height, width, kernel_size, device)


def dense_neighborhood_attention(
    q: Tensor, k: Tensor, v: Tensor, kernel_size: int, scale: float | None = None
) -> Tensor:
    """Reference: SDPA over all H*W keys with the dense neighborhood mask. Memory grows with tokens^2."""
    _check_qkv(q, k, v)
    b, h, w, heads, d = q.shape
    mask = _cached_neighborhood_mask(h, w, kernel_size, q.device)

    def flat(x: Tensor) -> Tensor:
        return x.reshape(b, h * w, heads, d).transpose(1, 2)

    out = F.scaled_dot_product_attention(flat(q), flat(k), flat(v), attn_mask=mask, scale=scale)
    return out.transpose(1, 2).reshape(b, h, w, heads, d)


def global_attention(q: Tensor, k: Tensor, v: Tensor, scale: float | None = None) -> Tensor:
    """Every query attends to every key of the grid (fused SDPA)."""
    _check_qkv(q, k, v)
    b, h, w, heads, d = q.shape

    def flat(x: Tensor) -> Tensor:
        return x.reshape(b, h * w, heads, d).transpose(1, 2)

    out = F.scaled_dot_product_attention(flat(q), flat(k), flat(v), scale=scale)
    return out.transpose(1, 2).reshape(b, h, w, heads, d)


# --------------------------------------------------------------------------------------------------
# torch backend: blocked (halo) neighborhood attention


@functools.lru_cache(maxsize=256)
def default_tile(n: int, kernel_size: int) -> int:
    """Query tile length along an axis of ``n`` tokens (``n`` itself = one tile spanning the axis).

    A tile that starts at ``t0`` uses the key halo ``[t0 - R, t0 + t + R)``, which holds the union of its
    queries' clamped windows as long as the last tile has at least R + 1 real queries (``n % t == 0`` or
    ``n % t > R``). Among valid tiles the one nearest to ``max(8, k + 1)`` wins: the halo then costs about
    4x the work of exact k x k windows, in exchange for dense matrix products. Axes shorter than about
    1.3 halos are not tiled: one tile whose keys are the whole axis is cheaper there.
    """
    _check_kernel(kernel_size)
    r = kernel_size // 2
    preferred = max(8, kernel_size + 1)
    if n <= kernel_size or n * 10 <= (preferred + 2 * r) * 13:
        return n
    candidates = sorted(range(r + 1, n + 1), key=lambda t: (abs(t - preferred), -t))
    for t in candidates:
        if n % t == 0 or n % t > r:
            return t
    return n  # unreachable: t = n always qualifies


@functools.lru_cache(maxsize=128)
@torch.inference_mode(False)
def _axis_plan(n: int, kernel_size: int, tile: int) -> tuple[int, int, int, int, Tensor]:
    """(tiles, halo length, pad before, pad after, mask (tiles, tile, halo)) for one axis, on CPU."""
    r = kernel_size // 2
    if tile >= n or n <= kernel_size:  # one tile; its keys are the whole axis
        start = window_starts(n, kernel_size)
        key = torch.arange(n)
        mask = (key >= start[:, None]) & (key < start[:, None] + min(kernel_size, n))
        return 1, n, 0, 0, mask[None]
    if not r < tile or not (n % tile == 0 or n % tile > r):
        raise ValueError(f"tile {tile} is not valid for an axis of {n} tokens and kernel {kernel_size}")
    tiles = -(-n // tile)
    halo = tile + 2 * r
    pad_after = tiles * tile + r - n
    query = torch.arange(tiles * tile).view(tiles, tile)
    start = (query - r).clamp(0, n - kernel_size)
    halo_start = torch.arange(tiles)[:, None] * tile - r
    # padded queries (beyond n) get any valid window; their outputs are cut away
    rel = (start - halo_start).clamp(0, halo - kernel_size)
    key = torch.arange(halo)
    mask = (key >= rel[..., None]) & (key < rel[..., None] + kernel_size)
    return tiles, halo, r, pad_after, mask


@functools.lru_cache(maxsize=64)
@torch.inference_mode(False)
def _block_mask(shape: tuple[int, int], kernel_size: int, tiles: tuple[int, int], device: torch.device) -> Tensor:
    """Per-tile boolean mask (tiles_y * tiles_x, ty * tx, Ly * Lx), True where a key is in the window."""
    ny, ly, _, _, my = _axis_plan.__wrapped__(shape[0], kernel_size, tiles[0])
    nx, lx, _, _, mx = _axis_plan.__wrapped__(shape[1], kernel_size, tiles[1])
    ty, tx = my.shape[1], mx.shape[1]
    mask = my[:, None, :, None, :, None] & mx[None, :, None, :, None, :]
    return mask.reshape(ny * nx, ty * tx, ly * lx).to(device)


def blocked_neighborhood_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    kernel_size: int,
    scale: float | None = None,
    tile: int | tuple[int, int] | None = None,
) -> Tensor:
    """Neighborhood attention by query tiles and key halos (the ``"torch"`` backend).

    One ``F.scaled_dot_product_attention`` call over (B * heads, tiles) with a boolean mask shaped
    (1, tiles, queries, keys), which the fused CPU and CUDA kernels accept (forward and backward).
    ``tile``: query tile length (int or (ty, tx)); default :func:`default_tile` per axis. When one tile
    spans the grid this is masked attention over all tokens.
    """
    _check_kernel(kernel_size)
    _check_qkv(q, k, v)
    b, h, w, heads, d = q.shape
    # under torch.compile, trace the pure plan builders instead of their caches
    compiling = torch.compiler.is_compiling()
    pick = default_tile.__wrapped__ if compiling else default_tile
    plan = _axis_plan.__wrapped__ if compiling else _axis_plan
    block_mask = _block_mask.__wrapped__ if compiling else _block_mask
    if tile is None:
        ty, tx = pick(h, kernel_size), pick(w, kernel_size)
    elif isinstance(tile, int):
        ty, tx = tile, tile
    else:
        ty, tx = tile
    ny, ly, pby, pay, my = plan(h, kernel_size, ty)
    nx, lx, pbx, pax, mx = plan(w, kernel_size, tx)
    ty, tx = my.shape[1], mx.shape[1]

    mask = block_mask((h, w), kernel_size, (ty, tx), q.device)
    if ny == 1 and nx == 1:
        # one tile covers the grid: masked attention over all tokens, no tiling copies
        def flat(x: Tensor) -> Tensor:
            return x.reshape(b, h * w, heads, d).transpose(1, 2)

        out = F.scaled_dot_product_attention(flat(q), flat(k), flat(v), attn_mask=mask[0], scale=scale)
        return out.transpose(1, 2).reshape(b, h, w, heads, d)

    # queries: (B, H, W, heads, D) -> (B*heads, tiles, ty*tx, D)
    qp = F.pad(q, (0, 0, 0, 0, 0, nx * tx - w, 0, ny * ty - h))
    qt = qp.view(b, ny, ty, nx, tx, heads, d).permute(0, 5, 1, 3, 2, 4, 6).reshape(b * heads, ny * nx, ty * tx, d)

    def halo(x: Tensor) -> Tensor:
        x = F.pad(x, (0, 0, 0, 0, pbx, pax, pby, pay))
        x = x.unfold(1, ly, ty).unfold(2, lx, tx)  # (B, ny, nx, heads, D, ly, lx)
        return x.permute(0, 3, 1, 2, 5, 6, 4).reshape(b * heads, ny * nx, ly * lx, d)

    # a 4-D mask: the fused CPU kernel is ~3x slower with a 3-D one
    out = F.scaled_dot_product_attention(qt, halo(k), halo(v), attn_mask=mask[None], scale=scale)
    out = out.view(b, heads, ny, nx, ty, tx, d).permute(0, 2, 4, 3, 5, 1, 6).reshape(b, ny * ty, nx * tx, heads, d)
    return out[:, :h, :w]


# --------------------------------------------------------------------------------------------------
# natten backend


def _natten():
    """The natten module, or None when it cannot be imported (the failure is remembered)."""
    global _natten_module
    if _natten_module is None:
        try:
            _natten_module = importlib.import_module("natten")
        except Exception as error:  # ImportError, or a broken build failing at import time
            log.debug("natten is not usable: %s", error)
            _natten_module = False
    return _natten_module or None


def natten_available() -> bool:
    """True when ``import natten`` works (any backend, possibly Flex only)."""
    return _natten() is not None


def natten_fused_available() -> bool:
    """True when natten has libnatten, its compiled CUDA kernels (forward and backward)."""
    module = _natten()
    return bool(module is not None and getattr(module, "HAS_LIBNATTEN", False))


def reset_backend_cache() -> None:
    """Forget the cached natten import (after installing or hiding natten at run time)."""
    global _natten_module
    _natten_module = None
    _logged_choices.clear()


def resolve_backend(requested: str, device: torch.device) -> str:
    """Map ``"auto" | "torch" | "natten" | "flex"`` (:data:`.config.BACKENDS`) to the backend that will run on
    ``device``; logs the choice once."""
    if requested not in BACKENDS:
        raise ValueError(f"unknown neighborhood-attention backend {requested!r}; choose from {BACKENDS}")
    if requested == "natten":
        if not natten_available():
            raise RuntimeError(
                "neighborhood-attention backend 'natten' was requested but natten cannot be imported; "
                "install natten or use backend='torch' (or 'auto')"
            )
        chosen, why = "natten", "requested"
        if device.type == "cpu":
            why = "requested; NATTEN's CPU (Flex) backend runs forward only, training needs backend='torch'"
        elif not natten_fused_available():
            why = "requested; natten has no libnatten here, so it runs its unfused Flex backend"
    elif requested in ("torch", "flex"):
        chosen, why = requested, "requested"
        if requested == "flex" and device.type == "cpu":
            why = "requested; FlexAttention on the CPU runs forward only, training needs backend='torch'"
    elif device.type == "cuda" and natten_fused_available():
        chosen, why = "natten", "auto: CUDA device and libnatten present"
    else:
        chosen = "torch"
        why = "auto: " + ("natten with libnatten not available" if device.type == "cuda" else f"{device.type} device")
    key = (requested, str(device), chosen)
    if key not in _logged_choices:
        _logged_choices.add(key)
        (log.warning if "forward only" in why or "unfused" in why else log.info)(
            "neighborhood attention on %s: backend %r (%s)", device, chosen, why
        )
    return chosen


def natten_neighborhood_attention(
    q: Tensor, k: Tensor, v: Tensor, kernel_size: int, scale: float | None = None
) -> Tensor:
    """``natten.na2d`` with this module's window rule (kernel shrunk to axes shorter than it)."""
    _check_kernel(kernel_size)
    _check_qkv(q, k, v)
    module = _natten()
    if module is None:
        raise RuntimeError("natten cannot be imported")
    kernel = (min(kernel_size, q.shape[1]), min(kernel_size, q.shape[2]))
    return module.na2d(q.contiguous(), k.contiguous(), v.contiguous(), kernel_size=kernel, scale=scale)


class NeighborhoodAttention(nn.Module):
    """Neighborhood attention on (B, H, W, heads, D); the backend is resolved per device at call time."""

    def __init__(self, kernel_size: int, backend: str = "auto") -> None:
        super().__init__()
        _check_kernel(kernel_size)
        if backend not in BACKENDS:
            raise ValueError(f"unknown neighborhood-attention backend {backend!r}; choose from {BACKENDS}")
        self.kernel_size = kernel_size
        self.backend = backend

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, backend={self.backend!r}"

    def forward(self, q: Tensor, k: Tensor, v: Tensor, scale: float | None = None) -> Tensor:
        backend = resolve_backend(self.backend, q.device)
        if backend == "natten":
            return natten_neighborhood_attention(q, k, v, self.kernel_size, scale)
        if backend == "flex":
            from .flex_attention import flex_neighborhood_attention

            return flex_neighborhood_attention(q, k, v, self.kernel_size, scale)
        return blocked_neighborhood_attention(q, k, v, self.kernel_size, scale)


class GlobalAttention(nn.Module):
    """Global self-attention on (B, H, W, heads, D), for the bottom level of the hourglass."""

    def forward(self, q: Tensor, k: Tensor, v: Tensor, scale: float | None = None) -> Tensor:
        return global_attention(q, k, v, scale)
