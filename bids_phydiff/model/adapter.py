"""The XTRACT adapter (paper Sec. 2.3, in the style of T2I-Adapter) and its tract inputs.

Tract condition: (B, 42, H, W), one channel per XTRACT tract, probabilities in [0, 1] or a one-hot made
by :func:`tracts_from_labels` from a label map (0 = no tract, 1..42 = tract). Before the network, paper
Eq. 8 fills every tract channel that is empty in a slice with
``(sum of the slice's non-empty channels + xi) * minmax(b0)`` (:func:`enrich_empty_tracts`, never in place).

Network: pixel-unshuffle by the backbone's patch size, a 3x3 convolution to the level-0 width, then per
backbone level (2x average pooling and a 1x1 channel change between levels) ResNet blocks
conv3x3 -> ReLU -> conv(k) with identity skips, and a 1x1 output convolution (zero at init when
``zero_init``). Level i's features are added to the backbone tokens after encoder level i; the last
level's after the bottom level. The adapter is trained after the backbone, with the backbone frozen.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import AdapterConfig


def tracts_from_labels(labels: Tensor, num_tracts: int = 42, dtype: torch.dtype = torch.float32) -> Tensor:
    """One-hot tract channels (B, num_tracts, H, W) from a label map (B, H, W): 0 = none, k -> channel k-1."""
    if labels.ndim != 3:
        raise ValueError(f"tract labels must be (B, H, W), got {tuple(labels.shape)}")
    if labels.is_floating_point():
        if not torch.equal(labels, labels.round()):
            raise ValueError("tract labels must be integers")
        labels = labels.long()
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) > num_tracts):
        raise ValueError(f"tract labels must be in 0..{num_tracts}, got {int(labels.min())}..{int(labels.max())}")
    onehot = F.one_hot(labels.long(), num_tracts + 1)[..., 1:]
    return onehot.permute(0, 3, 1, 2).to(dtype)


def minmax_per_sample(x: Tensor) -> Tensor:
    """Each sample scaled to [0, 1] (a constant sample gives zeros); (B, ...) -> (B, ...)."""
    flat = x.reshape(x.shape[0], -1)
    low = flat.amin(dim=1).reshape(-1, *([1] * (x.ndim - 1)))
    span = flat.amax(dim=1).reshape(-1, *([1] * (x.ndim - 1))) - low
    return torch.where(span > 0, (x - low) / torch.where(span > 0, span, 1.0), torch.zeros_like(x))


def enrich_empty_tracts(tracts: Tensor, b0: Tensor, xi: float = 0.2, empty_below: float = 1e-6) -> Tensor:
    """Paper Eq. 8 on a new tensor: empty channels <- (sum of non-empty channels + xi) * minmax(b0).

    ``tracts`` (B, C, H, W); ``b0`` (B, 1, H, W) (any intensity scale); a channel is empty in a sample when
    its maximum is at most ``empty_below``. Returns (B, C, H, W); the input is not modified.
    """
    if tracts.ndim != 4 or b0.ndim != 4 or b0.shape[1] != 1 or b0.shape[0] != tracts.shape[0]:
        raise ValueError(f"need tracts (B, C, H, W) and b0 (B, 1, H, W); got {tuple(tracts.shape)}, {tuple(b0.shape)}")
    if tracts.shape[-2:] != b0.shape[-2:]:
        raise ValueError(f"tracts {tuple(tracts.shape[-2:])} and b0 {tuple(b0.shape[-2:])} grids differ")
    empty = tracts.amax(dim=(2, 3), keepdim=True) <= empty_below  # (B, C, 1, 1)
    present_sum = torch.where(empty, torch.zeros_like(tracts), tracts).sum(dim=1, keepdim=True)
    fill = (present_sum + xi) * minmax_per_sample(b0.to(tracts.dtype))
    return torch.where(empty, fill, tracts)


class ResBlock(nn.Module):
    """x + conv_k(relu(conv3x3(x))), channels kept."""

    def __init__(self, channels: int, kernel_size: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.relu(self.conv1(x)))


class XtractAdapter(nn.Module):
    """Tract condition (B, C, H, W) + b0 (B, 1, H, W) -> one channels-last feature map per backbone level."""

    def __init__(self, config: AdapterConfig, widths: tuple[int, ...], patch_size: int) -> None:
        super().__init__()
        self.config = config
        self.unshuffle = nn.PixelUnshuffle(patch_size)
        self.conv_in = nn.Conv2d(config.in_channels * patch_size * patch_size, widths[0], 3, padding=1)
        self.levels = nn.ModuleList()
        self.outputs = nn.ModuleList()
        for i, width in enumerate(widths):
            layers: list[nn.Module] = []
            if i > 0:
                layers += [nn.AvgPool2d(2), nn.Conv2d(widths[i - 1], width, 1)]
            layers += [ResBlock(width, config.kernel_size) for _ in range(config.blocks_per_level)]
            self.levels.append(nn.Sequential(*layers))
            out = nn.Conv2d(width, width, 1)
            if config.zero_init:
                nn.init.zeros_(out.weight)
                nn.init.zeros_(out.bias)
            self.outputs.append(out)

    def forward(self, tracts: Tensor, b0: Tensor) -> list[Tensor]:
        if tracts.ndim != 4 or tracts.shape[1] != self.config.in_channels:
            raise ValueError(f"tract condition must be (B, {self.config.in_channels}, H, W), got {tuple(tracts.shape)}")
        x = enrich_empty_tracts(tracts, b0, self.config.xi) if self.config.enrich else tracts
        x = self.conv_in(self.unshuffle(x))
        features = []
        for level, out in zip(self.levels, self.outputs):
            x = level(x)
            features.append(out(x).permute(0, 2, 3, 1))
        return features
