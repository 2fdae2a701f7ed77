"""Make a run work where HOME cannot be written: containers run under an arbitrary UID, a read-only
``docker run --read-only`` or apptainer image, cluster nodes with a read-only or absent home.

Libraries keep caches under HOME (matplotlib's font list, deno's code cache behind the BIDS validator,
TemplateFlow's default home, torch and triton caches). :func:`harden_environment` points each of them at a
private folder under TMPDIR when its default place is not writable, so the run writes only to the output
dir, the work dir and TMPDIR. A variable that is already set is never changed: the user's (or the
image's) choice wins. The one exception is an ``MPLCONFIGDIR`` that cannot be written (an image's
prebuilt folder under ``docker run --read-only``): matplotlib cannot use it, so it moves to the private
folder and takes the prebuilt font list along, so no worker rebuilds it. It also switches off nipype's version check, a network call made by every new
process that creates an interface (an offline node would wait for it to time out).
"""

from __future__ import annotations

import logging
import os
import stat
import tempfile
from pathlib import Path

LOGGER = logging.getLogger(__name__)

TEMPLATEFLOW_HOME = "TEMPLATEFLOW_HOME"


def _writable(path: Path) -> bool:
    """True when ``path`` is a writable folder, or could be created as one (its nearest existing
    ancestor is a writable folder). Nothing is created."""
    path = Path(path)
    while not path.exists():
        if path.parent == path:
            return False
        path = path.parent
    return path.is_dir() and os.access(path, os.W_OK | os.X_OK)


def _home(environ) -> Path:
    home = environ.get("HOME")
    if home:
        return Path(home)
    return Path(os.path.expanduser("~"))


def _private_dir(environ) -> Path | None:
    """A folder under TMPDIR only this user can write: ``$TMPDIR/bids_phydiff-<uid>``, or a fresh
    ``mkdtemp`` when that name is taken by someone else (a shared /tmp). None when TMPDIR is not writable."""
    try:
        tmp = Path(environ.get("TMPDIR") or tempfile.gettempdir())
    except FileNotFoundError:  # no writable temporary folder at all: a read-only root without a tmpfs /tmp
        return None
    uid = os.getuid() if hasattr(os, "getuid") else 0
    candidate = tmp / f"bids_phydiff-{uid}"
    try:
        candidate.mkdir(mode=0o700, exist_ok=True)
        info = candidate.lstat()
        if (stat.S_ISDIR(info.st_mode) and info.st_uid == uid
                and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)):
            return candidate
        return Path(tempfile.mkdtemp(prefix="bids_phydiff-", dir=tmp))
    except OSError:
        return None


def _default_cache_home(environ) -> Path:
    """``$XDG_CACHE_HOME`` or ``~/.cache`` (what platformdirs, deno and torch use on Linux)."""
    value = environ.get("XDG_CACHE_HOME")
    return Path(value) if value else _home(environ) / ".cache"


def _default_config_home(environ) -> Path:
    value = environ.get("XDG_CONFIG_HOME")
    return Path(value) if value else _home(environ) / ".config"


def _seed_font_cache(seed: Path, target: Path) -> None:
    """Copy matplotlib's prebuilt font list (``fontlist-v*.json``) from ``seed`` into ``target``."""
    import shutil

    try:
        target.mkdir(parents=True, exist_ok=True)
        for font_list in seed.glob("fontlist-v*.json"):
            if not (target / font_list.name).exists():
                shutil.copyfile(font_list, target / font_list.name)
    except OSError as exc:
        LOGGER.debug("matplotlib font list not copied from %s: %s", seed, exc)


def harden_environment(environ=None) -> dict[str, str]:
    """Redirect caches whose default place is not writable; return the variables this call set.

    ``environ`` defaults to :data:`os.environ` and is changed in place.
    """
    env = os.environ if environ is None else environ
    changed: dict[str, str] = {}

    def set_default(name: str, value: str) -> None:
        if name not in env:
            env[name] = value
            changed[name] = value

    set_default("NIPYPE_NO_ET", "1")

    home = _home(env)
    cache_home = _default_cache_home(env)
    # TemplateFlow's default home sits in the cache home; remember it before moving the cache home.
    templateflow_default = cache_home / "templateflow"

    wanted: dict[str, str] = {}  # variable -> sub-folder of the private dir
    if "XDG_CACHE_HOME" not in env and not _writable(cache_home):
        wanted["XDG_CACHE_HOME"] = "cache"
    mpl_seed = None
    if "MPLCONFIGDIR" in env and not _writable(Path(env["MPLCONFIGDIR"])):
        mpl_seed = Path(env.pop("MPLCONFIGDIR"))
    if "MPLCONFIGDIR" not in env:
        mpl_default = _default_config_home(env) / "matplotlib"
        if not _writable(mpl_default):
            wanted["MPLCONFIGDIR"] = "matplotlib"
        elif mpl_seed is not None:
            set_default("MPLCONFIGDIR", str(mpl_default))
    if "TRITON_CACHE_DIR" not in env and not _writable(home / ".triton" / "cache"):
        wanted["TRITON_CACHE_DIR"] = "triton"
    if TEMPLATEFLOW_HOME not in env:
        has_templates = templateflow_default.is_dir() and any(templateflow_default.glob("tpl-*"))
        if has_templates:
            # a filled (maybe read-only) default home: keep using it even when XDG_CACHE_HOME moves
            if "XDG_CACHE_HOME" in wanted:
                set_default(TEMPLATEFLOW_HOME, str(templateflow_default))
        elif not _writable(templateflow_default):
            wanted[TEMPLATEFLOW_HOME] = "templateflow"

    if wanted:
        private = _private_dir(env)
        if private is None:
            LOGGER.warning("neither HOME (%s) nor TMPDIR is writable; caches may fail", home)
        else:
            for name, sub in wanted.items():
                set_default(name, str(private / sub))
    if mpl_seed is not None:
        if "MPLCONFIGDIR" in changed:
            _seed_font_cache(mpl_seed, Path(changed["MPLCONFIGDIR"]))
        else:
            env["MPLCONFIGDIR"] = str(mpl_seed)  # nowhere better: leave the user's value as it was
    for name, value in changed.items():
        LOGGER.debug("environment: %s=%s", name, value)
    return changed
