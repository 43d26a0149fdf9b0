"""Text from servers, plugins and users, made safe to print on a terminal."""

from __future__ import annotations

import re

# What a terminal could act on: C0 and C1 controls (ESC, BEL, CSI...), DEL, and
# the bidirectional overrides that reorder what is shown.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def terminal_safe(text: object) -> str:
    """``text`` with every character a terminal could act on made visible (``\\x1b``): one line, no escapes.

    For anything a server, a plugin or a user typed that is printed to a
    terminal.  (Rich markup is a separate matter: print such text as
    :class:`rich.text.Text`, or with ``markup=False``.)
    """
    text = str(text)
    if not _UNSAFE.search(text):
        return text
    return _UNSAFE.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100 else f"\\u{ord(m.group()):04x}", text)
