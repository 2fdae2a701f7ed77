"""Training-slice augmentation (train/augment.py): a mirrored slice is the mirrored brain with the mirrored
gradient, shifts keep each channel's background, and the draws depend on (seed, step, position) only."""

from __future__ import annotations

import numpy as np
import torch

from bids_phydiff.train import augment


def _tensor_field(h: int, w: int) -> np.ndarray:
    """(H, W, 3, 3) diffusion tensors (mm^2/s) whose principal direction turns with position, no symmetry."""
    ii, jj = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    theta, phi = 2.1 * ii + 0.7 * jj ** 2, 0.4 + 1.3 * jj * ii
    e1 = np.stack([np.cos(theta) * np.sin(phi), np.sin(theta) * np.sin(phi), np.cos(phi)], axis=-1)
    eye = np.eye(3)
    return 1.7e-3 * e1[..., :, None] * e1[..., None, :] + 0.3e-3 * (eye - e1[..., :, None] * e1[..., None, :])


def _signal(field: np.ndarray, g: np.ndarray, b: float = 2000.0) -> np.ndarray:
    return np.exp(-b * np.einsum("i,...ij,j->...", g, field, g))


def test_a_mirrored_slice_is_the_mirrored_brain_measured_with_the_mirrored_gradient():
    field, g = _tensor_field(10, 12), np.array([0.48, -0.6, 0.64])
    g /= np.linalg.norm(g)
    samples = {"target": torch.tensor(_signal(field, g)[None, None], dtype=torch.float32),
               "bvec": torch.tensor(g[None], dtype=torch.float32)}
    out = augment.apply(samples, augment.Augmentation(torch.tensor([True]), torch.zeros((1, 2), dtype=torch.long)))
    # the brain mirrored across the first (left-right) axis: positions flip and so do the tensors' x parts
    m = np.diag([-1.0, 1.0, 1.0])
    mirrored = np.einsum("ij,...jk,kl->...il", m, field[::-1], m)
    expected = _signal(mirrored, out["bvec"][0].double().numpy())
    np.testing.assert_allclose(out["target"][0, 0].numpy(), expected, atol=1e-6)
    # the check can fail: the unmirrored gradient does not give the mirrored brain's signal
    assert np.abs(_signal(mirrored, g) - expected).max() > 0.05
    assert samples["bvec"][0, 0] == np.float32(g[0])  # the input batch is not changed


def test_shifts_move_every_image_and_fill_each_channels_background():
    image = torch.arange(2 * 1 * 6 * 7, dtype=torch.float32).reshape(2, 1, 6, 7)
    mask = torch.ones(2, 1, 6, 7)
    samples = {"target": image, "b0": image + 1, "mask": mask, "bvec": torch.eye(3)[:2]}
    shift = torch.tensor([[2, -1], [0, 0]])
    out = augment.apply(samples, augment.Augmentation(torch.tensor([False, False]), shift))
    assert torch.equal(out["target"][0, 0, 2:, :-1], image[0, 0, :-2, 1:])
    assert torch.equal(out["b0"][0, 0, 2:, :-1], image[0, 0, :-2, 1:] + 1)
    assert (out["target"][0, 0, :2] == -1).all() and (out["target"][0, 0, :, -1] == -1).all()
    assert (out["mask"][0, 0, :2] == 0).all() and (out["mask"][0, 0, 2:, :-1] == 1).all()
    assert torch.equal(out["target"][1], image[1]) and torch.equal(out["bvec"], samples["bvec"])


def test_draws_are_a_function_of_seed_step_and_position_only():
    positions = torch.arange(32)
    whole = augment.draw(5, 12, positions, flip=True, max_shift=3)
    for shard in (positions[0::2], positions[1::2]):  # two data-parallel ranks draw their part of the same batch
        part = augment.draw(5, 12, shard, flip=True, max_shift=3)
        assert torch.equal(part.flip, whole.flip[shard]) and torch.equal(part.shift, whole.shift[shard])
    assert whole.shift.abs().max() <= 3 and whole.flip.any() and not whole.flip.all()
    later = augment.draw(5, 13, positions, flip=True, max_shift=3)
    assert not (torch.equal(later.flip, whole.flip) and torch.equal(later.shift, whole.shift))
    off = augment.draw(5, 12, positions, flip=False, max_shift=0)
    assert not off.flip.any() and not off.shift.any()
