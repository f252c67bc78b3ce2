"""Plumbing shared by the engines that talk to inference servers (SGLang, vLLM server mode).

Standard library only. Four pieces, each usable alone:

- `request(method, url, body)`: one JSON call with a timeout. Connection failures and 5xx answers
  are retried with exponential back-off (the server may be restarting or overloaded); 4xx answers
  are our bug and raise `RequestRejected` at once with the server's own message. When every try
  failed it raises `ServerUnavailable`, which says which URL, what happened and what to check.
- `wait_ready(url, timeout_s, process)`: poll a health URL until it answers 200, failing early,
  with the tail of the server's log, when the process we launched has exited.
- `ServerProcess(cmd, log_path)`: launch a server in its own process group with its output in a
  log file, so that it (and every process it forks) dies with us: a small guard process leads the
  group, gets SIGTERM from the kernel when the trainer dies, even by SIGKILL (PR_SET_PDEATHSIG),
  and then takes the whole group down. `close()` does the same on purpose: SIGTERM, then SIGKILL.
- `free_port()`.

The engines own the protocol (which paths, which JSON); nothing here knows SGLang or vLLM.
Servers are reached directly: proxies from the environment (http_proxy) are ignored. Create
ServerProcess objects from a thread that lives as long as they should (the main thread): the
kernel's parent-death signal fires when the *thread* that started the process exits.
"""

from __future__ import annotations

import ctypes
import http.client
import json
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Hashable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

RETRY_STATUS = (500, 502, 503, 504)  # overloaded, restarting, or a gateway whose worker is down
# Servers are reached directly: an http_proxy set for the internet must not catch 127.0.0.1:30000.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class RemoteError(RuntimeError):
    """A server did not give a usable answer. `url` is the request's URL."""

    def __init__(self, message: str, url: str = "") -> None:
        super().__init__(message)
        self.url = url


class RequestRejected(RemoteError):
    """The server refused the request (HTTP 4xx): a bug on our side or an invalid input, never retried."""

    def __init__(self, message: str, url: str, status: int, server_message: str) -> None:
        super().__init__(message, url)
        self.status = status
        self.server_message = server_message


class ServerUnavailable(RemoteError):
    """Connection failures, timeouts or 5xx answers on every try, or the launched server exited."""


def server_message(raw: bytes) -> str:
    """The human part of an error body: SGLang's {"error": {"message"}}, vLLM/FastAPI's {"detail"} or
    {"message"}, else the text itself (shortened)."""
    text = raw.decode("utf-8", "replace").strip()
    try:
        body = json.loads(text)
    except ValueError:
        return text[:2000]
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and "message" in err:
            return str(err["message"])
        for key in ("message", "detail", "error"):
            if body.get(key):
                return str(body[key])
    return text[:2000]


def request(
    method: str,
    url: str,
    body: Any = None,
    *,
    timeout_s: float = 60.0,
    max_retries: int = 3,
    backoff_s: float = 0.5,
    backoff_max_s: float = 10.0,
    check: Callable[[], None] | None = None,
    what: str = "",
) -> Any:
    """Send `body` as JSON (None: no body) and return the parsed JSON answer, or its text if not JSON.

    `timeout_s` bounds the connect and every wait for data, so a dead or stalled server cannot hang
    the caller; a timeout is not retried (the server may still be working on it: sending it again
    would double the load). `max_retries` more tries follow a connection failure or a 5xx, after
    backoff_s, 2*backoff_s, ... (capped at backoff_max_s, with +-25 % jitter so that many callers
    do not retry in step). `check` runs before each retry and should raise when the server is known
    to be gone (e.g. `ServerProcess.check`), so a dead launched server fails at once. `what` names
    the request in error messages, e.g. "generate request 'q3'".
    """
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} if data is not None else {}
    label = f"{what} ({method} {url})" if what else f"{method} {url}"
    last = ""
    for attempt in range(max_retries + 1):
        if attempt:
            if check is not None:
                check()
            delay = min(backoff_max_s, backoff_s * 2 ** (attempt - 1)) * random.uniform(0.75, 1.25)
            logger.warning("%s failed (%s); retry %d/%d in %.1f s", label, last, attempt, max_retries, delay)
            time.sleep(delay)
        req = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with _OPENER.open(req, timeout=timeout_s) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            msg = server_message(e.read())
            if e.code in RETRY_STATUS:
                last = f"HTTP {e.code}: {msg}"
                continue
            raise RequestRejected(
                f"{label} was rejected with HTTP {e.code}: {msg}", url, e.code, msg
            ) from None
        except TimeoutError as e:
            raise ServerUnavailable(
                f"{label} got no answer within {timeout_s:g} s ({e}); the server is stalled or overloaded: "
                "check its log, or raise the request timeout",
                url,
            ) from None
        except urllib.error.URLError as e:
            if isinstance(e.reason, TimeoutError):
                raise ServerUnavailable(
                    f"{label} got no answer within {timeout_s:g} s; the server is stalled or overloaded", url
                ) from None
            last = f"{type(e.reason).__name__}: {e.reason}"
            continue
        except (ConnectionError, http.client.HTTPException, OSError) as e:
            # RemoteDisconnected / reset: the server went away mid-request (crash, restart, kill)
            last = f"{type(e).__name__}: {e}"
            continue
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            return raw.decode("utf-8", "replace")
    raise ServerUnavailable(
        f"{label} failed {max_retries + 1} times, last: {last}. Is the server at {url} running and "
        "reachable? Check its log; if it died, restart it (or let the trainer launch it).",
        url,
    )


