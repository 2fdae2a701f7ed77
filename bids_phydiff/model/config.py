"""Every configuration of the model room, and the presets, in one place.

All configs are frozen dataclasses with ``to_dict`` / ``from_dict`` from :class:`JsonConfig` (plain JSON
types; unknown keys are refused so a typo in a bundle or a config file is an error, not a silent default;
missing keys take the field defaults, so a bundle written before a key existed still loads).

Presets (:data:`PRESETS`, nominal image sizes in :data:`PRESET_IMAGE_SIZES`):

- ``paper``: the published model: patch 4, widths 128/256/512, depths 2/2/4, d_ff = width, 7x7
  neighborhood attention (head dim 64) at the two high-resolution levels, global attention at the bottom,
  mapping width 256, XTRACT adapter; 256x256 slices; backbone about 14.2 M parameters.
- ``small``: CPU demos on 64x64 slices.
- ``tiny``: tests and smoke runs on 32x32 slices; a training step on CPU takes well under a second.

``small`` and ``tiny`` turn tokens into pixels with the smooth unpatch (:data:`DEFAULT_UNPATCH`); ``paper``
keeps the published linear one.

Ablation switches (paper Table 2): ``schedule.gap = 0`` (w/o physics-guided noise, plain DDPM),
``conditioning.query_mapping = False`` (w/o query-based mapping), ``adapter = None`` (w/o XTRACT).
Objective (:data:`DEFAULT_OBJECTIVE`): the presets predict the clean slice (``"x0"``); ``"eps"`` is the
paper's noise prediction, ``"v"`` v-prediction. Baseline switch: ``objective = "regression"`` trains the
same network as a deterministic regressor (see :class:`PhyDiffConfig`).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, TypeVar, Union

C = TypeVar("C", bound="JsonConfig")


class JsonConfig:
    """``to_dict`` / ``from_dict`` for a (frozen) dataclass config, once for all of them.

    ``to_dict``: plain JSON types: nested configs as objects, tuples as lists. ``from_dict``: refuses unknown
    keys (naming ``where``, e.g. ``model.backbone.levels[0]``), leaves missing keys to the field defaults, and
    rebuilds nested configs and tuples from the field annotations (``X``, ``X | None``, ``tuple[X, ...]``).
    """

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _to_plain(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any], where: str = "") -> C:
        where = where or cls.__name__
        if not isinstance(data, Mapping):
            raise ValueError(f"{where}: expected an object, got {type(data).__name__}")
        fields = dataclasses.fields(cls)  # type: ignore[arg-type]
        names = {f.name for f in fields}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"{where}: unknown keys {unknown}; known keys are {sorted(names)}")
        missing = [f.name for f in fields if f.name not in data and _required(f)]
        if missing:
            raise ValueError(f"{where}: missing key(s) {missing}")
        hints = typing.get_type_hints(cls)
        return cls(**{k: _from_plain(hints[k], v, f"{where}.{k}") for k, v in data.items()})


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _to_plain(value: Any) -> Any:
    if isinstance(value, JsonConfig):
        return value.to_dict()
    if isinstance(value, (tuple, list)):
        return [_to_plain(v) for v in value]
    return value


def _from_plain(hint: Any, value: Any, where: str) -> Any:
    """``value`` (plain JSON) as the annotated type ``hint``: a config from an object, a tuple from a list."""
    options = typing.get_args(hint) if typing.get_origin(hint) in (Union, types.UnionType) else (hint,)
    for option in options:
        if isinstance(value, Mapping) and isinstance(option, type) and issubclass(option, JsonConfig):
            return option.from_dict(value, where)
        if isinstance(value, (list, tuple)) and typing.get_origin(option) is tuple:
            args = typing.get_args(option)
            item = args[0] if len(args) == 2 and args[1] is Ellipsis else Any
            return tuple(_from_plain(item, v, f"{where}[{i}]") for i, v in enumerate(value))
    return value


BACKENDS: tuple[str, ...] = ("auto", "torch", "natten", "flex")
"""Neighborhood-attention backends (:mod:`.attention`)."""


@dataclass(frozen=True)
class LevelConfig(JsonConfig):
    """One level of the hourglass. The last level of :class:`HDiTConfig` is the bottom (middle) level.

    ``attention``: ``"neighborhood"`` (kernel ``kernel_size``, odd) or ``"global"``.
    ``width`` must be a multiple of ``d_head``.
    """

    width: int
    depth: int
    d_ff: int
    d_head: int = 64
    attention: Literal["neighborhood", "global"] = "neighborhood"
    kernel_size: int = 7

    def __post_init__(self) -> None:
        if self.width <= 0 or self.depth < 0 or self.d_ff <= 0 or self.d_head <= 0:
            raise ValueError(f"level sizes must be positive: {self}")
        if self.width % self.d_head:
            raise ValueError(f"level width {self.width} is not a multiple of d_head {self.d_head}")
        if self.attention not in ("neighborhood", "global"):
            raise ValueError(f"level attention must be 'neighborhood' or 'global', got {self.attention!r}")
        if self.attention == "neighborhood" and (self.kernel_size < 1 or self.kernel_size % 2 == 0):
            raise ValueError(f"neighborhood kernel size must be odd and >= 1, got {self.kernel_size}")


@dataclass(frozen=True)
class HDiTConfig(JsonConfig):
    """The hourglass diffusion transformer backbone.

    Input (B, in_channels, H, W) = x_t, the b0 slice and the context maps (if any, see
    :attr:`PhyDiffConfig.context`) concatenated; output (B, out_channels, H, W) = what
    :attr:`PhyDiffConfig.objective` names (the clean slice x0 for the presets, the noise, v, or the target
    slice of the regression baseline). H and W must be multiples of ``patch_size * 2 ** (len(levels) - 1)``.
    ``backend``: neighborhood-attention backend, ``"auto" | "torch" | "natten" | "flex"`` (:mod:`.attention`).
    ``refine_channels``: hidden channels of the full-resolution output refiner after the patch split
    (:class:`~.hdit.OutputRefiner`); 0 = none, the paper's model (and what a bundle without the key means).
    ``unpatch``: how the last tokens become pixels: ``"linear"`` = one linear map per token to its ``patch x
    patch`` block (the paper's, and what a bundle without the key means); ``"smooth"`` = each token mapped to a
    ``2p x 2p`` patch, tent-windowed and overlap-added with its neighbours' (:class:`~.hdit.SmoothUnpatch`: a
    token's level is interpolated bilinearly and no token's output stops at its border; docs/evaluation.md,
    "Patch seams and blur on real scans").
    """

    levels: tuple[LevelConfig, ...]
    patch_size: int = 4
    in_channels: int = 2
    out_channels: int = 1
    dropout: float = 0.0
    backend: str = "auto"
    refine_channels: int = 0
    unpatch: Literal["linear", "smooth"] = "linear"

    def __post_init__(self) -> None:
        if self.unpatch not in ("linear", "smooth"):
            raise ValueError(f"unpatch must be 'linear' or 'smooth', got {self.unpatch!r}")
        levels = tuple(lv if isinstance(lv, LevelConfig) else LevelConfig(**lv) for lv in self.levels)
        object.__setattr__(self, "levels", levels)
        if not levels:
            raise ValueError("HDiTConfig needs at least one level")
        if self.refine_channels < 0:
            raise ValueError(f"refine_channels must be >= 0, got {self.refine_channels}")
        if self.patch_size < 1 or self.in_channels < 1 or self.out_channels < 1:
            raise ValueError(f"patch_size, in_channels and out_channels must be positive: {self}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {self.backend!r}")

    @property
    def size_multiple(self) -> int:
        """Image height and width must be multiples of this."""
        return self.patch_size * 2 ** (len(self.levels) - 1)

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(lv.width for lv in self.levels)


@dataclass(frozen=True)
class ConditioningConfig(JsonConfig):
    """Embeddings of timestep, b-value, b-vector and slice position, and the mapping network.

    ``width``: embedding and mapping width (the AdaRMSNorm condition size). ``b_scale`` (s/mm^2): b and the
    b-vector components b*g are divided by it before the signed log of paper Eq. 7.
    ``query_mapping``: True = the paper's query-based mapping (per-component real-number embeddings of
    (b, b*gx, b*gy, b*gz) as query tokens); False = the ablation: linear embeddings of the unit b-vector
    and of b / b_scale. ``fourier_features``: sinusoid pairs for the timestep and the slice position.
    """

    width: int = 256
    mapping_depth: int = 2
    mapping_d_ff: int = 768
    query_mapping: bool = True
    b_scale: float = 1000.0
    fourier_features: int = 64

    def __post_init__(self) -> None:
        if self.width < 3 or self.mapping_depth < 0 or self.mapping_d_ff <= 0 or self.fourier_features <= 0:
            raise ValueError(f"invalid conditioning sizes: {self}")
        if self.b_scale <= 0:
            raise ValueError(f"b_scale must be positive, got {self.b_scale}")


@dataclass(frozen=True)
class ScheduleConfig(JsonConfig):
    """DDPM noise schedule with the physics-guided per-pixel term (paper Eq. 5).

    beta_t(x) = linear beta_t + gap * (1 - s(x)), linear betas from ``beta_start`` to ``beta_end`` over
    ``num_steps``; ``gap = 0`` is plain DDPM.
    """

    num_steps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    gap: float = 1e-3

    def __post_init__(self) -> None:
        if self.num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {self.num_steps}")
        if not 0.0 < self.beta_start <= self.beta_end < 1.0:
            raise ValueError(f"need 0 < beta_start <= beta_end < 1, got {self.beta_start}, {self.beta_end}")
        if self.gap < 0.0 or self.beta_end + self.gap >= 0.5:
            raise ValueError(f"need gap >= 0 and beta_end + gap < 0.5, got gap={self.gap}")


@dataclass(frozen=True)
class AdapterConfig(JsonConfig):
    """The XTRACT adapter (T2I-Adapter style). Its level widths are the backbone's.

    ``in_channels``: tract channels (42 for XTRACT). ``blocks_per_level`` ResNet blocks of
    conv3x3 -> ReLU -> conv(kernel_size) at each level. ``xi``: the constant of paper Eq. 8;
    ``enrich`` switches Eq. 8 on. ``zero_init``: the last 1x1 convolution of each level starts at zero,
    so a fresh adapter leaves the frozen backbone's output unchanged.
    """

    in_channels: int = 42
    blocks_per_level: int = 2
    kernel_size: int = 1
    xi: float = 0.2
    enrich: bool = True
    zero_init: bool = True

    def __post_init__(self) -> None:
        if self.in_channels < 1 or self.blocks_per_level < 0 or self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"invalid adapter config: {self}")



DIFFUSION_OBJECTIVES = ("eps", "v", "x0")
"""What a diffusion network may predict: the noise, v, or the clean slice (see :class:`PhyDiffConfig`)."""
OBJECTIVES = DIFFUSION_OBJECTIVES + ("regression",)

BASE_CHANNELS = 2
"""Input channels of the backbone without a context: x_t and the b0 slice."""
CONTEXT_CHANNELS = {"none": 0, "dti": 7, "sh4": 15}
"""Context map channels per kind (the map layout of :mod:`bids_phydiff.prep.context`: dti = 6 tensor
components + S0, sh4 = 15 SH coefficients of one shell)."""
DERIVED_CONTEXT_CHANNELS = {"none": 0, "dti": 2, "sh4": 0}
"""Channels the model derives from the maps for each sample's target gradient (:mod:`.context`: for dti the
diffusivity along g and the tensor's signal)."""
DIFFUSIVITY_SCALE = 1e3
"""The dti maps' tensor unit: D in mm^2/s times this (um^2/ms), as :mod:`bids_phydiff.prep.context` writes."""


