"""One sandbox worker seen from the client: talk to it with deadlines, kill it.

`WorkerChannel` is the client half of the worker protocol, shared by every backend: messages are
length-prefixed JSON (see sandbox/worker.py) over a readable and a writable file descriptor (two
pipes for a local process, one attached socket for a container). Every read and write has a
deadline and a size cap, so a hung or hostile worker can never block the caller past the wall
timeout or make it buffer an unbounded reply. Any protocol violation is a WorkerDied; the caller
kills the worker. `WorkerProcess` is the local backend's worker: a process on this machine.
"""

from __future__ import annotations

import abc
import json
import logging
import math
import os
import select
import shutil
import signal
import struct
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Any

from .base import SandboxConfig
from .isolation import Isolation, minimal_env, wrap_argv

log = logging.getLogger("agentic_gcpo.sandbox")

_STARTUP_TIMEOUT_S = 60.0  # a cold worker on a busy 2-core box can take seconds to import SymPy


class WorkerDied(Exception):
    """The worker stopped answering: timeout, crash, exit, or a garbled reply."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


def worker_config(cfg: SandboxConfig, **override: Any) -> dict[str, Any]:
    """The JSON config the worker applies to itself (argv[1] of sandbox/worker.py)."""
    wcfg: dict[str, Any] = {
        "max_output_chars": cfg.max_output_chars,
        "cpu_time_s": cfg.cpu_time_s,
        "memory_mb": cfg.memory_mb,
        "max_file_mb": cfg.max_file_mb,
        "max_processes": cfg.max_processes,
        "preload": list(cfg.preload),
        # Lifetime CPU cap of one worker; a session is a handful of cells.
        "cpu_lifetime_s": max(600, int(math.ceil(cfg.cpu_time_s * 50))),
    }
    wcfg.update(override)
    return wcfg


@dataclass(frozen=True)
class ExitInfo:
    """Why a worker ended by itself, in words, and whether a CPU or memory limit did it."""

    why: str
    cpu: bool = False
    memory: bool = False


def describe_exit_status(rc: int, cfg: SandboxConfig) -> ExitInfo:
    """Explain a worker's exit status.

    bwrap, unshare and a container's init (tini) report a child's death by signal as exit status
    128+signal; a plain child process shows it as a negative status.
    """
    sig = -rc if rc < 0 else (rc - 128 if rc > 128 else 0)
    if sig == signal.SIGXCPU:
        return ExitInfo(f"execution exceeded the CPU time limit ({cfg.cpu_time_s} s)", cpu=True)
    if sig:
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
        hint = " (stack overflow from deep recursion?)" if sig == signal.SIGSEGV else ""
        return ExitInfo(f"the Python process was killed by {name}{hint}")
    return ExitInfo(f"the Python process exited with status {rc}")


class WorkerChannel(abc.ABC):
    """The client half of the worker protocol over file descriptors; every backend subclasses it.

    A subclass starts its worker, calls `__init__` with the fds, and implements `alive`, `kill`,
    `exit_info` (and optionally `boot_log_tail`). `rfd` and `wfd` may be one fd (a socket).
    """

    ident: str = "?"  # how logs name this worker (a pid, a container id)

    def __init__(self, cfg: SandboxConfig, rfd: int, wfd: int) -> None:
        self.cfg = cfg
        self.max_reply = 64 * cfg.max_output_chars + (1 << 20)  # JSON-escaped head+tail, generously
        self.rfd = rfd
        self.wfd = wfd
        os.set_blocking(self.wfd, False)
        self.ready_info: dict[str, Any] | None = None
        self._kill_lock = threading.Lock()
        self._io_lock = threading.Lock()  # held while a thread reads/writes the fds
        self.dead = False
        self.cells = 0

    # --------------------------------------------------------------- fds with deadlines
    def _write_all(self, data: bytes, deadline: float) -> None:
        view = memoryview(data)
        while view:
            left = deadline - time.monotonic()
            if left <= 0:
                raise WorkerDied("timeout")
            try:
                _, w, _ = select.select([], [self.wfd], [], left)
            except (OSError, ValueError) as exc:
                raise WorkerDied("died", str(exc)) from None
            if not w:
                continue
            try:
                n = os.write(self.wfd, view)
            except BlockingIOError:
                continue
            except OSError as exc:  # BrokenPipe (or EBADF after kill): the worker is gone
                raise WorkerDied("died", str(exc)) from None
            view = view[n:]

    def _read_raw(self, n: int, deadline: float) -> bytes:
        """Exactly n bytes from rfd before the deadline."""
        buf = bytearray()
        while len(buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise WorkerDied("timeout")
            try:
                r, _, _ = select.select([self.rfd], [], [], left)
                if not r:
                    continue
                chunk = os.read(self.rfd, min(n - len(buf), 1 << 20))
            except BlockingIOError:  # a non-blocking socket may wake select() with nothing to read
                continue
            except (OSError, ValueError) as exc:
                raise WorkerDied("died", str(exc)) from None
            if not chunk:
                raise WorkerDied("died", "end of stream")
            buf += chunk
        return bytes(buf)

    def _read_exact(self, n: int, deadline: float) -> bytes:
        """Exactly n bytes of the protocol stream; a backend whose transport frames it unwraps here."""
        return self._read_raw(n, deadline)

    def _recv(self, deadline: float) -> dict[str, Any]:
        (n,) = struct.unpack(">I", self._read_exact(4, deadline))
        if n > self.max_reply:  # never buffer an unbounded reply from untrusted code
            raise WorkerDied("garbled", f"reply of {n} bytes exceeds the {self.max_reply}-byte cap")
        try:
            msg = json.loads(self._read_exact(n, deadline).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise WorkerDied("garbled", str(exc)) from None
        if not isinstance(msg, dict):
            raise WorkerDied("garbled", "reply is not an object")
        return msg

    # --------------------------------------------------------------- API
    def wait_ready(self, timeout: float = _STARTUP_TIMEOUT_S) -> None:
        if self.ready_info is not None:
            return
        try:
            with self._io_lock:
                msg = self._recv(time.monotonic() + timeout)
        except WorkerDied as exc:
            tail = self.boot_log_tail()
            self.kill()
            raise RuntimeError(f"sandbox worker failed to start ({exc}): {tail}") from None
        if not msg.get("ready"):
            self.kill()
            raise RuntimeError(f"sandbox worker failed to start: {msg}")
        self.ready_info = msg

    def run(self, code: str, timeout: float) -> dict[str, Any]:
        """Send one cell and return the worker's reply dict; raise WorkerDied otherwise."""
        self.wait_ready()  # a cold start is the host's cost: it does not eat into the cell's time
        deadline = time.monotonic() + timeout
        with self._io_lock:
            return self._run_locked(code, deadline)

    def _run_locked(self, code: str, deadline: float) -> dict[str, Any]:
        self.cells += 1
        # ensure_ascii, on purpose: the body is then printable ASCII, so the only control bytes on
        # the worker's stdin are in the 4-byte length. The docker backend relies on this to pick
        # a detach-key sequence that can never occur in the stream.
        data = json.dumps({"id": self.cells, "code": code}, ensure_ascii=True).encode("ascii")
        try:
            self._write_all(struct.pack(">I", len(data)) + data, deadline)
        except WorkerDied as exc:
            # Dead before it could read the cell (e.g. killed while idle in the pool).
            raise WorkerDied("unavailable" if exc.kind == "died" and self.cells == 1 else exc.kind) from None
        reply = self._recv(deadline)
        if reply.get("id") != self.cells:  # a stale or forged reply: the channel cannot be trusted
            raise WorkerDied("garbled", "reply id mismatch")
        return reply

    # --------------------------------------------------------------- backend hooks
    @abc.abstractmethod
    def alive(self) -> bool: ...

    @abc.abstractmethod
    def kill(self) -> None:
        """Kill the worker and all it started. Idempotent; safe while another thread reads."""

    @abc.abstractmethod
    def exit_info(self) -> ExitInfo:
        """Why the worker ended. Call after it died by itself."""

    def kill_now(self) -> threading.Thread | None:
        """Last resort (a second Ctrl-C, the process about to exit): start the kill without taking
        locks or waiting. Default: kill() in a daemon thread, which is returned for a bounded join."""
        th = threading.Thread(target=self.kill, name=f"kill-{self.ident}", daemon=True)
        th.start()
        return th

    def boot_log_tail(self) -> str:
        """What the worker wrote to stderr before it took fd 2 over (interpreter errors)."""
        return ""


