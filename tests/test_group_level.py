"""Group level: which prepared runs and subjects it trains on, and its errors (the training itself is
tested in test_train_*.py and end to end in test_end_to_end.py)."""

from __future__ import annotations

import pytest

from bids_phydiff.errors import EXIT_EMPTY_SELECTION, EXIT_NO_INPUT, EXIT_USAGE, PhydiffError
from bids_phydiff.bids.prepared import find_prepared
from bids_phydiff.workflows.group import find_tract_atlas, split_subjects


def test_default_validation_split_holds_out_a_fifth_chosen_by_the_seed():
    subjects = [f"{i:02d}" for i in range(1, 11)]
    train, val = split_subjects(subjects, None, seed=0)
    assert len(val) == 2 and sorted(train + val) == subjects and not set(train) & set(val)
    assert split_subjects(subjects, None, seed=0) == (train, val)
    assert any(split_subjects(subjects, None, seed=s)[1] != val for s in range(1, 6))
    assert split_subjects(["01", "02"], None, seed=0) == (["01", "02"], [])  # too few to hold any out


def test_explicit_validation_subjects_must_exist_and_leave_some_to_train():
    assert split_subjects(["01", "02", "03"], ("03",), seed=0) == (["01", "02"], ["03"])
    with pytest.raises(PhydiffError, match="09") as info:
        split_subjects(["01", "02", "03"], ("09",), seed=0)
    assert info.value.exit_code == EXIT_EMPTY_SELECTION
    with pytest.raises(PhydiffError, match="nothing left") as info:
        split_subjects(["01", "02"], ("01", "02"), seed=0)
    assert info.value.exit_code == EXIT_USAGE


def test_no_prepared_runs_names_what_was_looked_for(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "dataset_description.json").write_text('{"Name": "x", "BIDSVersion": "1.10.0", "DatasetType": "derivative"}')
    with pytest.raises(PhydiffError, match="space-Phantom_res-04_desc-preproc_dwi") as info:
        find_prepared(out, (), "Phantom", "04")
    assert info.value.exit_code == EXIT_NO_INPUT and "participant level first" in str(info.value)


def test_tract_atlas_lookup(tmp_path, monkeypatch):
    given = tmp_path / "atlas.nii.gz"
    assert find_tract_atlas(given, True, "MNI152NLin6Asym", None) == given
    assert find_tract_atlas(given, False, "MNI152NLin6Asym", None) is None  # --xtract-atlas none
    folder = tmp_path / "home" / "tpl-Phantom"
    folder.mkdir(parents=True)
    atlas = folder / "tpl-Phantom_res-04_atlas-Tracts_probseg.nii.gz"
    atlas.write_bytes(b"")
    assert find_tract_atlas(None, True, "Phantom", tmp_path / "home") == atlas
    monkeypatch.delenv("FSLDIR", raising=False)
    assert find_tract_atlas(None, True, "MNI152NLin6Asym", tmp_path / "home") is None  # warned, stage 1 only
