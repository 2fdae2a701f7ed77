"""Diagnostic (not a speed benchmark, not run by ``make bench``): where do patch seams and blur come from?

Trains model variants on the same prepared runs for the same number of steps (one change each against the
tiny preset), then, on the held-out subject's slices:

- ``probe``: noises the acquired slices to step t by the model's forward process and lets the network
  predict x0 (what the sampler's last steps rely on): masked MSE, seam and sharpness
  (:mod:`bids_phydiff.eval.fidelity`) of the prediction against the acquired slice. At t = 0 the input
  holds the answer: a model that is blocky there does not pass its input through.
- ``sample``: the app's sampler (:func:`~bids_phydiff.synth.inputs.app_sampler`, DDIM from the b0) on the same
  slices: PSNR (normalised units, peak-to-peak 2), seam and sharpness against the acquired slices; once per
  ``--shifts`` count of averaged half-patch passes (``sample`` = one pass, ``sample x2`` = two).

Seams are scored on the level-0 token grid (``patch``) and on the level-1 grid (``2 * patch``), and every row
prints the gradient profile by phase in the patch (:func:`~bids_phydiff.eval.fidelity.gradient_profile`; 0 =
across a boundary). ``--figure``
writes a PNG of the acquired slice, each probe's x0 and the sample for two slices per variant. Variants
(:data:`VARIANTS`) change one thing: ``x0`` is the preset itself, ``linear`` / ``smooth`` force the unpatch,
the objective and size variants build on the linear unpatch, ``smooth_*`` on the smooth one. Results and reading: docs/evaluation.md, "Patch seams and blur on real scans".

    OMP_NUM_THREADS=1 python benchmarks/seam_diagnostic.py /tmp/real/out4 --work /tmp/seam \
        --train philipsvu prismasag prismaslab toshiba --test xa30 --steps 600 --variants linear x0_skip v --figure /tmp/seam/r1.png

Prints a table and writes ``benchmarks/results/seam_diagnostic.json``. Bundles are kept in
``WORK/models/<variant>-<steps>`` and reused on a rerun.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"


def _backbone(**changes):
    def change(cfg):
        return cfg.replace(backbone=dataclasses.replace(cfg.backbone, **changes))
    return change


def _wide0(cfg):
    first = dataclasses.replace(cfg.backbone.levels[0], width=2 * cfg.backbone.levels[0].width,
                                d_ff=2 * cfg.backbone.levels[0].d_ff)
    return cfg.replace(backbone=dataclasses.replace(cfg.backbone, levels=(first,) + cfg.backbone.levels[1:]))


def _linear(change):
    """``change`` on the preset with the linear unpatch (how these variants were measured)."""
    return lambda cfg: change(_backbone(unpatch="linear")(cfg))


VARIANTS = {
    "x0": lambda cfg: cfg.replace(objective="x0", x0_skip=False),
    "linear": _backbone(unpatch="linear"),
    "smooth": _backbone(unpatch="smooth"),
    "x0_skip": _linear(lambda cfg: cfg.replace(objective="x0", x0_skip=True)),
    "v": _linear(lambda cfg: cfg.replace(objective="v", x0_skip=False)),
    "eps": _linear(lambda cfg: cfg.replace(objective="eps", x0_skip=False)),
    "patch2": _linear(_backbone(patch_size=2)),
    "refine": _linear(_backbone(refine_channels=16)),
    "wide0": _linear(_wide0),
    "smooth_refine": _backbone(unpatch="smooth", refine_channels=16),
    "smooth_skip": lambda cfg: _backbone(unpatch="smooth")(cfg).replace(objective="x0", x0_skip=True),
}
"""Each variant: a change of the tiny preset's model config (``PhyDiffConfig -> PhyDiffConfig``)."""


def grid_spec_of(run):
    """The template grid of a prepared run, read from its NIfTI header."""
    import nibabel as nib

    from bids_phydiff.model.bundle import GridSpec

    img = nib.load(str(run.dwi))
    zooms = img.header.get_zooms()[:3]
    return GridSpec(run.space or "template", float(zooms[0]), tuple(img.shape[:3]), tuple(map(tuple, img.affine)))


