"""The story templates behind the generated arithmetic problems (`arith.py` draws and splits them).

Each template tells one kind of story (shopping, rates, sharing, areas, savings ...) with a fixed
chain of 1-4 operations. The worked solution has one line per operation in GSM8K's form,
``The notebooks cost 14 * 23 = <<14*23=322>>322 dollars.``, so golden trajectories are built from
it unchanged. Each line's expression is written from the *question's* numbers
(``500 - 14 * 23``, not ``500 - 322``): a golden's python call is written before any output is
seen, so a step that quoted an earlier result would teach the model to do that arithmetic in its
head, which is what the tool is for.

Numbers are drawn so every intermediate result is a non-negative integer (divisions are built
exact); a template returns None when a draw breaks a constraint and the caller draws again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from random import Random

NAMES = (
    "Mia", "Sam", "Ana", "Leo", "Nora", "Omar", "Lily", "Ben", "Zoe", "Ivan",
    "Emma", "Raj", "Sofia", "Tom", "Grace", "Luis", "Hana", "Jack", "Aisha", "Noah",
)  # fmt: skip
# (singular, plural) of things whose price plausibly lies between about $12 and $300.
GOODS = (
    ("chair", "chairs"), ("lamp", "lamps"), ("jacket", "jackets"), ("backpack", "backpacks"),
    ("board game", "board games"), ("toaster", "toasters"), ("rug", "rugs"), ("desk", "desks"),
    ("helmet", "helmets"), ("kettle", "kettles"), ("pair of shoes", "pairs of shoes"),
)  # fmt: skip
SMALL_GOODS = ("notebooks", "pencils", "stickers", "erasers", "markers", "cookies", "apples", "candles")
PRODUCTS = ("bottles", "toys", "cups", "bolts", "jars", "soaps")

# Sentences with a number that plays no part in the answer. "{who}" is the story's subject.
PERSON_DISTRACTORS = (
    "{who} is {k} years old.",
    "The shop is {k} meters from {who}'s home.",
    "{who}'s street has {k} houses.",
    "{who} has lived in the town for {k} years.",
)
PLACE_DISTRACTORS = (
    "{who} is {k} years old.",
    "{who} is {k} kilometers from the nearest city.",
)
DISTRACTOR_RANGE = (11, 95)


@dataclass(frozen=True)
class Num:
    """An arithmetic expression over the question's numbers: its text and exact value."""

    text: str  # spaced, as in the worked solution: "500 - 14 * 23"
    value: Fraction
    prec: int = 3  # 3: a number, 2: * and /, 1: + and -

    def _op(self, sym: str, other: Num) -> Num:
        prec = 1 if sym in "+-" else 2
        left = self.text if self.prec >= prec else f"({self.text})"
        # A right operand of equal precedence is bracketed: a - (b - c) and a / (b * c) need it.
        right = other.text if other.prec > prec else f"({other.text})"
        ops = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
        value = self.value / other.value if sym == "/" else ops[sym](self.value, other.value)
        return Num(f"{left} {sym} {right}", value, prec)

    def __add__(self, o: Num) -> Num:
        return self._op("+", o)

    def __sub__(self, o: Num) -> Num:
        return self._op("-", o)

    def __mul__(self, o: Num) -> Num:
        return self._op("*", o)

    def __truediv__(self, o: Num) -> Num:
        return self._op("/", o)


def n(value: int) -> Num:
    return Num(str(value), Fraction(value))


@dataclass
class Story:
    """One drawn problem before its wording is finished (distractor placement is `arith.py`'s)."""

    numbers: tuple[int, ...]  # the operative numbers, in the order drawn: with the template id,
    # the canonical form that decides the split
    context: list[str]  # the sentences before the question
    ask: str  # the question sentence
    who: str  # the subject distractor sentences talk about
    person: bool  # whether `who` is a person (chooses the distractor pool)
    lines: list[str] = field(default_factory=list)  # worked solution, one line per operation
    answer: int = 0

    def step(self, x: Num, sentence: str) -> Num:
        """Add a solution line; `sentence` has one '{}' where 'expr = <<expr=value>>value' goes."""
        if x.value.denominator != 1 or x.value < 0:
            raise ValueError(f"template step {x.text} = {x.value} is not a non-negative integer")
        v = int(x.value)
        self.lines.append(sentence.format(f"{x.text} = <<{x.text.replace(' ', '')}={v}>>{v}"))
        self.answer = v
        return x


