"""Run a Nipype workflow the way the run's config asks: plugin, processes, memory, crash files."""

from __future__ import annotations

import logging
from pathlib import Path

from ..errors import PhydiffError

LOGGER = logging.getLogger(__name__)

POLL_SECONDS = 0.2
"""MultiProc polls every 2 s by default; short nodes make that the bottleneck (stack-facts.md)."""


def plugin_settings(nprocs: int, mem_gb: float | None, plugin: dict | None) -> tuple[str, dict]:
    """The Nipype plugin and its arguments: a ``--use-plugin`` YAML if given, else MultiProc or Linear."""
    if plugin:
        name = plugin["plugin"]
        args = dict(plugin.get("plugin_args") or {})
    elif nprocs > 1:
        name, args = "MultiProc", {"n_procs": nprocs, "raise_insufficient": False, "maxtasksperchild": 1}
    else:
        name, args = "Linear", {}
    if name in ("MultiProc", "LegacyMultiProc"):
        args.setdefault("n_procs", nprocs)
        if mem_gb:
            args.setdefault("memory_gb", mem_gb)
    return name, args


def _quiet_nipype(quiet: bool) -> None:
    """Node-by-node messages only with -v: Nipype's own config decides its loggers' levels."""
    from nipype import config as nipype_config
    from nipype import logging as nipype_logging

    level = "WARNING" if quiet else "INFO"
    for name in ("workflow_level", "interface_level", "utils_level"):
        nipype_config.set("logging", name, level)
    nipype_logging.update_logging(nipype_config)


def run_workflow(workflow, work_dir: Path, crash_dir: Path, nprocs: int, mem_gb: float | None = None,
                 plugin: dict | None = None, stop_on_first_crash: bool = False) -> None:
    """Execute ``workflow`` with its cache under ``work_dir``; crash files go to ``crash_dir``.

    Raises :class:`PhydiffError` naming the crash files when nodes fail.
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    crash_dir.mkdir(parents=True, exist_ok=True)
    workflow.base_dir = str(work_dir)
    workflow.config["execution"].update(
        {
            "crashdump_dir": str(crash_dir),
            "crashfile_format": "txt",
            "poll_sleep_duration": POLL_SECONDS,
            "stop_on_first_crash": stop_on_first_crash,
            "remove_unnecessary_outputs": False,
            "hash_method": "content",
        }
    )
    workflow.config["monitoring"] = {"enabled": False}
    _quiet_nipype(logging.getLogger("bids_phydiff").getEffectiveLevel() > logging.DEBUG)
    name, args = plugin_settings(nprocs, mem_gb, plugin)
    LOGGER.info("running workflow %s with the %s plugin %s", workflow.name, name, args or "")
    before = set(crash_dir.glob("crash-*"))
    try:
        workflow.run(plugin=name, plugin_args=args)
    except RuntimeError as exc:
        crashes = sorted(set(crash_dir.glob("crash-*")) - before)
        listing = "\n  ".join(str(c) for c in crashes) or "(no crash file written)"
        detail = _first_error(crashes)
        raise PhydiffError(
            f"workflow {workflow.name} failed: {exc}\n{detail}crash files:\n  {listing}"
        ) from None


def _first_error(crashes: list[Path]) -> str:
    """The last line of the first crash file's traceback: usually the message that matters."""
    for crash in crashes:
        lines = [line for line in crash.read_text(errors="replace").splitlines() if line.strip()]
        for line in reversed(lines):
            if "Error" in line or "error" in line:
                return f"first error: {line.strip()}\n"
    return ""
