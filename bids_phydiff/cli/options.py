"""From parsed arguments to the run's :class:`~bids_phydiff.config.RunConfig`.

Checks the arguments against each other and the file system (usage errors exit 64, missing inputs 66, an
output that cannot be written 73), reads the files that options name (``--bids-filter-file``,
``--use-plugin``) and resolves the defaults that depend on the level.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import uuid
from pathlib import Path

from ..bids.layout import _ALLOWED_FILTERS as ALLOWED_FILTERS
from ..bids.preprocessed import detect_input_type
from ..config import RunConfig, SynthOptions, TrainOptions
from ..errors import InputDataError, NoInputError, OutputError, UsageError
from .parser import SYNTH_OPTION_DESTS, TRAIN_OPTION_DESTS

FILTER_QUERIES = ("dwi", "t1w")


def _is_within(path: Path, parent: Path) -> bool:
    try:
        path.relative_to(parent)
        return True
    except ValueError:
        return False


def load_filters(path: Path) -> dict:
    """``--bids-filter-file``: ``{"dwi"|"t1w": {entity: value or [values]}}`` with the entities pybids
    may filter on (:data:`ALLOWED_FILTERS`); anything else is a usage error naming the file and key."""
    from ..bids.checks import read_json  # numpy: not needed before a filter file is given

    try:
        filters = read_json(path, "BIDS filter file")
    except (InputDataError, NoInputError) as exc:
        raise UsageError(f"--bids-filter-file {exc}") from None
    unknown = set(filters) - set(FILTER_QUERIES)
    if unknown:
        raise UsageError(f"--bids-filter-file {path}: unknown queries {sorted(unknown)}; use 'dwi' and/or 't1w'")
    for query, entities in filters.items():
        if not isinstance(entities, dict):
            raise UsageError(f"--bids-filter-file {path}: '{query}' must map entity names to values, e.g. "
                             f'{{"{query}": {{"acquisition": "ax30"}}}}; found {entities!r}')
        bad = set(entities) - ALLOWED_FILTERS
        if bad:
            raise UsageError(f"--bids-filter-file {path}: filters on {sorted(bad)} are not allowed in '{query}'; use "
                             f"{sorted(ALLOWED_FILTERS)}")
        for name, value in entities.items():
            values = value if isinstance(value, list) else [value]
            if not all(v is None or (isinstance(v, (str, int, float)) and not isinstance(v, bool))
                       for v in values):
                raise UsageError(f"--bids-filter-file {path}: '{query}' filter {name}: {value!r} is not a label, a number, null "
                                 "or a list of them")
    return filters


def load_plugin(path: Path) -> dict:
    """``--use-plugin``: a YAML mapping with a Nipype ``plugin`` name and optional ``plugin_args`` mapping."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise UsageError(f"--use-plugin {path}: cannot read the Nipype plugin file ({exc})") from None
    except RecursionError:
        raise UsageError(f"--use-plugin {path}: the Nipype plugin file nests too deeply") from None
    if not isinstance(data, dict) or "plugin" not in data:
        raise UsageError(f"--use-plugin {path}: a Nipype plugin file needs a 'plugin' key, e.g. 'plugin: SLURM'")
    name = data["plugin"]
    if not isinstance(name, str) or not name.isidentifier():
        raise UsageError(f"--use-plugin {path}: 'plugin' must be the name of a Nipype plugin, found {name!r}")
    from nipype.pipeline import plugins

    known = sorted(n.removesuffix("Plugin") for n in dir(plugins) if n.endswith("Plugin") and n != "Plugin")
    if name not in known:
        raise UsageError(f"--use-plugin {path}: no Nipype plugin '{name}'; choose one of {', '.join(known)}")
    data.setdefault("plugin_args", {})
    if data["plugin_args"] is None:
        data["plugin_args"] = {}
    if not isinstance(data["plugin_args"], dict):
        raise UsageError(f"--use-plugin {path}: 'plugin_args' must be a mapping of argument names to values, "
                         f"found {data['plugin_args']!r}")
    return data


