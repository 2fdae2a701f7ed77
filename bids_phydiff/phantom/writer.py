"""BIDS names and the text files of the raw phantom dataset (description, README, participants, sidecars)."""

from __future__ import annotations

import json
from pathlib import Path

from .. import __version__
from .config import PhantomConfig

BIDS_VERSION = "1.10.0"

_SCANNER = {
    "Manufacturer": "bids_phydiff",
    "ManufacturersModelName": "synthetic phantom",
    "DeviceSerialNumber": "n/a (simulated)",
    "StationName": "n/a (simulated)",
    "SoftwareVersions": f"bids_phydiff {__version__}",
    "InstitutionName": "n/a (simulated)",
    "InstitutionAddress": "n/a (simulated)",
    "InstitutionalDepartmentName": "n/a (simulated)",
    "MagneticFieldStrength": 3,
    "ReceiveCoilName": "n/a (simulated)",
    "ReceiveCoilActiveElements": "n/a (simulated)",
    "MatrixCoilMode": "n/a (simulated)",
    "CoilCombinationMethod": "n/a (simulated)",
    "NonlinearGradientCorrection": False,
    "PulseSequenceDetails": "Analytic signal model, no sequence simulated",
}

DWI_SIDECAR = {
    **_SCANNER,
    "ScanningSequence": "EP",
    "SequenceVariant": "NONE",
    "SequenceName": "phantom_dwi",
    "PulseSequenceType": "Spin Echo EPI (simulated)",
    "DwellTime": 2.6e-06,
    "MRAcquisitionType": "2D",
    "RepetitionTime": 4.0,
    "EchoTime": 0.08,
    "FlipAngle": 90,
    "PhaseEncodingDirection": "j-",
    "TotalReadoutTime": 0.04,
    "EffectiveEchoSpacing": 0.001,
}

T1W_SIDECAR = {
    **_SCANNER,
    "ScanningSequence": "GR\\IR",
    "SequenceVariant": "SK\\SP\\MP",
    "SequenceName": "phantom_t1w",
    "PulseSequenceType": "MPRAGE (simulated)",
    "DwellTime": 7.8e-06,
    "MRAcquisitionType": "3D",
    "RepetitionTime": 2.3,
    "EchoTime": 0.003,
    "InversionTime": 0.9,
    "FlipAngle": 9,
}


def bids_stem(subject: str, session: str | None = None, run: str | None = None) -> str:
    """``sub-<s>[_ses-<t>][_run-<r>]``."""
    parts = [f"sub-{subject}"]
    if session is not None:
        parts.append(f"ses-{session}")
    if run is not None:
        parts.append(f"run-{run}")
    return "_".join(parts)


def datatype_dir(root: Path, subject: str, session: str | None, datatype: str) -> Path:
    """``root/sub-<s>[/ses-<t>]/<datatype>``."""
    folder = root / f"sub-{subject}"
    if session is not None:
        folder = folder / f"ses-{session}"
    return folder / datatype


def write_json(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def dwi_sidecar(config: PhantomConfig, n_slices: int) -> dict:
    """DWI sidecar; slice times ascend over the acquisition's ``n_slices`` slices (third voxel axis)."""
    tr = DWI_SIDECAR["RepetitionTime"]
    return {
        **DWI_SIDECAR,
        "SliceEncodingDirection": "k",
        "SliceTiming": [round(tr * i / n_slices, 6) for i in range(n_slices)],
        "PhantomSNR": config.snr,
    }


def write_top_level(root: Path, config: PhantomConfig, orientations: dict[str, str]) -> None:
    """dataset_description.json, README, CHANGES, participants.tsv/.json (and .bidsignore)."""
    write_json(
        root / "dataset_description.json",
        {
            "Name": f"bids_phydiff diffusion phantom (seed {config.seed})",
            "BIDSVersion": BIDS_VERSION,
            "DatasetType": "raw",
            "License": "CC0",
            "Authors": ["bids_phydiff phantom generator", "bids_phydiff contributors"],
            "GeneratedBy": [
                {
                    "Name": "bids_phydiff.phantom",
                    "Version": __version__,
                    "Description": "Analytic multi-compartment diffusion phantom with per-subject deformations",
                }
            ],
        },
    )
    shells = ", ".join(f"{b:g}" for b in config.shells)
    (root / "README").write_text(
        "Synthetic diffusion MRI phantom written by bids_phydiff.phantom.\n\n"
        f"{config.subjects} subjects; DWI at {config.resolution:g} mm with {config.n_b0} b0 volumes and "
        f"{config.directions} directions on each shell b = {shells} s/mm^2, Rician noise at SNR {config.snr:g} "
        "(white matter b0 / sigma); T1w at "
        f"{config.t1w_voxel:g} mm. Every subject is the same analytic anatomy (white matter, grey matter, "
        "CSF, five crossing fibre bundles) moved by a random rigid transform and a smooth deformation.\n\n"
        "sourcedata/templateflow holds the anatomy as a TemplateFlow template with a tract atlas; "
        "sourcedata/truth holds the ground truth from which the noise-free signal of any subject at any "
        "gradient can be computed (bids_phydiff.phantom.noise_free_signal).\n"
    )
    (root / "CHANGES").write_text(f"1.0.0 (generated)\n  - phantom written by bids_phydiff {__version__}\n")
    rows = "".join(f"sub-{label}\t{orientations[label]}\n" for label in config.subject_labels)
    (root / "participants.tsv").write_text("participant_id\tdwi_orientation\n" + rows)
    write_json(
        root / "participants.json",
        {
            "participant_id": {"Description": "Phantom subject label"},
            "dwi_orientation": {
                "Description": "Voxel axis orientation of the subject's DWI images (RAS: +x first axis; "
                "LAS: first axis runs right to left, negative determinant)",
                "Levels": {"RAS": "right-anterior-superior", "LAS": "left-anterior-superior"},
            },
        },
    )
