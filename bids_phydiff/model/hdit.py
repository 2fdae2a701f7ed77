"""The hourglass diffusion transformer (HDiT) backbone.

Input (B, in_channels, H, W) (x_t, the b0 slice and any context maps, concatenated), condition
(B, cond_features) from the mapping network, optional adapter features; output (B, out_channels, H, W), the
prediction named by the model's objective (the clean slice x0 for the presets, the noise eps, or v; see
:class:`~.config.PhyDiffConfig`).

Layout: a patch-``p`` token merge to level 0; at each level above the bottom, ``depth`` transformer layers
with neighborhood attention, then a 2x2 token merge down; the bottom level runs global (or neighborhood)
layers; on the way up a 2x2 token split whose output is blended with the level's skip by a learned
per-channel lerp (init 0.5), then ``depth`` more layers; finally RMSNorm and a zero-initialised patch
split (``unpatch``: linear per token, or smooth: windowed overlap-add across token borders),
optionally followed by a full-resolution convolutional refiner (``refine_channels``). Transformer layer = cosine-similarity self-attention (learned per-head temperature, init 10, axial
RoPE on half of each head) + GEGLU feed-forward, each pre-normed by AdaRMSNorm, each a residual whose
output projection starts at zero. Tokens are channels-last (B, h, w, C).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import GlobalAttention, NeighborhoodAttention
from .config import HDiTConfig, LevelConfig
from .layers import GEGLU, AdaRMSNorm, RMSNorm, zero_init


def grid_positions(height: int, width: int, device: torch.device) -> Tensor:
    """Token centres (h, w, 2) as (y, x); the longer side spans [-1, 1], aspect ratio preserved."""
    step = 2.0 / max(height, width)
    y = (torch.arange(height, device=device, dtype=torch.float32) + 0.5 - height / 2) * step
    x = (torch.arange(width, device=device, dtype=torch.float32) + 0.5 - width / 2) * step
    return torch.stack(torch.meshgrid(y, x, indexing="ij"), dim=-1)


class AxialRoPE(nn.Module):
    """Rotary position embedding over the first half of each head: a quarter for y, a quarter for x.

    Fixed frequencies log-spaced in [pi, 10 pi] per unit of :func:`grid_positions`.
    """

    def __init__(self, d_head: int) -> None:
        super().__init__()
        pairs = d_head // 4  # rotated pairs: half for y, half for x
        self.per_axis = pairs // 2
        self.rotated = 4 * self.per_axis
        freqs = torch.exp(torch.linspace(math.log(math.pi), math.log(10 * math.pi), max(self.per_axis, 1)))
        self.register_buffer("freqs", freqs[: self.per_axis], persistent=False)
        self._cache: dict[tuple[int, int, torch.device], tuple[Tensor, Tensor]] = {}

    def _angles(self, height: int, width: int, device: torch.device) -> tuple[Tensor, Tensor]:
        key = (height, width, device)
        if key not in self._cache:
            with torch.inference_mode(False), torch.no_grad():  # usable later for training too
                pos = grid_positions(height, width, device)
                freqs = self.freqs.to(device)
                angles = torch.cat([pos[..., :1] * freqs, pos[..., 1:] * freqs], dim=-1)  # (h, w, pairs)
                self._cache[key] = (angles.cos()[:, :, None, :], angles.sin()[:, :, None, :])
        return self._cache[key]

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, h, w, ..., D) float32; the grid is axes 1 and 2, every axis between them and D is kept."""
        if self.per_axis == 0:
            return x
        cos, sin = self._angles(x.shape[1], x.shape[2], x.device)
        extra = x.ndim - 5
        if extra:
            cos = cos.reshape(cos.shape[:2] + (1,) * extra + cos.shape[2:])
            sin = sin.reshape(sin.shape[:2] + (1,) * extra + sin.shape[2:])
        half = self.rotated // 2
        a, b, rest = x[..., :half], x[..., half : self.rotated], x[..., self.rotated :]
        return torch.cat([a * cos - b * sin, a * sin + b * cos, rest], dim=-1)


class SelfAttentionBlock(nn.Module):
    """AdaRMSNorm -> qkv -> cosine-similarity attention with RoPE -> zero-init projection, residual."""

    def __init__(self, level: LevelConfig, cond_features: int, dropout: float, backend: str) -> None:
        super().__init__()
        self.heads = level.width // level.d_head
        self.d_head = level.d_head
        self.norm = AdaRMSNorm(level.width, cond_features)
        self.qkv = nn.Linear(level.width, 3 * level.width, bias=False)
        self.temperature = nn.Parameter(torch.full((self.heads,), 10.0))
        self.rope = AxialRoPE(level.d_head)
        if level.attention == "neighborhood":
            self.attend: nn.Module = NeighborhoodAttention(level.kernel_size, backend)
        else:
            self.attend = GlobalAttention()
        self.dropout = nn.Dropout(dropout)
        self.out = zero_init(nn.Linear(level.width, level.width, bias=False))

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        b, h, w, c = x.shape
        qkv = self.qkv(self.norm(x, cond)).reshape(b, h, w, 3, self.heads, self.d_head)
        v = qkv[:, :, :, 2]
        # cosine similarity times a learned temperature: sqrt(temp) on q and on k, attention scale 1
        root = self.temperature.float().clamp_min(1e-6).sqrt()[:, None]
        qk = self.rope(F.normalize(qkv[:, :, :, :2].float(), dim=-1, eps=1e-6) * root).to(v.dtype)
        o = self.attend(qk[:, :, :, 0], qk[:, :, :, 1], v, scale=1.0).reshape(b, h, w, c)
        return x + self.out(self.dropout(o))