def post(url: str, body: Any = None, **kw: Any) -> Any:
    """`request("POST", url, body, **kw)`; an empty JSON object when body is None (servers want one)."""
    return request("POST", url, {} if body is None else body, **kw)


def get(url: str, **kw: Any) -> Any:
    """`request("GET", url, **kw)`."""
    return request("GET", url, **kw)


def poll_futures(
    inflight: dict[Hashable, Future], wait_s: float, on_done: Callable[[Hashable], None] | None = None
) -> list[tuple[Hashable, Any]]:
    """The finished requests of `inflight` (key -> Future of one HTTP request), removed from it,
    after waiting at most `wait_s` for the first: `Engine.poll` for engines whose server batches the
    requests it receives. A failed request raises here, with the message its request gave."""
    if not inflight:
        return []
    wait(list(inflight.values()), timeout=wait_s, return_when=FIRST_COMPLETED)
    out = []
    for key, fut in list(inflight.items()):
        if fut.done():
            del inflight[key]
            if on_done is not None:
                on_done(key)
            out.append((key, fut.result()))
    return out


def wait_ready(
    url: str,
    timeout_s: float,
    process: ServerProcess | None = None,
    interval_s: float = 0.5,
    what: str = "server",
) -> float:
    """Poll GET `url` until it answers 200; return the seconds waited.

    Raises ServerUnavailable at the deadline, or as soon as `process` (the server we launched) has
    exited, with the tail of its log. Any other answer (503 while loading, connection refused
    before the port is bound) means "not yet"."""
    t0 = time.monotonic()
    last = "no answer yet"
    while True:
        if process is not None:
            process.check(f"while waiting for {what} to become ready at {url}")
        try:
            with _OPENER.open(url, timeout=max(interval_s, 5.0)) as resp:
                if resp.status == 200:
                    return time.monotonic() - t0
                last = f"HTTP {resp.status}"
        except urllib.error.HTTPError as e:
            last = f"HTTP {e.code}: {server_message(e.read())[:200]}"
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            last = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
        waited = time.monotonic() - t0
        if waited > timeout_s:
            tail = f"\n--- last lines of {process.log_path} ---\n{process.log_tail()}" if process else ""
            raise ServerUnavailable(
                f"{what} at {url} was not ready after {timeout_s:g} s (last: {last}). If it is still "
                f"loading, raise the start-up timeout; otherwise check that the URL is right.{tail}",
                url,
            )
        time.sleep(interval_s)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (another process may still take it before the server binds)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


PR_SET_PDEATHSIG = 1


