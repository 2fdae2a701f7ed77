#!/usr/bin/env python3
"""bids_phydiff BIDS App entry point: ``run.py bids_dir output_dir {participant,group} [options]``."""

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
VENV = HERE / ".venv"

# From a source checkout, run inside the project's virtualenv (made by `make install`).
if (VENV / "bin" / "python").is_file() and Path(sys.prefix).resolve() != VENV.resolve():
    python = str(VENV / "bin" / "python")
    os.execv(python, [python, str(Path(__file__).resolve()), *sys.argv[1:]])

from bids_phydiff.cli.run import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
