"""tracer: an eBPF syscall tracer that never shows a guessed value."""

__version__ = "0.1.0"
