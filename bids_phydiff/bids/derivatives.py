"""Derivative names, dataset_description.json, .bidsignore and sidecars (DESIGN.md section 5).

Every file is written to a temporary name beside its target and moved into place, so an
interrupted run never leaves a half-written file under a final name.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Mapping

from .. import __version__
from ..atomic import atomic_path
from .layout import DwiRun, filename_entities

BIDS_VERSION = "1.10.0"

# Patterns as bids-validator-deno 3 matches them (measured: "models/" does not ignore the folder, "models"
# does; a folder below sub-X needs "**/"; and a pattern
# with two wildcards such as "*desc-*_dwi.bval" misses names with a dir- entity). The derivative rules of the
# BIDS schema have no .bval/.bvec, dwiref or xfm files for dwi, so those are ignored rather than invalid.
BIDSIGNORE = [
    "models",
    "logs",
    "**/figures",
    "*.html",
    "**/*_dwi.bval",
    "**/*_dwi.bvec",
    "**/*_dwiref.*",
    "**/*_xfm.*",
    "**/*_timeseries.*",  # the motion confounds: the schema has timeseries for func only
    "**/*metrics.tsv",
]

# entity order of the BIDS specification for the entities these derivatives use
_ORDER = ["sub", "ses", "acq", "ce", "rec", "dir", "run", "part", "chunk", "from", "to", "mode", "space", "res", "desc"]


def _entities(source: str | Path | DwiRun | Mapping[str, str]) -> dict[str, str]:
    if isinstance(source, DwiRun):
        return dict(source.entities)
    if isinstance(source, Mapping):
        return dict(source)
    return dict(filename_entities(source))


def derivative_name(source: str | Path | DwiRun | Mapping[str, str], suffix: str, extension: str,
                    **entities: str | None) -> str:
    """The BIDS file name of a derivative of ``source`` (a DWI run, the path of an input file, or its
    entities already parsed, ``{"sub": "01", ...}``).

    ``entities`` add or override entities (``space``, ``res``, ``desc``, and ``from_``/``to``/``mode``
    for transforms); ``None`` removes one. ``desc`` always comes last.
    """
    merged = _entities(source)
    for key, value in entities.items():
        key = key.rstrip("_")
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = str(value)
    ordered = sorted(merged.items(), key=lambda kv: _ORDER.index(kv[0]) if kv[0] in _ORDER else len(_ORDER) - 1)
    return "_".join(f"{k}-{v}" for k, v in ordered) + f"_{suffix}{extension}"


def derivative_path(output_dir: Path, source: str | Path | DwiRun | Mapping[str, str], suffix: str, extension: str,
                    datatype: str = "dwi", **entities) -> Path:
    """``output_dir/sub-X[/ses-Y]/<datatype>/<derivative_name>``."""
    ents = _entities(source)
    folder = Path(f"sub-{ents['sub']}", *([f"ses-{ents['ses']}"] if "ses" in ents else []), datatype)
    return Path(output_dir) / folder / derivative_name(source, suffix, extension, **entities)


def resolution_label(resolution_mm: float) -> str:
    """``res-`` label for an isotropic resolution in mm (2.0 -> '2', 1.25 -> '1p25')."""
    text = f"{resolution_mm:g}"
    return text.replace(".", "p")


def write_json(target: Path, data: dict) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return Path(target)


def write_text(target: Path, text: str) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_text(text)
    return Path(target)


def copy_file(source: Path, target: Path) -> Path:
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)
    return Path(target)


def dataset_description(bids_dir: Path, container: dict | None = None) -> dict:
    """The derivative dataset_description.json content for outputs made from ``bids_dir``."""
    source = {}
    try:
        source = json.loads((Path(bids_dir) / "dataset_description.json").read_text())
    except (OSError, json.JSONDecodeError):
        pass
    generated = {"Name": "bids_phydiff", "Version": __version__}
    if os.environ.get("BIDS_PHYDIFF_CODE_URL"):
        generated["CodeURL"] = os.environ["BIDS_PHYDIFF_CODE_URL"]
    if container:
        generated["Container"] = container
    elif os.environ.get("BIDS_PHYDIFF_CONTAINER"):
        generated["Container"] = {"Type": os.environ["BIDS_PHYDIFF_CONTAINER"]}
    return {
        "Name": f"bids_phydiff derivatives of {source.get('Name', Path(bids_dir).name)}",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [generated],
        "SourceDatasets": [{"URL": Path(bids_dir).resolve().as_uri()}],
        "DatasetLinks": {"raw": Path(bids_dir).resolve().as_uri()},
    }


def init_output_dir(output_dir: Path, bids_dir: Path) -> None:
    """Write dataset_description.json and .bidsignore (idempotent; keeps lines a user added)."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_json(output_dir / "dataset_description.json", dataset_description(bids_dir))
    ignore = output_dir / ".bidsignore"
    lines = ignore.read_text().splitlines() if ignore.exists() else []
    missing = [line for line in BIDSIGNORE if line not in lines]
    if missing:
        write_text(ignore, "\n".join(lines + missing) + "\n")


