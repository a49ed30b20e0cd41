"""Names and other stored text made safe to print: ``events``, ``run`` and the logs never write a stored name raw.

Names come from enrollment (and from older galleries that accepted anything), so a name may hold a newline
(a forged second log line), ANSI escape sequences (repainting the terminal), bidi overrides or 10 kB of text.
:func:`safe_text` shows every such character as a visible escape and bounds the length. (Enrollment also
validates names; this is the output half, for every name already stored. When the core gains a shared escape
helper, this function should become a re-export of it.)
"""
from __future__ import annotations

import unicodedata

#: longest name shown in full; longer ones are cut with a marker
MAX_SHOWN = 120


def safe_text(value: object, limit: int = MAX_SHOWN) -> str:
    """``value`` as printable one-line text: control, format (bidi), separator and surrogate characters become
    ``\\xNN`` / ``\\uNNNN`` escapes, a backslash becomes ``\\\\``, and text beyond ``limit`` characters is cut as
    ``...(+N chars)``.

    >>> safe_text("ada\\n2026-01-01 grant mallory\\x1b[2J")
    'ada\\\\n2026-01-01 grant mallory\\\\x1b[2J'
    """
    text = str(value)
    out = []
    for ch in text[:limit]:
        if ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"):
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
        else:
            out.append(ch)
    if len(text) > limit:
        out.append(f"...(+{len(text) - limit} chars)")
    return "".join(out)
