"""matplotlib where its configured folder is read-only (an image's prebuilt MPLCONFIGDIR under
``docker run --read-only``): the run moves it to a private folder and takes the prebuilt font list along,
so matplotlib neither warns nor rebuilds its font cache in every Nipype worker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# inside a user + mount namespace: $SEED becomes a read-only bind mount, then the snippet runs
_INNER = 'mount --bind "$SEED" "$SEED" && mount -o remount,bind,ro "$SEED" "$SEED" && exec "$@"'
_SNIPPET = r"""
import json, logging, os, sys, time
from bids_phydiff.cli.environment import harden_environment
changed = harden_environment()
start = time.perf_counter()
import matplotlib.font_manager
print(json.dumps({"changed": changed, "MPLCONFIGDIR": os.environ.get("MPLCONFIGDIR"),
                  "import_seconds": time.perf_counter() - start}))
"""


def test_a_read_only_matplotlib_folder_moves_to_a_private_one_with_its_font_list(tmp_path):
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"unshare -rm is not allowed here: {probe.stderr.strip()[:200]}")
    seed, tmp = tmp_path / "image-matplotlib", tmp_path / "tmp"
    tmp.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("XDG_CACHE_HOME", "XDG_CONFIG_HOME", "TRITON_CACHE_DIR")}
    blocker = tmp_path / "not-a-dir"  # HOME below a regular file: the image's read-only root
    blocker.write_text("")
    env.update(MPLCONFIGDIR=str(seed), TMPDIR=str(tmp), HOME=str(blocker / "home"), SEED=str(seed))
    build = subprocess.run([sys.executable, "-c", "import matplotlib.font_manager"], env=env, capture_output=True,
                           text=True, timeout=300)  # the image build's step: the font list is made now
    assert build.returncode == 0, build.stderr
    font_lists = sorted(p.name for p in seed.glob("fontlist-v*.json"))
    assert font_lists, sorted(p.name for p in seed.iterdir())

    proc = subprocess.run(["unshare", "-rm", "sh", "-c", _INNER, "sh", sys.executable, "-c", _SNIPPET], env=env,
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    moved = Path(result["MPLCONFIGDIR"])
    assert moved.parent == tmp / "bids_phydiff-0" and result["changed"]["MPLCONFIGDIR"] == str(moved)
    assert sorted(p.name for p in moved.glob("fontlist-v*.json")) == font_lists
    assert "is not a writable directory" not in proc.stderr and "Matplotlib is building the font cache" \
        not in proc.stderr, proc.stderr
