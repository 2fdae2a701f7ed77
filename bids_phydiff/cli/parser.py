"""The command line: ``run.py bids_dir output_dir {participant,group} [options]``.

Follows the BIDS-Apps conventions (positional arguments, ``--participant-label`` with or without the
``sub-`` prefix, exit code 64 on usage errors) and fMRIPrep's option names where they exist.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .. import __version__
from ..config import DEFAULT_RESOLUTION, SAMPLER_ETA, SAMPLER_METHOD, SAMPLER_STEPS, SAMPLER_STRENGTH
from ..errors import EXIT_UNKNOWN_LEVEL, EXIT_USAGE
from ..spaces import DEFAULT_TEMPLATE, XTRACT_TEMPLATE

LEVELS = ("participant", "group")

MAX_SEED = 2**32 - 1
"""Largest ``--seed``: numpy's seed range; the training's per-step generators (train/batches.py) derive
seeds from it that stay below torch's 2**64."""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows real defaults; options whose default is decided later (None, False) say it in their help."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """argparse that exits with the BIDS-Apps usage code (64) instead of 2."""

    def error(self, message):  # noqa: D102 - argparse API
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _label_list(value: str) -> str:
    value = value.strip()
    for prefix in ("sub-", "ses-"):
        if value.startswith(prefix):
            value = value[len(prefix) :]
    if not value or not value.isalnum():
        raise argparse.ArgumentTypeError(f"'{value}' is not a BIDS label (letters and digits only)")
    return value


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return number


def _seed(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = -1
    if not 0 <= number <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"{value} is not a seed (an integer from 0 to {MAX_SEED})")
    return number


def _positive_float(value: str) -> float:
    number = float(value)
    if not number > 0:
        raise argparse.ArgumentTypeError(f"{value} is not a positive number")
    return number


def _existing_file(value: str) -> Path:
    path = Path(value).expanduser()
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{value}: file not found")
    return path.resolve()


