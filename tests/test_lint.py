"""The code base stays ruff-clean (ruff.toml)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_clean() -> None:
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "tracer", "tests", "examples", "bench"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_mypy_clean() -> None:
    """tracer/ type-checks with the checked-in config (setup.cfg [mypy]); mypy comes with the test extra."""
    proc = subprocess.run([sys.executable, "-m", "mypy", "--config-file", "setup.cfg"], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
