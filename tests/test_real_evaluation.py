"""The real-data evaluation command (benchmarks/real_evaluation.py) end to end at smoke scale on the shared
real scans (skipped without ../shared): prepare, leave-one-subject-out training, synthesis and the tables.
Prepared without motion correction, which tests/test_workflow_real.py runs on the same scans (it would be
about half of this test's time)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow


def test_the_real_data_evaluation_runs_end_to_end_at_smoke_scale(real_bids, shared_templateflow, tmp_path):
    root = tmp_path / "real"
    env = dict(os.environ, TEMPLATEFLOW_HOME=str(shared_templateflow), TMPDIR=str(tmp_path))
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "real_evaluation.py"), str(root), "--data",
                           str(real_bids), "--smoke", "--nprocs", "2", "--hmc", "none"],
                          env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    page = (root / "real_evaluation.md").read_text()
    for subject in ("toshiba", "xa30"):
        assert f"## Held out: sub-{subject}" in page
        with open(root / "eval" / f"sub-{subject}" / "metrics_shells.tsv") as handle:
            rows = list(csv.DictReader(handle, delimiter="\t"))
        assert {r["method"] for r in rows} == {"phydiff", "physics_baseline"}
        assert all(r["seam_mean"] != "n/a" and r["sharpness_mean"] != "n/a" for r in rows)
        figures = sorted((root / "eval" / f"sub-{subject}" / "figures").glob("*.png"))
        assert figures and all(f"eval/sub-{subject}/figures/{f.name}" in page for f in figures)
    # the model was trained without the held-out subject
    for held, other in (("xa30", "toshiba"), ("toshiba", "xa30")):
        info = json.loads((root / "out" / "models" / f"model-loso{held}" / "train.json").read_text())
        assert info["subjects"]["train"] == [other]
