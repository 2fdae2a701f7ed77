#!/usr/bin/env python3
"""Fill $TEMPLATEFLOW_HOME with the templates bids_phydiff uses, at image build time.

``fetch_templates.py`` downloads them through TemplateFlow and checks every file (non-empty, a complete
gzip stream, a readable NIfTI): a zero-byte or truncated file from an interrupted download fails the build
instead of the first run on an offline node. ``fetch_templates.py --check`` (after the package is
installed) loads each template the way the app does, with downloads switched off.
"""

from __future__ import annotations

import os
import sys

# template -> TemplateFlow ``res-`` labels (None: the template has no res- entity)
TEMPLATES = {
    "MNI152NLin6Asym": (1, 2),
    "MNI305": (None,),
}
# (suffix, desc) of the files the app reads: whole-head T1w and brain mask
FILES = (("T1w", None), ("mask", "brain"))
# grids the --check step asks for, in mm
CHECK_GRIDS = {"MNI152NLin6Asym": (1.0, 2.0), "MNI305": (2.0,)}


def _verify(path) -> None:
    import nibabel as nib
    import numpy as np

    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        raise SystemExit(f"{path}: missing or empty after download")
    img = nib.load(str(path))
    data = np.asarray(img.dataobj)  # reads the whole gzip stream: a truncated file fails here
    if data.ndim != 3 or not np.isfinite(data).all():
        raise SystemExit(f"{path}: unexpected content (shape {data.shape})")


def fetch() -> int:
    home = os.environ.get("TEMPLATEFLOW_HOME")
    if not home:
        raise SystemExit("set TEMPLATEFLOW_HOME to the folder to fill")
    from templateflow import api

    for template, resolutions in TEMPLATES.items():
        for res in resolutions:
            for suffix, desc in FILES:
                query = {"suffix": suffix, "desc": desc, "extension": ".nii.gz"}
                if res is not None:
                    query["resolution"] = res
                got = api.get(template, raise_empty=True, **query)
                paths = [got] if isinstance(got, (str, os.PathLike)) else list(got)
                if len(paths) != 1:
                    raise SystemExit(f"{template} {query}: expected one file, got {paths}")
                _verify(paths[0])
                print(f"fetched {paths[0]} ({os.path.getsize(paths[0])} bytes)")
    return 0


def check() -> int:
    from bids_phydiff.prep.templates import load_template

    for template, grids in CHECK_GRIDS.items():
        for mm in grids:
            grid = load_template(template, mm, allow_download=False)
            print(f"offline: {template} at {mm:g} mm -> grid {grid.shape} from {grid.t1w.name}")
    return 0


if __name__ == "__main__":
    sys.exit(check() if sys.argv[1:] == ["--check"] else fetch())
