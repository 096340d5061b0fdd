"""Process-controlled text made safe to show: no terminal escapes, no bidi overrides, no line breaks
that could forge an output line, no rich markup (callers put the result in rich Text, never markup).
"""

from __future__ import annotations

import unicodedata

_SIMPLE = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t", "\0": "\\0"}


def _char(c: str) -> str:
    if c in _SIMPLE:
        return _SIMPLE[c]
    o = ord(c)
    if 0xDC80 <= o <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
        return f"\\x{o - 0xDC00:02x}"
    if o < 0x20 or o == 0x7F:
        return f"\\x{o:02x}"
    # Control (C1), format (bidi overrides, zero-width), separators, unassigned, private, surrogates.
    if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp", "Cn", "Co", "Cs"):
        return f"\\u{o:04x}" if o <= 0xFFFF else f"\\U{o:08x}"
    return c


def escape_text(s: str) -> str:
    """Printable, one-line form of s; backslash escapes for everything else."""
    if s.isprintable() and "\\" not in s and '"' not in s:
        return s
    return "".join(_char(c) for c in s)


def escape_bytes(b: bytes) -> str:
    """Like escape_text, for bytes that may not be UTF-8 (invalid bytes shown as \\xNN)."""
    return escape_text(b.decode("utf-8", "surrogateescape"))


def quoted(b: bytes) -> str:
    return f'"{escape_bytes(b)}"'
