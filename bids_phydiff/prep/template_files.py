"""A template's files in a TemplateFlow home: where the home is, which resolutions are there, and the
download of missing ones through TemplateFlow.

The home is the ``home`` argument, else ``$TEMPLATEFLOW_HOME``, else TemplateFlow's default cache, read at
call time. Resolution labels (``res-XX``) are not millimetres in general (``MNI152NLin6Asym`` ``res-03`` is
0.5 mm), so the spacing of a local file is read from its header, and that of a remote one from the
template's ``template_description.json``. Every failure, network ones included, is a :class:`TemplateError`
that names TEMPLATEFLOW_HOME and what was looked for, never a network stack trace.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib

from ..errors import NoInputError

HOME_ENV = "TEMPLATEFLOW_HOME"
SPACING_TOLERANCE_MM = 1e-3

TEMPLATEFLOW_HOST = "templateflow.s3.amazonaws.com"
"""Where TemplateFlow downloads from; probed first so that an offline machine fails at once."""

# (suffix, desc) of each kind of image in TemplateFlow file names
KIND_KEYS = {
    "t1w": ("T1w", None),
    "brain_t1w": ("T1w", "brain"),
    "mask": ("mask", "brain"),
    "b0": ("dwi", "b0"),
}
_ALLOWED_ENTITIES = {"res", "desc"}
_ENTITY = re.compile(r"^([a-zA-Z0-9]+)-([a-zA-Z0-9+]+)$")


class TemplateError(NoInputError, RuntimeError):
    """A template (or one of its files) that cannot be found or used; the message names TEMPLATEFLOW_HOME."""


@dataclass(frozen=True)
class TemplateFiles:
    """The usable files of one resolution of a template: ``label`` (the ``res-`` value, None when the
    files have none), ``spacing`` (mm, the largest voxel size), ``files`` (kind -> Path, kinds of
    :data:`KIND_KEYS`)."""

    label: str | None
    spacing: float
    files: dict


def templateflow_home(home: str | Path | None = None) -> Path:
    """The TemplateFlow home: ``home``, else ``$TEMPLATEFLOW_HOME`` (read now), else TemplateFlow's default."""
    if home:
        return Path(home).expanduser().absolute()
    env = os.environ.get(HOME_ENV)
    if env:
        return Path(env).expanduser().absolute()
    from platformdirs import user_cache_dir  # what TemplateFlow itself uses

    return Path(user_cache_dir("templateflow")).absolute()


def _parse(path: Path, name: str) -> tuple[dict, str] | None:
    stem = path.name[: -len(".nii.gz")]
    parts = stem.split("_")
    if parts[0] != f"tpl-{name}" or len(parts) < 2:
        return None
    entities = {}
    for part in parts[1:-1]:
        match = _ENTITY.match(part)
        if match is None:
            return None
        entities[match.group(1)] = match.group(2)
    return entities, parts[-1]


def local_resolutions(folder: Path, name: str) -> list[TemplateFiles]:
    """Resolutions of ``name`` whose brain mask and a reference image exist (non-empty) in ``folder``,
    finest first."""
    groups: dict = {}
    for path in sorted(folder.glob(f"tpl-{name}_*.nii.gz")):
        parsed = _parse(path, name)
        if parsed is None or not path.is_file() or path.stat().st_size == 0:
            continue  # zero bytes: a TemplateFlow placeholder that was never downloaded
        entities, suffix = parsed
        if set(entities) - _ALLOWED_ENTITIES:
            continue
        for kind, (want_suffix, want_desc) in KIND_KEYS.items():
            if suffix == want_suffix and entities.get("desc") == want_desc:
                groups.setdefault(entities.get("res"), {})[kind] = path
    found = []
    for label, files in groups.items():
        if "mask" not in files or not ({"t1w", "brain_t1w", "b0"} & set(files)):
            continue
        try:
            zooms = nib.load(str(files["mask"])).header.get_zooms()[:3]
        except Exception as exc:
            raise TemplateError(f"{files['mask']}: cannot read this template file ({exc})") from None
        found.append(TemplateFiles(label, float(max(zooms)), files))
    return sorted(found, key=lambda r: r.spacing)


def pick_resolution(spacings: list[float], wanted: float, allow_coarser: bool) -> int | None:
    """Index of the spacing to use: equal to ``wanted``, else the coarsest finer one, else (if allowed)
    the finest coarser one."""
    exact = [i for i, s in enumerate(spacings) if abs(s - wanted) <= SPACING_TOLERANCE_MM]
    if exact:
        return exact[0]
    finer = [i for i, s in enumerate(spacings) if s < wanted]
    if finer:
        return max(finer, key=lambda i: spacings[i])
    if allow_coarser and spacings:
        return min(range(len(spacings)), key=lambda i: spacings[i])
    return None


