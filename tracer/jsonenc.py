"""The JSON Lines encoder: compact JSON with every non-ASCII character escaped, the bytes of
json.dumps(obj, separators=(",", ":")) (ensure_ascii, as the contract in README.md shows it).

Syscall events, the hot path of `--json` (~800 bytes each), go through orjson, ~5x faster than
json's C encoder here. orjson writes UTF-8 and leaves DEL (0x7f) unescaped, and refuses lone
surrogates (a path that was not UTF-8, kept by surrogateescape) and integers beyond 64 bits: any of
those sends the object to json's encoder instead, so the bytes are json's in every case. Only
syscall events take that path: they hold no floats (orjson spells 1e+16, 1e-05 and NaN differently),
while summaries, user_events fields and alerts may.
"""

from __future__ import annotations

import json
from collections.abc import Callable

try:
    import orjson
except ImportError:  # an install without it keeps the same bytes, at json's speed
    orjson = None  # type: ignore[assignment]


def _json_encoder() -> Callable[[object], str]:
    """json.dumps(obj, separators=(",", ":")) minus the per-call set-up: one C encoder built once, without
    the circular-reference check (events are trees); json.dumps itself where this Python has no C encoder."""
    enc = json.encoder
    make = getattr(enc, "c_make_encoder", None)  # not in typeshed; None where _json is not built
    if make is None:
        return lambda obj: json.dumps(obj, separators=(",", ":"))
    c_encode = make(None, json.JSONEncoder().default, enc.encode_basestring_ascii, None, ":", ",",
                    False, False, True)  # markers, default, encoder, indent, separators, sort_keys,
    join = "".join                     # skipkeys, allow_nan: json.dumps's defaults

    def dumps(obj: object) -> str:
        return join(c_encode(obj, 0))

    return dumps


json_dumps = _json_encoder()


def _dumps(obj: object) -> str:
    if type(obj) is dict and obj.get("kind") == "syscall":
        try:
            b = orjson.dumps(obj)
        except TypeError:  # orjson.JSONEncodeError: surrogates, big integers, non-str keys
            return json_dumps(obj)
        if b.isascii() and b"\x7f" not in b:
            return b.decode("ascii")
    return json_dumps(obj)


dumps: Callable[[object], str] = _dumps if orjson is not None else json_dumps
