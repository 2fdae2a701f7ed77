"""Already-preprocessed DWI as input: a derivatives dataset such as QSIPrep writes (``--input-type``).

:func:`detect_input_type` decides between raw and preprocessed input. QSIPrep's names (checked in its documentation,
``docs/outputs.rst`` of github.com/PennLINC/qsiprep, and in its users' scripts; 0.x releases write
``space-T1w``, 1.x ``space-ACPC`` with a ``res-`` label), per output in ``sub-X/[ses-Y/]dwi/``::

    <source>_space-T1w_desc-preproc_dwi.nii.gz + .bval .bvec .json (+ .b, .b_table.txt)   (0.x)
    <source>_space-T1w_desc-brain_mask.nii.gz, <source>_space-T1w_dwiref.nii.gz
    <source>_space-ACPC_res-<r>_desc-preproc_dwi.nii.gz + .bval .bvec .json                (1.x)
    <source>_space-ACPC_res-<r>_desc-brain_mask.nii.gz, ..._desc-preproc_dwiref.nii.gz
    <source>_desc-confounds_timeseries.tsv

and in ``anat/`` the preprocessed T1w, ``sub-X_desc-preproc_T1w.nii.gz`` (0.x: the T1w space has no
``space-``) or ``sub-X_space-ACPC_desc-preproc_T1w.nii.gz`` (1.x), beside ``desc-brain_mask`` and
template-space copies (``space-MNI...``), which are not used. A preprocessed run is the
``desc-preproc`` DWI with its ``.bval``/``.bvec`` (the FSL pair; QSIPrep's MRtrix ``.b`` and DSI Studio
tables are not read), the ``desc-brain_mask`` beside it when there is one, and the ``desc-preproc`` T1w in
the same space; its :attr:`.layout.DwiRun.entities` leave out ``space``, ``res`` and ``desc``, so the outputs are
named from the source entities as for raw input.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path


LOGGER = logging.getLogger(__name__)

NIFTI = [".nii", ".nii.gz"]
INPUT_TYPES = ("auto", "raw", "preprocessed")
PREPROC_DWI = "*_desc-preproc_dwi.nii*"
"""The preprocessed DWI of a derivatives dataset (QSIPrep's and this app's name)."""
DROPPED_ENTITIES = ("space", "res", "desc")
"""Entities of a preprocessed DWI name that say how it was processed, not which acquisition it is."""


def detect_input_type(bids_dir: Path, requested: str = "auto") -> str:
    """``raw`` or ``preprocessed``: ``requested`` when it is one of them; for ``auto``, ``preprocessed`` when
    ``dataset_description.json`` says ``"DatasetType": "derivative"`` and a subject folder holds a
    ``*_desc-preproc_dwi.nii[.gz]``, else ``raw``."""
    if requested not in INPUT_TYPES:
        raise ValueError(f"input type {requested!r} is not one of {INPUT_TYPES}")
    if requested != "auto":
        return requested
    try:
        description = json.loads((Path(bids_dir) / "dataset_description.json").read_text())
    except (OSError, ValueError, RecursionError):  # the dataset checks report a bad description
        return "raw"
    if not isinstance(description, dict) or description.get("DatasetType") != "derivative":
        return "raw"
    for pattern in (f"sub-*/dwi/{PREPROC_DWI}", f"sub-*/ses-*/dwi/{PREPROC_DWI}"):
        if next(Path(bids_dir).glob(pattern), None) is not None:
            return "preprocessed"
    return "raw"


def given_mask(dwi: Path) -> Path | None:
    """The ``desc-brain_mask`` beside a ``desc-preproc`` DWI (same entities), or ``None``."""
    stem = dwi.name.split(".")[0]
    if not stem.endswith("_desc-preproc_dwi"):
        return None
    for extension in NIFTI[::-1]:
        mask = dwi.with_name(stem[: -len("_desc-preproc_dwi")] + "_desc-brain_mask" + extension)
        if mask.is_file():
            return mask
    LOGGER.info("%s: no brain mask beside it (%s); one is computed from the b0", dwi.name,
                stem[: -len("_desc-preproc_dwi")] + "_desc-brain_mask.nii.gz")
    return None


def find_preprocessed_t1w(layout, subject: str, session: str | None, space: str | None,
                          filters: dict | None = None) -> Path | None:
    """The ``desc-preproc`` T1w in the space of a preprocessed DWI: ``space-<space>``, or (for ``space-T1w``,
    QSIPrep 0.x) one without ``space-``; the session's own first, then the subject's. Template-space
    copies (``space-MNI...``) are never taken."""
    from bids.layout import Query

    base = dict(subject=subject, suffix="T1w", datatype="anat", extension=NIFTI, desc="preproc",
                return_type="file")
    base.update(filters or {})
    if "space" in base:  # the user's --bids-filter-file choice
        space = base.pop("space")
    spaces = [space] if space else []
    if space in (None, "T1w"):
        spaces.append(Query.NONE)
    for ses in ([session] if session else []) + [Query.NONE]:
        for sp in spaces:
            found = sorted(layout.get(session=ses, space=sp, **base))
            if found:
                if len(found) > 1:
                    LOGGER.info("sub-%s: %d preprocessed T1w images, using %s", subject, len(found), Path(found[0]).name)
                return Path(found[0])
    LOGGER.info("sub-%s%s: no preprocessed T1w in space %s; DWI will be registered to the template directly",
                subject, f" ses-{session}" if session else "", space)
    return None
