"""Debian's Python bindings that tracer needs and PyPI does not have: bcc (python3-bpfcc) and seccomp
(python3-seccomp). They live in the system's dist-packages, built for the system's /usr/bin/python3, so
a Python sees them only when it is that interpreter (or a venv made from it with system site packages).
One home for the one-line fix when one cannot be imported: the CLI's error and doctor say the same.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

from .errors import EnvironmentProblem

SYSTEM_SITE = Path("/usr/lib/python3/dist-packages")
SYSTEM_PYTHON = Path("/usr/bin/python3")
PACKAGES = {"bcc": "python3-bpfcc", "seccomp": "python3-seccomp"}


def _installed(module: str) -> list[Path]:
    """Where the system's dist-packages holds module (a package directory or a C extension)."""
    if not SYSTEM_SITE.is_dir():
        return []
    return [p for p in SYSTEM_SITE.iterdir() if p.name == module or p.name.startswith(f"{module}.cpython-")]


def _built_for(files: list[Path]) -> str | None:
    """The CPython ABI a C extension was built for ('311'), None for pure Python."""
    for f in files:
        if f.name.endswith(".so") and ".cpython-" in f.name:
            return f.name.split(".cpython-")[1].split("-")[0]
    return None


def import_fix(module: str, error: BaseException | None = None) -> str:
    """Why `module` cannot be imported by this Python and what fixes it, in one line."""
    package = PACKAGES[module]
    files = _installed(module)
    here = f"Python {sys.version_info.major}.{sys.version_info.minor} ({sys.executable})"
    if not files:
        return f"{package} is not installed (import {module} failed): apt-get install {package}, or run ./bootstrap"
    abi = _built_for(files)
    this_abi = f"{sys.version_info.major}{sys.version_info.minor}"
    if abi is not None and abi != this_abi:
        return (f"{package} is built for the system's Python {abi[0]}.{abi[1:]} ({SYSTEM_PYTHON}), not this "
                f"{here}: run tracer from a venv made by {SYSTEM_PYTHON} -m venv --system-site-packages "
                "(./bootstrap makes one)")
    if str(SYSTEM_SITE) not in sys.path:
        if sys.prefix != sys.base_prefix:
            return (f"{package} is installed but this virtualenv ({sys.prefix}) does not see the system's site "
                    f"packages: recreate it with {SYSTEM_PYTHON} -m venv --system-site-packages (./bootstrap does), "
                    f"or set include-system-site-packages = true in {Path(sys.prefix) / 'pyvenv.cfg'}")
        return (f"{package} is installed in {SYSTEM_SITE}, which this {here} does not search: run tracer with "
                f"{SYSTEM_PYTHON}, or a venv made by {SYSTEM_PYTHON} -m venv --system-site-packages")
    what = f": {error}" if error is not None else ""
    return f"import {module} failed although {package} is installed{what}; reinstall {package}"


def require(module: str) -> ModuleType:
    """Import module, or raise EnvironmentProblem with the fix."""
    try:
        return importlib.import_module(module)
    except Exception as e:  # a broken libbcc raises OSError etc. from the import, not only ImportError
        raise EnvironmentProblem(import_fix(module, e)) from e
