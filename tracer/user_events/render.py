"""Console forms of user_events: one line per event (escaped: payloads are process-controlled) and
the `tracer list user_events` listing."""

from __future__ import annotations

from collections.abc import Callable

from rich.text import Text

from ..escape import escape_text


def _value(v: object) -> str:
    if v is None:
        return "null"
    if isinstance(v, str):
        return f'"{escape_text(v)}"'
    return str(v)


def user_event_line(ev: dict, clock: Callable[[int], str]) -> Text:
    t = Text()
    t.append(clock(ev["ts"]), "dim")
    t.append(" ")
    t.append(escape_text(ev.get("comm") or "?"), "bold")
    t.append(f"[{ev['pid']}/{ev['tid']}] ", "dim")
    st = ev.get("status", "ok")
    if st == "discarded":
        what = escape_text(ev.get("event") or "user_events:<unknown>")
        t.append(what, "bold red")
        t.append(f" DISCARDED by the kernel: {ev.get('syscall')}(fd={ev.get('fd')}) = -{ev.get('errno')} EFAULT",
                 "bold red")
        t.append(f", write_index={ev.get('write_index')}", "red")
        if ev.get("name_reason"):
            t.append(f" (name unknown: {escape_text(ev['name_reason'])})", "red")
        return t
    t.append(escape_text(ev["event"]), "bold cyan")
    t.append("(")
    errors = ev.get("errors") or {}
    for i, (k, v) in enumerate(ev.get("fields", {}).items()):
        if i:
            t.append(", ")
        t.append(f"{escape_text(k)}=", "dim")
        if k in errors:
            t.append(f"<malformed: {escape_text(errors[k])}>", "bold red")
        else:
            t.append(_value(v))
    t.append(")")
    if st == "malformed":
        t.append(f"  ! malformed payload: {ev.get('payload_hex', '')}", "bold red")
    return t


def event_listing(events: list[dict]) -> list[Text]:
    if not events:
        return [Text("no user_events are registered", "dim")]
    out = []
    for ev in events:
        t = Text()
        t.append(escape_text(ev["event"] or ev["name"]), "bold cyan")
        if ev.get("id") is not None:
            t.append(f" id={ev['id']}", "dim")
        t.append("  enabled" if ev["enabled"] else "  disabled", "green" if ev["enabled"] else "dim")
        if ev["used_by"]:
            t.append(f" (used by {', '.join(ev['used_by'])})", "dim")
        fields = ev.get("fields")
        if fields is None:
            t.append(f"  {ev.get('note', '')}", "yellow")
        else:
            t.append("  " + ("; ".join(f"{escape_text(f['type'])} {escape_text(f['name'])}" for f in fields)
                             or "(no fields)"))
        out.append(t)
    return out
