#!/usr/bin/env python3
"""A scripted capture session with the Python API (run as root from a checkout):

    .venv/bin/python examples/api_session.py [CAPTURE_FILE]

It traces openat2 while running examples/missing_data.py, reacts to events with missing data in a
callback, records everything to a capture file, then reads the file back with `Capture` and checks
that the replayed events are exactly the live ones. Prints one JSON object per step.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from tracer import Capture, Event, Session

HERE = Path(__file__).resolve().parent


def main() -> int:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp()) / "session.cap"
    flagged: list[str] = []

    def on_event(ev: Event) -> None:
        if ev.kind == "syscall" and ev.missing:  # arguments that could not be read at entry nor at exit
            flagged.append(f"{ev.syscall}: {', '.join(ev.missing)} unreadable, ret {ev.ret_str}")

    command = [sys.executable, str(HERE / "missing_data.py")]
    with Session(["openat2"], command=command, duration=30, callback=on_event, record=out) as session:
        live = [ev for ev in session if ev.kind == "syscall"]
    summary = session.summary()
    print(json.dumps({"step": "live", "events": len(live), "flagged": flagged, "exit_code": summary["exit_code"],
                      "reads": summary["reads"], "capture": str(out)}))

    capture = Capture(out)
    replayed = [ev for ev in capture if ev.kind == "syscall"]
    same = [ev.to_json() for ev in replayed] == [ev.to_json() for ev in live]
    missing = [ev.to_json() for ev in capture.events(only_missing=True)]
    print(json.dumps({"step": "replay", "events": len(replayed), "identical": same, "with_missing_data": len(missing),
                      "kernel": capture.header["kernel"]["release"], "complete": capture.trailer is not None}))
    return 0 if same and replayed else 1


if __name__ == "__main__":
    sys.exit(main())
