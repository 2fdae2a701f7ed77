"""Find the DWI runs of a BIDS dataset with pybids, each paired with its gradients, sidecar and T1w.

The pybids index is kept outside the dataset: in the run's own folder of the work dir, or in a shared
``--bids-database-dir`` that concurrent runs build once and then read (see :func:`open_layout`).

The input is raw BIDS or a derivatives dataset of preprocessed DWI (``--input-type``; names and rules in
:mod:`.preprocessed`).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..errors import EmptySelectionError, InputDataError, NoInputError, OutputError
from .preprocessed import DROPPED_ENTITIES, PREPROC_DWI, find_preprocessed_t1w, given_mask

LOGGER = logging.getLogger(__name__)

NIFTI = [".nii", ".nii.gz"]

# pybids filters users may give in --bids-filter-file, by their long names
_ALLOWED_FILTERS = {"acquisition", "reconstruction", "direction", "run", "part", "chunk", "ceagent", "echo",
                    "space", "res"}


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
    mask: Path | None = None
    """A brain mask on the DWI grid that came with a preprocessed run (used instead of computing one)."""
    preprocessed: bool = False
    """An already-preprocessed (``desc-preproc``) run: prepare skips denoising and motion correction."""

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


INDEX_FILE = "layout_index.sqlite"
"""pybids' name for the index inside its database folder."""
MARKER_FILE = "bids_phydiff_index.json"
"""Beside the index: the dataset root and fingerprint it was built from (an index without it is rebuilt)."""
_NOT_INDEXED = {"code", "models", "sourcedata", "stimuli", "derivatives"}
"""Top-level folders pybids leaves out by default (derivatives are indexed separately, and not by us)."""


def open_layout(bids_dir: Path, database_dir: Path, reset: bool = False, derivative: bool = False):
    """A pybids layout of ``bids_dir`` whose index lives in ``database_dir`` (safe for concurrent runs).

    Under an exclusive lock on ``database_dir/layout_index.sqlite.lock``, an index built from the same
    dataset (same root, same file names, sizes and modification times) is reused; otherwise a new one is
    built in a temporary folder inside ``database_dir`` and renamed into place, so no run ever reads a
    half-built index. ``reset`` rebuilds even a matching index. The layout is opened without reset: it only
    reads the index. ``derivative`` indexes the dataset with pybids' derivatives entities (``space``,
    ``desc``, ``res``) even where its description does not say ``DatasetType: derivative``.
    """
    bids_dir, database_dir = Path(bids_dir).resolve(), Path(database_dir)
    try:
        database_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{database_dir}: cannot create the pybids database folder ({exc.strerror})") from None
    stamp = {**_index_stamp(bids_dir), "derivative": bool(derivative)}
    with _exclusive(database_dir / f"{INDEX_FILE}.lock") as locked:
        if reset or not _index_matches(database_dir, stamp):
            if not locked and not os.access(database_dir, os.W_OK):
                raise OutputError(f"{database_dir}: the pybids index is missing or outdated and the folder "
                                  "is not writable; give a writable --bids-database-dir")
            _build_index(bids_dir, database_dir, stamp, clear_stale=locked)
        else:
            LOGGER.info("reusing the pybids index in %s", database_dir)
        return _load_layout(bids_dir, database_dir, derivative)


def _load_layout(bids_dir: Path, database_dir: Path, derivative: bool = False):
    from bids import BIDSLayout
    from bids.layout import BIDSLayoutIndexer

    return BIDSLayout(str(bids_dir), validate=False, database_path=str(database_dir), reset_database=False,
                      indexer=BIDSLayoutIndexer(validate=False), is_derivative=derivative)


def _build_index(bids_dir: Path, database_dir: Path, stamp: dict, clear_stale: bool) -> None:
    """Index ``bids_dir`` into a hidden temporary folder of ``database_dir``, then rename the index and its
    marker into place (the index first: a marker never describes an index that is not there). ``clear_stale``
    (only under the lock, when no one else can be building) removes the temporary folders of killed runs."""
    from bids import BIDSLayout
    from bids.layout import BIDSLayoutIndexer

    for stale in database_dir.glob(".build-*") if clear_stale else ():
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=".build-", dir=database_dir))
    try:
        LOGGER.info("indexing %s with pybids into %s", bids_dir, database_dir)
        layout = BIDSLayout(str(bids_dir), validate=False, database_path=str(staging), reset_database=True,
                            indexer=BIDSLayoutIndexer(validate=False), is_derivative=stamp.get("derivative", False))
        layout.connection_manager.session.close()
        layout.connection_manager.engine.dispose()
        (staging / MARKER_FILE).write_text(json.dumps(stamp, indent=2) + "\n")
        os.replace(staging / INDEX_FILE, database_dir / INDEX_FILE)
        os.replace(staging / MARKER_FILE, database_dir / MARKER_FILE)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _index_matches(database_dir: Path, stamp: dict) -> bool:
    if not (database_dir / INDEX_FILE).is_file():
        return False
    try:
        return json.loads((database_dir / MARKER_FILE).read_text()) == stamp
    except (OSError, ValueError):
        return False