Template = Callable[[Random], "Story | None"]


# --- one operation ---------------------------------------------------------------------------------


def buy(r: Random) -> Story:
    who, (one, many) = r.choice(NAMES), r.choice(GOODS)
    k, p = r.randint(12, 98), r.randint(13, 289)
    s = Story(
        (k, p), [f"{who} buys {k} {many} for ${p} each."], f"How much does {who} pay in total?", who, True
    )
    if r.random() < 0.5:
        s.context = [f"A {one} costs ${p}.", f"{who} needs {k} of them."]
        s.ask = f"How much do the {k} {many} cost?"
    s.step(n(k) * n(p), f"{k} {many} cost {{}} dollars.")
    return s


def pack(r: Random) -> Story:
    size, boxes, things = r.randint(12, 48), r.randint(14, 250), r.choice(PRODUCTS)
    total = size * boxes
    ctx = r.choice(
        [
            f"A factory packs {total} {things} into boxes of {size}.",
            f"There are {total} {things} to pack, {size} in each box.",
        ]
    )
    s = Story((total, size), [ctx], "How many boxes are filled?", "The factory", False)
    s.step(n(total) / n(size), "They fill {} boxes.")
    return s


def deposit(r: Random) -> Story:
    who, a, b = r.choice(NAMES), r.randint(1000, 9999), r.randint(100, 9999)
    ctx = [f"{who} has ${a} in a savings account.", f"{who} puts in ${b} more."]
    s = Story((a, b), ctx, "How much money is in the account now?", who, True)
    s.step(n(a) + n(b), "The account holds {} dollars.")
    return s


def seats(r: Random) -> Story:
    a = r.randint(1000, 9999)
    b = r.randint(100, a - 100)
    ctx = [f"A concert hall has {a} seats.", f"{b} tickets have been sold."]
    ask = r.choice(["How many tickets are still available?", "How many seats are still free?"])
    s = Story((a, b), ctx, ask, "The concert hall", False)
    s.step(n(a) - n(b), "{} seats are still free.")
    return s


# --- two operations --------------------------------------------------------------------------------


