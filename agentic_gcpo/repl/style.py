"""Terminal colours. Off when output is not a terminal, when NO_COLOR is set (no-color.org), or
when asked; every view also says in words what its colours mean, so nothing is lost without them."""

from __future__ import annotations

import os
import sys
from typing import TextIO

from agentic_gcpo.ledger import Source

_CODES = {
    "bold": "1",
    "dim": "2",
    "red": "31",
    "green": "32",
    "yellow": "33",
    "blue": "34",
    "magenta": "35",
    "cyan": "36",
    "grey": "90",
}

# One colour per token source, shared by the transcript and the token view.
SOURCE_COLOUR = {
    Source.PROMPT: "grey",
    Source.SAMPLED: "green",
    Source.TOOL: "yellow",
    Source.TEMPLATE: "magenta",
}


def colour_default(stream: TextIO | None = None) -> bool:
    stream = stream or sys.stdout
    return not os.environ.get("NO_COLOR") and hasattr(stream, "isatty") and stream.isatty()


class Style:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def __call__(self, text: str, *names: str) -> str:
        if not self.enabled or not names or not text:
            return text
        codes = ";".join(_CODES[n] for n in names)
        return f"\x1b[{codes}m{text}\x1b[0m"

    def source(self, text: str, source: int) -> str:
        return self(text, SOURCE_COLOUR[Source(source)])
