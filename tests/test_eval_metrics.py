"""Metrics: agreement with scikit-image, masks, the paper protocol, per-volume rows and shell summaries."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
from scipy import ndimage
from scipy.signal import convolve2d
from skimage.metrics import normalized_root_mse, peak_signal_noise_ratio, structural_similarity

from bids_phydiff.eval import (
    METRICS,
    masked_metrics,
    minmax_255,
    nrmse,
    paper_metrics,
    psnr,
    series_metrics,
    ssim,
    ssim_map,
    summarise_by_shell,
    write_tsv,
)


def _images(shape=(40, 37), seed=0, noise=0.1):
    rng = np.random.default_rng(seed)
    xx, yy = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape[:2]), indexing="ij")
    base = np.exp(-(xx**2 + yy**2) * 2)
    if len(shape) == 3:
        base = base[..., None] * np.linspace(0.5, 1.5, shape[2])
    ref = 900 * base + 30 * rng.random(shape)
    test = ref + noise * 900 * rng.standard_normal(shape)
    return ref, test


def _disc(shape):
    xx, yy = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape[:2]), indexing="ij")
    disc = xx**2 + yy**2 < 0.6
    return np.broadcast_to(disc[..., None], shape).copy() if len(shape) == 3 else disc


@pytest.mark.parametrize("shape", [(40, 37), (20, 22, 9)])
@pytest.mark.parametrize("data_range", [1.0, 255.0, 1000.0])
def test_ssim_and_psnr_agree_with_scikit_image(shape, data_range):
    ref, test = _images(shape)
    ours = ssim(ref, test, data_range=data_range)
    theirs = structural_similarity(ref, test, data_range=data_range)
    assert abs(ours - theirs) < 1e-6
    _, full = structural_similarity(ref, test, data_range=data_range, full=True)
    np.testing.assert_allclose(ssim_map(ref, test, data_range=data_range), full, atol=1e-9)
    expected_psnr = peak_signal_noise_ratio(ref, test, data_range=data_range)
    assert abs(psnr(ref, test, data_range=data_range) - expected_psnr) < 1e-6
    assert abs(nrmse(ref, test) - normalized_root_mse(ref, test, normalization="euclidean")) < 1e-9


def test_gaussian_window_agrees_with_scikit_image_where_its_truncation_gives_the_same_window():
    ref, test = _images((33, 41), seed=2)
    sigma = 6 / 7  # int(3.5 * sigma + 0.5) = 3: scikit-image's Gaussian window is 7x7 too
    ours = ssim(ref, test, data_range=1000.0, win_size=7, gaussian_sigma=sigma)
    theirs = structural_similarity(ref, test, data_range=1000.0, win_size=7, gaussian_weights=True, sigma=sigma)
    assert abs(ours - theirs) < 1e-6
    assert abs(ours - ssim(ref, test, data_range=1000.0)) > 1e-4  # the window matters


def test_ssim_of_identical_images_is_one_and_psnr_infinite():
    ref, _ = _images()
    assert ssim(ref, ref, data_range=1000.0) == pytest.approx(1.0, abs=1e-12)
    assert psnr(ref, ref, data_range=1000.0) == math.inf
    assert nrmse(ref, ref) == 0.0


def test_masked_metrics_match_scikit_image_on_the_masked_voxels():
    ref, test = _images((40, 37))
    mask = _disc(ref.shape)
    scale = 800.0
    assert abs(psnr(ref, test, data_range=scale, mask=mask)
               - peak_signal_noise_ratio(ref[mask], test[mask], data_range=scale)) < 1e-6
    assert abs(nrmse(ref, test, mask=mask) - normalized_root_mse(ref[mask], test[mask])) < 1e-9
    # masked SSIM: scikit-image's map of the images zeroed outside the mask, averaged in the mask (border out)
    _, full = structural_similarity(ref * mask, test * mask, data_range=scale, full=True)
    inner = np.zeros_like(mask)
    inner[3:-3, 3:-3] = True
    expected = full[mask & inner].mean()
    assert abs(ssim(ref, test, data_range=scale, mask=mask) - expected) < 1e-6
    # an all-true mask is no mask
    everywhere = np.ones_like(mask)
    unmasked = ssim(ref, test, data_range=scale)
    assert ssim(ref, test, data_range=scale, mask=everywhere) == pytest.approx(unmasked, abs=1e-12)


def test_masked_metrics_ignore_everything_outside_the_mask():
    ref, test = _images((24, 26, 5))
    mask = _disc(ref.shape)
    before = masked_metrics(test, ref, mask, scale=900.0)
    rng = np.random.default_rng(9)
    ref2, test2 = ref.copy(), test.copy()
    ref2[~mask] = rng.random(np.count_nonzero(~mask)) * 1e4
    test2[~mask] = -5e3
    after = masked_metrics(test2, ref2, mask, scale=900.0)
    for key in ("psnr", "ssim", "nrmse"):
        assert after[key] == pytest.approx(before[key], rel=1e-12)
    # ... but not what is inside
    test3 = test.copy()
    test3[mask] += 50.0
    assert masked_metrics(test3, ref, mask, scale=900.0)["psnr"] < before["psnr"] - 1


def test_volume_ssim_is_2d_per_axial_slice():
    ref, test = _images((20, 22, 4))
    mask = _disc(ref.shape)
    got = masked_metrics(test, ref, mask, scale=900.0)["ssim"]
    maps = []
    for z in range(4):
        _, full = structural_similarity(ref[..., z] * mask[..., z], test[..., z] * mask[..., z], data_range=900.0,
                                        full=True)
        inner = np.zeros(ref.shape[:2], bool)
        inner[3:-3, 3:-3] = True
        maps.append(full[mask[..., z] & inner])
    assert abs(got - np.concatenate(maps).mean()) < 1e-6


def _monai_style_ssim(a, b, data_range, win=7, sigma=1.5):
    """SSIM as MONAI computes it: an explicit normalised Gaussian kernel, 'valid' convolution, sample
    covariance, the mean of the valid map (an implementation independent of the module's filters)."""
    r = np.arange(win) - win // 2
    g = np.exp(-(r**2) / (2 * sigma**2))
    kernel = np.outer(g, g) / np.outer(g, g).sum()
    conv = lambda x: convolve2d(x, kernel, mode="valid")  # noqa: E731
    ux, uy = conv(a), conv(b)
    norm = win * win / (win * win - 1)
    vx, vy, vxy = norm * (conv(a * a) - ux**2), norm * (conv(b * b) - uy**2), norm * (conv(a * b) - ux * uy)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    return (((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))).mean()


def test_paper_protocol_min_maxes_each_slice_and_averages_over_slices():
    ref, test = _images((30, 28, 3), seed=4)
    ref[..., 2] = 7.0  # a constant (empty) slice is left out
    got = paper_metrics(test, ref)
    assert got["slices"] == 2
    psnrs, ssims = [], []
    for z in range(2):
        r, t = minmax_255(ref[..., z]), minmax_255(test[..., z])
        assert r.min() == 0 and r.max() == pytest.approx(255.0)
        psnrs.append(peak_signal_noise_ratio(r, t, data_range=255.0))
        ssims.append(_monai_style_ssim(r, t, 255.0))
    assert abs(got["paper_psnr"] - np.mean(psnrs)) < 1e-6
    assert abs(got["paper_ssim"] - np.mean(ssims)) < 1e-6
    # per-slice min-max: any positive affine change of one slice's intensities changes nothing
    scaled = test.copy()
    scaled[..., 1] = 3 * scaled[..., 1] + 100
    again = paper_metrics(scaled, ref)
    assert again["paper_ssim"] == pytest.approx(got["paper_ssim"], abs=1e-9)
    assert again["paper_psnr"] == pytest.approx(got["paper_psnr"], abs=1e-9)
    # ... which the masked metrics in signal units do see
    mask = _disc(ref.shape)
    scaled_psnr = masked_metrics(scaled, ref, mask, scale=900.0)["psnr"]
    assert scaled_psnr < masked_metrics(test, ref, mask, scale=900.0)["psnr"] - 3


def test_series_rows_shell_summary_and_tsv(tmp_path):
    rng = np.random.default_rng(1)
    shape = (16, 18, 3)
    bvals = np.array([0, 1000, 1010, 2000, 2000, 1990])
    ref = np.stack([900 * np.exp(-b * 1e-3) * (1 + 0.1 * rng.random(shape)) for b in bvals], -1)
    pred = ref + rng.normal(scale=20, size=ref.shape)
    mask = _disc(shape)
    rows = series_metrics(pred, ref, bvals, mask, scale=950.0)
    assert [r["volume"] for r in rows] == [1, 2, 3, 4, 5]
    assert [r["shell"] for r in rows] == [1000.0, 1000.0, 2000.0, 2000.0, 2000.0]
    assert set(METRICS) <= set(rows[0])
    for r in rows:
        n = r["volume"]
        assert r["psnr"] == pytest.approx(psnr(ref[..., n], pred[..., n], data_range=950.0, mask=mask))
    assert len(series_metrics(pred, ref, bvals, mask, scale=950.0, include_b0=True)) == 6
    assert [r["volume"] for r in series_metrics(pred, ref, bvals, mask, scale=950.0, volumes=[0, 3])] == [3]

    summary = summarise_by_shell(rows)
    assert [s["shell"] for s in summary] == [1000.0, 2000.0, "all"]
    assert [s["volumes"] for s in summary] == [2, 3, 5]
    shell2 = [r["ssim"] for r in rows if r["shell"] == 2000.0]
    assert summary[1]["ssim_mean"] == pytest.approx(np.mean(shell2))
    assert summary[1]["ssim_std"] == pytest.approx(np.std(shell2))

    rows[0]["nrmse"] = math.nan
    path = write_tsv(rows, tmp_path / "metrics.tsv")
    with open(path, newline="") as handle:
        table = list(csv.DictReader(handle, delimiter="\t"))
    assert len(table) == 5 and table[0]["nrmse"] == "n/a"
    assert float(table[1]["psnr"]) == pytest.approx(rows[1]["psnr"], rel=1e-5)
    assert not list(tmp_path.glob(".*part"))
    write_tsv(summary, tmp_path / "summary.tsv")
    assert (tmp_path / "summary.tsv").read_text().splitlines()[0].startswith("shell\tvolumes\tpaper_psnr_mean")


def test_metric_inputs_are_checked():
    ref, test = _images()
    with pytest.raises(ValueError, match="shape"):
        psnr(ref, test[:-1], data_range=1.0)
    with pytest.raises(ValueError, match="empty"):
        ssim(ref, test, data_range=1.0, mask=np.zeros(ref.shape, bool))
    with pytest.raises(ValueError, match="window"):
        ssim(ref[:5], test[:5], data_range=1.0)
    with pytest.raises(ValueError, match="odd"):
        ssim(ref, test, data_range=1.0, win_size=6)


def test_metric_rows_carry_seam_and_sharpness_into_the_shell_summaries(tmp_path):
    from bids_phydiff.eval.compare import metric_rows, summarise
    from bids_phydiff.eval.fidelity import PatchGrid

    rng = np.random.default_rng(3)
    shape = (24, 20, 3)
    bvals = np.array([0, 1000, 1000, 2000])
    ref = np.stack([900 * np.exp(-b * 1e-3) * (1 + 0.2 * rng.random(shape)) for b in bvals], -1)
    blurred = ndimage.gaussian_filter(ref, (1.0, 1.0, 0, 0))
    mask = _disc(shape)
    grid = PatchGrid(4, (1, 2))
    rows = metric_rows({"copy": ref, "blurred": blurred, "ungridded": ref}, ref, bvals, mask, 950.0,
                       {"subject": "01"}, patches={"copy": grid, "blurred": grid})
    by = {(r["method"], r["volume"]): r for r in rows}
    assert all(by["copy", n]["seam"] == 1.0 and by["copy", n]["sharpness"] == pytest.approx(1.0) for n in (1, 2, 3))
    assert all(by["blurred", n]["sharpness"] < 0.5 for n in (1, 2, 3))
    assert all(math.isnan(by["ungridded", n]["seam"]) for n in (1, 2, 3))  # no patch grid, no seam score
    assert set(METRICS) | {"seam", "sharpness"} <= set(rows[0]) and rows[0]["subject"] == "01"
    shells = summarise(rows, keys=("method",))
    blurred_2000 = next(s for s in shells if s["method"] == "blurred" and s["shell"] == 2000.0)
    assert blurred_2000["sharpness_mean"] == pytest.approx(by["blurred", 3]["sharpness"])
    write_tsv(shells, tmp_path / "shells.tsv")
    header = (tmp_path / "shells.tsv").read_text().splitlines()[0].split("\t")
    assert {"seam_mean", "seam_std", "sharpness_mean", "sharpness_std"} <= set(header)
    # rows without the scores (series_metrics alone) summarise as before
    with np.errstate(invalid="ignore"):  # PSNR inf
        assert "seam_mean" not in summarise_by_shell(series_metrics(blurred, ref, bvals, mask, scale=950.0))[0]