def _memory_gb(value: str) -> float:
    """``--mem``: a number of GB, or a number with a unit (MB, GB, TB)."""
    text = value.strip().upper().rstrip("B")
    scale = 1.0
    if text and text[-1] in "MGT":
        scale = {"M": 1 / 1024, "G": 1.0, "T": 1024.0}[text[-1]]
        text = text[:-1]
    try:
        number = float(text) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value} is not an amount of memory (e.g. 16, 16GB, 800MB)") from None
    if number <= 0:
        raise argparse.ArgumentTypeError(f"{value} is not a positive amount of memory")
    return number


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="bids_phydiff",
        description=(
            "Synthesise diffusion MRI at any b-value and b-vector with the Phy-Diff model. "
            "participant: register each subject's DWI to a template and write derivatives "
            "(with --model: also write synthetic DWI); group: train a model on the prepared subjects."
        ),
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("bids_dir", type=Path, help="the root of the BIDS dataset (read only)")
    parser.add_argument("output_dir", type=Path, help="where derivatives, models and logs are written")
    parser.add_argument(
        "analysis_level",
        metavar="{participant,group}",
        help="participant: prepare (and synthesise with --model); group: train a model",
    )
    parser.add_argument("--version", action="version", version=f"bids_phydiff {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")

    sel = parser.add_argument_group("selecting data")
    sel.add_argument(
        "--participant-label",
        "--participant_label",
        dest="participant_label",
        nargs="+",
        type=_label_list,
        metavar="LABEL",
        help="participants to process (with or without 'sub-'); default: all",
    )
    sel.add_argument(
        "--session-label",
        "--session_label",
        dest="session_label",
        nargs="+",
        type=_label_list,
        metavar="LABEL",
        help="sessions to process (with or without 'ses-'); default: all",
    )
    sel.add_argument(
        "--bids-filter-file",
        dest="bids_filter_file",
        type=_existing_file,
        metavar="FILE",
        help='JSON of pybids entity filters per query, e.g. {"dwi": {"acquisition": "ax30"}, "t1w": {"run": 1}}',
    )
    sel.add_argument(
        "--skip-bids-validation",
        "--skip_bids_validator",
        dest="skip_bids_validation",
        action="store_true",
        help="do not run bids-validator-deno on the input dataset",
    )
    sel.add_argument(
        "--bids-database-dir",
        dest="bids_database_dir",
        type=Path,
        metavar="DIR",
        help="a pybids index to reuse (default: inside the work dir; share one on clusters to avoid sqlite locks)",
    )
    sel.add_argument(
        "--b0-threshold",
        dest="b0_threshold",
        type=float,
        default=50.0,
        help="volumes with b <= this (s/mm^2) count as b0",
    )
    sel.add_argument(
        "--hmc",
        dest="hmc",
        choices=("rigid", "none"),
        default="rigid",
        help="head-motion correction: one rigid registration per volume, composed with the template registration "
        "(none: every volume goes through the b0 reference's transform)",
    )
    sel.add_argument(
        "--fd-threshold",
        dest="fd_threshold",
        type=_positive_float,
        default=1.0,
        metavar="MM",
        help="volumes whose framewise displacement (Power, mm) exceeds this are listed in the log and in the "
        "confounds sidecar (not dropped)",
    )

    sel.add_argument(
        "--input-type",
        dest="input_type",
        choices=("auto", "raw", "preprocessed"),
        default="auto",
        help="raw BIDS, or preprocessed derivatives (QSIPrep-style *_desc-preproc_dwi with .bval/.bvec, optional "
        "*_desc-brain_mask and desc-preproc T1w: no denoising or motion correction, the given mask is used); "
        "auto: preprocessed when dataset_description.json says DatasetType derivative and desc-preproc DWI exist",
    )
    sel.add_argument(
        "--denoise",
        dest="denoise",
        choices=("none", "mppca", "patch2self"),
        default="none",
        help="denoise raw DWI before anything else with dipy (mppca: Marchenko-Pastur PCA over 5x5x5 patches, larger "
        "for series of more than 125 volumes; "
        "patch2self: self-supervised regression across volumes); none keeps the paper's setting",
    )

    perf = parser.add_argument_group("resources and execution")
    perf.add_argument("-w", "--work-dir", dest="work_dir", type=Path, help="intermediate files (default: ./work)")
    perf.add_argument(
        "--nprocs", "--n-cpus", "--n_cpus", dest="nprocs", type=_positive_int, help="processes in parallel (default: all cores)"
    )
    perf.add_argument(
        "--omp-nthreads", dest="omp_nthreads", type=_positive_int, help="threads per process (ANTs, torch)"
    )
    perf.add_argument("--mem", "--mem-gb", "--mem_gb", dest="mem_gb", type=_memory_gb, help="memory limit in GB")
    perf.add_argument(
        "--use-plugin",
        "--use_plugin",
        dest="use_plugin",
        type=_existing_file,
        metavar="FILE",
        help="Nipype plugin YAML, e.g. {plugin: SLURM, plugin_args: {sbatch_args: '--time=1:00:00'}}",
    )
    perf.add_argument(
        "--stop-on-first-crash", dest="stop_on_first_crash", action="store_true", help="stop at the first failed node"
    )
    perf.add_argument("--seed", type=_seed, default=0,
                      help="random seed (same seed + inputs = same outputs on a device; for the ANTs steps of "
                           "prepare also --omp-nthreads 1, as multithreaded metric sums differ in their last bits)")
    perf.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="where the model runs; 'cuda' without a GPU is an error, never a silent CPU run",
    )

    space = parser.add_argument_group("template space")
    space.add_argument(
        "--template",
        default=DEFAULT_TEMPLATE,
        help=f"TemplateFlow template ({XTRACT_TEMPLATE} is the space of the XTRACT atlas; MNI305 is the paper's)",
    )
    space.add_argument(
        "--output-resolution",
        dest="output_resolution",
        type=_positive_float,
        default=DEFAULT_RESOLUTION,
        help="isotropic voxel size of the template-space outputs, mm",
    )

    model = parser.add_argument_group("model (group level trains it, participant level with --model uses it)")
    model.add_argument("--model", type=Path, metavar="DIR", help="a trained model bundle: synthesise DWI with it")
    model.add_argument("--batch-size", dest="batch_size", type=_positive_int,
                       help="group: slices per training step (global, over all GPUs); participant: slices per "
                            "model call, of any volumes (default: 16 on the CPU, on a GPU as many as fit into "
                            "half its free memory)")

    train = parser.add_argument_group("group level: training")
    for flag, kwargs in TRAIN_OPTIONS:
        train.add_argument(flag, **kwargs)
    synth = parser.add_argument_group("participant level with --model: synthesis")
    for flag, kwargs in SYNTH_OPTIONS:
        synth.add_argument(flag, **kwargs)
    return parser