def _index_stamp(bids_dir: Path) -> dict:
    """What an index must have been built from to be reused: root, pybids version, and a SHA-256 over the
    relative path, size and modification time of every file pybids would index."""
    import bids

    digest = hashlib.sha256()
    count = 0
    seen: set[tuple[int, int]] = set()
    stack = [(bids_dir, "")]
    while stack:
        folder, rel = stack.pop()
        try:
            info = folder.stat()
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            continue
        if (info.st_dev, info.st_ino) in seen:  # a symlink loop or a second path to a folder
            continue
        seen.add((info.st_dev, info.st_ino))
        for entry in entries:
            if entry.name.startswith(".") or (not rel and entry.name in _NOT_INDEXED):
                continue
            path = f"{rel}/{entry.name}"
            try:
                if entry.is_dir():
                    stack.append((Path(entry.path), path))
                    continue
                st = entry.stat()
            except OSError:  # a broken link: pybids skips it too
                continue
            count += 1
            digest.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
    return {"root": str(bids_dir), "pybids": bids.__version__, "files": count, "sha256": digest.hexdigest()}


@contextmanager
def _exclusive(lock_path: Path):
    """Hold an exclusive ``flock`` on ``lock_path`` for the block; yields False (holding nothing) where no lock
    can be taken: a read-only folder, or a file system without locks. (flock needs no write permission, so
    users sharing a folder share the lock file whoever created it.)"""
    try:
        fd = os.open(lock_path, os.O_RDONLY | os.O_CREAT, 0o666)
    except OSError:
        yield False
        return
    try:
        locked = True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            LOGGER.info("waiting for another run to finish the pybids index (%s)", lock_path)
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:
            LOGGER.warning("%s: cannot lock (%s); going on without the lock", lock_path, exc.strerror)
            locked = False
        yield locked
    finally:
        os.close(fd)  # releases the lock


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
    preprocessed: bool = False,
) -> list[DwiRun]:
    """Every selected DWI run, sorted by file name.

    ``filters`` is the content of ``--bids-filter-file``: ``{"dwi": {...}, "t1w": {...}}`` with pybids
    entity names. ``preprocessed``: the dataset holds preprocessed derivatives (see the module docstring);
    only ``desc-preproc`` DWI are runs, each with the brain mask beside it and the preprocessed T1w of its
    space. Raises :class:`NoInputError` when the dataset has no DWI at all and :class:`EmptySelectionError`
    when labels or filters select nothing.
    """
    filters = filters or {}
    dwi_filters = _clean_filters(filters.get("dwi", {}), "--bids-filter-file 'dwi'")
    t1w_filters = _clean_filters(filters.get("t1w", {}), "--bids-filter-file 't1w'")
    root = Path(layout.root)

    kind = {"desc": "preproc"} if preprocessed else {}
    all_dwi = layout.get(suffix="dwi", datatype="dwi", extension=NIFTI, return_type="object", **kind)
    if not all_dwi:
        pattern = PREPROC_DWI if preprocessed else "*_dwi.nii[.gz]"
        raise NoInputError(f"{root}: no {'preprocessed ' if preprocessed else ''}DWI files "
                           f"(sub-*/[ses-*/]dwi/{pattern}) in the dataset")

    subjects = sorted(layout.get_subjects())
    if participant_label:
        missing = [s for s in participant_label if s not in subjects]
        if missing:
            raise EmptySelectionError(
                f"{root}: no participant(s) {', '.join('sub-' + s for s in missing)}; the dataset has "
                f"{', '.join('sub-' + s for s in subjects)}"
            )
        subjects = list(participant_label)

    query = dict(suffix="dwi", datatype="dwi", extension=NIFTI, subject=subjects, return_type="object", **kind)
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
        entities = filename_entities(f.path)
        if preprocessed:
            space = dict(entities).get("space")
            t1w = find_preprocessed_t1w(layout, subject, session, space, t1w_filters)
            entities = tuple((k, v) for k, v in entities if k not in DROPPED_ENTITIES)
        else:
            t1w = find_t1w(layout, subject, session, t1w_filters)
        runs.append(
            DwiRun(
                subject=subject,
                session=session,
                entities=entities,
                dwi=Path(f.path),
                bval=_associated(layout, f.path, "bval"),
                bvec=_associated(layout, f.path, "bvec"),
                sidecar=_associated(layout, f.path, "json"),
                t1w=t1w,
                mask=given_mask(Path(f.path)) if preprocessed else None,
                preprocessed=preprocessed,
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

