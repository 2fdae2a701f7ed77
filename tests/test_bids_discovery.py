"""Discovery of DWI runs with pybids: subjects, sessions, runs, T1w pairing, filters, the index location."""

from __future__ import annotations

from pathlib import Path

import pytest

from bids_phydiff.bids.checks import check_runs
from bids_phydiff.bids.derivatives import derivative_name
from bids_phydiff.bids.layout import discover, filename_entities, open_layout
from bids_phydiff.errors import EmptySelectionError, InputDataError
from conftest import write_tiny_dataset


def test_real_bids_two_subjects_seven_runs(real_bids, tmp_path):
    layout = open_layout(real_bids, tmp_path / "db")
    runs = discover(layout)
    assert len(runs) == 7
    assert sorted({r.subject for r in runs}) == ["toshiba", "xa30"]
    by_sub = {s: [r for r in runs if r.subject == s] for s in ("toshiba", "xa30")}
    assert len(by_sub["toshiba"]) == 5 and len(by_sub["xa30"]) == 2
    assert all(r.t1w is None for r in by_sub["toshiba"])
    assert all(r.t1w == real_bids / "sub-xa30" / "anat" / "sub-xa30_T1w.nii.gz" for r in by_sub["xa30"])
    for run in runs:
        assert run.bval == run.dwi.with_name(run.dwi.name.replace(".nii.gz", ".bval"))
        assert run.bvec.is_file() and run.sidecar.is_file()
    assert {r.entity("acq") for r in by_sub["toshiba"]} == {"ortho", "ax30", "sag30", "cor20", "all20"}
    assert {r.entity("dir") for r in by_sub["xa30"]} == {"AP", "PA"}
    # the index lives where we asked, never inside the dataset
    assert any((tmp_path / "db").iterdir())
    assert not list(real_bids.rglob("*.sqlite"))


def test_real_bids_checks_pass(real_bids, tmp_path):
    checked = check_runs(discover(open_layout(real_bids, tmp_path / "db")))
    xa30 = [c for c in checked if c.run.subject == "xa30"]
    assert all(c.shape == (72, 72, 39, 21) and c.n_b0 == 1 and c.shells == (2500.0,) for c in xa30)
    toshiba = [c for c in checked if c.run.subject == "toshiba"]
    assert all(c.shape[3] == 13 and c.shells == (1500.0,) for c in toshiba)


def test_real_bids_filters(real_bids, tmp_path):
    layout = open_layout(real_bids, tmp_path / "db")
    runs = discover(layout, participant_label=["toshiba"], filters={"dwi": {"acquisition": ["ax30", "sag30"]}})
    assert sorted(r.entity("acq") for r in runs) == ["ax30", "sag30"]
    runs = discover(layout, participant_label=["xa30"], filters={"dwi": {"direction": "PA"}})
    assert [r.dwi.name for r in runs] == ["sub-xa30_dir-PA_dwi.nii.gz"]
    with pytest.raises(InputDataError, match="not allowed"):
        discover(layout, filters={"dwi": {"subject": "xa30"}})


@pytest.fixture
def sessions_dataset(tmp_path) -> Path:
    """Two subjects x two sessions; sub-02 ses-2 has no T1w of its own but a session-less one exists."""
    root = write_tiny_dataset(tmp_path / "ses", subjects=("01", "02"), sessions=("1", "2"))
    (root / "sub-02" / "ses-2" / "anat" / "sub-02_ses-2_T1w.nii.gz").unlink()
    (root / "sub-02" / "ses-2" / "anat" / "sub-02_ses-2_T1w.json").unlink()
    anat = root / "sub-02" / "anat"
    anat.mkdir()
    source = root / "sub-02" / "ses-1" / "anat" / "sub-02_ses-1_T1w.nii.gz"
    (anat / "sub-02_T1w.nii.gz").write_bytes(source.read_bytes())
    # a second run in sub-01 ses-1
    dwi = root / "sub-01" / "ses-1" / "dwi"
    for f in sorted(dwi.glob("sub-01_ses-1_dwi.*")):
        f.rename(dwi / f.name.replace("_dwi", "_run-1_dwi"))
        (dwi / f.name.replace("_dwi", "_run-2_dwi")).write_bytes((dwi / f.name.replace("_dwi", "_run-1_dwi")).read_bytes())
    return root


