"""A user_events writer process for the live tests: registers the events described by the JSON in argv[1],
waits until a tracer enables each (at most "wait" seconds), writes them, prints a JSON summary.

{"wait": 30, "plain": [{"name_args": "ev u32 n", "values": {"n": 1}, "count": 3}],
 "eventheader": [{"provider": "P", "level": 4, "keyword": 1, "order": "big", "count": 2}]}
"""

from __future__ import annotations

import json
import os
import sys
import time

from tracer.user_events.eh_write import EhField, encode_event
from tracer.user_events.emitter import UserEvents


def eh_fields(i: int) -> list[EhField]:
    return [EhField("i", "value32", i, "signed_int"), EhField("msg", "zstring_char8", f"event {i}"),
            EhField("u16s", "string_length16_char16", "wide"), EhField("arr", "value16", [i, i + 1], array="var"),
            EhField("pt", "struct", [EhField("x", "value64", -i, "signed_int"), EhField("ok", "value8", 1, "boolean")]),
            EhField("f", "value64", 0.25, "float"), EhField("ip", "value32", "192.0.2.1", "ip_address")]


def main() -> None:
    spec = json.loads(sys.argv[1])
    written: dict[str, int] = {}
    with UserEvents() as ue:
        todo = []
        for p in spec.get("plain", []):
            ev = ue.register(p["name_args"], persist=p.get("persist", False), multi_format=p.get("multi", False))
            todo.append((ev, lambda i, ev=ev, p=p: ev.write(**p.get("values", {})), p.get("count", 1)))
        for e in spec.get("eventheader", []):
            ev = ue.register_eventheader(e["provider"], e["level"], e.get("keyword", 0))

            def write(i: int, ev=ev, e=e) -> int:
                return ev.write_payload(encode_event(e.get("event", "Ev"), eh_fields(i), level=e["level"],
                                                     id=e.get("id", 0), opcode=e.get("opcode", 0),
                                                     activity=bytes(range(16)) if e.get("activity") else None,
                                                     order=e.get("order", "little")))
            todo.append((ev, write, e.get("count", 1)))
        deadline = time.monotonic() + spec.get("wait", 30)
        while not all(ev.enabled for ev, _, _ in todo) and time.monotonic() < deadline:
            time.sleep(0.01)
        for ev, write, count in todo:
            n = 0
            for i in range(count):
                if ev.enabled:
                    write(i)
                    n += 1
            written[ev.name] = written.get(ev.name, 0) + n
    print(json.dumps({"pid": os.getpid(), "written": written}))


if __name__ == "__main__":
    main()
