"""Hostile text made safe to put in one line of a message: a folder name, a sample id, an error from a
reader. Control and format characters (newlines, escape sequences, bidi overrides) are shown as escapes,
so that what the text says can be read but it cannot start a new line, recolour a terminal or reorder
what surrounds it; long text is cut."""

from __future__ import annotations

#: longest text shown in a message; a path is rarely longer, a hostile one is cut here
MAX_SHOWN = 300


def one_line(value: object, limit: int = MAX_SHOWN) -> str:
    """``value`` as printable text on one line, at most ``limit`` characters plus an ellipsis."""
    text = str(value)
    cut = len(text) > limit
    out = "".join(ch if ch.isprintable() else _escape(ch) for ch in text[:limit])
    return out + "…" if cut else out


def _escape(ch: str) -> str:
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"
