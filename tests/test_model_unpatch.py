"""The unpatch: how the backbone's last tokens become pixels (``HDiTConfig.unpatch``).

The defect (docs/evaluation.md, "Patch seams and blur on real scans"): with one linear map per token, a
network trained at CPU budgets outputs a constant block per patch (it learns each token's level long before
the pattern inside it), and the synthesis shows the token grid. The presets' smooth unpatch interpolates the
level between token centres, so the same training leaves no block edges.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bids_phydiff.eval.fidelity import PatchGrid, gradient_profile, seam_ratio, seam_score
from bids_phydiff.model import PhyDiff, PhyDiffConfig, preset
from bids_phydiff.model.hdit import SmoothUnpatch, TokenSplit

from test_model_phydiff import phantom_batch

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def with_unpatch(config: PhyDiffConfig, unpatch: str) -> PhyDiffConfig:
    return config.replace(backbone=dataclasses.replace(config.backbone, unpatch=unpatch))


def trained_seam(config: PhyDiffConfig, steps: int = 120) -> float:
    """Seam score (patch grid) of the x0 prediction at t = 500 on held-out phantom slices after ``steps``
    of training on others."""
    torch.manual_seed(0)
    model = PhyDiff(config.replace(adapter=None))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    for step in range(steps):
        loss = model.loss(phantom_batch(8, 32, seed=step), generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    batch = phantom_batch(4, 32, seed=999)
    t = torch.full((4,), 500)
    ge = model.schedule.excess_beta(batch.adc, batch.bval)
    x_t = model.schedule.q_sample(batch.target, t, torch.randn(batch.target.shape, generator=g), ge)
    with torch.no_grad():
        out = model(x_t, t, batch.b0, batch.bval, batch.bvec, batch.slice_pos)
    x0 = model.schedule.x0_from_eps(x_t, t, ge, model.predict_eps(x_t, t, ge, out))
    pred, target = x0[:, 0].permute(1, 2, 0).numpy(), batch.target[:, 0].permute(1, 2, 0).numpy()
    return seam_score(pred, target, PatchGrid(config.backbone.patch_size), target > -0.99)


def test_a_short_training_of_the_preset_leaves_no_patch_grid_where_the_linear_unpatch_does():
    tiny = preset("tiny")
    assert tiny.objective == "x0"
    smooth = trained_seam(tiny)
    linear = trained_seam(with_unpatch(tiny, "linear"))
    assert smooth < 1.5, smooth  # the phantom's sharp head edge is still a little soft at 120 steps
    assert linear > 2 * smooth, (linear, smooth)


def test_token_levels_come_out_interpolated_between_token_centres_not_as_blocks():
    """What an under-trained network outputs (one level per token) is smooth under the presets' unpatch
    and a grid of constant blocks under the linear one."""
    i, j = torch.meshgrid(torch.arange(6.0), torch.arange(6.0), indexing="ij")
    levels = torch.cos(0.5 * i) * torch.cos(0.4 * j + 1.0)  # one level per token, a smooth field
    tokens = torch.zeros(1, 6, 6, 4)
    tokens[..., 0] = levels
    smooth, linear = SmoothUnpatch(4, 1, patch=4), TokenSplit(4, 1, patch=4, skip=False)
    with torch.no_grad():
        smooth.proj.weight.zero_()
        smooth.proj.weight[:, 0] = 1.0  # every output pixel of a token = its level
        linear.proj.weight.zero_()
        linear.proj.weight[:, 0] = 1.0
        out_smooth = smooth(tokens)[0, 0]
        out_linear = linear(tokens)[0, ..., 0]
    bilinear = F.interpolate(levels[None, None], scale_factor=4, mode="bilinear", align_corners=False)[0, 0]
    torch.testing.assert_close(out_smooth, bilinear)
    inner = np.zeros((24, 24), dtype=bool)
    inner[2:-2, 2:-2] = True  # the outer half-tokens are flat (edges replicated)
    assert seam_ratio(out_smooth.numpy(), PatchGrid(4), inner) == pytest.approx(1.0, abs=0.05)
    assert seam_ratio(out_linear.numpy(), PatchGrid(4), inner) == np.inf


@pytest.mark.parametrize("order", [2, 4])
def test_one_tokens_output_fades_out_across_its_border(order):
    torch.manual_seed(0)
    unpatch = SmoothUnpatch(8, 1, patch=4, order=order)
    with torch.no_grad():
        unpatch.proj.weight.normal_()
        tokens = torch.zeros(1, 7, 7, 8)
        tokens[0, 3, 3] = torch.randn(8)
        out = unpatch(tokens)[0, 0].abs()
    reach = (order - 1) * 2  # pixels beyond its own 4x4 block (12..15): half the window less half a block
    inside = torch.zeros(28, 28, dtype=torch.bool)
    inside[12 - reach:16 + reach, 12 - reach:16 + reach] = True
    assert out[~inside].max() == 0
    assert out[inside].min() > 0
    ring = torch.cat([out[12 - reach, 12 - reach:16 + reach], out[15 + reach, 12 - reach:16 + reach]])
    assert out[12:16, 12:16].mean() > 3 * ring.mean()


def level_tokens(levels: torch.Tensor, width: int = 4) -> torch.Tensor:
    """(h, w) levels -> (1, h, w, width) tokens whose first feature is the level."""
    tokens = torch.zeros(1, *levels.shape, width)
    tokens[..., 0] = levels
    return tokens


def passing_levels(unpatch: SmoothUnpatch) -> SmoothUnpatch:
    """``unpatch`` with every output pixel of a token equal to the token's level (first feature)."""
    with torch.no_grad():
        unpatch.proj.weight.zero_()
        unpatch.proj.weight[:, 0] = 1.0
    return unpatch