def change(r: Random) -> Story:
    who, (_, many) = r.choice(NAMES), r.choice(GOODS)
    k, p = r.randint(3, 19), r.randint(13, 189)
    paid = (k * p // 100 + r.randint(1, 5)) * 100
    ctx = [f"{who} buys {k} {many} at ${p} each and pays with ${paid}."]
    s = Story((k, p, paid), ctx, f"How much change does {who} get?", who, True)
    cost = s.step(n(k) * n(p), f"The {many} cost {{}} dollars.")
    s.step(n(paid) - cost, "The change is {} dollars.")
    return s


def machine(r: Random) -> Story:
    rate, h1, h2, things = r.randint(120, 980), r.randint(3, 14), r.randint(3, 14), r.choice(PRODUCTS)
    ctx = [
        f"A workshop has a machine that makes {rate} {things} per hour.",
        f"The machine runs {h1} hours on Monday and {h2} hours on Tuesday.",
    ]
    s = Story(
        (rate, h1, h2),
        ctx,
        f"How many {things} does the machine make over the two days?",
        "The workshop",
        False,
    )
    hours = s.step(n(h1) + n(h2), "It runs {} hours.")
    s.step(n(rate) * hours, f"It makes {{}} {things}.")
    return s


def carpet(r: Random) -> Story:
    length, width, price = r.randint(12, 48), r.randint(10, 36), r.randint(3, 29)
    ctx = [
        f"A rectangular room is {length} feet long and {width} feet wide.",
        f"Carpet costs ${price} per square foot.",
    ]
    s = Story((length, width, price), ctx, "How much does it cost to carpet the room?", "The house", False)
    area = s.step(n(length) * n(width), "The room is {} square feet.")
    s.step(area * n(price), "The carpet costs {} dollars.")
    return s


def buses(r: Random) -> Story:
    count, each = r.randint(4, 18), r.randint(21, 58)
    total = count * each
    a = r.randint(total // 4, 3 * total // 4)
    ctx = [
        f"A school trip has {a} students from one school and {total - a} students from another.",
        f"They ride in {count} buses with the same number of students on each bus.",
    ]
    s = Story((a, total - a, count), ctx, "How many students are on each bus?", "The school", False)
    students = s.step(n(a) + n(total - a), "There are {} students.")
    s.step(students / n(count), "Each bus carries {} students.")
    return s


# --- three operations ------------------------------------------------------------------------------


def wages(r: Random) -> Story | None:
    who, wage, hours, weeks = r.choice(NAMES), r.randint(12, 48), r.randint(15, 40), r.randint(2, 8)
    rent = r.randint(300, 2400)
    if rent >= wage * hours * weeks:
        return None
    ctx = [
        f"{who} earns ${wage} per hour and works {hours} hours a week.",
        f"After {weeks} weeks, {who} pays ${rent} for rent.",
    ]
    s = Story((wage, hours, weeks, rent), ctx, f"How much money does {who} have left?", who, True)
    week = s.step(n(wage) * n(hours), f"{who} earns {{}} dollars a week.")
    earned = s.step(week * n(weeks), f"In {weeks} weeks that is {{}} dollars.")
    s.step(earned - n(rent), "After rent, {} dollars are left.")
    return s


def _two_goods(r: Random) -> tuple[str, tuple[str, int, int], tuple[str, int, int]]:
    who = r.choice(NAMES)
    (_, many1), (_, many2) = r.sample(GOODS, 2)
    return who, (many1, r.randint(2, 15), r.randint(13, 189)), (many2, r.randint(2, 15), r.randint(13, 189))


def two_goods(r: Random) -> Story:
    who, (g1, a, p), (g2, b, q) = _two_goods(r)
    ctx = [f"{who} buys {a} {g1} at ${p} each and {b} {g2} at ${q} each."]
    s = Story((a, p, b, q), ctx, f"How much does {who} spend in total?", who, True)
    x = s.step(n(a) * n(p), f"The {g1} cost {{}} dollars.")
    y = s.step(n(b) * n(q), f"The {g2} cost {{}} dollars.")
    s.step(x + y, "In total that is {} dollars.")
    return s


def two_rooms(r: Random) -> Story:
    l1, w1, l2, w2 = (r.randint(11, 39) for _ in range(4))
    ctx = [f"A house has a room of {l1} feet by {w1} feet and another room of {l2} feet by {w2} feet."]
    ask = "What is the total floor area of the two rooms in square feet?"
    s = Story((l1, w1, l2, w2), ctx, ask, "The house", False)
    x = s.step(n(l1) * n(w1), "The first room is {} square feet.")
    y = s.step(n(l2) * n(w2), "The second room is {} square feet.")
    s.step(x + y, "Together they are {} square feet.")
    return s


def fuel(r: Random) -> Story:
    per_liter, liters_a_day, days, price = (
        r.randint(8, 16),
        r.randint(9, 45),
        r.randint(3, 12),
        r.randint(2, 9),
    )
    km = per_liter * liters_a_day
    ctx = [
        f"A truck drives {km} km every day for {days} days.",
        f"The truck uses a liter of fuel for every {per_liter} km, and fuel costs ${price} per liter.",
    ]
    s = Story((km, days, per_liter, price), ctx, "How much does the fuel cost?", "The truck company", False)
    dist = s.step(n(km) * n(days), "The truck drives {} km.")
    liters = s.step(dist / n(per_liter), "It uses {} liters.")
    s.step(liters * n(price), "The fuel costs {} dollars.")
    return s


# --- four operations -------------------------------------------------------------------------------


def shopping_change(r: Random) -> Story:
    who, (g1, a, p), (g2, b, q) = _two_goods(r)
    paid = ((a * p + b * q) // 100 + r.randint(1, 5)) * 100
    ctx = [f"{who} buys {a} {g1} at ${p} each and {b} {g2} at ${q} each.", f"{who} pays with ${paid}."]
    s = Story((a, p, b, q, paid), ctx, f"How much change does {who} get?", who, True)
    x = s.step(n(a) * n(p), f"The {g1} cost {{}} dollars.")
    y = s.step(n(b) * n(q), f"The {g2} cost {{}} dollars.")
    total = s.step(x + y, "In total that is {} dollars.")
    s.step(n(paid) - total, "The change is {} dollars.")
    return s


def jars(r: Random) -> Story | None:
    who, weekly, weeks, gift, jars_ = (
        r.choice(NAMES),
        r.randint(25, 95),
        r.randint(8, 40),
        r.randint(100, 900),
        r.randint(3, 9),
    )
    have = weekly * weeks + gift
    each = r.randint(max(1, have // (3 * jars_)), have // jars_)
    spent = have - each * jars_
    if spent < 50:
        return None
    ctx = [
        f"{who} saves ${weekly} every week for {weeks} weeks.",
        f"Then {who} gets ${gift} as a gift and spends ${spent} on a bike.",
        f"{who} splits the rest equally into {jars_} jars.",
    ]
    s = Story((weekly, weeks, gift, spent, jars_), ctx, "How many dollars go into each jar?", who, True)
    saved = s.step(n(weekly) * n(weeks), f"{who} saves {{}} dollars.")
    has = s.step(saved + n(gift), "With the gift that is {} dollars.")
    rest = s.step(has - n(spent), "After the bike, {} dollars are left.")
    s.step(rest / n(jars_), "Each jar gets {} dollars.")
    return s


def factory(r: Random) -> Story | None:
    rate, hours, days, size, things = (
        r.randint(40, 240),
        r.randint(6, 12),
        r.randint(3, 9),
        r.randint(6, 24),
        r.choice(PRODUCTS),
    )
    made = rate * hours * days
    boxes = r.randint(made * 8 // (10 * size), made * 97 // (100 * size))
    broken = made - boxes * size
    if broken <= 0:
        return None
    ctx = [
        f"A factory makes {rate} {things} per hour.",
        f"The factory runs {hours} hours a day for {days} days.",
        f"{broken} of the {things} are broken and thrown away, and the rest are packed in boxes of {size}.",
    ]
    s = Story((rate, hours, days, broken, size), ctx, "How many boxes are filled?", "The factory", False)
    day = s.step(n(rate) * n(hours), f"It makes {{}} {things} a day.")
    made_ = s.step(day * n(days), f"In {days} days it makes {{}} {things}.")
    good = s.step(made_ - n(broken), f"{{}} {things} are not broken.")
    s.step(good / n(size), "They fill {} boxes.")
    return s


def tiles(r: Random) -> Story | None:
    length, width, a, b, tile = (
        r.randint(30, 90),
        r.randint(20, 60),
        r.randint(6, 19),
        r.randint(5, 15),
        r.randint(2, 6),
    )
    if (length * width - a * b) % tile:
        return None
    ctx = [
        f"A hall is {length} feet long and {width} feet wide.",
        f"A stage that is {a} feet by {b} feet covers part of the floor.",
        f"The rest of the floor is covered with tiles of {tile} square feet each.",
    ]
    s = Story((length, width, a, b, tile), ctx, "How many tiles are needed?", "The hall", False)
    hall = s.step(n(length) * n(width), "The hall is {} square feet.")
    stage = s.step(n(a) * n(b), "The stage is {} square feet.")
    rest = s.step(hall - stage, "The tiled floor is {} square feet.")
    s.step(rest / n(tile), "It needs {} tiles.")
    return s


# Template id -> function, grouped by number of operations; ids are part of the split hash, so
# renaming one moves its problems between splits (regenerate the shipped files after).
TEMPLATES: dict[int, dict[str, Template]] = {
    1: {"buy": buy, "pack": pack, "deposit": deposit, "seats": seats},
    2: {"change": change, "machine": machine, "carpet": carpet, "buses": buses},
    3: {"wages": wages, "two_goods": two_goods, "two_rooms": two_rooms, "fuel": fuel},
    4: {"shopping_change": shopping_change, "jars": jars, "factory": factory, "tiles": tiles},
}
