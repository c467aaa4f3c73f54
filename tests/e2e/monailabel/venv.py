"""A cached virtual environment with the real MONAI Label client: ``monailabel`` installed
without its dependencies (its client needs only ``requests``), at ``.venv-monailabel/``.

Made once by the test set-up (pip from PyPI, bounded by a timeout), reused while its marker
file names the same versions; a lock file keeps two test processes from building it at once.
"""

from __future__ import annotations

import fcntl
import shutil
import subprocess
import sys
from pathlib import Path

from tests.helpers import REPO

MONAILABEL_VERSION = "0.8.5"
REQUIREMENTS = (f"monailabel=={MONAILABEL_VERSION}", "requests>=2.31")
VENV_DIR = REPO / ".venv-monailabel"
INSTALL_SECONDS = 600


def monailabel_python() -> Path:
    """The venv's interpreter; builds the venv first if it is missing or stale."""
    python = VENV_DIR / "bin" / "python"
    marker = VENV_DIR / ".installed"
    wanted = " ".join(REQUIREMENTS)
    VENV_DIR.parent.mkdir(parents=True, exist_ok=True)
    with open(VENV_DIR.parent / ".venv-monailabel.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if python.exists() and marker.exists() and marker.read_text() == wanted:
            return python
        shutil.rmtree(VENV_DIR, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(VENV_DIR)], check=True, timeout=120)
        pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        subprocess.run([*pip, "--no-deps", REQUIREMENTS[0]], check=True, timeout=INSTALL_SECONDS)
        subprocess.run([*pip, REQUIREMENTS[1]], check=True, timeout=INSTALL_SECONDS)
        marker.write_text(wanted)
    return python
