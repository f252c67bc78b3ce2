"""Units on a numeric answer: read "5 cm", "5\\text{ cm}", "5cm", "12 square feet"; convert if both sides have one.

Neither our normaliser nor math-verify converts units ("5 m" vs "500 cm"), and both misread a unit
glued to its number ("5cm" is 5*c*m to SymPy). ``split_unit`` separates a known unit from the
number in front of it; ``core`` then converts when both sides carry units of the same dimension,
rejects when the dimensions differ, and drops a unit that only one side wrote (a GSM8K reference
is a bare number). Only units with one unambiguous factor are listed: no gallons (US or UK), no
tons, no months or years.
"""

from __future__ import annotations

import re
from fractions import Fraction

_L = {  # length, metres
    ("mm", "millimeter", "millimeters", "millimetre", "millimetres"): Fraction(1, 1000),
    ("cm", "centimeter", "centimeters", "centimetre", "centimetres"): Fraction(1, 100),
    ("m", "meter", "meters", "metre", "metres"): Fraction(1),
    ("km", "kilometer", "kilometers", "kilometre", "kilometres"): Fraction(1000),
    ("in", "inch", "inches"): Fraction(254, 10000),
    ("ft", "foot", "feet"): Fraction(3048, 10000),
    ("yd", "yard", "yards"): Fraction(9144, 10000),
    ("mi", "mile", "miles"): Fraction(1609344, 1000),
}
_M = {  # mass, grams
    ("mg", "milligram", "milligrams"): Fraction(1, 1000),
    ("g", "gram", "grams"): Fraction(1),
    ("kg", "kilogram", "kilograms"): Fraction(1000),
    ("lb", "lbs", "pound", "pounds"): Fraction(45359237, 100000),
    ("oz", "ounce", "ounces"): Fraction(28349523125, 10**9),
}
_T = {  # time, seconds
    ("s", "sec", "secs", "second", "seconds"): Fraction(1),
    ("min", "mins", "minute", "minutes"): Fraction(60),
    ("h", "hr", "hrs", "hour", "hours"): Fraction(3600),
    ("day", "days"): Fraction(86400),
    ("week", "weeks"): Fraction(604800),
}
_V = {  # volume, litres
    ("ml", "mL", "milliliter", "milliliters", "millilitre", "millilitres"): Fraction(1, 1000),
    ("L", "l", "liter", "liters", "litre", "litres"): Fraction(1),
}
_MONEY = {("dollar", "dollars"): Fraction(1), ("cent", "cents"): Fraction(1, 100)}

UNITS: dict[str, tuple[str, Fraction]] = {
    name: (dim, factor)
    for dim, table in (("length", _L), ("mass", _M), ("time", _T), ("volume", _V), ("money", _MONEY))
    for names, factor in table.items()
    for name in names
}

_WRAPPERS = re.compile(r"\\(?:text|textrm|mathrm|mbox|operatorname|textnormal)\s*\{([^{}]*)\}")
_SPACES = re.compile(r"\\[,;:> ]|~|\\quad|\\qquad")
_UNIT_TAIL = re.compile(
    r"^(?P<num>.*?[\d})])\s*(?:(?P<pre>square|sq\.?|cubic)\s+)?(?P<unit>[A-Za-z]+)\.?"
    r"\s*(?:\^\s*\{?\s*(?P<pow>[23])\s*\}?)?\s*\.?$"
)
_PLAIN_NUMBER = re.compile(r"^-?(?:\d[\d,]*(?:\.\d+)?|\.\d+)$")
# Unit names that are also letters, words or variables of an answer ("2\pi m", "x in", "5 s").
_AMBIGUOUS = {"m", "s", "h", "g", "l", "L", "in", "mi", "min", "sec", "day"}


class Unit:
    """A unit of one dimension raised to a power: cm^2 is ("length", 1/100, 2)."""

    def __init__(self, dim: str, factor: Fraction, power: int, written: str) -> None:
        self.dim, self.factor, self.power, self.written = dim, factor, power, written

    @property
    def scale(self) -> Fraction:
        return self.factor**self.power

    def same_dimension(self, other: Unit) -> bool:
        return self.dim == other.dim and self.power == other.power


def split_unit(latex: str) -> tuple[str, Unit | None]:
    """(number part, unit) when the answer is a number followed by a known unit, else (latex, None)."""
    # "\\!" is a negative space: "3,\\!600" is one number, so it goes without leaving a gap.
    text = _WRAPPERS.sub(lambda m: f" {m.group(1)} ", latex).replace("\\!", "")
    text = _SPACES.sub(" ", text).strip()
    m = _UNIT_TAIL.match(text)
    if not m or m.group("unit") not in UNITS:
        return latex, None
    num, word = m.group("num").strip(), m.group("unit")
    # An ambiguous unit name could be a variable or a word of the answer: only a plain number in
    # front of it makes it a unit ("5 m", "2.5h"), never "2\pi m" or "x in".
    if word in _AMBIGUOUS and not _PLAIN_NUMBER.match(num.replace(" ", "")):
        return latex, None
    if not num or num.endswith(("^", "_")) or re.search(r"[A-Za-z]\s*$", num):
        return latex, None
    power = int(m.group("pow") or 1)
    if m.group("pre"):
        power = 3 if m.group("pre") == "cubic" else 2
    dim, factor = UNITS[word]
    if dim in ("time", "money") and power != 1:
        return latex, None
    return num, Unit(dim, factor, power, m.group(0)[len(m.group("num")) :].strip())
