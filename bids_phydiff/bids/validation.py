"""Input validation with bids-validator-deno (the schema-based BIDS validator)."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import NoInputError, PhydiffError, ValidationFailed

LOGGER = logging.getLogger(__name__)

VALIDATOR = "bids-validator-deno"
SHOWN_ERRORS = 10
UNREADABLE = "FILE_READ"
"""The validator's code for a file it could not read (permissions, a broken link)."""


@dataclass(frozen=True)
class Issue:
    code: str
    severity: str
    location: str
    """Path relative to the dataset root, starting with '/', or '' for dataset-wide issues."""
    message: str = ""

    def __str__(self) -> str:
        where = self.location or "(dataset)"
        return f"{self.code} at {where}" + (f": {self.message}" if self.message else "")


def find_validator() -> str:
    """The validator executable: beside this Python (a virtualenv's bin) first, then on PATH."""
    local = Path(sys.executable).parent / VALIDATOR
    if local.is_file():
        return str(local)
    found = shutil.which(VALIDATOR)
    if found is None:
        raise PhydiffError(
            f"{VALIDATOR} not found beside {sys.executable} or on PATH; install it "
            "(pip install bids-validator-deno) or pass --skip-bids-validation"
        )
    return found


def run_validator(bids_dir: Path, timeout: float = 600) -> list[Issue]:
    """Run the validator on ``bids_dir`` and return every issue it reports."""
    cmd = [find_validator(), str(bids_dir), "--format", "json"]
    LOGGER.info("validating %s with %s", bids_dir, VALIDATOR)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise PhydiffError(f"{VALIDATOR} did not finish on {bids_dir} within {timeout:.0f} s") from None
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise PhydiffError(f"{VALIDATOR} failed on {bids_dir} (exit {proc.returncode}): {' '.join(tail)}") from None
    return parse_report(report)


def parse_report(report: dict) -> list[Issue]:
    """Issues from the validator's JSON output (``--format json``)."""
    block = report.get("issues", {})
    messages = block.get("codeMessages", {}) or {}  # code -> explanation
    issues = []
    for item in block.get("issues", []):
        code = item.get("code", "UNKNOWN")
        detail = item.get("issueMessage") or item.get("subCode") or messages.get(code, "")
        issues.append(
            Issue(
                code=code,
                severity=item.get("severity", "error"),
                location=item.get("location", "") or "",
                message=" ".join(str(detail).split())[:300],
            )
        )
    return issues


def _concerns(issue: Issue, subjects: set[str] | None) -> bool:
    """Whether an issue affects the selected subjects (dataset-level files always do)."""
    if subjects is None:
        return True
    first = issue.location.lstrip("/").split("/")[0]
    if first.startswith("sub-"):
        return first[4:] in subjects
    return True


def validate(bids_dir: Path, subjects: list[str] | tuple[str, ...] | None = None) -> list[Issue]:
    """Validate; raise :class:`ValidationFailed` listing the first errors that concern ``subjects``, or
    :class:`NoInputError` (66) when some of those are files the validator could not read.

    Errors in other subjects' files are logged but do not stop a run restricted to healthy subjects.
    Returns the warnings.
    """
    issues = run_validator(Path(bids_dir))
    selected = set(subjects) if subjects else None
    errors = [i for i in issues if i.severity == "error"]
    blocking = [i for i in errors if _concerns(i, selected)]
    for issue in errors:
        if issue not in blocking:
            LOGGER.warning("validator error outside the selected participants: %s", issue)
    warnings = [i for i in issues if i.severity == "warning"]
    if warnings:
        LOGGER.info("%s: %d validator warning(s), e.g. %s", bids_dir, len(warnings), warnings[0])
    unreadable = [i for i in blocking if i.code == UNREADABLE]
    if unreadable:
        names = ", ".join(str(Path(bids_dir) / i.location.lstrip("/")) for i in unreadable[:SHOWN_ERRORS])
        raise NoInputError(f"{bids_dir}: {VALIDATOR} cannot read {names} ({unreadable[0].message})")
    if blocking:
        shown = "\n  ".join(str(i) for i in blocking[:SHOWN_ERRORS])
        more = f"\n  ... and {len(blocking) - SHOWN_ERRORS} more" if len(blocking) > SHOWN_ERRORS else ""
        raise ValidationFailed(
            f"{bids_dir}: {VALIDATOR} found {len(blocking)} error(s):\n  {shown}{more}\n"
            "Fix the dataset, or pass --skip-bids-validation to run anyway."
        )
    return warnings