def test_sessions_runs_and_t1w_pairing(sessions_dataset, tmp_path):
    layout = open_layout(sessions_dataset, tmp_path / "db")
    runs = discover(layout)
    keys = [(r.subject, r.session, r.entity("run")) for r in runs]
    assert keys == [("01", "1", "1"), ("01", "1", "2"), ("01", "2", None), ("02", "1", None), ("02", "2", None)]
    pairs = {(r.subject, r.session): r.t1w.name for r in runs}
    assert pairs[("01", "2")] == "sub-01_ses-2_T1w.nii.gz"
    assert pairs[("02", "1")] == "sub-02_ses-1_T1w.nii.gz"
    assert pairs[("02", "2")] == "sub-02_T1w.nii.gz"  # falls back to the session-less T1w
    assert runs[1].prefix == "sub-01_ses-1_run-2"
    assert runs[1].rel_dir == Path("sub-01", "ses-1", "dwi")

    only = discover(layout, participant_label=["02"], session_label=["2"])
    assert [(r.subject, r.session) for r in only] == [("02", "2")]
    with pytest.raises(EmptySelectionError, match="selected no DWI"):
        discover(layout, participant_label=["02"], filters={"dwi": {"run": 2}})


def test_subject_without_t1w_is_not_an_error(tmp_path):
    root = write_tiny_dataset(tmp_path / "no_t1", subjects=("01",), t1w=False)
    runs = discover(open_layout(root, tmp_path / "db"))
    assert len(runs) == 1 and runs[0].t1w is None
    assert check_runs(runs)[0].run.t1w is None


def test_filename_entities_and_derivative_names(sessions_dataset, tmp_path):
    runs = discover(open_layout(sessions_dataset, tmp_path / "db"), participant_label=["01"], session_label=["1"])
    run = runs[1]
    assert filename_entities(run.dwi) == (("sub", "01"), ("ses", "1"), ("run", "2"))
    name = derivative_name(run, "dwi", ".nii.gz", space="MNI152NLin6Asym", res="2", desc="preproc")
    assert name == "sub-01_ses-1_run-2_space-MNI152NLin6Asym_res-2_desc-preproc_dwi.nii.gz"
    xfm = derivative_name(run, "xfm", ".h5", from_="dwi", to="MNI152NLin6Asym", mode="image")
    assert xfm == "sub-01_ses-1_run-2_from-dwi_to-MNI152NLin6Asym_mode-image_xfm.h5"


def test_sources_of_a_subject_linked_in_from_elsewhere_name_its_place_in_the_dataset(tmp_path):
    """Datasets assembled from links (a subject folder from another study, git-annex files) keep BIDS URIs
    relative to the dataset root, not to where the bytes are."""
    from bids_phydiff.bids.derivatives import bids_uri

    elsewhere = tmp_path / "store" / "sub-07" / "dwi"
    elsewhere.mkdir(parents=True)
    (elsewhere / "sub-07_dwi.nii.gz").write_bytes(b"")
    dataset = tmp_path / "bids"
    dataset.mkdir()
    (dataset / "sub-07").symlink_to(tmp_path / "store" / "sub-07", target_is_directory=True)
    assert bids_uri(dataset / "sub-07" / "dwi" / "sub-07_dwi.nii.gz", dataset) == "bids:raw:sub-07/dwi/sub-07_dwi.nii.gz"
    annexed = dataset / "sub-08" / "dwi"
    annexed.mkdir(parents=True)
    (annexed / "sub-08_dwi.nii.gz").symlink_to(elsewhere / "sub-07_dwi.nii.gz")
    assert bids_uri(annexed / "sub-08_dwi.nii.gz", dataset) == "bids:raw:sub-08/dwi/sub-08_dwi.nii.gz"
