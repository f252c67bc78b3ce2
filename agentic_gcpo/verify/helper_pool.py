"""Killable helper processes for the slow comparisons (SymPy, math-verify), with a hard deadline.

SymPy (and math-verify's latex2sympy on top of it) can run for ever or eat all memory on
adversarial input such as ``9**9**9**9``, and signal-based timeouts (math-verify's own) only work
in the main thread, while the trainer verifies from worker threads. So that work runs in separate
helper processes (``worker.py``) that speak line-delimited JSON over pipes:

* the parent (``helper_equal``) takes an idle helper from a small pool, sends one comparison and
  waits for the answer with a deadline; on timeout the helper is SIGKILLed and a fresh one is
  started in the background, so the caller never waits longer than its deadline;
* the helper (``worker._worker_main``, run as a script so it imports nothing from
  ``agentic_gcpo``) checks SymPy code against an AST allow-list and caps its own memory.

Waiting for a free helper or for a helper to start (``import sympy, math_verify``, a second or
two) is bounded separately (``POOL_WAIT_S``, ``STARTUP_S``) and does not eat into the caller's time
limit, so a cold start does not turn correct answers into timeouts. POSIX only (``SIGKILL``).
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
_WORKER_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "worker.py")

# The helper runs worker.py by path; clearing '' and the script's folder from sys.path keeps files
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
            [sys.executable, "-c", _BOOT, _WORKER_FILE],
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


def helper_equal(a: str, b: str, timeout_s: float, kind: str = "sympy") -> tuple[bool, str]:
    """Compare a (the answer) with b (the reference) in a helper; returns (equal, reason).

    kind "sympy": two plain ASCII expressions from ``normalise.prepare``; kind "math_verify": two
    LaTeX answers for math-verify. reason is "match", "mismatch", "unparseable", "timeout" or
    "error". Never raises, never waits for the helper's work longer than timeout_s (plus pool wait
    / helper startup, each separately bounded).
    """
    try:
        w = _pool.acquire()
        if w is None:
            return False, "timeout"
        req = {"id": next(_pool.ids), "kind": kind, "a": a, "b": b}
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