def train_variant(name: str, base: str, steps: int, train_runs, work: Path, seed: int):
    from bids_phydiff.model.config import preset
    from bids_phydiff.train.config import TRAIN_PRESETS
    from bids_phydiff.train.run import train_bundle

    folder = work / "models" / f"{name}-{steps}"
    if (folder / "config.json").is_file():
        return folder, None
    model = VARIANTS[name](preset(base))
    config = TRAIN_PRESETS[base].replace(model=model, max_steps=steps, adapter_steps=0, val_every=0,
                                         checkpoint_every=0, seed=seed)
    start = time.perf_counter()
    train_bundle(train_runs, [], grid_spec_of(train_runs[0]), folder, work / "train" / name, config,
                 device="cpu", overwrite=True, progress=False)
    return folder, time.perf_counter() - start


def held_out_batch(bundle, runs, cache: Path, count: int, seed: int):
    """``count`` random (volume, slice) samples of ``runs`` on the bundle's grid, as one batch dict."""
    import nibabel as nib

    from bids_phydiff.train.dataset import SliceDataset, SliceGrid

    atlas = np.asarray(nib.load(str(bundle.path / "adc_atlas.nii.gz")).dataobj, dtype=np.float32)
    grid = SliceGrid.for_multiple(bundle.grid.shape, bundle.model.config.backbone.size_multiple)
    data = SliceDataset(runs, grid, cache, atlas, np.asarray(bundle.b_shells))
    picks = np.random.default_rng(seed).choice(len(data), min(count, len(data)), replace=False)
    items = [data[int(i)] for i in picks]
    return {k: torch.stack([item[k] for item in items]) for k in items[0]}


def _volume(x: torch.Tensor) -> np.ndarray:
    """(B, 1, H, W) -> (H, W, B): the slices as one volume for the fidelity scores."""
    return x.detach().float().numpy()[:, 0].transpose(1, 2, 0)


def scores(pred: torch.Tensor, batch, patch: int) -> dict[str, float]:
    from bids_phydiff.eval.fidelity import PatchGrid, gradient_profile, seam_score, sharpness_score

    p, a, m = _volume(pred), _volume(batch["target"]), _volume(batch["mask"]) > 0
    mse = float(((p - a) ** 2)[m].mean())
    return {"mse": mse, "psnr": float(10 * np.log10(4.0 / mse)),
            "seam": seam_score(p, a, PatchGrid(patch), m), "seam2": seam_score(p, a, PatchGrid(2 * patch), m),
            "sharpness": sharpness_score(p, a, m), "profile": gradient_profile(p, PatchGrid(patch), m).tolist()}


@torch.no_grad()
def evaluate(folder: Path, test_runs, cache: Path, count: int, ts: list[int], seed: int,
             shifts: list[int]) -> dict:
    from bids_phydiff.model.bundle import load_bundle
    from bids_phydiff.synth.inputs import app_sampler

    bundle = load_bundle(folder)
    model = bundle.model
    patch = model.config.backbone.patch_size
    batch = held_out_batch(bundle, test_runs, cache, count, seed)
    g = model.schedule.excess_beta(batch["adc"], batch["bval"])
    cond = (batch["b0"], batch["bval"], batch["bvec"], batch["slice_pos"])
    rows, images = {}, {"acquired": batch["target"]}
    for t in ts:
        tt = torch.full((batch["target"].shape[0],), t, dtype=torch.long)
        noise = torch.randn(batch["target"].shape, generator=torch.Generator().manual_seed(seed + t))
        x_t = model.schedule.q_sample(batch["target"], tt, noise, g).float()
        eps = model.predict_eps(x_t, tt, g, model(x_t, tt, *cond).float())
        images[f"t={t}"] = model.schedule.x0_from_eps(x_t, tt, g, eps).float()
        rows[f"probe t={t}"] = scores(images[f"t={t}"], batch, patch)
    for count_shifts in shifts:
        start = time.perf_counter()
        sampler = dataclasses.replace(app_sampler(), progress=False, shifts=count_shifts)
        sampled = model.sample(*cond, batch["adc"], sampler=sampler, seed=seed)
        name = "sample" if count_shifts == 1 else f"sample x{count_shifts}"
        rows[name] = scores(sampled, batch, patch)
        rows[name]["seconds"] = time.perf_counter() - start
        images[name] = sampled
    return rows, images, batch["mask"]