@dataclass(frozen=True)
class PhyDiffConfig(JsonConfig):
    """The whole model: backbone, conditioning, schedule, optional adapter (None = w/o XTRACT).

    ``objective``: ``"eps"`` (the default of a config that does not name one, e.g. a bundle written before
    the key existed) = the diffusion model, trained to predict the noise (paper Eq. 6);
    ``"v"`` = the same diffusion model trained to predict v = sqrt(abar) eps - sqrt(1 - abar) x0 with the
    per-pixel alpha-bar of the physics schedule (same forward process and samplers; the network's output
    is turned into eps for sampling). v weights the clean-image error by SNR + 1 instead of SNR, so the
    noisiest steps, which decide the sample's content, are learnt sooner (see docs/evaluation.md);
    ``"x0"`` = the same diffusion model trained to predict the clean slice x0 with an unweighted MSE at every
    step (the error of x0 counts as much at the noisiest steps, where only the conditions can tell the
    gradient direction's effect, as at the cleanest);
    ``"regression"`` = the same backbone, conditions and adapter used as a deterministic regression
    baseline: input x_t = zeros at t = 0 beside the b0 channel, output read as the target slice itself,
    trained with L2 to it, synthesised in one forward pass (the schedule is then unused).

    ``x0_skip`` (x0 objective only; False for a config without the key): the network's output F is read
    through the v parameterisation, x0 = sqrt(abar) x_t - sqrt(1 - abar) F (EDM's skip for unit data
    variance), and the loss stays the unweighted x0 MSE. At low noise x0 is then x_t plus a small correction,
    so the prediction keeps x_t's detail; without it the x0 network ignores x_t at the budgets measured (same
    prediction at t = 0 as at t = 999). Off in the presets: at 600-2000 steps on real scans the skip has not
    learnt to remove noise at mid t, and its samples are 3-13 dB worse than plain x0 (docs/evaluation.md,
    "Patch seams and blur on real scans").

    ``context`` (``"none"`` for a config without the key: the paper's b0-only model): per-voxel maps fitted
    from the run's own acquired shell (``"dti"``: tensor + S0, 7 channels; ``"sh4"``: order-4 SH coefficients,
    15 channels; see :mod:`bids_phydiff.prep.context`) enter the backbone as extra input channels after x_t
    and the b0 (q-space completion, issue 19), for dti with 2 channels derived for the target gradient (the
    tensor's diffusivity along it and its signal, :mod:`.context`). ``backbone.in_channels`` is then
    :data:`BASE_CHANNELS` + :data:`CONTEXT_CHANNELS` + :data:`DERIVED_CONTEXT_CHANNELS`; a config that leaves
    it at 2 gets it filled in.
    """

    backbone: HDiTConfig
    conditioning: ConditioningConfig = field(default_factory=ConditioningConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    adapter: AdapterConfig | None = None
    objective: Literal["eps", "v", "x0", "regression"] = "eps"
    x0_skip: bool = False
    context: Literal["none", "dti", "sh4"] = "none"

    def __post_init__(self) -> None:
        if self.context not in CONTEXT_CHANNELS:
            raise ValueError(f"context must be one of {list(CONTEXT_CHANNELS)}, got {self.context!r}")
        channels = BASE_CHANNELS + CONTEXT_CHANNELS[self.context] + DERIVED_CONTEXT_CHANNELS[self.context]
        if self.backbone.in_channels == BASE_CHANNELS and channels != BASE_CHANNELS:
            object.__setattr__(self, "backbone", dataclasses.replace(self.backbone, in_channels=channels))
        elif self.backbone.in_channels != channels:
            raise ValueError(f"backbone.in_channels {self.backbone.in_channels} does not fit context "
                             f"{self.context!r}: x_t and b0 ({BASE_CHANNELS}) + {CONTEXT_CHANNELS[self.context]} "
                             f"maps + {DERIVED_CONTEXT_CHANNELS[self.context]} derived = {channels}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {list(OBJECTIVES)}, got {self.objective!r}")
        if self.x0_skip and self.objective != "x0":
            raise ValueError(f"x0_skip applies to the x0 objective only, not to {self.objective!r}")

    def replace(self, **changes: Any) -> PhyDiffConfig:
        """A copy with top-level fields replaced, e.g. ``cfg.replace(adapter=None)``; a new ``context``
        re-derives the backbone's input channels."""
        if "context" in changes and "backbone" not in changes:
            changes["backbone"] = dataclasses.replace(self.backbone, in_channels=BASE_CHANNELS)
        return dataclasses.replace(self, **changes)


DEFAULT_OBJECTIVE = "x0"
"""The presets' objective. Measured on the phantom (docs/evaluation.md): with the paper's noise prediction
the network never learns the direction dependence at the noisy steps where DDIM decides a sample's content,
so fibre tensors come out isotropic; with x0 prediction the same model, trained as long, gets fibre
directions to 14 degrees and 5 dB more PSNR. ``objective: eps`` in a config gives the paper's loss."""

DEFAULT_UNPATCH = "smooth"
"""The CPU presets' unpatch (``small``, ``tiny``). Measured on real scans at 4 mm (docs/evaluation.md, "Patch
seams and blur on real scans"): at the budgets of this machine the linear unpatch's output is constant
within each patch (seam score 3.5 on the patch grid, the same at every noise level and in the samples;
with patch 2 the blocks are 2 pixels), the smooth one's has no block edges (0.8-0.9) at the same PSNR."""

PRESETS: dict[str, PhyDiffConfig] = {
    "paper": PhyDiffConfig(
        backbone=HDiTConfig(
            levels=(
                LevelConfig(width=128, depth=2, d_ff=128, d_head=64, attention="neighborhood", kernel_size=7),
                LevelConfig(width=256, depth=2, d_ff=256, d_head=64, attention="neighborhood", kernel_size=7),
                LevelConfig(width=512, depth=4, d_ff=512, d_head=64, attention="global"),
            ),
            patch_size=4,
        ),
        conditioning=ConditioningConfig(width=256, mapping_depth=2, mapping_d_ff=768),
        schedule=ScheduleConfig(),
        adapter=AdapterConfig(),
        objective=DEFAULT_OBJECTIVE,
    ),
    "small": PhyDiffConfig(
        backbone=HDiTConfig(
            levels=(
                LevelConfig(width=64, depth=2, d_ff=128, d_head=32, attention="neighborhood", kernel_size=7),
                LevelConfig(width=128, depth=2, d_ff=256, d_head=32, attention="neighborhood", kernel_size=7),
                LevelConfig(width=256, depth=2, d_ff=512, d_head=32, attention="global"),
            ),
            patch_size=4,
            unpatch=DEFAULT_UNPATCH,
        ),
        conditioning=ConditioningConfig(width=128, mapping_depth=1, mapping_d_ff=256, fourier_features=32),
        schedule=ScheduleConfig(),
        adapter=AdapterConfig(blocks_per_level=1),
        objective=DEFAULT_OBJECTIVE,
    ),
    "tiny": PhyDiffConfig(
        backbone=HDiTConfig(
            levels=(
                LevelConfig(width=32, depth=1, d_ff=64, d_head=16, attention="neighborhood", kernel_size=7),
                LevelConfig(width=64, depth=1, d_ff=128, d_head=16, attention="global"),
            ),
            patch_size=4,
            unpatch=DEFAULT_UNPATCH,
        ),
        conditioning=ConditioningConfig(width=64, mapping_depth=1, mapping_d_ff=128, fourier_features=16),
        schedule=ScheduleConfig(),
        adapter=AdapterConfig(blocks_per_level=1),
        objective=DEFAULT_OBJECTIVE,
    ),
}

PRESET_IMAGE_SIZES: dict[str, int] = {"paper": 256, "small": 64, "tiny": 32}


def preset(name: str) -> PhyDiffConfig:
    """The named preset; ValueError listing the names when unknown."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown model preset {name!r}; choose from {sorted(PRESETS)}") from None
