"""Find the DWI runs of a BIDS dataset with pybids, each paired with its gradients, sidecar and T1w.

The pybids index is kept outside the dataset (in the work dir, or a shared ``--bids-database-dir``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from ..errors import EmptySelectionError, InputDataError, NoInputError

LOGGER = logging.getLogger(__name__)

NIFTI = [".nii", ".nii.gz"]

# pybids filters users may give in --bids-filter-file, by their long names
_ALLOWED_FILTERS = {"acquisition", "reconstruction", "direction", "run", "part", "chunk", "ceagent", "echo"}


@dataclass(frozen=True)
class DwiRun:
    """One DWI acquisition and the files that belong to it (absolute paths)."""

    subject: str
    session: str | None
    entities: tuple[tuple[str, str], ...]
    """Filename entities in file order, e.g. ``(("sub", "01"), ("acq", "ax30"))``."""
    dwi: Path
    bval: Path | None
    bvec: Path | None
    sidecar: Path | None
    t1w: Path | None

    @property
    def prefix(self) -> str:
        """The source name without suffix, e.g. ``sub-01_ses-1_acq-ax30``."""
        return "_".join(f"{k}-{v}" for k, v in self.entities)

    @property
    def rel_dir(self) -> Path:
        """``sub-X[/ses-Y]/dwi``: where this run's derivatives go."""
        parts = [f"sub-{self.subject}"] + ([f"ses-{self.session}"] if self.session else [])
        return Path(*parts, "dwi")

    def entity(self, key: str) -> str | None:
        return dict(self.entities).get(key)


def filename_entities(path: str | Path) -> tuple[tuple[str, str], ...]:
    """The ``key-value`` pairs of a BIDS file name, in order (suffix and extension dropped)."""
    stem = Path(path).name.split(".")[0]
    pairs = []
    for part in stem.split("_")[:-1]:
        key, sep, value = part.partition("-")
        if not sep or not key or not value:
            raise InputDataError(f"{path}: '{part}' is not a BIDS entity (key-value)")
        pairs.append((key, value))
    return tuple(pairs)


def open_layout(bids_dir: Path, database_dir: Path, reset: bool = True):
    """A pybids layout of ``bids_dir`` whose index lives in ``database_dir``.

    ``reset`` rebuilds the index (the default inside the work dir, where the dataset may have changed);
    a shared, prebuilt ``--bids-database-dir`` is reused as it is.
    """
    from bids import BIDSLayout
    from bids.layout import BIDSLayoutIndexer

    database_dir.mkdir(parents=True, exist_ok=True)
    return BIDSLayout(
        str(bids_dir),
        validate=False,
        database_path=str(database_dir),
        reset_database=reset,
        indexer=BIDSLayoutIndexer(validate=False),
    )


def _clean_filters(filters: dict, source: str) -> dict:
    bad = set(filters) - _ALLOWED_FILTERS
    if bad:
        raise InputDataError(f"{source}: filters on {sorted(bad)} are not allowed; use {sorted(_ALLOWED_FILTERS)}")
    return dict(filters)


def discover(
    layout,
    participant_label: tuple[str, ...] | list[str] = (),
    session_label: tuple[str, ...] | list[str] = (),
    filters: dict | None = None,
) -> list[DwiRun]:
    """Every selected DWI run, sorted by file name.

    ``filters`` is the content of ``--bids-filter-file``: ``{"dwi": {...}, "t1w": {...}}`` with pybids
    entity names. Raises :class:`NoInputError` when the dataset has no DWI at all and
    :class:`EmptySelectionError` when labels or filters select nothing.
    """
    filters = filters or {}
    dwi_filters = _clean_filters(filters.get("dwi", {}), "--bids-filter-file 'dwi'")
    t1w_filters = _clean_filters(filters.get("t1w", {}), "--bids-filter-file 't1w'")
    root = Path(layout.root)

    all_dwi = layout.get(suffix="dwi", datatype="dwi", extension=NIFTI, return_type="object")
    if not all_dwi:
        raise NoInputError(f"{root}: no DWI files (sub-*/[ses-*/]dwi/*_dwi.nii[.gz]) in the dataset")

    subjects = sorted(layout.get_subjects())
    if participant_label:
        missing = [s for s in participant_label if s not in subjects]
        if missing:
            raise EmptySelectionError(
                f"{root}: no participant(s) {', '.join('sub-' + s for s in missing)}; the dataset has "
                f"{', '.join('sub-' + s for s in subjects)}"
            )
        subjects = list(participant_label)

    query = dict(suffix="dwi", datatype="dwi", extension=NIFTI, subject=subjects, return_type="object")
    query.update(dwi_filters)
    if session_label:
        query["session"] = list(session_label)
    files = sorted(layout.get(**query), key=lambda f: f.path)
    if not files:
        raise EmptySelectionError(
            f"{root}: the participant/session labels and filters selected no DWI run "
            f"(participants: {list(participant_label) or 'all'}, sessions: {list(session_label) or 'all'}, "
            f"filters: {dwi_filters or 'none'})"
        )

    runs = []
    for f in files:
        ents = f.get_entities()
        subject, session = ents["subject"], ents.get("session")
        runs.append(
            DwiRun(
                subject=subject,
                session=session,
                entities=filename_entities(f.path),
                dwi=Path(f.path),
                bval=_associated(layout, f.path, "bval"),
                bvec=_associated(layout, f.path, "bvec"),
                sidecar=_associated(layout, f.path, "json"),
                t1w=find_t1w(layout, subject, session, t1w_filters),
            )
        )
    LOGGER.info(
        "found %d DWI run(s) of %d participant(s) in %s", len(runs), len({r.subject for r in runs}), root
    )
    return runs


def _associated(layout, path: str, kind: str) -> Path | None:
    """The .bval/.bvec/.json of a DWI file, by the BIDS inheritance principle."""
    try:
        if kind == "bval":
            found = layout.get_bval(path)
        elif kind == "bvec":
            found = layout.get_bvec(path)
        else:
            found = layout.get_nearest(path, extension=".json", suffix="dwi", strict=True)
    except (ValueError, IndexError):
        found = None
    return Path(found) if found else None


def find_t1w(layout, subject: str, session: str | None, filters: dict | None = None) -> Path | None:
    """The T1w for a subject/session: same session first, then one without a session, else ``None``.

    With several candidates the first by name is used (and logged).
    """
    from bids.layout import Query

    base = dict(subject=subject, suffix="T1w", datatype="anat", extension=NIFTI, return_type="file")
    base.update(filters or {})
    candidates: list[str] = []
    if session:
        candidates = layout.get(session=session, **base)
    if not candidates:
        candidates = layout.get(session=Query.NONE, **base)
    if not candidates and session is None:
        candidates = layout.get(**base)
    if not candidates:
        LOGGER.info("sub-%s%s: no T1w; DWI will be registered to the template directly", subject,
                    f" ses-{session}" if session else "")
        return None
    candidates = sorted(candidates)
    if len(candidates) > 1:
        LOGGER.info("sub-%s: %d T1w images, using %s", subject, len(candidates), Path(candidates[0]).name)
    return Path(candidates[0])
