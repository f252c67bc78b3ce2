"""Time-limited symbolic equivalence, run in persistent helper processes.

SymPy can run for ever (or eat all memory) on adversarial input such as ``9**9**9**9``, and
signal-based timeouts only work in the main thread, while the trainer verifies from worker threads.
So the SymPy work runs in separate helper processes that speak line-delimited JSON over pipes:

* the parent (``symbolic_equal``) takes an idle helper from a small pool, sends one comparison and
  waits for the answer with a deadline; on timeout the helper is SIGKILLed and a fresh one is
  started in the background, so the caller never waits longer than its deadline;
* the helper (``_worker_main``, run as a script so it imports nothing from ``agentic_gcpo``)
  parses with SymPy's tokenizer, checks the generated code against an AST allow-list *before*
  evaluating it (``parse_expr`` is ``eval`` underneath, and the text comes from the policy being
  trained: it must not be able to run code that forges a "match"), and caps its own memory.

Waiting for a free helper or for a helper to start (``import sympy``, about a second) is bounded
separately (``POOL_WAIT_S``, ``STARTUP_S``) and does not eat into the caller's SymPy time limit, so
a cold start does not turn correct answers into timeouts. POSIX only (``resource``, ``SIGKILL``).
"""

from __future__ import annotations

import atexit
import itertools
import json
import os
import queue
import subprocess
import sys
import threading
import time
import weakref

STARTUP_S = 30.0  # import sympy on a loaded 2-core box can take several seconds
POOL_WAIT_S = 30.0  # bound on waiting for a free helper when every helper is busy
MAX_WORKERS = max(2, min(4, os.cpu_count() or 2))
WORKER_MEMORY_BYTES = 2 << 30

# The helper runs this file by path; clearing '' and the script's folder from sys.path keeps files
# in the current directory or in agentic_gcpo/ from shadowing stdlib modules inside the helper.
_BOOT = (
    "import sys, runpy; p = sys.argv[1]; "
    "sys.path[:] = [x for x in sys.path if x not in ('', '.')]; "
    "runpy.run_path(p, run_name='__verify_worker__')['_worker_main']()"
)


_LIVE: weakref.WeakSet[_Worker] = weakref.WeakSet()  # every helper started, busy ones included