class WorkerProcess(WorkerChannel):
    """One local worker process and its private directory."""

    def __init__(self, iso: Isolation, cfg: SandboxConfig, root: str, worker_py: str) -> None:
        self.base = tempfile.mkdtemp(prefix="w-", dir=root)
        self.workdir = os.path.join(self.base, "work")
        os.mkdir(self.workdir, 0o700)
        os.chmod(self.base, 0o711)
        if iso.uid is not None and os.geteuid() == 0:
            os.chown(self.workdir, iso.uid, iso.uid)
        argv = [iso.python, "-s", "-B", worker_py, json.dumps(worker_config(cfg))]
        argv = wrap_argv(iso, argv, self.workdir, os.path.dirname(worker_py))
        kw: dict[str, Any] = {}
        if iso.uid is not None and os.geteuid() == 0:
            kw = {"user": iso.uid, "group": iso.uid, "extra_groups": []}
        # Worker stderr before it takes over fd 2 (interpreter/bwrap failures) goes to a root-owned file.
        self.boot_log = os.path.join(self.base, "boot.log")
        with open(self.boot_log, "wb") as boot:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=boot,
                cwd=self.workdir,
                env=minimal_env(self.workdir),
                start_new_session=True,  # own process group: one killpg takes everything
                close_fds=True,
                **kw,
            )
        self.pid = self.proc.pid
        self.ident = str(self.pid)
        super().__init__(
            cfg,
            self.proc.stdout.fileno(),  # type: ignore[union-attr]
            self.proc.stdin.fileno(),  # type: ignore[union-attr]
        )

    def alive(self) -> bool:
        return not self.dead and self.proc.poll() is None

    def exit_info(self) -> ExitInfo:
        try:
            rc = self.proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            return ExitInfo("the worker stopped responding")
        return describe_exit_status(rc, self.cfg)

    def kill(self) -> None:
        """SIGKILL the whole group (with namespaces that ends the pid namespace too); remove the dir."""
        with self._kill_lock:
            if self.dead:
                return  # idempotent: a second killpg could hit a reused pid
            self.dead = True
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.kill()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            log.warning("sandbox worker %d did not exit after SIGKILL", self.pid)
        # Close the pipes only once no other thread is inside a read/write on them: closing an
        # fd under a reader could let the number be reused by an unrelated file. The reader sees
        # EOF right after the SIGKILL, so this wait is short.
        if self._io_lock.acquire(timeout=5):
            try:
                for f in (self.proc.stdin, self.proc.stdout):
                    try:
                        if f is not None:
                            f.close()
                    except OSError:
                        pass
            finally:
                self._io_lock.release()
        shutil.rmtree(self.base, ignore_errors=True)

    def kill_now(self) -> None:
        """SIGKILL the group and return: no lock, no wait (the process is about to exit)."""
        if self.proc.returncode is None:  # not reaped yet, so the pid cannot have been reused
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except OSError:
                pass

    def boot_log_tail(self) -> str:
        try:
            with open(self.boot_log, "rb") as f:
                return f.read()[-2000:].decode("utf-8", "replace")
        except OSError:
            return ""
