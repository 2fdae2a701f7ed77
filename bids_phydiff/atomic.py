"""Writing files and folders so that readers never see a half-written one.

Every output goes to a temporary name beside its target (``.<stem>.<random>.tmp<suffixes>``, hidden, same
file system) and is renamed into place only when complete. A process killed by SIGKILL can leave such a
temporary behind; :func:`remove_stale_temporaries` clears them at the next run.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(target: str | Path):
    """Yield a temporary path beside ``target`` (same suffixes, so writers pick the right format); move it
    to ``target`` only if the block succeeds, and remove it otherwise."""
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
        tmp_path.unlink(missing_ok=True)


def remove_stale_temporaries(root: str | Path) -> list[Path]:
    """Remove the temporaries of :func:`atomic_path` that a killed run left anywhere below ``root``."""
    stale = [p for p in Path(root).rglob(".*.tmp*") if p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def replace_dir(staging: Path, target: Path) -> Path:
    """Move the complete folder ``staging`` to ``target`` (same file system), replacing an existing
    ``target``: the old one is renamed aside first and removed only once the new one is in place."""
    staging, target = Path(staging), Path(target)
    if target.exists():
        retired = target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}.old"
        os.replace(target, retired)
        os.replace(staging, target)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(staging, target)
    return target
