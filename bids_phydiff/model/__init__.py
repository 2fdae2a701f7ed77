"""The model room: the Phy-Diff model in pure torch (no files but the bundle, no BIDS).

- :mod:`.attention`: 2-D neighborhood attention (torch and natten backends) and global attention
- :mod:`.hdit`: the hourglass diffusion transformer backbone
- :mod:`.conditioning`: b-value / b-vector / slice / timestep embeddings and the mapping network
- :mod:`.schedule`: the physics-guided per-pixel noise schedule and all its maths (q_sample, x0/eps/v
  conversions, loss targets, DDPM and DDIM posteriors), and ADC interpolation between shells
- :mod:`.adapter`: the XTRACT adapter and the tract condition (paper Eq. 8)
- :mod:`.sampling`: the DDPM and DDIM loops, from noise or SDEdit
- :mod:`.phydiff`: the whole model and its loss; :mod:`.bundle`: the saved model bundle
- :mod:`.config`: every configuration and the presets; :mod:`.device`: device choice and autocast
"""

from .adapter import XtractAdapter, enrich_empty_tracts, tracts_from_labels
from .attention import (
    GlobalAttention,
    NeighborhoodAttention,
    blocked_neighborhood_attention,
    dense_neighborhood_attention,
    natten_available,
    natten_fused_available,
    resolve_backend,
)
from .bundle import Bundle, BundleError, GridSpec, load_bundle, read_bundle_config, save_bundle
from .conditioning import ConditionEmbedding
from .config import (
    PRESET_IMAGE_SIZES,
    PRESETS,
    AdapterConfig,
    ConditioningConfig,
    HDiTConfig,
    LevelConfig,
    PhyDiffConfig,
    ScheduleConfig,
    preset,
)
from .device import autocast, resolve_device
from .hdit import HDiT
from .phydiff import DiffusionBatch, PhyDiff
from .sampling import SamplerConfig, make_generator, sample
from .schedule import PhysicsSchedule, interpolate_adc

__all__ = [
    "AdapterConfig",
    "Bundle",
    "BundleError",
    "ConditionEmbedding",
    "ConditioningConfig",
    "DiffusionBatch",
    "GlobalAttention",
    "GridSpec",
    "HDiT",
    "HDiTConfig",
    "LevelConfig",
    "NeighborhoodAttention",
    "PRESETS",
    "PRESET_IMAGE_SIZES",
    "PhyDiff",
    "PhyDiffConfig",
    "PhysicsSchedule",
    "SamplerConfig",
    "ScheduleConfig",
    "XtractAdapter",
    "autocast",
    "blocked_neighborhood_attention",
    "dense_neighborhood_attention",
    "enrich_empty_tracts",
    "interpolate_adc",
    "load_bundle",
    "make_generator",
    "natten_available",
    "natten_fused_available",
    "preset",
    "read_bundle_config",
    "resolve_backend",
    "resolve_device",
    "sample",
    "save_bundle",
    "tracts_from_labels",
]
