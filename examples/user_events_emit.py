"""Emit user_events from Python: register an event, wait until a tracer enables it, write a few.

    sudo .venv/bin/tracer trace 'user_events:example_req' &
    sudo .venv/bin/python examples/user_events_emit.py
"""

from __future__ import annotations

import time

from tracer.user_events.emitter import EventDisabled, UserEvents

with UserEvents() as ue:
    ev = ue.register("example_req u32 id;s64 latency_ns;__rel_loc char[] path")
    deadline = time.monotonic() + 10
    while not ev.enabled and time.monotonic() < deadline:
        time.sleep(0.05)
    for i in range(3):
        try:
            ev.write(id=i, latency_ns=1000 * i, path=f"/srv/item/{i}")
        except EventDisabled as e:
            print(e)