class FeedForwardBlock(nn.Module):
    """AdaRMSNorm -> GEGLU feed-forward (d_ff) -> zero-init projection, residual."""

    def __init__(self, width: int, d_ff: int, cond_features: int, dropout: float) -> None:
        super().__init__()
        self.norm = AdaRMSNorm(width, cond_features)
        self.up = nn.Linear(width, 2 * d_ff, bias=False)
        self.act = GEGLU()
        self.dropout = nn.Dropout(dropout)
        self.down = zero_init(nn.Linear(d_ff, width, bias=False))

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        return x + self.down(self.dropout(self.act(self.up(self.norm(x, cond)))))


class TransformerLayer(nn.Module):
    def __init__(self, level: LevelConfig, cond_features: int, dropout: float, backend: str) -> None:
        super().__init__()
        self.attention = SelfAttentionBlock(level, cond_features, dropout, backend)
        self.feed_forward = FeedForwardBlock(level.width, level.d_ff, cond_features, dropout)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        return self.feed_forward(self.attention(x, cond), cond)


class Level(nn.Module):
    """``depth`` transformer layers at one resolution."""

    def __init__(self, level: LevelConfig, cond_features: int, dropout: float, backend: str) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TransformerLayer(level, cond_features, dropout, backend) for _ in range(level.depth)
        )

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x, cond)
        return x