def bids_uri(path: Path, bids_dir: Path) -> str:
    """``bids:raw:sub-01/dwi/...`` for a file of the input dataset (the DatasetLinks key is 'raw')."""
    # lexically first: a subject folder (or, in git-annex/DataLad datasets, every file) may be a link out of
    # the dataset, and its URI names where it sits in the dataset, not where its bytes are
    path, root = Path(os.path.abspath(path)), Path(os.path.abspath(bids_dir))
    try:
        relative = path.relative_to(root)
    except ValueError:
        relative = path.resolve().relative_to(root.resolve())
    return f"bids:raw:{relative.as_posix()}"


# Template identifiers of the BIDS specification (Appendix: coordinate systems); other spaces need a
# SpatialReference in their sidecars.
STANDARD_SPACES = frozenset({
    "ICBM452AirSpace", "ICBM452Warp5Space", "IXI549Space", "fsaverage", "fsaverageSym", "fsLR", "MNIColin27",
    "MNI152Lin", "MNI152NLin2009aSym", "MNI152NLin2009bSym", "MNI152NLin2009cSym", "MNI152NLin2009aAsym",
    "MNI152NLin2009bAsym", "MNI152NLin2009cAsym", "MNI152NLin6Sym", "MNI152NLin6ASym", "MNI305", "NIHPD",
    "OASIS30AntsOASISAnts", "OASIS30Atropos", "Talairach", "UNCInfant",
})

# Acquisition fields that describe the native slice/phase geometry and are wrong after resampling.
_SPATIAL_FIELDS = ("SliceTiming", "SliceEncodingDirection", "PhaseEncodingDirection", "SliceThickness")


def space_metadata(template: str, resolution_mm: float, template_file: Path | None = None) -> dict:
    """``Resolution`` (always: the res- entity needs it) and ``SpatialReference`` (for non-standard spaces;
    MNI152NLin6Asym is spelt MNI152NLin6ASym in the specification)."""
    meta = {"Resolution": f"{resolution_mm:g} mm isotropic grid of the {template} template"}
    standard = {s.lower() for s in STANDARD_SPACES}
    if template.lower() not in standard and template_file is not None:
        meta["SpatialReference"] = Path(template_file).resolve().as_uri()
    return meta


def resampled_sidecar(source_sidecar: Path | None, extra: dict) -> dict:
    """The raw sidecar's acquisition fields that stay true after resampling, updated with ``extra``."""
    meta = {}
    if source_sidecar is not None and Path(source_sidecar).is_file():
        try:
            meta = json.loads(Path(source_sidecar).read_text())
        except json.JSONDecodeError:
            meta = {}
    for key in _SPATIAL_FIELDS:
        meta.pop(key, None)
    meta.update(extra)
    return meta
