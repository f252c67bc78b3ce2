"""Generated arithmetic problems: correct worked solutions, disjoint splits, shipped files in sync."""

from __future__ import annotations

import re
from collections import Counter
from fractions import Fraction

import pytest

from agentic_gcpo.data import load_problems, resolve_data_path
from agentic_gcpo.data.arith import SIZES, VAL_SIZE, generate, shipped_text, split_of, to_jsonl, validation
from agentic_gcpo.data.arith_templates import TEMPLATES, Story, n
from agentic_gcpo.data.cli import main as data_main
from agentic_gcpo.rollout.chat import ChatFormat
from agentic_gcpo.rollout.golden import ANNOTATION, GoldenSource, python_expr


@pytest.fixture(scope="module")
def shipped():
    return {s: load_problems(f"builtin:arith_{s}") for s in SIZES}


def _signature(row: dict) -> tuple[str, ...]:
    """Template + annotated expressions: every operative number of a problem appears in them."""
    return (row["template"], *(m.group(1) for m in ANNOTATION.finditer(row["answer"])))


def test_shipped_files_are_what_the_generator_makes():
    # Regenerate with `agentic-gcpo data arith --write` when a template changes.
    for split, size in [*SIZES.items(), ("val", VAL_SIZE)]:
        text = resolve_data_path(f"builtin:arith_{split}").read_text(encoding="utf-8")
        assert text == shipped_text(split), (
            f"arith_{split}.jsonl is stale: run agentic-gcpo data arith --write"
        )
        assert text.count("\n") == size


def test_same_seed_same_rows_other_seed_other_rows():
    assert generate("test", 60, seed=4) == generate("test", 60, seed=4)
    assert generate("train", 60, seed=4) != generate("train", 60, seed=5)
    # A smaller size is a prefix of a larger one with the same seed.
    assert generate("train", 20, seed=2) == generate("train", 50, seed=2)[:20]


def test_splits_are_disjoint_for_any_seed_and_size():
    test_rows = generate("test", SIZES["test"]) + generate("test", 300, seed=7)
    train_rows = (
        generate("train", SIZES["train"]) + generate("train", 800, seed=1) + generate("train", 800, seed=9)
    )
    assert not {_signature(r) for r in test_rows} & {_signature(r) for r in train_rows}
    assert not {r["question"] for r in test_rows} & {r["question"] for r in train_rows}
    assert len({r["id"] for r in test_rows[: SIZES["test"]] + train_rows[: SIZES["train"]]}) == sum(
        SIZES.values()
    )
    # Within one file no problem repeats.
    first = generate("train", SIZES["train"])
    assert len({_signature(r) for r in first}) == len(first)


def test_validation_rows_are_in_neither_shipped_file():
    val = validation()
    train, test = generate("train", SIZES["train"]), generate("test", SIZES["test"])
    sig = {_signature(r) for r in val}
    assert len(sig) == VAL_SIZE  # no repeats within it
    assert not sig & {_signature(r) for r in train}
    assert not sig & {_signature(r) for r in test}
    assert len({r["id"] for r in val + train + test}) == VAL_SIZE + SIZES["train"] + SIZES["test"]
    assert Counter(r["ops"] for r in val) == {k: VAL_SIZE // 4 for k in (1, 2, 3, 4)}
    assert validation(40) == val[:40]


def test_split_is_a_pure_function_of_the_canonical_form():
    assert split_of("buy", (12, 34)) == split_of("buy", (12, 34))
    shares = Counter(split_of("pack", (x, 12)) for x in range(1000, 3000))
    assert 0.15 < shares["test"] / 2000 < 0.25  # about TEST_PERCENT


@pytest.mark.parametrize("split", list(SIZES))
def test_every_worked_solution_computes_its_answer(shipped, split):
    rows = generate(split, SIZES[split])
    for row, prob in zip(rows, shipped[split]):
        steps = list(ANNOTATION.finditer(row["answer"]))
        assert len(steps) == row["ops"], row["id"]
        for m in steps:
            expr = python_expr(m.group(1))
            assert expr is not None and Fraction(eval(expr)) == int(m.group(2)), (row["id"], m.group(0))  # noqa: S307
        assert steps[-1].group(2) == prob.reference and prob.id == row["id"]
        # The tool is worth calling: some number in the computation has three or more digits.
        assert max(int(x) for m in steps for x in re.findall(r"\d+", m.group(0))) >= 100, row["id"]


def test_difficulty_and_distractor_mix(shipped):
    rows = generate("test", SIZES["test"])
    assert Counter(r["ops"] for r in rows[:32]) == {1: 8, 2: 8, 3: 8, 4: 8}  # an eval limit stays balanced
    assert Counter(r["ops"] for r in rows) == {k: SIZES["test"] // 4 for k in (1, 2, 3, 4)}
    train = generate("train", SIZES["train"])
    per_template = Counter(r["template"] for r in train)
    assert set(per_template) == {t for group in TEMPLATES.values() for t in group}
    assert min(per_template.values()) > 0.6 * SIZES["train"] / len(per_template)
    distracted = [r for r in train if r["distractor"]]
    assert 0.4 < len(distracted) / len(train) < 0.6
    for r in distracted:  # the distractor's number is in the question but never in the solution
        extra = set(re.findall(r"\d+", r["question"])) - set(re.findall(r"\d+", r["answer"]))
        assert len(extra) == 1, (r["id"], extra)
    for r in (r for r in train if not r["distractor"]):
        assert set(re.findall(r"\d+", r["question"])) <= set(re.findall(r"\d+", r["answer"])), r["id"]


def test_expressions_bracket_only_where_needed():
    assert (n(500) - n(14) * n(23)).text == "500 - 14 * 23"
    assert ((n(1) + n(2)) / n(3)).text == "(1 + 2) / 3"
    assert (n(10) - (n(4) - n(3))).text == "10 - (4 - 3)"
    assert (n(12) * n(5) * n(3) - n(7)).text == "12 * 5 * 3 - 7"
    s = Story((7, 2), [], "?", "Mia", True)
    with pytest.raises(ValueError, match="not a non-negative integer"):
        s.step(n(7) / n(2), "{}")


def test_cli_prints_and_refuses_bad_arguments(capsys):
    assert data_main(["arith", "--split", "test", "--size", "3", "--seed", "2"]) == 0
    assert capsys.readouterr().out == to_jsonl(generate("test", 3, seed=2))
    assert data_main(["arith", "--write", "--seed", "1"]) == 2
    assert "takes no --size/--seed/--out" in capsys.readouterr().err
    assert data_main(["arith", "--size", "0"]) == 2


@pytest.mark.parametrize("style", ["restate", "commented"])
def test_goldens_build_from_generated_rows(tiny, python_tools, sandbox, shipped, style):
    """Rows of every template become verified python-tool goldens; the sandbox prints each step."""
    rows = generate("test", SIZES["test"])
    picked = {}  # the first row of each template
    for row, prob in zip(rows, shipped["test"]):
        picked.setdefault(row["template"], (row, prob))
    src = GoldenSource(ChatFormat(tiny[1], python_tools), python_tools, sandbox, style=style)
    for row, prob in picked.values():
        g = src.get(prob, 0)
        assert g is not None and g.correct and len(g.tool_calls) == 1, row["id"]
        printed = [Fraction(x) for x in g.tool_calls[0].observation.split()]
        assert printed == [int(m.group(2)) for m in ANNOTATION.finditer(row["answer"])], row["id"]
    assert src.stats.built == len(picked) == 16 and src.stats.tool_errors == 0
