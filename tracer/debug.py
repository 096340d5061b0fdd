"""--debug: the debug log (the program cache says why an entry was not used, ...) and tracebacks of
unexpected errors on stderr. Inherited by child tracer processes through TRACER_DEBUG=1."""

from __future__ import annotations

import logging
import os
import sys
import traceback

DEBUG_ENV = "TRACER_DEBUG"


def enable_debug(flag: bool) -> None:
    if flag:
        os.environ[DEBUG_ENV] = "1"
    if not debugging():
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("tracer: debug: %(name)s: %(message)s"))
    log = logging.getLogger("tracer")
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)


def debugging() -> bool:
    return os.environ.get(DEBUG_ENV) == "1"


def show_traceback() -> None:
    """Inside an except block: the traceback on stderr with --debug (the user still gets one line)."""
    if debugging():
        traceback.print_exc(file=sys.stderr)
