"""Putting a finished folder in place in one step, so that readers never see a half-written one."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path


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
