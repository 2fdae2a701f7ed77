"""Writing files and folders so that readers never see a half-written one.

Every output goes to a temporary name beside its target (``.<stem>.<random>.tmp<suffixes>``, hidden, same
file system) and is renamed into place only when complete. A process killed by SIGKILL can leave such a
temporary behind; :func:`remove_stale_temporaries` clears them at the next run.

Outputs get the modes a plain ``open()``/``mkdir()`` would give (``0666``/``0777`` less the umask), not the
private ``0600``/``0700`` of :mod:`tempfile`: on a shared HPC folder the group must be able to read them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path


def current_umask() -> int:
    """The process umask, read without changing it where Linux tells it (``/proc/self/status``)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore at once
    os.umask(mask)
    return mask


def public_mode(path: str | Path) -> Path:
    """Give ``path`` the mode a plain ``open()``/``mkdir()`` would have: 0666 or 0777 less the umask."""
    path = Path(path)
    os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~current_umask())
    return path


def staging_dir(parent: str | Path, prefix: str, suffix: str = ".tmp") -> Path:
    """A new hidden folder in ``parent`` to build an output in before :func:`replace_dir` moves it into
    place (same file system), with the mode of a plain ``mkdir``."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    return public_mode(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=parent))


@contextmanager
def atomic_path(target: str | Path):
    """Yield a temporary path beside ``target`` (same suffixes, so writers pick the right format); move it
    to ``target`` only if the block succeeds, and remove it otherwise."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(target.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name.split('.')[0]}.", suffix=f".tmp{suffix}", dir=target.parent)
    os.close(fd)
    tmp_path = public_mode(tmp)
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
