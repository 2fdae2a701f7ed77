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

from bids_phydiff.eval.fidelity import PatchGrid, seam_ratio, seam_score
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


def test_one_tokens_output_fades_out_across_its_border():
    torch.manual_seed(0)
    unpatch = SmoothUnpatch(8, 1, patch=4)
    with torch.no_grad():
        unpatch.proj.weight.normal_()
        tokens = torch.zeros(1, 5, 5, 8)
        tokens[0, 2, 2] = torch.randn(8)
        out = unpatch(tokens)[0, 0].abs()
    inside = torch.zeros(20, 20, dtype=torch.bool)
    inside[6:14, 6:14] = True  # the token's own 4x4 block (8..11) and half a token around it
    assert out[~inside].max() == 0
    assert out[8:12, 8:12].mean() > 3 * torch.cat([out[6, 6:14], out[13, 6:14], out[6:14, 6], out[6:14, 13]]).mean()


def test_a_config_without_the_unpatch_key_is_the_linear_unpatch_and_its_weights_load():
    data = preset("tiny").to_dict()
    data["backbone"].pop("unpatch")
    old = PhyDiffConfig.from_dict(data)  # a bundle written before the key
    assert old.backbone.unpatch == "linear"
    state = PhyDiff(with_unpatch(preset("tiny"), "linear")).state_dict()
    PhyDiff(old).load_state_dict(state)  # strict: same parameters
    with pytest.raises(ValueError, match="unpatch"):
        with_unpatch(preset("tiny"), "nearest")
