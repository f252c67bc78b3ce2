"""Local sandbox backend: a warm pool of isolated worker processes, one per session.

Sessions, the pool and the execute() flow live in pool.py (shared with the docker backend); this
module starts workers as processes on this machine (process.py), under the isolation isolation.py
found. On timeout, crash, os._exit or a garbled reply, the worker's whole process group (and, with
namespaces, its pid namespace) is SIGKILLed and its temp dir removed.

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
import os
import shutil
import tempfile
from typing import Any

from .base import SandboxConfig
from .isolation import Isolation, detect
from .pool import PooledSandbox
from .process import WorkerProcess


class LocalSandbox(PooledSandbox):
    """Sandbox backend running workers on this machine. Thread-safe; see module docstring."""

    # bwrap --die-with-parent uses PR_SET_PDEATHSIG, which fires when the *thread* that forked it
    # exits: a worker started from a short-lived executor thread would die with it. So every
    # worker is forked by one long-lived spawner thread that lives as long as the sandbox.
    _spawn_in_one_thread = True

    def __init__(self, cfg: SandboxConfig) -> None:
        self.isolation: Isolation = detect(cfg.isolation)
        super().__init__(cfg)
        st = self._state
        st.root = tempfile.mkdtemp(prefix="agcpo-sbx-")
        root = st.root
        st.cleanups.append(lambda: shutil.rmtree(root, ignore_errors=True))
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
        self._start_pool()

    def _new_worker(self) -> WorkerProcess:
        return WorkerProcess(self.isolation, self.cfg, self._state.root, self._worker_py)

    def __enter__(self) -> LocalSandbox:
        return self

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

    def kill_now(self, timeout: float = 2.0) -> None:
        super().kill_now(timeout)
        shutil.rmtree(self._state.root, ignore_errors=True)

    def worker_pids(self) -> list[int]:
        return [w.pid for w in self._workers() if isinstance(w, WorkerProcess)]