def test_the_cubic_unpatch_keeps_constant_and_linear_levels_exact_to_the_grids_edge():
    unpatch = passing_levels(SmoothUnpatch(4, 1, patch=4, order=4))
    with torch.no_grad():
        flat = unpatch(level_tokens(torch.full((5, 7), 2.5)))[0, 0]
        i, j = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
        ramp = unpatch(level_tokens(0.3 * i - 0.2 * j))[0, 0]
    torch.testing.assert_close(flat, torch.full((20, 28), 2.5))  # the window sum is normalised at the edges
    x = (torch.arange(32.0) + 0.5) / 4 - 0.5  # pixel centres in token units (token centres at 0, 1, ...)
    expected = 0.3 * x[:, None] - 0.2 * x[None, :]
    torch.testing.assert_close(ramp[8:-8, 8:-8], expected[8:-8, 8:-8])  # 2 tokens from the edge: exact


def test_the_cubic_window_leaves_no_token_period_texture_where_the_tent_does():
    """Token levels that vary from token to token (what an under-trained network's texture is): under the
    tent the image is flattest across each token centre, where the tent's kink sits; the cubic B-spline's
    gradient is nearly the same at every phase."""
    levels = torch.from_numpy(np.random.default_rng(0).normal(size=(24, 24))).float()
    inner = np.zeros((96, 96), dtype=bool)
    inner[16:-16, 16:-16] = True
    profiles = {}
    for order in (2, 4):
        with torch.no_grad():
            out = passing_levels(SmoothUnpatch(4, 1, patch=4, order=order))(level_tokens(levels))[0, 0]
        profiles[order] = gradient_profile(out.numpy(), PatchGrid(4, (2, 2)), inner)  # phase 0 = across a centre
    tent, cubic = profiles[2], profiles[4]
    assert tent[0] == tent.min() and tent[0] < 0.7
    assert cubic.min() > 0.8 and cubic.max() < 1.2
    assert cubic.max() - cubic.min() < 0.5 * (tent.max() - tent.min())


def test_a_config_without_the_unpatch_key_is_the_linear_unpatch_and_its_weights_load():
    data = preset("tiny").to_dict()
    data["backbone"].pop("unpatch")
    old = PhyDiffConfig.from_dict(data)  # a bundle written before the key
    assert old.backbone.unpatch == "linear"
    state = PhyDiff(with_unpatch(preset("tiny"), "linear")).state_dict()
    PhyDiff(old).load_state_dict(state)  # strict: same parameters
    with pytest.raises(ValueError, match="unpatch"):
        with_unpatch(preset("tiny"), "nearest")
    cubic = with_unpatch(preset("tiny"), "cubic")
    assert PhyDiffConfig.from_dict(cubic.to_dict()).backbone.unpatch == "cubic"
