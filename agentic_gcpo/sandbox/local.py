"""Local sandbox backend: a warm pool of isolated worker processes, one per session.

How a call flows: execute(code, session) finds the session's worker (or takes a warm one from the
pool, SymPy already imported), sends the code as length-prefixed JSON over a pipe, and waits for
the reply with a wall-clock deadline. On timeout, crash, os._exit or a garbled reply, the worker's
whole process group (and, with namespaces, its pid namespace) is SIGKILLed, its temp dir removed,
and an ExecResult says what happened; the session's next call gets a fresh worker.

Covered: wall timeout, per-cell CPU limit, memory, file size, process count (unprivileged uid
only), scrubbed environment, private working dir, no network (namespaces), capped reply size,
cleanup on close()/GC/interpreter exit (weakref.finalize), thread safety.
NOT covered: see isolation.py (no seccomp, no disk quota, no CPU fairness); the pool refills one
worker at a time, so a burst of new sessions beyond pool_size pays the cold start (~0.3-0.5 s).
Output printed before a timeout/crash is lost (the result carries only the error). A worker that
dies *between* calls (a background thread calling os._exit, say) is replaced silently on the next
call, whose state is then fresh. Timeout kills rather than interrupts: state never survives one.
"""

from __future__ import annotations

import importlib.resources
import logging
import os
import queue
import shutil
import tempfile
import threading
import time
import weakref
from concurrent.futures import Future
from typing import Any

from .base import ExecResult, SandboxConfig, truncate_middle
from .isolation import Isolation, detect
from .process import WorkerDied, WorkerProcess

log = logging.getLogger("agentic_gcpo.sandbox")


class _Session:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.worker: WorkerProcess | None = None
        self.closed = False


class _State:
    """Everything the finalizer needs; holds no reference to the LocalSandbox itself."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.closed = False
        self.pool: list[WorkerProcess] = []
        self.sessions: dict[str, _Session] = {}
        self.starting: set[WorkerProcess] = set()
        self.root = ""


def _shutdown(state: _State, spawn_q: queue.Queue[Any]) -> None:
    with state.lock:
        state.closed = True
        spawn_q.put(None)
        state.cond.notify_all()
        workers = list(state.pool) + list(state.starting)
        workers += [s.worker for s in state.sessions.values() if s.worker is not None]
        state.pool.clear()
        state.sessions.clear()
    for w in workers:
        w.kill()
    if state.root:
        shutil.rmtree(state.root, ignore_errors=True)


class LocalSandbox:
    """Sandbox backend running workers on this machine. Thread-safe; see module docstring."""

    def __init__(self, cfg: SandboxConfig) -> None:
        self.cfg = cfg
        self.isolation: Isolation = detect(cfg.isolation)
        self._state = _State()
        st = self._state
        st.root = tempfile.mkdtemp(prefix="agcpo-sbx-")
        os.chmod(st.root, 0o711)  # nobody may traverse to its own dir but not list others
        # The worker must be readable by the unprivileged uid, and the installed package may live
        # under /root; ship a copy in the sandbox root.
        src = importlib.resources.files("agentic_gcpo.sandbox_files") / "worker.py"
        wdir = os.path.join(st.root, "bin")
        os.mkdir(wdir, 0o755)
        self._worker_py = os.path.join(wdir, "worker.py")
        with open(self._worker_py, "w", encoding="utf-8") as f:
            f.write(src.read_text(encoding="utf-8"))
        os.chmod(self._worker_py, 0o644)
        self._spawn_q: queue.Queue[Future[WorkerProcess] | None] = queue.Queue()
        self._spawner = threading.Thread(target=self._spawn_loop, name="sandbox-spawner", daemon=True)
        self._spawner.start()
        # Runs on close(), on garbage collection and at interpreter exit (finalize is atexit-aware).
        self._finalizer = weakref.finalize(self, _shutdown, st, self._spawn_q)
        self._refiller: threading.Thread | None = None
        if cfg.pool_size > 0:
            self._refiller = threading.Thread(target=self._refill_loop, name="sandbox-pool", daemon=True)
            self._refiller.start()

    # ---------------------------------------------------------------- pool
    def _spawn(self) -> WorkerProcess:
        # bwrap --die-with-parent uses PR_SET_PDEATHSIG, which fires when the *thread* that forked
        # it exits: a worker started from a short-lived executor thread would die with it. So every
        # worker is forked by one long-lived spawner thread that lives as long as the sandbox.
        if threading.current_thread() is self._spawner:
            return WorkerProcess(self.isolation, self.cfg, self._state.root, self._worker_py)
        fut: Future[WorkerProcess] = Future()
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

    def _take_worker(self) -> WorkerProcess:
        st = self._state
        with st.lock:
            while st.pool:
                w = st.pool.pop(0)
                st.cond.notify_all()
                if w.alive():
                    return w
                w.kill()
        w = self._spawn()  # pool empty: pay the cold start in this thread
        return w

    # ---------------------------------------------------------------- API
    def execute(self, code: str, session: str) -> ExecResult:
        st = self._state
        with st.lock:
            if st.closed:
                raise RuntimeError("LocalSandbox.execute() called after close()")
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

    def _failure(self, w: WorkerProcess, exc: WorkerDied, dt: float) -> ExecResult:
        lost = "; the session was restarted and its state (variables, imports) is lost"
        if exc.kind == "timeout":
            msg = f"execution exceeded {self.cfg.timeout_s} s wall time{lost}"
            return ExecResult.failure("TimeoutError", msg, dt, timed_out=True)
        if exc.kind in ("garbled", "unavailable"):
            return ExecResult.failure("SandboxError", f"the worker sent an invalid reply{lost}", dt)
        why, cpu = w.exit_description()
        if cpu:
            return ExecResult.failure("TimeoutError", why + lost, dt, timed_out=True)
        return ExecResult.failure("SandboxError", why + lost, dt)

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

    def close(self) -> None:
        self._finalizer()
        for t in (self._refiller, self._spawner):
            if t is not None and t is not threading.current_thread():
                t.join(timeout=10)

    def __enter__(self) -> LocalSandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- introspection
    def info(self) -> dict[str, Any]:
        """How this sandbox is isolated (for logs, tests and the README)."""
        iso = self.isolation
        return {
            "mode": iso.mode,
            "python": iso.python,
            "uid": iso.uid,
            "network_blocked": iso.network_blocked,
            "nproc_enforced": iso.nproc_enforced,
            "filesystem_private": iso.filesystem_private,
            "notes": list(iso.notes),
        }

    def worker_pids(self) -> list[int]:
        st = self._state
        with st.lock:
            ws = list(st.pool) + list(st.starting)
            ws += [s.worker for s in st.sessions.values() if s.worker is not None]
        return [w.pid for w in ws if not w.dead]