class TokenMerge(nn.Module):
    """(B, h, w, C_in) -> (B, h/p, w/p, C_out): each p x p patch of tokens flattened and projected."""

    def __init__(self, in_features: int, out_features: int, patch: int = 2) -> None:
        super().__init__()
        self.patch = patch
        self.proj = nn.Linear(in_features * patch * patch, out_features, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        b, h, w, c = x.shape
        p = self.patch
        x = x.reshape(b, h // p, p, w // p, p, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h // p, w // p, p * p * c)
        return self.proj(x)


class TokenSplit(nn.Module):
    """(B, h, w, C_in) -> (B, h*p, w*p, C_out); with a skip, ``skip + mix * (up - skip)`` (mix init 0.5)."""

    def __init__(self, in_features: int, out_features: int, patch: int = 2, skip: bool = True) -> None:
        super().__init__()
        self.patch = patch
        self.out_features = out_features
        self.proj = nn.Linear(in_features, out_features * patch * patch, bias=False)
        self.mix = nn.Parameter(torch.full((out_features,), 0.5)) if skip else None

    def forward(self, x: Tensor, skip: Tensor | None = None) -> Tensor:
        b, h, w, _ = x.shape
        p, c = self.patch, self.out_features
        x = self.proj(x).reshape(b, h, w, p, p, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h * p, w * p, c)
        if self.mix is None:
            return x
        if skip is None:
            raise ValueError("this token split blends with a skip; pass one")
        return skip + self.mix.to(x.dtype) * (x - skip)


class SmoothUnpatch(nn.Module):
    """(B, h, w, C_in) tokens -> (B, C_out, h*p, w*p) pixels without block edges: windowed overlap-add.

    Each token is mapped linearly to a ``2p x 2p`` patch centred on its own ``p x p`` block, weighted by a
    separable tent window (1 at the token centre, falling linearly to 0 one token away) and overlap-added
    with its neighbours' patches, normalised by the summed window (so the windows are a partition of unity,
    also at the grid's edge). A token's level therefore comes out bilinearly interpolated between token
    centres, and every token's contribution fades out across its border instead of stopping there. A linear
    map per token to its own block (the paper's unpatch) learns each token's level long before the pattern
    inside the block and leaves a grid of constant blocks; this one has no block edges from the first step.
    The projection starts at zero (output 0, like the linear unpatch). Exact centring for even ``p``.
    """

    def __init__(self, in_features: int, out_features: int, patch: int) -> None:
        super().__init__()
        self.patch = patch
        self.out_features = out_features
        self.proj = zero_init(nn.Linear(in_features, out_features * (2 * patch) ** 2, bias=False))
        tent = 1.0 - ((torch.arange(2 * patch, dtype=torch.float32) + 0.5) / patch - 1.0).abs()
        self.register_buffer("window", tent[:, None] * tent[None, :], persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        b, h, w, _ = x.shape
        p, c, k = self.patch, self.out_features, 2 * self.patch
        window = self.window.to(x.dtype)
        patches = self.proj(x).reshape(b, h * w, c, k, k) * window
        size, crop = ((h + 1) * p, (w + 1) * p), p // 2
        out = F.fold(patches.permute(0, 2, 3, 4, 1).reshape(b, c * k * k, h * w), size, k, stride=p)
        norm = F.fold(window.reshape(1, k * k, 1).expand(1, k * k, h * w), size, k, stride=p)
        return (out / norm)[..., crop : crop + h * p, crop : crop + w * p]


class OutputRefiner(nn.Module):
    """A full-resolution convolution after the patch split: ``out + conv3x3(GELU(conv3x3([out, x])))``.

    The patch split turns each level-0 token into a ``p x p`` block with one linear map, so neighbouring
    blocks are made independently and their borders can show; this head sees across the borders and sees
    the input (x_t and the b0) at full resolution, where the tokens see it only through the patch merge.
    Its last convolution starts at zero, so an untrained refiner leaves the backbone's output unchanged.
    """

    def __init__(self, in_channels: int, out_channels: int, hidden: int) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels + out_channels, hidden, 3, padding=1)
        self.conv_out = zero_init(nn.Conv2d(hidden, out_channels, 3, padding=1))

    def forward(self, out: Tensor, x: Tensor) -> Tensor:
        """out (B, C_out, H, W), x (B, C_in, H, W) -> (B, C_out, H, W)."""
        return out + self.conv_out(F.gelu(self.conv_in(torch.cat([out, x.to(out.dtype)], dim=1))))


class HDiT(nn.Module):
    """The hourglass backbone. See the module docstring; ``config.levels[-1]`` is the bottom level."""

    def __init__(self, config: HDiTConfig, cond_features: int) -> None:
        super().__init__()
        self.config = config
        levels = config.levels
        drop, backend = config.dropout, config.backend
        self.patch_in = TokenMerge(config.in_channels, levels[0].width, config.patch_size)
        self.down = nn.ModuleList(Level(lv, cond_features, drop, backend) for lv in levels[:-1])
        self.merges = nn.ModuleList(TokenMerge(a.width, b.width) for a, b in zip(levels[:-1], levels[1:]))
        self.middle = Level(levels[-1], cond_features, drop, backend)
        self.splits = nn.ModuleList(TokenSplit(b.width, a.width) for a, b in zip(levels[:-1], levels[1:]))
        self.up = nn.ModuleList(Level(lv, cond_features, drop, backend) for lv in levels[:-1])
        self.out_norm = RMSNorm(levels[0].width)
        if config.unpatch == "smooth":
            self.patch_out: nn.Module = SmoothUnpatch(levels[0].width, config.out_channels, config.patch_size)
        else:
            self.patch_out = TokenSplit(levels[0].width, config.out_channels, config.patch_size, skip=False)
            zero_init(self.patch_out.proj)
        self.refine = (OutputRefiner(config.in_channels, config.out_channels, config.refine_channels)
                       if config.refine_channels else None)

    def check_input(self, x: Tensor) -> None:
        m = self.config.size_multiple
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"HDiT input must be (B, {self.config.in_channels}, H, W), got {tuple(x.shape)}")
        if x.shape[-2] % m or x.shape[-1] % m:
            raise ValueError(
                f"HDiT input {x.shape[-2]}x{x.shape[-1]} is not a multiple of {m} (patch "
                f"{self.config.patch_size} x 2^{len(self.config.levels) - 1} levels); pad the grid"
            )

    def forward(self, x: Tensor, cond: Tensor, adapter_features: list[Tensor] | None = None) -> Tensor:
        """x (B, C_in, H, W), cond (B, cond_features), adapter_features: one (B, h_i, w_i, width_i) per level."""
        self.check_input(x)
        if adapter_features is not None and len(adapter_features) != len(self.config.levels):
            raise ValueError(f"expected {len(self.config.levels)} adapter features, got {len(adapter_features)}")
        h = self.patch_in(x.permute(0, 2, 3, 1))
        skips = []
        for i, (level, merge) in enumerate(zip(self.down, self.merges)):
            h = level(h, cond)
            if adapter_features is not None:
                h = h + adapter_features[i].to(h.dtype)
            skips.append(h)
            h = merge(h)
        h = self.middle(h, cond)
        if adapter_features is not None:
            h = h + adapter_features[-1].to(h.dtype)
        for level, split, skip in zip(reversed(self.up), reversed(self.splits), reversed(skips)):
            h = level(split(h, skip), cond)
        out = self.patch_out(self.out_norm(h))
        if self.config.unpatch == "linear":
            out = out.permute(0, 3, 1, 2)
        return out if self.refine is None else self.refine(out, x)
