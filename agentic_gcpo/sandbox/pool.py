"""The part of a sandbox that does not depend on where workers run: sessions and a warm pool.

How a call flows: execute(code, session) finds the session's worker (or takes a warm one from the
pool, SymPy already imported), sends the code, and waits for the reply with a wall-clock
deadline. On timeout, crash, os._exit or a garbled reply, the worker is killed (with everything it
started) and an ExecResult says what happened; the session's next call gets a fresh worker.
Timeout kills rather than interrupts: state never survives one. A worker that dies *between*
calls is replaced silently on the next call, whose state is then fresh.

Backends (local.py, docker.py) subclass `PooledSandbox` and implement `_new_worker()`, returning
a started `WorkerChannel`; they register their own cleanup in `self._state.cleanups` so the
finalizer (close(), garbage collection, interpreter exit) needs no reference to the sandbox.
"""

from __future__ import annotations

import abc
import logging
import queue
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from .base import ExecResult, SandboxConfig, truncate_middle
from .process import WorkerChannel, WorkerDied

log = logging.getLogger("agentic_gcpo.sandbox")


class _Session:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.worker: WorkerChannel | None = None
        self.closed = False


class _State:
    """Everything the finalizer needs; holds no reference to the sandbox object itself."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.closed = False
        self.pool: list[WorkerChannel] = []
        self.sessions: dict[str, _Session] = {}
        self.starting: set[WorkerChannel] = set()
        self.root = ""  # the local backend's temp root ("" for other backends)
        self.cleanups: list[Callable[[], None]] = []  # backend cleanup, run after the workers die

    def all_workers(self) -> list[WorkerChannel]:
        """Every live worker: pooled, starting and in sessions. Call with `lock` held."""
        ws = list(self.pool) + list(self.starting)
        return ws + [s.worker for s in self.sessions.values() if s.worker is not None]


def _shutdown(state: _State, spawn_q: queue.Queue[Any]) -> None:
    with state.lock:
        state.closed = True
        spawn_q.put(None)
        state.cond.notify_all()
        workers = state.all_workers()
        state.pool.clear()
        state.sessions.clear()
    for w in workers:
        try:
            w.kill()
        except Exception:  # noqa: BLE001 - one failed kill must not stop the cleanup of the rest
            log.exception("sandbox: could not kill worker %s", w.ident)
    for fn in state.cleanups:
        try:
            fn()
        except Exception:  # noqa: BLE001
            log.exception("sandbox: cleanup failed")


class PooledSandbox(abc.ABC):
    """Sessions over a warm pool of workers. Thread-safe. Subclasses implement `_new_worker()`.

    `_spawn_in_one_thread`: start every worker from one long-lived thread (the local backend
    needs it: bwrap's --die-with-parent fires when the *thread* that forked it exits); a backend
    without that constraint starts workers from the calling threads, in parallel.
    """

    _spawn_in_one_thread = False

    def __init__(self, cfg: SandboxConfig) -> None:
        self.cfg = cfg
        self._state = _State()
        self._spawn_q: queue.Queue[Future[WorkerChannel] | None] = queue.Queue()
        self._spawner: threading.Thread | None = None
        self._refiller: threading.Thread | None = None
        # Runs on close(), on garbage collection and at interpreter exit (finalize is atexit-aware).
        self._finalizer = weakref.finalize(self, _shutdown, self._state, self._spawn_q)

    def _start_pool(self) -> None:
        """Start the background threads; a subclass calls this once its own setup is done."""
        if self._spawn_in_one_thread:
            self._spawner = threading.Thread(target=self._spawn_loop, name="sandbox-spawner", daemon=True)
            self._spawner.start()
        if self.cfg.pool_size > 0:
            self._refiller = threading.Thread(target=self._refill_loop, name="sandbox-pool", daemon=True)
            self._refiller.start()

    @abc.abstractmethod
    def _new_worker(self) -> WorkerChannel:
        """Start one worker (it may still be importing SymPy: callers use wait_ready)."""

    # ---------------------------------------------------------------- pool
    def _spawn(self) -> WorkerChannel:
        if self._spawner is None or threading.current_thread() is self._spawner:
            with self._state.lock:
                if self._state.closed:
                    raise RuntimeError("sandbox is closed")
            return self._new_worker()
        fut: Future[WorkerChannel] = Future()
        with self._state.lock:
            if self._state.closed:
                raise RuntimeError("sandbox is closed")
            self._spawn_q.put(fut)
        return fut.result()

    def _spawn_loop(self) -> None:
        while True:
            fut = self._spawn_q.get()
            if fut is None:
                break
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(self._spawn())
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller
                fut.set_exception(exc)
        while not self._spawn_q.empty():  # fail whoever is still waiting after close()
            fut = self._spawn_q.get_nowait()
            if fut is not None and fut.set_running_or_notify_cancel():
                fut.set_exception(RuntimeError("sandbox is closed"))

    def _refill_loop(self) -> None:
        st = self._state
        failures = 0
        while True:
            with st.lock:
                while not st.closed and len(st.pool) >= self.cfg.pool_size:
                    st.cond.wait()
                if st.closed:
                    return
            try:
                w = self._spawn()
            except Exception:  # noqa: BLE001 - keep the pool thread alive; execute() spawns inline
                if st.closed:
                    return
                log.exception("sandbox: could not start a pool worker")
                failures += 1
                time.sleep(min(30.0, 0.5 * 2**failures))
                continue
            with st.lock:
                if st.closed:
                    w.kill()
                    return
                st.starting.add(w)
            try:
                w.wait_ready()
                failures = 0
            except RuntimeError:
                if st.closed:  # close() killed it while it was starting
                    return
                log.exception("sandbox: pool worker failed to start")
                failures += 1
                time.sleep(min(30.0, 0.5 * 2**failures))
            with st.lock:
                st.starting.discard(w)
                if st.closed or w.dead:
                    w.kill()
                    if st.closed:
                        return
                    continue
                st.pool.append(w)

    def _take_worker(self) -> WorkerChannel:
        st = self._state
        with st.lock:
            while st.pool:
                w = st.pool.pop(0)
                st.cond.notify_all()
                if w.alive():
                    return w
                w.kill()
        return self._spawn()  # pool empty: pay the cold start in this thread

    # ---------------------------------------------------------------- API
    def execute(self, code: str, session: str) -> ExecResult:
        st = self._state
        with st.lock:
            if st.closed:
                raise RuntimeError(f"{type(self).__name__}.execute() called after close()")
            sess = st.sessions.setdefault(session, _Session())
        if not isinstance(code, str):
            return ExecResult.failure("SandboxError", f"code must be a string, got {type(code).__name__}")
        t0 = time.monotonic()
        with sess.lock:
            for attempt in range(2):
                fresh = sess.worker is None or not sess.worker.alive()
                if fresh:
                    if sess.worker is not None:
                        sess.worker.kill()
                    try:
                        sess.worker = self._take_worker()
                    except Exception as exc:  # noqa: BLE001 - the host could not start a worker
                        sess.worker = None
                        return ExecResult.failure("SandboxError", f"could not start worker: {exc}"[:1000])
                    with st.lock:
                        if sess.closed or st.closed:
                            sess.worker.kill()
                            sess.worker = None
                            return ExecResult.failure("SandboxError", "session was closed")
                w = sess.worker
                assert w is not None
                try:
                    reply = w.run(code, self.cfg.timeout_s)
                except WorkerDied as exc:
                    res = self._failure(w, exc, time.monotonic() - t0)
                    w.kill()
                    sess.worker = None
                    # A fresh worker that died before reading the cell: retry once, transparently
                    # (never re-run a cell that the worker may have started).
                    if exc.kind == "unavailable" and attempt == 0:
                        continue
                    return res
                except RuntimeError as exc:  # worker failed to start
                    w.kill()
                    sess.worker = None
                    return ExecResult.failure("SandboxError", str(exc)[:1000], time.monotonic() - t0)
                return self._result(reply, time.monotonic() - t0)
        raise AssertionError("unreachable")

    def _result(self, reply: dict[str, Any], dt: float) -> ExecResult:
        lim = self.cfg.max_output_chars

        def text(key: str) -> str | None:
            v = reply.get(key)
            return None if v is None else str(v)

        # The worker truncates already (limit + its marker); cutting again here only guards
        # against a tampered worker sending more.
        lim += 64
        stdout, t1 = truncate_middle(text("stdout") or "", lim)
        stderr, t2 = truncate_middle(text("stderr") or "", lim)
        value = text("value")
        if value is not None:
            value, t3 = truncate_middle(value, lim)
        else:
            t3 = False
        err = text("error")
        return ExecResult(
            stdout=stdout,
            stderr=stderr,
            value=value,
            error_type=text("error_type"),
            error=None if err is None else err[:1000],
            timed_out=False,
            memory_exceeded=bool(reply.get("memory_exceeded")),
            output_truncated=bool(reply.get("output_truncated")) or t1 or t2 or t3,
            duration_s=dt,
        )

    def _failure(self, w: WorkerChannel, exc: WorkerDied, dt: float) -> ExecResult:
        lost = "; the session was restarted and its state (variables, imports) is lost"
        if exc.kind == "timeout":
            msg = f"execution exceeded {self.cfg.timeout_s} s wall time{lost}"
            return ExecResult.failure("TimeoutError", msg, dt, timed_out=True)
        if exc.kind in ("garbled", "unavailable"):
            return ExecResult.failure("SandboxError", f"the worker sent an invalid reply{lost}", dt)
        ex = w.exit_info()
        if ex.cpu:
            return ExecResult.failure("TimeoutError", ex.why + lost, dt, timed_out=True)
        if ex.memory:
            return ExecResult.failure("MemoryError", ex.why + lost, dt, memory_exceeded=True)
        return ExecResult.failure("SandboxError", ex.why + lost, dt)

    def close_session(self, session: str) -> None:
        st = self._state
        with st.lock:
            sess = st.sessions.pop(session, None)
            if sess is None:
                return
            sess.closed = True
            w = sess.worker
        if w is not None:
            w.kill()  # safe while an execute() is in flight: it sees EOF and reports it

    def kill_now(self, timeout: float = 2.0) -> None:
        """Last resort (a second Ctrl-C during cleanup): kill every worker without taking the
        sandbox's locks, waiting at most `timeout` s for kills that need a round trip (docker)."""
        st = self._state
        st.closed = True
        # list() of a dict/set view runs in C without releasing the GIL: a consistent snapshot.
        workers = list(st.pool) + list(st.starting) + [s.worker for s in list(st.sessions.values())]
        threads = [th for w in workers if w is not None and (th := w.kill_now()) is not None]
        deadline = time.monotonic() + timeout
        for th in threads:
            th.join(max(0.0, deadline - time.monotonic()))

    def close(self) -> None:
        self._finalizer()
        for t in (self._refiller, self._spawner):
            if t is not None and t is not threading.current_thread():
                t.join(timeout=10)

    def __enter__(self) -> PooledSandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _workers(self) -> list[WorkerChannel]:
        with self._state.lock:
            return [w for w in self._state.all_workers() if not w.dead]