def write_figure(images: dict[str, dict[str, torch.Tensor]], mask: torch.Tensor, path: Path, count: int = 2) -> None:
    """One PNG: per variant (rows) the acquired slice, each probe's x0 and the sample, for the ``count`` held-out
    samples with the most brain (same picks for every variant: same seed); grey scale of the acquired slice."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    picks = torch.argsort(mask.flatten(1).sum(1), descending=True)[:count].tolist()
    names = list(images)
    cols = list(next(iter(images.values())))
    fig, axes = plt.subplots(len(names) * count, len(cols), figsize=(2.0 * len(cols), 2.3 * len(names) * count),
                             squeeze=False)
    for r, (name, k) in enumerate((n, k) for n in names for k in picks):
        ref = images[name]["acquired"][k, 0].numpy()
        m = mask[k, 0].numpy() > 0
        lo, hi = np.percentile(ref[m], [1, 99.5])
        for c, col in enumerate(cols):
            ax = axes[r, c]
            ax.imshow(np.where(m, images[name][col][k, 0].numpy(), lo).T, cmap="gray", vmin=lo, vmax=hi,
                      origin="lower", interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            ax.set_title(f"{name} {col}" if c else f"{name} #{k}", fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output_dir", type=Path, help="prepared outputs (participant level)")
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--train", nargs="+", required=True, help="training subjects")
    parser.add_argument("--test", nargs="+", required=True, help="held-out subjects")
    parser.add_argument("--res", default=None, help="res- label of the prepared runs (e.g. 4mm)")
    parser.add_argument("--variants", nargs="+", default=["x0", "x0_skip"], choices=sorted(VARIANTS))
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--slices", type=int, default=48, help="held-out (volume, slice) samples")
    parser.add_argument("--t", type=int, nargs="+", default=[0, 200, 600, 999])
    parser.add_argument("--seed", type=int, default=3407)
    parser.add_argument("--shifts", type=int, nargs="+", default=[1, 2], choices=[1, 2, 4],
                        help="the sample row once per count of averaged half-patch passes (default 1 2)")
    parser.add_argument("--json", type=Path, default=RESULTS / "seam_diagnostic.json")
    parser.add_argument("--figure", type=Path, default=None,
                        help="PNG of acquired / probe x0 / sample slices, one row per variant")
    args = parser.parse_args(argv)

    from bids_phydiff.bids.prepared import find_prepared

    train_runs = find_prepared(args.output_dir, args.train, res=args.res)
    test_runs = find_prepared(args.output_dir, args.test, res=args.res)
    results, figures, mask = {}, {}, None
    print(f"{'variant':10s} {'row':12s} {'PSNR':>6s} {'seam':>6s} {'seam2':>6s} {'sharp':>6s}  gradient by phase",
          flush=True)
    for name in args.variants:
        folder, seconds = train_variant(name, args.preset, args.steps, train_runs, args.work, args.seed)
        rows, figures[name], mask = evaluate(folder, test_runs, args.work / "cache", args.slices, args.t, args.seed,
                                                 args.shifts)
        results[name] = {"bundle": str(folder), "train_seconds": seconds, "rows": rows}
        for row, s in rows.items():
            profile = " ".join(f"{v:.2f}" for v in s["profile"])
            print(f"{name:10s} {row:12s} {s['psnr']:6.2f} {s['seam']:6.3f} {s['seam2']:6.3f} {s['sharpness']:6.3f}"
                  f"  {profile}", flush=True)
    if args.figure is not None:
        write_figure(figures, mask, args.figure)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results},
                                    indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
