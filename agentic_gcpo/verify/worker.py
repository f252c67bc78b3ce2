"""The helper process's side: SymPy and math-verify comparisons, run only inside a killable helper.

``helper_pool`` starts this file by path (it imports nothing from ``agentic_gcpo``) and speaks
line-delimited JSON with it. Two kinds of request:

* ``{"id", "kind": "math_verify", "a", "b"}``: math-verify 0.9 ``parse``/``verify`` on LaTeX, with
  its own signal timeouts off (the hard deadline is the parent's SIGKILL, which works from any
  thread, while signals only work in a main thread);
* ``{"id", "kind": "sympy", "a", "b"}`` (the default): our SymPy check on plain ASCII expressions
  from ``normalise.prepare``. The generated code is checked against an AST allow-list *before* it
  is evaluated (``parse_expr`` is ``eval`` underneath, and the text comes from the policy being
  trained: it must not be able to run code that forges a "match").

Answers are ``{"id", "reason"}`` with reason "match", "mismatch", "unparseable" or "error".
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time

WORKER_MEMORY_BYTES = 2 << 30


def _worker_main() -> None:  # pragma: no cover - exercised through the subprocess
    # Protocol goes to a private copy of stdout; fd 1 is pointed at stderr (DEVNULL) so nothing
    # SymPy, math-verify or its logger prints can be mistaken for an answer.
    out = os.fdopen(os.dup(1), "w", encoding="ascii")
    os.dup2(2, 1)
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (WORKER_MEMORY_BYTES, WORKER_MEMORY_BYTES))
    except Exception:
        pass

    sympy_equal = _sympy_checker()
    mv_equal = _math_verify_checker()
    # The first call builds the LaTeX parser and imports SymPy's simplify machinery (a second or
    # more); do it before saying "ready", where it is not charged to anyone's deadline.
    for check, warm in ((mv_equal, "\\frac{x^2-1}{x-1}"), (sympy_equal, "(x^2-1)/(x-1)")):
        try:
            check(warm, "x+1")
        except Exception:
            pass

    def watchdog(parent: int) -> None:
        # If the trainer dies without killing us, exit instead of lingering as an orphan.
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watchdog, args=(os.getppid(),), daemon=True).start()
    out.write('{"ready": true}\n')
    out.flush()
    for line in sys.stdin:
        try:
            req = json.loads(line)
            rid = req["id"]
        except Exception:
            continue
        check = mv_equal if req.get("kind") == "math_verify" else sympy_equal
        try:
            reason = check(str(req["a"]), str(req["b"]))
        except BaseException:  # MemoryError, RecursionError, anything: "error" is "not equal"
            reason = "error"
        out.write(json.dumps({"id": rid, "reason": reason}) + "\n")
        out.flush()


def _math_verify_checker():  # pragma: no cover - runs in the helper
    """math-verify as its README uses it: parse(gold), parse(answer), verify(gold, answer)."""
    try:
        import logging

        logging.getLogger("math_verify").setLevel(logging.CRITICAL)  # "timeout disabled" warnings
        from math_verify import parse, verify
    except Exception:
        return lambda a, b: "unparseable"  # not installed: this rule never says "match"

    def equal(answer: str, gold: str) -> str:
        ref = parse(f"\\boxed{{{gold}}}", parsing_timeout=None)
        pred = parse(f"\\boxed{{{answer}}}", parsing_timeout=None)
        if not ref or not pred:
            return "unparseable"
        return "match" if verify(ref, pred, timeout_seconds=None) else "mismatch"

    return equal


def _sympy_checker():  # pragma: no cover - runs in the helper
    import ast
    import random

    import sympy
    from sympy.parsing.sympy_parser import (
        convert_xor,
        eval_expr,
        implicit_multiplication_application,
        standard_transformations,
        stringify_expr,
    )

    transformations = standard_transformations + (implicit_multiplication_application, convert_xor)
    names = (
        "Symbol Integer Float Rational sqrt root pi E I oo zoo nan factorial Abs sign exp log "
        "sin cos tan cot sec csc asin acos atan sinh cosh tanh floor ceiling binomial Eq Mul Add Pow"
    ).split()
    global_dict: dict = {n: getattr(sympy, n) for n in names}
    global_dict["__builtins__"] = {}
    # MATH-style conventions: e is Euler's number, i the imaginary unit, ln the natural log.
    local_dict = {"e": sympy.E, "i": sympy.I, "ln": sympy.log}
    allowed_calls = set(names) | {"ln"}
    allowed_nodes = (
        ast.Expression,
        ast.BinOp,
        ast.UnaryOp,
        ast.Call,
        ast.Name,
        ast.Load,
        ast.Constant,
        ast.Tuple,
        ast.Compare,
        ast.operator,
        ast.unaryop,
        ast.cmpop,
        ast.keyword,
    )

    def check_code(code: str) -> None:
        tree = ast.parse(code, mode="eval")
        for node in ast.walk(tree):
            if not isinstance(node, allowed_nodes):
                raise ValueError(f"disallowed syntax {type(node).__name__}")
            if isinstance(node, ast.Name) and node.id not in global_dict and node.id not in local_dict:
                raise ValueError(f"unknown name {node.id}")
            if isinstance(node, ast.Call) and not (
                isinstance(node.func, ast.Name) and node.func.id in allowed_calls
            ):
                raise ValueError("disallowed call")
            if isinstance(node, ast.Constant) and not isinstance(node.value, (int, float, str)):
                raise ValueError("disallowed constant")
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and "_" * 2 in node.value:
                raise ValueError("dunder")

    def parse(s: str):
        code = stringify_expr(s, dict(local_dict), global_dict, transformations)
        check_code(code)
        return eval_expr(code, dict(local_dict), global_dict)

    def close(x, y, rel: float) -> bool:
        # SymPy arithmetic at 40 digits: doubles would lose the precision the exact case needs.
        diff, scale = abs(x - y), max(abs(x), abs(y))
        floor = 1e-9 if rel >= 1e-6 else 0
        return bool(diff <= rel * scale or diff <= floor)

    def equation_equal(a: str, b: str) -> str:
        # Two equations are the same when one side-difference is a nonzero constant times the
        # other: "3x - 6 = 0" is "x - 2 = 0", "y = 2x + 1" is "2y = 4x + 2".
        try:
            (la, ra), (lb, rb) = a.split("="), b.split("=")
            da, db = parse(la) - parse(ra), parse(lb) - parse(rb)
        except Exception:
            return "unparseable"
        if da == 0 or db == 0:
            return "match" if da == db else "mismatch"
        if sympy.expand(da - db) == 0:
            return "match"
        q = sympy.simplify(da / db)
        return "match" if q.is_number and q.is_finite and q != 0 else "mismatch"

    def equal(a: str, b: str) -> str:
        if a.count("=") == 1 and b.count("=") == 1 and not any(c in a + b for c in "<>!"):
            return equation_equal(a, b)
        try:
            ea, eb = parse(a), parse(b)
        except Exception:
            return "unparseable"
        if not isinstance(ea, sympy.Basic) or not isinstance(eb, sympy.Basic):
            return "unparseable"
        if isinstance(ea, sympy.Equality) and isinstance(eb, sympy.Equality):
            ea, eb = ea.lhs - ea.rhs, eb.lhs - eb.rhs
        elif isinstance(ea, sympy.Basic) and not isinstance(ea, sympy.Expr):
            return "match" if ea == eb else "unparseable"
        if not isinstance(ea, sympy.Expr) or not isinstance(eb, sympy.Expr):
            return "match" if ea == eb else "mismatch"
        if ea == eb:
            return "match"
        # A decimal in either answer means someone rounded: accept within 1e-6 relative, as the
        # numeric path does. Otherwise demand (numerical) identity to ~30 significant digits.
        rel = 1e-6 if ea.atoms(sympy.Float) or eb.atoms(sympy.Float) else 1e-25
        syms = sorted(ea.free_symbols | eb.free_symbols, key=str)
        if not syms:
            va, vb = sympy.N(ea, 40), sympy.N(eb, 40)
            if not (va.is_number and vb.is_number) or va.has(sympy.nan, sympy.zoo) or vb.has(sympy.nan):
                return "match" if sympy.simplify(ea - eb) == 0 else "mismatch"
            if va.has(sympy.oo, -sympy.oo) or vb.has(sympy.oo, -sympy.oo):
                return "match" if va == vb else "mismatch"
            return "match" if close(va, vb, rel) else "mismatch"
        # Cheap disproof first: evaluate at random points (both signs, non-integers). A clear
        # difference settles it without simplify(); agreement alone never accepts.
        rng = random.Random(0)
        for _ in range(3):
            point = {s: sympy.Float(rng.uniform(-3, 3), 30) for s in syms}
            try:
                va, vb = complex(ea.evalf(30, subs=point)), complex(eb.evalf(30, subs=point))
            except Exception:
                break
            if abs(va - vb) > 1e-6 * max(abs(va), abs(vb), 1.0):
                return "mismatch"
        d = ea - eb
        if sympy.expand(d) == 0 or sympy.simplify(d) == 0:
            return "match"
        return "mismatch"

    return equal
