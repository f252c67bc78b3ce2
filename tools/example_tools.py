"""Example custom tools: a plain function and a stateful class (see docs/tools.md).

Not loaded by default. Use them with
    tools.modules=[agentic_gcpo.builtin_tools.example_tools] tools.names=[python,unit_convert,notepad]
or copy this file and pass its path: tools.modules=[path/to/my_tools.py].
"""

from __future__ import annotations

from typing import Literal

from agentic_gcpo.tool_registry import SessionState, ToolContext, tool

_FACTORS = {"m": 1.0, "km": 1000.0, "cm": 0.01, "mm": 0.001, "mi": 1609.344, "ft": 0.3048, "in": 0.0254}


@tool
def unit_convert(
    value: float, from_unit: Literal["m", "km", "cm", "mm", "mi", "ft", "in"], to_unit: str = "m"
) -> str:
    """Convert a length between units.

    Args:
        value: The length to convert.
        from_unit: The unit of `value`.
        to_unit: The unit wanted (same choices as from_unit).
    """
    if to_unit not in _FACTORS:  # a plain exception becomes an error observation for the model
        raise ValueError(f"unknown unit {to_unit!r}; choose one of {', '.join(_FACTORS)}")
    return f"{value * _FACTORS[from_unit] / _FACTORS[to_unit]:g} {to_unit}"


@tool
class Notepad:
    """Write down intermediate results and read them back later in the same problem."""

    def __init__(self) -> None:
        # One instance serves every trajectory (from several threads): state is per session,
        # and SessionState forgets the oldest sessions, so finished problems do not pile up.
        self.notes: SessionState[dict[str, str]] = SessionState(dict)

    def __call__(self, ctx: ToolContext, action: Literal["write", "read"], key: str, text: str = "") -> str:
        """
        Args:
            action: "write" stores `text` under `key`; "read" returns what was stored.
            key: A short label, e.g. "area".
            text: What to store (for "write").
        """
        notes = self.notes[ctx.session]
        if action == "write":
            notes[key] = text
            return f"saved {key}"
        return notes.get(key, f"nothing saved under {key!r}; saved: {', '.join(notes) or '(none)'}")

    def close_session(self, session: str) -> None:
        self.notes.pop(session)
