"""user_events (Linux 6.4+, CONFIG_USER_EVENTS): list registered events, trace them through perf
tracepoint events, decode their payloads from the tracefs format, detect writes the kernel discarded,
and emit events from Python.

Layers: abi (uapi structs and ioctl numbers), formats (name_args and tracefs format files), status
(user_events_status and the event directories), decode (raw sample -> fields), source (the tracing
source a Session uses), watch (BPF on the writer side: discarded writes), emitter (the writer side).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UserEventsUnavailable

__all__ = ["UserEventsUnavailable", "data_path", "require"]


def data_path(root: Path) -> Path:
    return root / "user_events_data"


def require(root: Path) -> None:
    """Raise UserEventsUnavailable with the same words as `tracer doctor` when user_events are missing."""
    if data_path(root).exists():
        return
    from ..caps import check_user_events

    check = check_user_events()
    raise UserEventsUnavailable(f"user_events are not available: {check.detail}; {check.fix}")
