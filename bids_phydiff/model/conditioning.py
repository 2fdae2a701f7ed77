"""Condition embeddings (timestep, b-value, b-vector, slice position) and the mapping network.

Per sample: ``t`` (B,) diffusion step in [0, T); ``bval`` (B,) s/mm^2; ``bvec`` (B, 3) unit b-vector in
the FSL convention of the template grid (zero for b = 0); ``slice_pos`` (B,) continuous position of the
slice in [0, 1] (any grid). Output (B, width): the condition that drives every AdaRMSNorm.

Query-based mapping (paper Sec. 2.2): the q-space point is the four components (b, b gx, b gy, b gz)
divided by ``b_scale``; each component is a query token embedded by the real-number embedding of
paper Eq. 7, ``MLP(sign(x) * ln(|x| + 1))`` (one MLP shared by the tokens, which are told apart by a
fixed sinusoidal token position), and the tokens are flattened and mixed by a small MLP. The b-value has
its own real-number embedding. Ablation (``query_mapping=False``, paper "w/o query-based mapping"): a
linear embedding of the unit b-vector (its magnitude is ignored) and of b / b_scale.
Every guidance goes through its own bias-free projection; they are summed with the timestep embedding
and passed through the mapping network.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import ConditioningConfig
from .layers import GEGLU, RMSNorm, zero_init


def signed_log(x: Tensor) -> Tensor:
    """sign(x) * ln(|x| + 1), the normalisation inside paper Eq. 7."""
    return torch.sign(x) * torch.log1p(x.abs())


class FourierFeatures(nn.Module):
    """Fixed sinusoids: (B,) -> (B, 2 * num) = [cos(w x), sin(w x)], w log-spaced in [min_freq, max_freq]."""

    def __init__(self, num: int, min_freq: float, max_freq: float) -> None:
        super().__init__()
        freqs = torch.exp(torch.linspace(math.log(min_freq), math.log(max_freq), num, dtype=torch.float64))
        self.register_buffer("freqs", freqs.float(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        angles = x.float().reshape(-1, 1) * self.freqs
        return torch.cat([angles.cos(), angles.sin()], dim=-1)


class RealEmbedding(nn.Module):
    """Paper Eq. 7: ``MLP(signed_log(x))`` for real scalars; (...) -> (..., width)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        hidden1, hidden2 = max(width // 3, 1), max(2 * width // 3, 1)
        self.mlp = nn.Sequential(
            nn.Linear(1, hidden1), nn.SiLU(), nn.Linear(hidden1, hidden2), nn.SiLU(), nn.Linear(hidden2, width)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.mlp(signed_log(x.float()).unsqueeze(-1))


class QueryVectorEmbedding(nn.Module):
    """Query tokens (b, b gx, b gy, b gz) / b_scale -> Eq. 7 embedding each -> flatten -> MLP; (B, width)."""

    tokens = 4

    def __init__(self, width: int, b_scale: float) -> None:
        super().__init__()
        self.b_scale = b_scale
        self.component = RealEmbedding(width)
        position = FourierFeatures((width + 1) // 2, 1.0, 100.0)(torch.arange(self.tokens, dtype=torch.float32))
        self.register_buffer("token_position", position[:, :width].contiguous(), persistent=False)
        self.mix = nn.Sequential(nn.Linear(self.tokens * width, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, bval: Tensor, bvec: Tensor) -> Tensor:
        b = bval.float().reshape(-1, 1)
        query = torch.cat([b, b * bvec.float()], dim=-1) / self.b_scale  # (B, 4)
        tokens = self.component(query) + self.token_position  # (B, 4, width)
        return self.mix(tokens.flatten(1))


class UnitVectorEmbedding(nn.Module):
    """Ablation: a linear embedding of the normalised b-vector; (B, 3) -> (B, width)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.proj = nn.Linear(3, width)

    def forward(self, bvec: Tensor) -> Tensor:
        return self.proj(F.normalize(bvec.float(), dim=-1, eps=1e-8))


class MappingNetwork(nn.Module):
    """RMSNorm, then ``depth`` residual GEGLU feed-forward blocks, then RMSNorm; (B, width) -> (B, width)."""

    def __init__(self, width: int, depth: int, d_ff: int) -> None:
        super().__init__()
        self.in_norm = RMSNorm(width)
        self.blocks = nn.ModuleList(
            nn.Sequential(
                RMSNorm(width),
                nn.Linear(width, 2 * d_ff, bias=False),
                GEGLU(),
                zero_init(nn.Linear(d_ff, width, bias=False)),
            )
            for _ in range(depth)
        )
        self.out_norm = RMSNorm(width)

    def forward(self, x: Tensor) -> Tensor:
        x = self.in_norm(x)
        for block in self.blocks:
            x = x + block(x)
        return self.out_norm(x)


class ConditionEmbedding(nn.Module):
    """All guidances and the timestep -> the AdaRMSNorm condition (B, width)."""

    def __init__(self, config: ConditioningConfig) -> None:
        super().__init__()
        self.config = config
        w, nf = config.width, config.fourier_features
        self.time_features = FourierFeatures(nf, 1e-4, 1.0)  # t in steps, periods up to ~63000
        self.time_proj = nn.Linear(2 * nf, w, bias=False)
        self.slice_features = FourierFeatures(nf, 1.0, 2.0 * math.pi * 32.0)  # periods down to 1/32
        self.slice_embed = nn.Sequential(nn.Linear(2 * nf, w), nn.SiLU(), nn.Linear(w, w))
        if config.query_mapping:
            self.bval_embed: nn.Module = RealEmbedding(w)
            self.bvec_embed: nn.Module = QueryVectorEmbedding(w, config.b_scale)
        else:
            self.bval_embed = nn.Linear(1, w)
            self.bvec_embed = UnitVectorEmbedding(w)
        self.bval_proj = nn.Linear(w, w, bias=False)
        self.bvec_proj = nn.Linear(w, w, bias=False)
        self.slice_proj = nn.Linear(w, w, bias=False)
        self.mapping = MappingNetwork(w, config.mapping_depth, config.mapping_d_ff)

    def forward(self, t: Tensor, bval: Tensor, bvec: Tensor, slice_pos: Tensor) -> Tensor:
        batch = t.shape[0]
        if bval.shape != (batch,) or bvec.shape != (batch, 3) or slice_pos.shape != (batch,):
            raise ValueError(
                f"conditions must be t (B,), bval (B,), bvec (B, 3), slice_pos (B,) with B={batch}; got "
                f"{tuple(bval.shape)}, {tuple(bvec.shape)}, {tuple(slice_pos.shape)}"
            )
        b = bval.float()
        if self.config.query_mapping:
            e_bval = self.bval_embed(b / self.config.b_scale)
            e_bvec = self.bvec_embed(b, bvec)
        else:
            e_bval = self.bval_embed((b / self.config.b_scale).unsqueeze(-1))
            e_bvec = self.bvec_embed(bvec)
        e_slice = self.slice_embed(self.slice_features(slice_pos))
        x = (
            self.time_proj(self.time_features(t))
            + self.bval_proj(e_bval)
            + self.bvec_proj(e_bvec)
            + self.slice_proj(e_slice)
        )
        return self.mapping(x)