class _Worker:
    """One helper process plus a reader thread (queue reads give portable, thread-safe timeouts)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _BOOT, os.path.abspath(__file__)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            close_fds=True,
        )
        _LIVE.add(self)
        self.lines: queue.Queue[bytes | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True, name="verify-sympy-reader").start()
        self.ready = False

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)  # EOF: the helper died or was killed

    def wait_ready(self, timeout: float) -> bool:
        msg = self._get(time.monotonic() + timeout)
        self.ready = bool(msg and msg.get("ready"))
        return self.ready

    def _get(self, deadline: float) -> dict | None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        try:
            line = self.lines.get(timeout=remaining)
        except queue.Empty:
            return None
        if line is None:
            return None
        try:
            return json.loads(line)
        except ValueError:
            return None

    def ask(self, req: dict, deadline: float) -> dict | None:
        """Send one request; None means timeout or a dead helper (the caller kills it)."""
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write((json.dumps(req) + "\n").encode("ascii"))
            self.proc.stdin.flush()
        except (OSError, ValueError):
            return None
        while True:
            msg = self._get(deadline)
            if msg is None:
                return None
            if msg.get("id") == req["id"]:  # ignore anything stale, never trust a mismatched id
                return msg

    def kill(self) -> None:
        try:
            self.proc.kill()
            self.proc.wait(timeout=5)
        except Exception:
            pass
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                if f is not None:
                    f.close()
            except Exception:
                pass


class _Pool:
    def __init__(self, max_workers: int) -> None:
        self.max_workers = max_workers
        self.cond = threading.Condition()
        self.idle: list[_Worker] = []
        self.total = 0  # idle + busy + starting
        self.ids = itertools.count()
        self.closed = False

    def _spawn(self) -> _Worker | None:
        try:
            w = _Worker()
        except Exception:
            return None
        if w.wait_ready(STARTUP_S):
            return w
        w.kill()
        return None

    def _spawn_into_idle(self) -> None:
        w = self._spawn()
        with self.cond:
            if w is None or self.closed:
                self.total -= 1
                if w is not None:
                    w.kill()
            else:
                self.idle.append(w)
            self.cond.notify()

    def acquire(self) -> _Worker | None:
        deadline = time.monotonic() + POOL_WAIT_S
        with self.cond:
            while not self.idle:
                if self.closed:
                    return None
                if self.total < self.max_workers:
                    self.total += 1
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self.cond.wait(remaining)
            else:
                return self.idle.pop()
        w = self._spawn()  # outside the lock: other callers keep using idle helpers meanwhile
        if w is None:
            with self.cond:
                self.total -= 1
                self.cond.notify()
        return w

    def release(self, w: _Worker, healthy: bool) -> None:
        if healthy:
            with self.cond:
                if not self.closed:
                    self.idle.append(w)
                    self.cond.notify()
                    return
        w.kill()
        with self.cond:
            if self.closed:
                self.total -= 1
                return
        # Keep the slot counted and refill it off the caller's thread, so the next symbolic call
        # finds a warm helper instead of paying the sympy import.
        threading.Thread(target=self._spawn_into_idle, daemon=True, name="verify-sympy-spawn").start()

    def close(self) -> None:
        with self.cond:
            self.closed = True
            idle, self.idle = self.idle, []
            self.cond.notify_all()
        for w in idle:
            w.kill()


_pool = _Pool(MAX_WORKERS)
atexit.register(_pool.close)


def symbolic_equal(a: str, b: str, timeout_s: float) -> tuple[bool, str]:
    """Compare two normalised ASCII expressions with SymPy; returns (equal, reason).

    reason is "match", "mismatch", "unparseable", "timeout" or "error". Never raises, never waits
    for SymPy longer than timeout_s (plus pool wait / helper startup, each separately bounded).
    """
    try:
        w = _pool.acquire()
        if w is None:
            return False, "timeout"
        req = {"id": next(_pool.ids), "a": a, "b": b}
        msg = w.ask(req, time.monotonic() + max(0.0, timeout_s))
        if msg is None:
            _pool.release(w, healthy=False)
            return False, "timeout"
        _pool.release(w, healthy=True)
        reason = msg.get("reason")
        if reason not in ("match", "mismatch", "unparseable", "error"):
            return False, "error"
        return reason == "match", reason
    except Exception:
        return False, "error"


def shutdown() -> None:
    """Kill the helpers (tests, or a trainer that wants its processes gone before exit)."""
    global _pool
    old, _pool = _pool, _Pool(MAX_WORKERS)
    old.close()


def kill_all() -> None:
    """SIGKILL every helper, busy ones too, taking no lock and waiting for none: for a process about
    to exit (an interrupted run), where a helper busy with SymPy would outlive it until it next
    wrote to its closed pipe. Call shutdown() afterwards to verify again in this process."""
    for w in list(_LIVE):
        if w.proc.returncode is None:  # not reaped, so the pid is still this helper's
            try:
                w.proc.kill()
            except OSError:
                pass


# ----------------------------------------------------------------------------------------------
# Helper side. Everything below runs only inside the helper process.


def _worker_main() -> None:  # pragma: no cover - exercised through the subprocess
    import ast
    import random

    # Protocol goes to a private copy of stdout; fd 1 is pointed at stderr (DEVNULL) so nothing
    # SymPy or anything else prints can be mistaken for an answer.
    out = os.fdopen(os.dup(1), "w", encoding="ascii")
    os.dup2(2, 1)
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (WORKER_MEMORY_BYTES, WORKER_MEMORY_BYTES))
    except Exception:
        pass

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

    def has_float(expr) -> bool:
        return bool(expr.atoms(sympy.Float))

    def close(x, y, rel: float) -> bool:
        # SymPy arithmetic at 40 digits: doubles would lose the precision the exact case needs.
        diff, scale = abs(x - y), max(abs(x), abs(y))
        floor = 1e-9 if rel >= 1e-6 else 0
        return bool(diff <= rel * scale or diff <= floor)

    def equal(a: str, b: str) -> str:
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
        rel = 1e-6 if has_float(ea) or has_float(eb) else 1e-25
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
        try:
            reason = equal(str(req["a"]), str(req["b"]))
        except MemoryError:
            reason = "error"
        except Exception:
            reason = "error"
        out.write(json.dumps({"id": rid, "reason": reason}) + "\n")
        out.flush()