def set_parent_death_signal(sig: int = signal.SIGTERM) -> bool:
    """Ask the kernel to send `sig` to this process when its parent dies (Linux); False elsewhere.

    Note the kernel's definition of "parent": the *thread* that forked us. Launch servers from a
    thread that lives as long as the engine (the main thread), not from a short-lived worker."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


class ServerProcess:
    """A server command run under a guard process that leads its own process group.

    Layout: trainer -> guard (group leader, PR_SET_PDEATHSIG=SIGTERM) -> server -> server's children,
    all in the guard's group. When the trainer dies, however it dies, the kernel signals the guard,
    which sends SIGTERM to the group, waits `grace_s`, then SIGKILLs it; the same happens on
    `close()`. Processes that leave the group on purpose (setsid) are out of reach; SGLang and vLLM
    do not do that. stdout and stderr go to `log_path`.
    """

    def __init__(
        self,
        cmd: list[str],
        log_path: str | Path,
        env: dict[str, str] | None = None,
        cwd: str | Path | None = None,
        grace_s: float = 10.0,
        name: str = "server",
    ) -> None:
        self.cmd = [str(c) for c in cmd]
        self.log_path = Path(log_path)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.grace_s = grace_s
        self.name = name
        # the guard asks for its parent-death signal itself, then checks that we are still its
        # parent: no preexec_fn, which is unsafe in a process with threads (the trainer has many)
        guard = [
            sys.executable,
            "-m",
            "agentic_gcpo.engines.remote",
            "--guard",
            str(grace_s),
            str(os.getpid()),
        ]
        with open(self.log_path, "ab") as log:
            log.write(f"$ {' '.join(self.cmd)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                guard + self.cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                cwd=cwd,
                start_new_session=True,  # its own session and process group: killpg reaches all of it
            )
        self.pid = self.proc.pid

    def poll(self) -> int | None:
        """The exit code once the server (its guard) has exited, else None."""
        return self.proc.poll()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 64 * 1024))
                return "\n".join(f.read().decode("utf-8", "replace").splitlines()[-lines:])
        except OSError as e:
            return f"(log unreadable: {e})"

    def check(self, context: str = "") -> None:
        """Raise ServerUnavailable with the log tail if the server has exited."""
        code = self.poll()
        if code is None:
            return
        how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        raise ServerUnavailable(
            f"the {self.name} (pid {self.pid}) {how}{' ' + context if context else ''}. "
            f"Command: {' '.join(self.cmd)}\n--- last lines of {self.log_path} ---\n{self.log_tail()}"
        )

    def close(self) -> None:
        """SIGTERM the whole group, SIGKILL whatever is left after the grace period. Idempotent."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=self.grace_s + 5.0)  # the guard itself escalates after grace_s
            except subprocess.TimeoutExpired:
                pass
        try:  # stragglers, or a guard that did not manage: nothing of the group may survive
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _guard(grace_s: float, owner: int, cmd: list[str]) -> int:
    """Run `cmd` as a child and take our whole process group down when told to or when it exits.

    We are the group leader (ServerProcess made a new session). SIGTERM/SIGINT/SIGHUP, including the
    SIGTERM the kernel sends when the trainer dies, end the group: SIGTERM to all, then SIGKILL after
    grace_s. When the server exits by itself, its leftover children get SIGTERM, and we exit with its
    code (a death by signal N as 128 + N)."""
    pgid = os.getpgrp()
    set_parent_death_signal(signal.SIGTERM)
    if os.getppid() != owner:  # the trainer died before prctl took effect: nobody would stop us later
        return 1
    stop: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda signum, _frame: stop.append(signum))
    # the server gets SIGTERM if the guard alone is killed, so it never outlives its guard
    child = subprocess.Popen(cmd, preexec_fn=set_parent_death_signal)  # noqa: PLW1509 - no threads here
    while (code := child.poll()) is None:
        if stop:  # polled, not done in the handler: Popen.wait is not safe to re-enter from one
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the killpg below reaches us too
            os.killpg(pgid, signal.SIGTERM)
            deadline = time.monotonic() + grace_s
            while child.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            os.killpg(pgid, signal.SIGKILL)  # the rest of the group, this process included
        time.sleep(0.05)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.killpg(pgid, signal.SIGTERM)  # children the server left behind
    return 128 - code if code < 0 else code


if __name__ == "__main__":
    if len(sys.argv) > 4 and sys.argv[1] == "--guard":
        sys.exit(_guard(float(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]))
    sys.exit("usage: python -m agentic_gcpo.engines.remote --guard GRACE_S OWNER_PID COMMAND ...")