def _shells(value: str) -> tuple[float, ...]:
    try:
        shells = tuple(float(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{value}' is not a comma-separated list of b-values") from None
    if not shells or any(not b > 0 for b in shells):
        raise argparse.ArgumentTypeError(f"'{value}': b-values must be positive numbers (s/mm^2)")
    return shells


def _eta(value: str) -> float:
    number = float(value)
    if not 0.0 <= number <= 1.0:
        raise argparse.ArgumentTypeError(f"{value}: eta must be in [0, 1]")
    return number


def _strength(value: str) -> float:
    number = float(value)
    if not 0.0 < number <= 1.0:
        raise argparse.ArgumentTypeError(f"{value}: the strength must be in (0, 1]")
    return number


# Options of one level only; set at the other level they stop the run with a clear message
# (cli.options.build_config). Their defaults (None) are resolved there, from bids_phydiff.config.
TRAIN_OPTIONS: list[tuple[str, dict]] = [
    ("--train-config", dict(dest="train_config", metavar="NAME|FILE",
                            help="training preset (paper, small, tiny) or a YAML/JSON file; default: paper")),
    ("--max-steps", dict(dest="max_steps", type=_positive_int,
                         help="steps of the backbone stage (overrides the training config; the adapter stage "
                              "adds its own adapter_steps)")),
    ("--val-subjects", dict(dest="val_subjects", nargs="+", type=_label_list, metavar="LABEL",
                            help="held-out subjects for the validation loss (default: 20%% of subjects when >= 3)")),
    ("--context", dict(dest="context", choices=["none", "dti", "sh4"],
                       help="q-space completion: condition on maps fitted to an acquired shell, the diffusion tensor "
                            "and S0 (dti) or order-4 spherical harmonics (sh4), besides the b0; overrides the "
                            "training config's model.context (default: the config's, none for the presets)")),
    ("--context-shells", dict(dest="context_shells", type=_shells, metavar="B,B,...",
                              help="with a context: the acquired shells (s/mm^2) a sample may take its context from "
                                   "(default: the training config's context_shells, else every acquired shell)")),
    ("--model-label", dict(dest="model_label", type=_label_list, help="write output_dir/models/model-<label> "
                                                                       "(default: default)")),
    ("--resume", dict(dest="resume", action="store_true", default=None,
                      help="continue the training of --model-label from its last checkpoint in the work dir")),
    ("--xtract-atlas", dict(dest="xtract_atlas", metavar="PATH|none",
                            help="XTRACT atlas on the template (4D probabilities or a label map) for the adapter "
                                 "stage; default: $FSLDIR/data/atlases/XTRACT; 'none': no adapter stage")),
]
SYNTH_OPTIONS: list[tuple[str, dict]] = [
    ("--target-scheme", dict(dest="target_scheme", nargs="+", metavar="acquired|BVAL BVEC",
                             help="gradients to synthesise: 'acquired' (each run's own; default, allows "
                                  "evaluation) or a bval and a bvec file")),
    ("--target-shells", dict(dest="target_shells", type=_shells, metavar="B,B,...",
                             help="synthesise these shells (s/mm^2, e.g. 1000,2000,3000) instead of a scheme")),
    ("--target-directions", dict(dest="target_directions", type=_positive_int,
                                 help="uniformly spread directions per shell with --target-shells (default 30)")),
    ("--sampler", dict(dest="sampler", choices=["ddpm", "ddim"],
                       help=f"reverse diffusion sampler (default {SAMPLER_METHOD})")),
    ("--steps", dict(dest="steps", type=_positive_int,
                     help=f"DDIM steps (default {SAMPLER_STEPS}; DDPM takes every step from the SDEdit start)")),
    ("--eta", dict(dest="eta", type=_eta, help=f"DDIM noise: 0 = deterministic, 1 = as much as DDPM (default "
                                               f"{SAMPLER_ETA:g}; measured: eta 0 drifts to a biased intensity, "
                                               "see docs/evaluation.md)")),
    ("--strength", dict(dest="strength", type=_strength,
                        help="SDEdit: start from the b0 noised to this level; 1.0 = pure noise "
                             f"(default {SAMPLER_STRENGTH:g})")),
    ("--shifts", dict(dest="shifts", type=int, choices=[1, 2, 4],  # model.shifts.SHIFT_COUNTS (no torch here)
                      help="network passes averaged per step, on the input moved by half a patch against the "
                           "model's token grid (2 or 4 cancel a texture of the token period, at 2x or 4x the "
                           "network time); default: the bundle's choice, made at training on its validation "
                           "subjects")),
    ("--samples", dict(dest="samples", type=_positive_int,
                       help="independent samples per volume: the mean is written, and the standard deviation "
                            "as an uncertainty map when > 1 (default 1)")),
    ("--output-space", dict(dest="output_space", choices=["template", "native"],
                            help="template (default) or native: also resample into the run's own DWI grid")),
]
TRAIN_OPTION_DESTS: tuple[str, ...] = tuple(kwargs["dest"] for _, kwargs in TRAIN_OPTIONS)
SYNTH_OPTION_DESTS: tuple[str, ...] = tuple(kwargs["dest"] for _, kwargs in SYNTH_OPTIONS)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line; exit 64 on usage errors and 17 on an unknown analysis level."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.analysis_level not in LEVELS:
        parser.print_usage(sys.stderr)
        parser.exit(
            EXIT_UNKNOWN_LEVEL,
            f"{parser.prog}: error: unknown analysis level '{args.analysis_level}' (choose participant or group)\n",
        )
    return args