# ----------------------------------------------------------------------------------------------------------
# fetching through TemplateFlow (only when the local home lacks the files)


def _client(root: Path, timeout_s: float):
    """A TemplateFlow client on ``root``. TemplateFlow reads $TEMPLATEFLOW_HOME once, at import, and may
    write a skeleton there: point it at ``root`` for that import so nothing is written elsewhere."""
    import sys

    if "templateflow.conf" not in sys.modules:
        previous = os.environ.get(HOME_ENV)
        os.environ[HOME_ENV] = str(root)
        try:
            import templateflow.conf  # noqa: F401
        finally:
            if previous is None:
                os.environ.pop(HOME_ENV, None)
            else:
                os.environ[HOME_ENV] = previous
    from templateflow.client import TemplateFlowClient

    return TemplateFlowClient(root=root, timeout=max(1, int(math.ceil(timeout_s))), autoupdate=False)


def _unreachable(host: str, timeout_s: float) -> str | None:
    """None when a TCP connection to ``host``:443 opens within ``timeout_s``, else the reason."""
    import socket
    import threading

    outcome: dict = {}

    def probe():
        try:
            with socket.create_connection((host, 443), timeout=timeout_s):
                outcome["ok"] = True
        except OSError as exc:
            outcome["error"] = f"{type(exc).__name__}: {exc}"

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout_s)
    if "ok" in outcome:
        return None
    return outcome.get("error", f"no answer within {timeout_s:g} s")


def _remote_spacings(root: Path, name: str) -> dict:
    """res label -> spacing (mm) from ``template_description.json``; empty when it has none."""
    path = root / f"tpl-{name}" / "template_description.json"
    if not path.is_file() or path.stat().st_size == 0:
        return {}
    try:
        entries = json.loads(path.read_text()).get("res", {}) or {}
    except (OSError, ValueError):
        return {}
    out = {}
    for label, info in entries.items():
        spacing = info.get("grid_spacing") if isinstance(info, dict) else None
        if spacing is None and isinstance(info, dict) and info.get("zooms"):
            spacing = max(float(z) for z in info["zooms"])
        if spacing is not None:
            out[str(label)] = float(spacing)
    return out


def download(name: str, resolution_mm: float, root: Path, timeout_s: float) -> TemplateFiles:
    """Fetch the T1w and brain mask of the best resolution of ``name`` through TemplateFlow into ``root``
    (equal to ``resolution_mm``, else the coarsest finer one)."""
    looked_for = f"tpl-{name} T1w and brain mask at {resolution_mm:g} mm"
    offline = _unreachable(TEMPLATEFLOW_HOST, timeout_s)
    if offline:
        raise TemplateError(
            f"template {name} not available: looked for {looked_for} in TEMPLATEFLOW_HOME={root}, and "
            f"{TEMPLATEFLOW_HOST} cannot be reached to download it ({offline}). "
            f"Fill TEMPLATEFLOW_HOME (or point it at a filled TemplateFlow home) for offline use."
        )
    try:
        client = _client(root, timeout_s)
        listed = client.ls(name, suffix="mask", desc="brain", extension=".nii.gz")
        if not listed:
            raise TemplateError(
                f"template {name} is not known in TEMPLATEFLOW_HOME={root} (looked for {looked_for})"
            )
        spacings = _remote_spacings(root, name)
        labels = sorted(spacings)
        index = pick_resolution([spacings[k] for k in labels], resolution_mm, allow_coarser=False)
        query: dict = {}
        spacing = resolution_mm
        if index is not None:
            query["resolution"] = int(labels[index]) if labels[index].isdigit() else labels[index]
            spacing = spacings[labels[index]]
        elif spacings:
            raise TemplateError(
                f"template {name} has no resolution of {resolution_mm:g} mm or finer "
                f"(TEMPLATEFLOW_HOME={root} lists {sorted(spacings.values())} mm)"
            )
        files = {}
        for kind in ("t1w", "mask"):
            suffix, desc = KIND_KEYS[kind]
            got = client.get(name, suffix=suffix, desc=desc, extension=".nii.gz", **query)
            got = [got] if isinstance(got, Path) else list(got)
            if len(got) != 1:
                raise TemplateError(
                    f"template {name}: {len(got)} files match {kind} in TEMPLATEFLOW_HOME={root}"
                )
            files[kind] = got[0]
    except TemplateError:
        raise
    except Exception as exc:  # network, permissions, a broken home: one clear message
        reason = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        raise TemplateError(
            f"template {name} not available: looked for {looked_for} in TEMPLATEFLOW_HOME={root} and could "
            f"not download it ({type(exc).__name__}: {reason}). Fill TEMPLATEFLOW_HOME for offline use."
        ) from None
    label = query.get("resolution")
    return TemplateFiles(None if label is None else f"{int(label):02d}" if isinstance(label, int) else label,
                         spacing, files)
