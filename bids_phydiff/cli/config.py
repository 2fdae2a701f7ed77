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
from ..atomic import atomic_path
from ..errors import NoInputError, OutputError, UsageError
from .parser import SYNTH_OPTION_DESTS, TRAIN_OPTION_DESTS


@dataclass(frozen=True)
class TrainOptions:
    """Group level: what to train and where the bundle goes (``output_dir/models/model-<label>``)."""

    train_config: str = "paper"
    """a preset name (train.config) or the path of a YAML/JSON file"""
    max_steps: int | None = None
    batch_size: int | None = None
    val_subjects: tuple[str, ...] | None = None
    """None: chosen from the seed (20% of subjects when there are at least 3)"""
    model_label: str = "default"
    resume: bool = False
    xtract_atlas: Path | None = None
    """None: look under $FSLDIR"""
    use_xtract: bool = True


@dataclass(frozen=True)
class SynthOptions:
    """Participant level with ``--model``: which gradients to synthesise and how to sample."""

    target_scheme: tuple[str, ...] = ("acquired",)
    """("acquired",) or (bval path, bvec path)"""
    target_shells: tuple[float, ...] = ()
    """s/mm^2; when set, overrides target_scheme"""
    target_directions: int = 30
    sampler: str = "ddim"
    steps: int = 50
    eta: float = 1.0
    strength: float = 0.8
    samples: int = 1
    batch_size: int = 16
    output_space: str = "template"


def _plain(value):
    """JSON-ready copy: paths as strings, tuples as lists, dataclasses as dicts."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if hasattr(value, "__dataclass_fields__"):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    return value


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
    train: TrainOptions = field(default_factory=TrainOptions)
    synth: SynthOptions = field(default_factory=SynthOptions)
    verbose: int = 0
    version: str = __version__
    run_id: str = ""

    @property
    def database_dir(self) -> Path:
        """Where the pybids index lives (never inside bids_dir)."""
        return self.bids_database_dir or self.work_dir / "bids_db"

    def to_dict(self) -> dict:
        return _plain(self)

    def save(self) -> list[Path]:
        """Write the config to the work dir and to output_dir/logs; return the two paths."""
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"
        targets = [self.work_dir / "config.json", self.output_dir / "logs" / f"config-{self.run_id}.json"]
        for target in targets:
            with atomic_path(target) as tmp:
                tmp.write_text(text)
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


def build_config(args: argparse.Namespace) -> RunConfig:
    """Check the arguments against each other and the file system; return the frozen config."""
    train, synth = _level_options(args)

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
        train=train,
        synth=synth,
        verbose=args.verbose,
        run_id=f"{stamp}_{uuid.uuid4().hex[:8]}",
    )


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _level_options(args: argparse.Namespace) -> tuple[TrainOptions, SynthOptions]:
    """The group or synthesis options, checked; an option of the other level stops the run."""
    given = lambda dests: [d for d in dests if getattr(args, d, None) is not None]  # noqa: E731
    level = args.analysis_level
    if level == "group":
        wrong = given(SYNTH_OPTION_DESTS) + (["model"] if args.model is not None else [])
        if wrong:
            raise UsageError(f"{', '.join(map(_flag, wrong))}: participant-level option(s), not for the group level")
    else:
        wrong = given(TRAIN_OPTION_DESTS)
        if wrong:
            raise UsageError(f"{', '.join(map(_flag, wrong))}: group-level option(s), not for the participant level")
        if args.model is None and (given(SYNTH_OPTION_DESTS) or args.batch_size is not None):
            extra = given(SYNTH_OPTION_DESTS) + (["batch_size"] if args.batch_size is not None else [])
            raise UsageError(f"{', '.join(map(_flag, extra))} need(s) --model (a trained bundle to synthesise with)")
    train = TrainOptions()
    if level == "group":
        atlas = args.xtract_atlas
        use_xtract = not (atlas is not None and atlas.lower() == "none")
        atlas_path = Path(atlas).expanduser().resolve() if atlas is not None and use_xtract else None
        if atlas_path is not None and not atlas_path.exists():
            raise NoInputError(f"--xtract-atlas {atlas_path}: not found")
        train = TrainOptions(
            train_config=args.train_config or "paper",
            max_steps=args.max_steps,
            batch_size=args.batch_size,
            val_subjects=tuple(args.val_subjects) if args.val_subjects is not None else None,
            model_label=args.model_label or "default",
            resume=bool(args.resume),
            xtract_atlas=atlas_path,
            use_xtract=use_xtract,
        )
    synth = SynthOptions()
    if level == "participant" and args.model is not None:
        model = args.model.expanduser()
        if not (model / "config.json").is_file():
            raise NoInputError(f"--model {model}: not a model bundle (no config.json in it)")
        scheme = tuple(args.target_scheme or ("acquired",))
        if scheme != ("acquired",):
            if len(scheme) != 2:
                raise UsageError("--target-scheme takes 'acquired' or two files: a .bval and a .bvec")
            paths = tuple(Path(p).expanduser().resolve() for p in scheme)
            for path in paths:
                if not path.is_file():
                    raise NoInputError(f"--target-scheme {path}: file not found")
            scheme = tuple(str(p) for p in paths)
        if args.target_shells and args.target_scheme:
            raise UsageError("give either --target-scheme or --target-shells, not both")
        if args.target_directions is not None and not args.target_shells:
            raise UsageError("--target-directions needs --target-shells")
        defaults = SynthOptions()
        synth = SynthOptions(
            target_scheme=scheme,
            target_shells=tuple(args.target_shells or ()),
            target_directions=args.target_directions or defaults.target_directions,
            sampler=args.sampler or defaults.sampler,
            steps=args.steps or defaults.steps,
            eta=args.eta if args.eta is not None else defaults.eta,
            strength=args.strength if args.strength is not None else defaults.strength,
            samples=args.samples or defaults.samples,
            batch_size=args.batch_size or defaults.batch_size,
            output_space=args.output_space or defaults.output_space,
        )
    return train, synth


def _require_cuda() -> None:
    """``--device cuda`` without a usable GPU stops the run: never a silent CPU run."""
    import torch

    if not torch.cuda.is_available():
        raise UsageError(
            "--device cuda was requested but no CUDA device is available "
            f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'none'}); use --device cpu or auto"
        )