def build_config(args: argparse.Namespace) -> RunConfig:
    """Check the arguments against each other and the file system; return the frozen config."""
    check_level(args)
    train = group_options(args) if args.analysis_level == "group" else TrainOptions()
    synth = synth_options(args) if args.analysis_level == "participant" and args.model else SynthOptions()

    bids_dir = args.bids_dir.expanduser().resolve()
    output_dir = args.output_dir.expanduser().resolve()
    if not bids_dir.is_dir():
        raise NoInputError(f"{bids_dir}: the BIDS dataset directory does not exist")
    if not os.access(bids_dir, os.R_OK | os.X_OK):
        raise NoInputError(f"{bids_dir}: cannot read the BIDS dataset directory (permission denied)")
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
    if "," in str(work_dir):
        # antsRegistration reads its arguments as comma-separated lists: a path with a comma cannot be passed
        raise UsageError(f"-w/--work-dir {work_dir}: ANTs cannot use a path with a comma; choose another folder")
    database_dir = args.bids_database_dir.expanduser().resolve() if args.bids_database_dir else None
    if database_dir is not None and _is_within(database_dir, bids_dir):
        raise UsageError(f"--bids-database-dir {database_dir} is inside the BIDS dataset {bids_dir}")
    filters = load_filters(args.bids_filter_file) if args.bids_filter_file else {}
    plugin = load_plugin(args.use_plugin) if args.use_plugin else {}

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    nprocs = args.nprocs or cpus
    # as fMRIPrep: a node may use several threads; MultiProc counts them against nprocs
    omp = args.omp_nthreads or min(8, nprocs)
    if omp > nprocs:
        raise UsageError(f"--omp-nthreads {omp} is larger than --nprocs {nprocs}")
    if args.device == "cuda":
        _require_cuda()
    for directory, what in ((output_dir, "output_dir"), (work_dir, "work dir")):
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"{directory}: cannot create the {what} ({exc.strerror})") from None
        if not os.access(directory, os.W_OK | os.X_OK):
            raise OutputError(f"{directory}: the {what} is not writable")

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
        hmc=args.hmc,
        fd_threshold=args.fd_threshold,
        input_type=detect_input_type(bids_dir, args.input_type),
        denoise=args.denoise,
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


def _given(args: argparse.Namespace, dests) -> list[str]:
    return [d for d in dests if getattr(args, d, None) is not None]


def check_level(args: argparse.Namespace) -> None:
    """An option of the other level (or a synthesis option without ``--model``) stops the run."""
    if args.analysis_level == "group":
        wrong = _given(args, SYNTH_OPTION_DESTS) + (["model"] if args.model is not None else [])
        if wrong:
            raise UsageError(f"{', '.join(map(_flag, wrong))}: participant-level option(s), not for the group level")
        return
    wrong = _given(args, TRAIN_OPTION_DESTS)
    if wrong:
        raise UsageError(f"{', '.join(map(_flag, wrong))}: group-level option(s), not for the participant level")
    if args.model is None:
        extra = _given(args, SYNTH_OPTION_DESTS) + (["batch_size"] if args.batch_size is not None else [])
        if extra:
            raise UsageError(f"{', '.join(map(_flag, extra))} need(s) --model (a trained bundle to synthesise with)")


def group_options(args: argparse.Namespace) -> TrainOptions:
    """The group level's options, checked; unset ones take :class:`TrainOptions`' defaults."""
    defaults = TrainOptions()
    atlas = args.xtract_atlas
    use_xtract = not (atlas is not None and atlas.lower() == "none")
    atlas_path = Path(atlas).expanduser().resolve() if atlas is not None and use_xtract else None
    if atlas_path is not None and not atlas_path.exists():
        raise NoInputError(f"--xtract-atlas {atlas_path}: not found")
    return TrainOptions(
        train_config=args.train_config or defaults.train_config,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        context=args.context,
        context_shells=args.context_shells,
        val_subjects=tuple(args.val_subjects) if args.val_subjects is not None else None,
        model_label=args.model_label or defaults.model_label,
        resume=bool(args.resume),
        xtract_atlas=atlas_path,
        use_xtract=use_xtract,
    )


def synth_options(args: argparse.Namespace) -> SynthOptions:
    """The participant level's synthesis options (with ``--model``), checked; unset ones take
    :class:`SynthOptions`' defaults."""
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
    return SynthOptions(
        target_scheme=scheme,
        target_shells=tuple(args.target_shells or ()),
        target_directions=args.target_directions or defaults.target_directions,
        sampler=args.sampler or defaults.sampler,
        steps=args.steps or defaults.steps,
        eta=args.eta if args.eta is not None else defaults.eta,
        strength=args.strength if args.strength is not None else defaults.strength,
        shifts=args.shifts or defaults.shifts,
        samples=args.samples or defaults.samples,
        batch_size=args.batch_size,
        output_space=args.output_space or defaults.output_space,
    )


def _require_cuda() -> None:
    """``--device cuda`` without a usable GPU stops the run: never a silent CPU run."""
    import torch

    if not torch.cuda.is_available():
        raise UsageError(
            "--device cuda was requested but no CUDA device is available "
            f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'none'}); use --device cpu or auto"
        )


def file_error(exc: OSError, args: argparse.Namespace):
    """:func:`~bids_phydiff.errors.from_os_error` with the folders and files the arguments name."""
    from ..errors import from_os_error

    def spellings(*paths) -> list[Path]:  # as given and with symlinks resolved (the config's form)
        paths = [Path(p).expanduser() for p in paths if p is not None]
        return [q for p in paths for q in (p.absolute(), p.resolve())]

    inputs = spellings(args.bids_dir, args.model, args.bids_filter_file, args.use_plugin)
    outputs = spellings(args.output_dir, args.work_dir or Path.cwd() / "work", args.bids_database_dir)
    return from_os_error(exc, inputs, outputs)
