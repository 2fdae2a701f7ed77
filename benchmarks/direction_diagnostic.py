"""Diagnostic (not a speed benchmark, not run by ``make bench``): does a bundle know how the signal depends on
the gradient direction?

Takes the fibre-richest axial slice of a prepared run (fibres: FA > 0.4 of the run's own tensor fit) with all
its diffusion-weighted volumes, and for each bundle and each noise level t noises the slices by the bundle's
forward process, lets the network predict the clean slices x0 and compares, in the fibre pixels, the
direction-dependent part of prediction and target (each minus its mean over the shell's directions):
``corr`` = their correlation (1: the right directional pattern, 0: none), ``ratio`` = the prediction's
directional standard deviation over the target's. A regression bundle is evaluated once (it has no t).

    python benchmarks/direction_diagnostic.py OUT/sub-03/dwi/sub-03_space-Phantom_res-04_desc-preproc_dwi.nii.gz \
        OUT/models/model-phydiff OUT/models/model-regression [--steps 999 800 600 400 200 100 20]

Prints a table and writes ``benchmarks/results/direction_diagnostic.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from machine import cpu_name

RESULTS = Path(__file__).resolve().parent / "results"


def load_slice(dwi_path: Path):
    """The fibre-richest axial slice of a prepared run as a training batch, its fibre pixels and b-values."""
    import nibabel as nib

    from bids_phydiff.bids.prepared import PreparedRun
    from bids_phydiff.eval.dti import fit_dti
    from bids_phydiff.model import DiffusionBatch
    from bids_phydiff.prep.gradients import B0_THRESHOLD, read_fsl
    from bids_phydiff.train.dataset import SliceGrid
    from bids_phydiff.train.normalise import Normaliser

    files = PreparedRun.beside(dwi_path)
    table = read_fsl(files.bval, files.bvec)
    bvals, bvecs = np.asarray(table.bvals), np.asarray(table.bvecs)
    dwi = np.asarray(nib.load(str(dwi_path)).dataobj, dtype=np.float32)
    mask = np.asarray(nib.load(str(files.mask)).dataobj) > 0
    fibres = (fit_dti(dwi, bvals, bvecs, mask).fa > 0.4) & mask
    z = int(np.argmax(fibres.sum(axis=(0, 1))))
    b0 = dwi[..., bvals <= B0_THRESHOLD].mean(-1)
    norm = Normaliser.from_b0(b0, mask)
    grid = SliceGrid.for_multiple(dwi.shape[:3], 8)
    weighted = np.flatnonzero(bvals > B0_THRESHOLD)
    target = np.stack([grid.pad(norm.forward(dwi[:, :, z, v]), -1.0) for v in weighted])
    batch = DiffusionBatch(
        target=torch.from_numpy(target)[:, None],
        b0=torch.from_numpy(grid.pad(norm.forward(b0[:, :, z]), -1.0))[None, None].expand(len(weighted), 1, *grid.padded).clone(),
        bval=torch.tensor(bvals[weighted], dtype=torch.float32),
        bvec=torch.tensor(bvecs[weighted], dtype=torch.float32),
        slice_pos=torch.full((len(weighted),), float(grid.position(z))),
        adc=torch.zeros(len(weighted), 1, *grid.padded),
    )
    return batch, torch.from_numpy(grid.pad(fibres[:, :, z].astype(np.float32)) > 0), bvals[weighted], z


def adc_slices(bundle, atlas_path: Path, z: int, bvals: np.ndarray, padded_grid) -> torch.Tensor:
    """The bundle's ADC atlas for each target b-value on slice ``z``, (N, 1, H, W) mm^2/s."""
    import nibabel as nib

    from bids_phydiff.model.schedule import interpolate_adc

    atlas = np.asarray(nib.load(str(atlas_path)).dataobj, dtype=np.float32)[:, :, z].transpose(2, 0, 1)
    return torch.from_numpy(np.stack([padded_grid.pad(interpolate_adc(atlas, bundle.b_shells, b)) for b in bvals]))[:, None]


def directional_agreement(pred: torch.Tensor, target: torch.Tensor, fibres: torch.Tensor) -> tuple[float, float]:
    """``(corr, ratio)`` of the direction-dependent parts of (N, 1, H, W) slices of one shell in ``fibres``."""
    p, q = pred[:, 0][:, fibres], target[:, 0][:, fibres]
    p, q = p - p.mean(0), q - q.mean(0)
    return float((p * q).sum() / (p.norm() * q.norm() + 1e-12)), float(p.std(0).mean() / q.std(0).mean())


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dwi", type=Path, help="a prepared *_desc-preproc_dwi.nii.gz (with .bval/.bvec and brain mask)")
    parser.add_argument("bundles", type=Path, nargs="+", help="model bundle folders")
    parser.add_argument("--steps", type=int, nargs="+", default=[999, 800, 600, 400, 200, 100, 20])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from bids_phydiff.model.bundle import ADC_ATLAS_FILE, load_bundle
    from bids_phydiff.train.dataset import SliceGrid

    batch, fibres, bvals, z = load_slice(args.dwi)
    shells = sorted(set(np.round(bvals, -2)))
    rows = []
    for path in args.bundles:
        bundle = load_bundle(path)
        model = bundle.model.eval()
        grid = SliceGrid.for_multiple(tuple(bundle.grid.shape), 8)
        adc = adc_slices(bundle, path / ADC_ATLAS_FILE, z, bvals, grid)
        g = model.schedule.excess_beta(adc, batch.bval) if model.schedule.gap > 0 else None
        noise = torch.randn(batch.target.shape, generator=torch.Generator().manual_seed(0))
        for step in [None] if model.is_regression else args.steps:
            if step is None:
                x0 = model.regress(batch.b0, batch.bval, batch.bvec, batch.slice_pos)
            else:
                t = torch.full((len(bvals),), step)
                x_t = model.schedule.q_sample(batch.target, t, noise, g)
                eps = model.predict_eps(x_t, t, g, model(x_t, t, batch.b0, batch.bval, batch.bvec, batch.slice_pos))
                x0, _ = model.schedule.predict_x0(x_t, t, g, eps)
            for shell in shells:
                pick = torch.from_numpy(np.isclose(np.round(bvals, -2), shell))
                corr, ratio = directional_agreement(x0[pick], batch.target[pick], fibres)
                rows.append({"bundle": path.name, "t": step, "shell": float(shell), "corr": corr, "ratio": ratio})
    print(f"{args.dwi.name}, slice {z}, {int(fibres.sum())} fibre pixels")
    print("| bundle | t | " + " | ".join(f"b={s:.0f} corr / ratio" for s in shells) + " |")
    print("|---|---|" + "---|" * len(shells))
    for key in dict.fromkeys((r["bundle"], r["t"]) for r in rows):
        cells = [f"{r['corr']:.2f} / {r['ratio']:.2f}" for r in rows if (r["bundle"], r["t"]) == key]
        print(f"| {key[0]} | {'-' if key[1] is None else key[1]} | " + " | ".join(cells) + " |")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "direction_diagnostic.json"
    out.write_text(json.dumps({"cpu": cpu_name(), "dwi": str(args.dwi), "slice": z, "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
