"""tracer: an eBPF syscall tracer that never shows a guessed value."""

__version__ = "0.1.0"

# The Python API, imported on first use (`from tracer import Session, Capture`).
_API = {"Session": "session", "Event": "events", "Capture": "capture", "CaptureError": "capture"}
__all__ = ["Capture", "CaptureError", "Event", "Session", "__version__"]


def __getattr__(name: str) -> object:
    if name in _API:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_API[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
