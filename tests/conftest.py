"""Shared test fixtures: where the shared data lives, and small generated datasets.

The shared data (real DWI, the XTRACT atlas, an offline TemplateFlow home) sits beside the project at
``../shared``; BIDS_PHYDIFF_SHARED overrides that. Tests that need it skip with the reason when it is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("BIDS_PHYDIFF_SHARED", REPO.parent / "shared")).resolve()


def _shared_path(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared test data not found: {path} (set BIDS_PHYDIFF_SHARED)")
    return path


@pytest.fixture(scope="session")
def real_bids() -> Path:
    """The real in-vivo BIDS dataset (sub-xa30 with a T1w, sub-toshiba without)."""
    return _shared_path("data", "real-bids")


@pytest.fixture(scope="session")
def shared_templateflow() -> Path:
    """An offline TemplateFlow home with MNI152NLin6Asym, MNI152NLin2009cAsym and MNI305."""
    return _shared_path("templateflow")


@pytest.fixture(scope="session")
def xtract_dir() -> Path:
    """The XTRACT label atlas on MNI152NLin6Asym grids."""
    return _shared_path("data", "xtract")
