"""The run's configuration: one frozen object built from the arguments, saved for every run.

The object is written as JSON to ``<work_dir>/config.json`` and to
``<output_dir>/logs/config-<run_id>.json`` so a run can be inspected and repeated.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import uuid
from dataclasses import dataclass, field, fields
from pathlib import Path

from .. import __version__
from ..errors import NoInputError, OutputError, UsageError
from .parser import LATER_OPTION_DESTS


@dataclass(frozen=True)
class RunConfig:
    """Everything a run needs to know; paths are absolute."""

    bids_dir: Path
    output_dir: Path
    analysis_level: str
    work_dir: Path
    participant_label: tuple[str, ...] = ()
    session_label: tuple[str, ...] = ()
    bids_filters: dict = field(default_factory=dict)
    skip_bids_validation: bool = False
    bids_database_dir: Path | None = None
    b0_threshold: float = 50.0
    nprocs: int = 1
    omp_nthreads: int = 1
    mem_gb: float | None = None
    use_plugin: Path | None = None
    plugin: dict = field(default_factory=dict)
    stop_on_first_crash: bool = False
    seed: int = 0
    device: str = "auto"
    template: str = "MNI152NLin6Asym"
    output_resolution: float = 2.0
    model: Path | None = None
    verbose: int = 0
    version: str = __version__
    run_id: str = ""

    @property
    def database_dir(self) -> Path:
        """Where the pybids index lives (never inside bids_dir)."""
        return self.bids_database_dir or self.work_dir / "bids_db"

    def to_dict(self) -> dict:
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Path):
                value = str(value)
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    def save(self) -> list[Path]:
        """Write the config to the work dir and to output_dir/logs; return the two paths."""
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"
        targets = [self.work_dir / "config.json", self.output_dir / "logs" / f"config-{self.run_id}.json"]
        for target in targets:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.tmp")
            tmp.write_text(text)
            os.replace(tmp, target)
        return targets


def _is_within(path: Path, parent: Path) -> bool:
    try:
        path.relative_to(parent)
        return True
    except ValueError:
        return False


def _load_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UsageError(f"{path}: cannot read {what} as JSON ({exc})") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: {what} must be a JSON object")
    return data


def _load_plugin(path: Path) -> dict:
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise UsageError(f"{path}: cannot read the Nipype plugin file ({exc})") from None
    if not isinstance(data, dict) or "plugin" not in data:
        raise UsageError(f"{path}: a Nipype plugin file needs a 'plugin' key, e.g. 'plugin: SLURM'")
    data.setdefault("plugin_args", {})
    return data


def build_config(args: argparse.Namespace, implemented: frozenset[str] = frozenset()) -> RunConfig:
    """Check the arguments against each other and the file system; return the frozen config.

    ``implemented`` names the options of later stages that this version already supports;
    any other such option that was set stops the run with a clear message.
    """
    for dest in ("model", *LATER_OPTION_DESTS):
        if getattr(args, dest, None) is not None and dest not in implemented:
            flag = "--" + dest.replace("_", "-")
            raise UsageError(f"{flag} is not implemented yet in bids_phydiff {__version__}")

    bids_dir = args.bids_dir.expanduser().resolve()
    output_dir = args.output_dir.expanduser().resolve()
    if not bids_dir.is_dir():
        raise NoInputError(f"{bids_dir}: the BIDS dataset directory does not exist")
    if not (bids_dir / "dataset_description.json").is_file():
        raise NoInputError(f"{bids_dir}: not a BIDS dataset (no dataset_description.json)")
    if _is_within(output_dir, bids_dir):
        raise UsageError(
            f"output_dir {output_dir} is the BIDS dataset or inside it; choose a folder outside {bids_dir} "
            "(nothing is ever written into the input dataset)"
        )
    work_dir = (args.work_dir or Path.cwd() / "work").expanduser().resolve()
    if _is_within(work_dir, bids_dir):
        raise UsageError(f"work dir {work_dir} is inside the BIDS dataset {bids_dir}; choose a folder outside it")
    database_dir = args.bids_database_dir.expanduser().resolve() if args.bids_database_dir else None
    if database_dir is not None and _is_within(database_dir, bids_dir):
        raise UsageError(f"--bids-database-dir {database_dir} is inside the BIDS dataset {bids_dir}")
    for directory, what in ((output_dir, "output_dir"), (work_dir, "work dir")):
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"{directory}: cannot create the {what} ({exc.strerror})") from None
        if not os.access(directory, os.W_OK | os.X_OK):
            raise OutputError(f"{directory}: the {what} is not writable")

    filters = _load_json(args.bids_filter_file, "the BIDS filter file") if args.bids_filter_file else {}
    unknown = set(filters) - {"dwi", "t1w"}
    if unknown:
        raise UsageError(f"{args.bids_filter_file}: unknown queries {sorted(unknown)}; use 'dwi' and/or 't1w'")
    plugin = _load_plugin(args.use_plugin) if args.use_plugin else {}

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    nprocs = args.nprocs or cpus
    # as fMRIPrep: a node may use several threads; MultiProc counts them against nprocs
    omp = args.omp_nthreads or min(8, nprocs)
    if omp > nprocs:
        raise UsageError(f"--omp-nthreads {omp} is larger than --nprocs {nprocs}")
    if args.device == "cuda":
        _require_cuda()

    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return RunConfig(
        bids_dir=bids_dir,
        output_dir=output_dir,
        analysis_level=args.analysis_level,
        work_dir=work_dir,
        participant_label=tuple(dict.fromkeys(args.participant_label or ())),
        session_label=tuple(dict.fromkeys(args.session_label or ())),
        bids_filters=filters,
        skip_bids_validation=args.skip_bids_validation,
        bids_database_dir=database_dir,
        b0_threshold=args.b0_threshold,
        nprocs=nprocs,
        omp_nthreads=omp,
        mem_gb=args.mem_gb,
        use_plugin=args.use_plugin,
        plugin=plugin,
        stop_on_first_crash=args.stop_on_first_crash,
        seed=args.seed,
        device=args.device,
        template=args.template,
        output_resolution=args.output_resolution,
        model=args.model.expanduser().resolve() if args.model else None,
        verbose=args.verbose,
        run_id=f"{stamp}_{uuid.uuid4().hex[:8]}",
    )


def _require_cuda() -> None:
    """``--device cuda`` without a usable GPU stops the run: never a silent CPU run."""
    import torch

    if not torch.cuda.is_available():
        raise UsageError(
            "--device cuda was requested but no CUDA device is available "
            f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'none'}); use --device cpu or auto"
        )

