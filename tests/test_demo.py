"""``make demo`` (``python -m bids_phydiff.cli.demo``) runs its whole loop and prints the comparison table;
here at smoke scale (2 subjects, 10 training steps, DDIM 2) so that it fits the suite."""

from __future__ import annotations

import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest


def demo(args: list, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TEMPLATEFLOW_HOME"}  # the demo brings its own
    return subprocess.run([sys.executable, "-m", "bids_phydiff.cli.demo", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_demo_runs_the_loop_and_prints_phydiff_against_the_baseline(tmp_path):
    proc = demo([tmp_path / "d", "--subjects", "2", "--train-steps", "10", "--steps", "2", "--real", tmp_path / "none"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / "d" / "out"
    bundle = out / "models" / "model-demo10"
    assert (bundle / "config.json").is_file() and (bundle / "adc_atlas.nii.gz").is_file()
    synth = out / "sub-02" / "dwi" / "sub-02_space-Phantom_res-04_desc-synth_dwi.nii.gz"
    data = np.asarray(nib.load(str(synth)).dataobj)
    assert data.ndim == 4 and data.shape[-1] == 38 and np.isfinite(data).all()
    table = proc.stdout[proc.stdout.index("synthetic vs acquired"):]
    for method in ("phydiff", "physics_baseline"):
        for shell in ("1000", "2000", "3000", "all"):
            assert any(line.split()[:2] == [method, shell] for line in table.splitlines()), (method, shell)
    assert "demo finished" in proc.stdout and "--train-steps 8000" in proc.stdout
    header = table.splitlines()[1].split()
    assert "seam" in header and "sharp" in header  # the scores a reader of the images needs
    # --real without the real scans: the phantom loop runs, the real part says why it is skipped
    assert f"no BIDS dataset at {tmp_path / 'none'}" in proc.stdout
    assert (out / "sub-02_synthesis.html").is_file()


@pytest.mark.parametrize("value", ["0", "-5"])
def test_demo_refuses_a_non_positive_training_length(tmp_path, value):
    proc = demo([tmp_path / "d", "--train-steps", value], timeout=120)
    assert proc.returncode != 0 and "--train-steps" in proc.stderr
    assert not (tmp_path / "d").exists()
