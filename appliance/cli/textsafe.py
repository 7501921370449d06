"""Escape free text before it reaches a terminal line.

Officer names, reasons, statements and other free text come from people; a newline or a control
character in them must not be able to forge a line of `auth show`, `audit show` or any other
display. `safe()` renders such characters as visible escapes (`\\n`, `\\x1b`, `\\u2028`) and leaves
everything else as it is.
"""

from __future__ import annotations

import unicodedata
from typing import Any


def _escape_char(ch: str) -> str:
    if ch == "\\":
        return "\\\\"
    if ch == "\n":
        return "\\n"
    if ch == "\r":
        return "\\r"
    if ch == "\t":
        return "\\t"
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def _unsafe(ch: str) -> bool:
    # Cc: C0/C1 controls incl. newline and ESC; Cf: bidi overrides, zero-width joiners;
    # Zl/Zp: line and paragraph separators.
    return ch == "\\" or unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp")


def safe(value: Any) -> str:
    """`str(value)` with every control, format or line-separator character escaped."""
    text = str(value)
    if not any(_unsafe(ch) for ch in text):
        return text
    return "".join(_escape_char(ch) if _unsafe(ch) else ch for ch in text)
