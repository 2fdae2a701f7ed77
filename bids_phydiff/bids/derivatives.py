"""Derivative names, dataset_description.json, .bidsignore and sidecars (DESIGN.md section 5).

Every file is written to a temporary name beside its target and moved into place, so an
interrupted run never leaves a half-written file under a final name.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .. import __version__
from .layout import DwiRun, filename_entities

BIDS_VERSION = "1.10.0"

BIDSIGNORE = [
    "models/",
    "figures/",
    "logs/",
    "*.html",
    "*_desc-*_dwi.bval",
    "*_desc-*_dwi.bvec",
]

# entity order of the BIDS specification for the entities these derivatives use
_ORDER = ["sub", "ses", "acq", "ce", "rec", "dir", "run", "part", "chunk", "from", "to", "mode", "space", "res", "desc"]


def derivative_name(source: str | Path | DwiRun, suffix: str, extension: str, **entities: str | None) -> str:
    """The BIDS file name of a derivative of ``source`` (a DWI run or the path of an input file).

    ``entities`` add or override entities (``space``, ``res``, ``desc``, and ``from_``/``to``/``mode``
    for transforms); ``None`` removes one. ``desc`` always comes last.
    """
    merged = dict(source.entities if isinstance(source, DwiRun) else filename_entities(source))
    for key, value in entities.items():
        key = key.rstrip("_")
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = str(value)
    ordered = sorted(merged.items(), key=lambda kv: _ORDER.index(kv[0]) if kv[0] in _ORDER else len(_ORDER) - 1)
    return "_".join(f"{k}-{v}" for k, v in ordered) + f"_{suffix}{extension}"


def derivative_path(output_dir: Path, source: str | Path | DwiRun, suffix: str, extension: str,
                    datatype: str = "dwi", **entities) -> Path:
    """``output_dir/sub-X[/ses-Y]/<datatype>/<derivative_name>``."""
    ents = dict(source.entities if isinstance(source, DwiRun) else filename_entities(source))
    folder = Path(f"sub-{ents['sub']}", *([f"ses-{ents['ses']}"] if "ses" in ents else []), datatype)
    return Path(output_dir) / folder / derivative_name(source, suffix, extension, **entities)


def resolution_label(resolution_mm: float) -> str:
    """``res-`` label for an isotropic resolution in mm (2.0 -> '2', 1.25 -> '1p25')."""
    text = f"{resolution_mm:g}"
    return text.replace(".", "p")


@contextmanager
def atomic_path(target: Path):
    """Yield a temporary path beside ``target``; move it to ``target`` only if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(target.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name.split('.')[0]}.", suffix=f".tmp{suffix}", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


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
    return f"bids:raw:{Path(path).resolve().relative_to(Path(bids_dir).resolve()).as_posix()}"
