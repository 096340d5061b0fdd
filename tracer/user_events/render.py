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


Segments = list[tuple[str, str | None]]  # (text, style): the console's line layout (tracer/output.py)


def user_event_line(ev: dict, clock: Callable[[int], str]) -> Text:
    """One user_event as one line of rich Text."""
    return Text.assemble(*((text, style or "") for text, style in user_event_segments(ev, clock)))


def user_event_segments(ev: dict, clock: Callable[[int], str]) -> Segments:
    """One user_event (a sample, or a write the kernel discarded) as (text, style) segments of one line."""
    t: Segments = []
    a = t.append
    a((clock(ev["ts"]), "dim"))
    a((" ", None))
    a((escape_text(ev.get("comm") or "?"), "bold"))
    a((f"[{ev['pid']}/{ev['tid']}] ", "dim"))
    st = ev.get("status", "ok")
    if st == "discarded":
        what = escape_text(ev.get("event") or "user_events:<unknown>")
        a((what, "bold red"))
        a((f" DISCARDED by the kernel: {ev.get('syscall')}(fd={ev.get('fd')}) = -{ev.get('errno')} EFAULT",
           "bold red"))
        a((f", write_index={ev.get('write_index')}", "red"))
        if ev.get("name_reason"):
            a((f" (name unknown: {escape_text(ev['name_reason'])})", "red"))
        return t
    a((escape_text(ev["event"]), "bold cyan"))
    eh = ev.get("eventheader")
    if eh is not None:
        _eventheader(a, eh)
    else:
        a(("(", None))
        errors = ev.get("errors") or {}
        for i, (k, v) in enumerate((ev.get("fields") or {}).items()):
            if i:
                a((", ", None))
            a((f"{escape_text(k)}=", "dim"))
            if k in errors:
                a((f"<malformed: {escape_text(errors[k])}>", "bold red"))
            else:
                a((_value(v), None))
        a((")", None))
    bad = ev.get("malformed")
    if bad:
        a((f"  ! malformed at payload offset {bad['offset']}: {escape_text(bad['reason'])}", "bold red"))
    if st == "malformed":
        a((f"  ! malformed payload: {ev.get('payload_hex', '')}", "bold red"))
    extra = ev.get("extra_bytes")
    if extra:
        a((f"  ! {extra['length']} bytes past the described payload at offset {extra['offset']}: "
           f"{extra['hex']}", "bold yellow"))
    return t


def _eh_value(f: dict) -> str:
    """One EventHeader field value: text forms (errno name, date) beside the number, hex where the format
    says hex, bytes as <hex ...>, structs as {...}, arrays as [...]."""
    from .eventheader import DEFAULT_FORMAT

    v, fmt = f.get("value"), f.get("as", f.get("format", DEFAULT_FORMAT[f["encoding"]]))
    if f["encoding"] == "struct":  # members, or for an array of structs one member list per element
        elems = v if f.get("array") else [v]
        shown = ["{" + ", ".join(f"{escape_text(c['name'])}={_eh_value(c)}" for c in e) + "}" for e in elems]  # type: ignore[union-attr]
        return "[" + ", ".join(shown) + "]" if f.get("array") else shown[0]
    if f.get("array"):
        n = len(v)  # type: ignore[arg-type]
        texts, hexes = f.get("text") or [None] * n, f.get("hex") or [None] * n
        fmts = fmt if isinstance(fmt, list) else [fmt] * n
        return "[" + ", ".join(_eh_scalar(x, fm, t, h) for x, fm, t, h in zip(v, fmts, texts, hexes, strict=True)) + "]"  # type: ignore[arg-type]
    return _eh_scalar(v, fmt, f.get("text"), f.get("hex"))


def _eh_scalar(v: object, fmt: str, text: object, hx: object) -> str:
    if hx is not None:
        return f"<not valid text: hex {hx}>"
    if v is None:
        return escape_text(str(text)) if text else "null"
    if fmt == "hex_int" and isinstance(v, int):
        return hex(v)
    if fmt == "hex_bytes":
        return f"<hex {v}>"
    if text is not None:
        return f"{v} ({escape_text(str(text))})"
    return _value(v)


def _eventheader(a: Callable[[tuple[str, str | None]], None], eh: dict) -> None:
    a((" ", None))
    a((f"{escape_text(eh['provider'])}:{escape_text(eh.get('event') or '?')}", "bold magenta"))
    attrs = [f"level={eh['level']}", f"keyword={eh['keyword']:#x}"]
    if eh.get("opcode"):
        attrs.append(f"opcode={eh.get('opcode_name') or eh['opcode']}")
    for k in ("id", "version", "tag"):
        if eh.get(k):
            attrs.append(f"{k}={eh[k]}")
    for k in ("activity_id", "related_id"):
        if eh.get(k):
            attrs.append(f"{k.split('_')[0]}={eh[k]}")
    if eh.get("byte_order") == "big":
        attrs.append("big-endian")
    for x in eh.get("extensions") or ():
        attrs.append(f"ext{x['kind']}=<hex {x['hex']}>")
    a((" [" + " ".join(attrs) + "]", "dim"))
    if eh.get("fields") is None:
        a((f" ({escape_text(eh.get('no_metadata', 'no metadata'))})", "yellow"))
        return
    a(("(", None))
    for i, f in enumerate(eh["fields"]):
        if i:
            a((", ", None))
        a((f"{escape_text(f['name'])}=", "dim"))
        a((_eh_value(f), None))
    a((")", None))


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
        eh = ev.get("eventheader")
        if fields is None:
            t.append(f"  {ev.get('note', '')}", "yellow")
        elif eh:
            opts = f", options {escape_text(eh['options'])}" if eh["options"] else ""
            t.append(f"  EventHeader: provider {escape_text(eh['provider'])}, level {eh['level']}, "
                     f"keyword {eh['keyword']:#x}{opts}", "magenta")
        else:
            t.append("  " + ("; ".join(f"{escape_text(f['type'])} {escape_text(f['name'])}" for f in fields)
                             or "(no fields)"))
        out.append(t)
    return out
