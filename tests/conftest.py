"""Shared test fixtures: where the shared data lives, and small generated datasets.

The shared data (real DWI, the XTRACT atlas, an offline TemplateFlow home) sits beside the project at
``../shared``; BIDS_PHYDIFF_SHARED overrides that. Tests that need it skip with the reason when it is absent.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("BIDS_PHYDIFF_SHARED", REPO.parent / "shared")).resolve()


def _shared_path(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared test data not found: {path} (set BIDS_PHYDIFF_SHARED)")
    return path


@pytest.fixture
def one_torch_thread():
    """Run the test on one torch intra-op thread, then restore the count. Tiny models gain nothing from a
    second thread, and on a shared 2-core machine a second thread that gets descheduled stalls every small
    matmul (steps 100x slower were measured). Use with ``pytestmark = pytest.mark.usefixtures(...)``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def real_bids() -> Path:
    """The real in-vivo BIDS dataset (sub-xa30 with a T1w, sub-toshiba without)."""
    return _shared_path("data", "real-bids")


@pytest.fixture(scope="session")
def shared_templateflow() -> Path:
    """An offline TemplateFlow home with MNI152NLin6Asym, MNI152NLin2009cAsym and MNI305."""
    return _shared_path("templateflow")


@pytest.fixture(scope="session")
def xtract_dir() -> Path:
    """The XTRACT label atlas on MNI152NLin6Asym grids."""
    return _shared_path("data", "xtract")


def write_tiny_dataset(root: Path, subjects=("01",), shape=(8, 8, 4), bvals=(0, 1000, 1000, 2000, 2000),
                       sessions=(None,), t1w=True, seed=0) -> Path:
    """A small BIDS dataset written with nibabel: one DWI run per subject/session (and a T1w).

    Tests change one file of it to make each bad-input case.
    """
    import json

    import nibabel as nib
    import numpy as np

    from bids_phydiff.prep.gradients import GradientTable, uniform_directions, write_fsl

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "tiny", "BIDSVersion": "1.10.0", "DatasetType": "raw", "Authors": ["A", "B"]})
    )
    (root / "README").write_text("A tiny test dataset.\n")
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    bvals = np.asarray(bvals, dtype=float)
    bvecs = np.zeros((bvals.size, 3))
    dw = bvals > 50
    bvecs[dw] = uniform_directions(int(dw.sum()), seed=seed)
    for sub in subjects:
        for ses in sessions:
            prefix = f"sub-{sub}" + (f"_ses-{ses}" if ses else "")
            base = root / f"sub-{sub}" / (f"ses-{ses}" if ses else "")
            (base / "dwi").mkdir(parents=True, exist_ok=True)
            s0 = 1000 + 100 * rng.random(shape)
            data = np.stack([s0 * np.exp(-b * 1e-3) for b in bvals], axis=-1).astype(np.float32)
            nib.Nifti1Image(data, affine).to_filename(base / "dwi" / f"{prefix}_dwi.nii.gz")
            write_fsl(GradientTable(bvals, bvecs), base / "dwi" / f"{prefix}_dwi.bval", base / "dwi" / f"{prefix}_dwi.bvec")
            (base / "dwi" / f"{prefix}_dwi.json").write_text(
                json.dumps({"RepetitionTime": 3.0, "EchoTime": 0.08, "PhaseEncodingDirection": "j-",
                            "TotalReadoutTime": 0.05})
            )
            if t1w:
                (base / "anat").mkdir(exist_ok=True)
                t1 = (500 + 100 * rng.random(tuple(2 * s for s in shape))).astype(np.float32)
                nib.Nifti1Image(t1, np.diag([1.0, 1.0, 1.0, 1.0])).to_filename(base / "anat" / f"{prefix}_T1w.nii.gz")
                (base / "anat" / f"{prefix}_T1w.json").write_text(json.dumps({"RepetitionTime": 2.3}))
    return root


@pytest.fixture
def tiny_bids(tmp_path) -> Path:
    """A fresh tiny valid BIDS dataset (sub-01, sub-02 with T1w) per test."""
    return write_tiny_dataset(tmp_path / "bids", subjects=("01", "02"))


PHANTOM_OPTIONS = ["--template", "Phantom", "--output-resolution", "4", "--skip-bids-validation"]
"""The participant-level options that prepare a phantom on its own template at 4 mm."""


@pytest.fixture(scope="session")
def phantom_2sub(tmp_path_factory):
    """A 2-subject phantom at 4 mm with its TemplateFlow home (read only by the tests that share it)."""
    from bids_phydiff.phantom import PhantomConfig, generate

    return generate(tmp_path_factory.mktemp("phantom2") / "bids", PhantomConfig(subjects=2, resolution=4.0, seed=1))


def start_app(args: list, templateflow_home: Path, **popen) -> subprocess.Popen:
    """Start ``run.py`` with ``args`` as a subprocess (its own session, so that a test can signal the whole
    process group as a scheduler does); stdout and stderr go to one text pipe unless ``popen`` says otherwise."""
    env = dict(os.environ, TEMPLATEFLOW_HOME=str(templateflow_home))
    popen = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True, **popen}
    return subprocess.Popen([sys.executable, str(REPO / "run.py"), *map(str, args)], env=env,
                            start_new_session=True, **popen)


def bundle_angle(dwi: Path, bval: Path, bvec: Path, truth) -> float:
    """Median angle (degrees) between the DTI principal direction (b <= 1050 volumes) of a prepared run and
    the template's true bundle direction (``truth``: the phantom's template-space ``Truth``), in template
    voxels of white matter crossed by exactly one bundle."""
    import dipy.reconst.dti as dti
    import nibabel as nib
    import numpy as np
    from dipy.core.gradients import gradient_table

    from bids_phydiff.prep.gradients import fsl_to_world, read_fsl

    img = nib.load(dwi)
    table = read_fsl(bval, bvec)
    keep = table.bvals <= 1000 + 50
    fit = dti.TensorModel(gradient_table(table.bvals[keep], bvecs=table.bvecs[keep])).fit(img.get_fdata()[..., keep])
    evecs = fsl_to_world(fit.evecs[..., :, 0].reshape(-1, 3), img.affine).reshape(fit.evecs.shape[:3] + (3,))
    labels = truth.tract_labels()
    single = ((truth.tracts >= 0.5).sum(axis=-1) == 1) & (labels > 0) & (truth.tissue_labels() == 3)
    k = len(truth.bundles)
    true_dirs = truth.directions.reshape(truth.shape + (k, 3))[single, labels[single] - 1]
    assert single.sum() > 200
    cos = np.abs(np.sum(true_dirs * evecs[single], axis=-1)) / np.linalg.norm(evecs[single], axis=-1)
    return float(np.degrees(np.median(np.arccos(np.clip(cos, 0, 1)))))
