"""Docker sandbox backend: the same worker and protocol as the local backend, one container each.

Each worker is a long-lived container whose main process (under the daemon's tini init) is
sandbox/worker.py. The client creates it through the docker SDK, attaches to its stdin/stdout
*before* starting it (so the ready message cannot be missed), and then speaks the same
length-prefixed JSON as with a local process (process.WorkerChannel), unwrapping the daemon's
stdout/stderr multiplexing. One session = one container; sessions, the warm pool and
execute() are shared with the local backend (pool.PooledSandbox).

Isolation of every container: `--network none`; memory (memory_mb + tmpfs, no swap), pids
(max_processes) and CPU (docker_cpus) cgroup limits; read-only root filesystem with small tmpfs
mounts at /work (the working dir) and /tmp; uid 65534 (nobody); all capabilities dropped and
no-new-privileges; an environment built from scratch (isolation.minimal_env: no host variables).
The worker applies its own rlimits inside (CPU per cell, address space, file size) as locally.

Cleanup, so nothing leaks even when the trainer is interrupted:
  * timeout, crash, close_session(), close(): the container is force-removed (SIGKILL to its
    whole pid namespace) right away;
  * close() is also run by a weakref finalizer on garbage collection and at interpreter exit;
  * containers run with auto-remove and stdin-once: if this process dies without running its
    finalizer (SIGKILL), its attach connections close, every idle worker reads EOF and exits, and
    the daemon removes the container;
  * containers carry labels (agentic-gcpo.sandbox=1, owner host, pid and process start time), and
    every new DockerSandbox (or `agentic-gcpo sandbox reap`) removes those of owners that are
    gone: the remaining case is a worker that was busy in a cell when its owner was SIGKILLed.

NOT covered: seccomp beyond Docker's default profile, user namespaces (uid 65534 in the
container is uid 65534 on the host), disk quotas other than the tmpfs sizes. Like the local
backend, output printed before a timeout or crash is lost and a timeout loses the session state.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import logging
import os
import socket
import struct
import threading
import uuid
from typing import Any

from . import SandboxUnavailable
from .base import SandboxConfig
from .isolation import minimal_env
from .pool import PooledSandbox
from .process import ExitInfo, WorkerChannel, WorkerDied, describe_exit_status, worker_config

log = logging.getLogger("agentic_gcpo.sandbox")

LABEL = "agentic-gcpo.sandbox"  # =1 on every container this backend creates
OWNER_HOST = "agentic-gcpo.owner-host"
OWNER_PID = "agentic-gcpo.owner-pid"
OWNER_START = "agentic-gcpo.owner-start"  # the owner's start time: a reused pid is not the owner
INSTANCE = "agentic-gcpo.instance"  # one DockerSandbox object
WORKER_SHA_LABEL = "agentic-gcpo.worker-sha256"  # set by sandbox/build_image.sh
WORKER_PATH = "/opt/agentic-gcpo/worker.py"  # where sandbox/build_image.sh puts the worker
WORKDIR = "/work"
SANDBOX_UID = "65534:65534"
DEFAULT_IMAGE = "agentic-gcpo-sandbox:latest"


def build_hint(image: str) -> str:
    tag = "" if image == DEFAULT_IMAGE else f" --tag {image}"
    return f"run `agentic-gcpo sandbox build-image{tag}` (or sandbox/build_image.sh{tag})"


# The daemon scans an attached stdin for a "detach" key sequence (ctrl-p,ctrl-q by default) and
# cuts the stream when it sees it; those two bytes can occur in our 4-byte length prefixes. Eight
# NUL bytes never can: the message body is printable ASCII (WorkerChannel sends ensure_ascii JSON)
# and a length prefix holds at most three NULs, followed by '{'.
_DETACH_KEYS = ",".join(["ctrl-@"] * 8)
_STDOUT, _STDERR = 1, 2  # stream ids in the daemon's multiplexing headers
_BOOT_LOG_MAX = 4096


class DockerUnavailable(SandboxUnavailable):
    """Docker cannot be used here; the message says exactly why and what to do."""


def _docker_module() -> Any:
    try:
        import docker  # optional dependency: only this backend needs it
    except ImportError as exc:
        raise DockerUnavailable(
            "the docker sandbox backend needs the `docker` Python package: "
            f"pip install 'agentic-gcpo[docker]' ({exc})"
        ) from None
    return docker


def connect() -> Any:
    """A DockerClient for the daemon named by DOCKER_HOST (default: the local unix socket)."""
    docker = _docker_module()
    url = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        # A larger pool: up to one connection per concurrent container start, plus the events stream.
        client = docker.from_env(max_pool_size=64)
        client.ping()
    except Exception as exc:  # noqa: BLE001 - DockerException, ConnectionError, PermissionError ...
        raise DockerUnavailable(
            f"docker daemon not reachable at {url}: start dockerd (as root: "
            f"`dockerd > /tmp/dockerd.log 2>&1 &`) or set DOCKER_HOST ({type(exc).__name__}: {exc})"
        ) from None
    return client


def packaged_worker_sha256() -> str:
    """sha256 of the worker this package ships; the image must hold the same file."""
    src = importlib.resources.files("agentic_gcpo.sandbox_files") / "worker.py"
    return hashlib.sha256(src.read_bytes()).hexdigest()


def check_image(client: Any, image: str) -> dict[str, str]:
    """The image's labels; DockerUnavailable when it is missing or holds another worker.py."""
    docker = _docker_module()
    try:
        attrs = client.api.inspect_image(image)
    except docker.errors.ImageNotFound:
        raise DockerUnavailable(f"image {image} not built: {build_hint(image)}") from None
    labels = (attrs.get("Config") or {}).get("Labels") or {}
    have, want = labels.get(WORKER_SHA_LABEL), packaged_worker_sha256()
    if have != want:
        raise DockerUnavailable(
            f"image {image} holds a different sandbox worker (sha256 {str(have)[:12]}, this package "
            f"ships {want[:12]}): rebuild it: {build_hint(image)}"
        )
    return labels


def _start_time(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks); None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def owner_labels() -> dict[str, str]:
    return {
        LABEL: "1",
        OWNER_HOST: socket.gethostname(),
        OWNER_PID: str(os.getpid()),
        OWNER_START: _start_time(os.getpid()) or "",
    }


def reap_orphans(client: Any) -> list[str]:
    """Remove sandbox containers whose owner process (on this host) is gone. Returns their ids.

    Containers of owners on other hosts sharing the daemon are left alone: we cannot see those.
    """
    docker = _docker_module()
    host = socket.gethostname()
    removed = []
    for c in client.api.containers(all=True, filters={"label": f"{LABEL}=1"}):
        labels = c.get("Labels") or {}
        if labels.get(OWNER_HOST) != host:
            continue
        pid = labels.get(OWNER_PID, "")
        alive = pid.isdigit() and _start_time(int(pid)) == labels.get(OWNER_START)
        if alive:
            continue
        try:
            client.api.remove_container(c["Id"], force=True)
            removed.append(c["Id"])
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:  # e.g. 409: removal already in progress
            log.debug("sandbox: could not reap %s: %s", c["Id"][:12], exc)
    if removed:
        log.warning("sandbox: removed %d container(s) left by dead owners", len(removed))
    return removed


class _ExitWatcher:
    """Exit status and OOM kills of our containers, from the daemon's event stream.

    Needed because containers auto-remove themselves: once a worker died, asking the daemon for
    its exit status races with the removal. The events are subscribed to before any container
    exists, so none can be missed.
    """

    def __init__(self, api: Any, instance: str) -> None:
        self._cond = threading.Condition()
        self._watched: set[str] = set()
        self._exits: dict[str, tuple[int, bool]] = {}  # container id -> (exit code, OOM-killed)
        self._oom: set[str] = set()
        self._ended = False
        self._stream = api.events(
            decode=True,
            filters={"type": "container", "event": ["die", "oom"], "label": f"{INSTANCE}={instance}"},
        )
        self._thread = threading.Thread(target=self._loop, name="sandbox-docker-events", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        try:
            for ev in self._stream:
                cid = ev.get("id") or (ev.get("Actor") or {}).get("ID", "")
                action = ev.get("Action") or ev.get("status")
                with self._cond:
                    if cid not in self._watched:
                        continue
                    if action == "oom":
                        self._oom.add(cid)
                    elif action == "die":
                        attrs = (ev.get("Actor") or {}).get("Attributes") or {}
                        code = int(attrs.get("exitCode", -1))
                        self._exits[cid] = (code, cid in self._oom)
                        self._cond.notify_all()
        except Exception:  # noqa: BLE001 - the stream breaks when closed or when the daemon goes
            pass
        with self._cond:
            self._ended = True
            self._cond.notify_all()

    def watch(self, cid: str) -> None:
        with self._cond:
            self._watched.add(cid)

    def forget(self, cid: str) -> None:
        with self._cond:
            self._watched.discard(cid)
            self._exits.pop(cid, None)
            self._oom.discard(cid)

    def exited(self, cid: str) -> bool:
        with self._cond:
            return cid in self._exits

    def wait(self, cid: str, timeout: float) -> tuple[int, bool] | None:
        with self._cond:
            self._cond.wait_for(lambda: cid in self._exits or self._ended, timeout)
            return self._exits.get(cid)

    def close(self) -> None:
        try:
            self._stream.close()
        except Exception:  # noqa: BLE001 - already closed or the daemon is gone
            pass


class ContainerWorker(WorkerChannel):
    """One worker container, attached; see the module docstring."""

    def __init__(
        self, client: Any, watcher: _ExitWatcher, cfg: SandboxConfig, labels: dict[str, str]
    ) -> None:
        docker = _docker_module()
        api = client.api
        self._api = api
        self._watcher = watcher
        self._boot = bytearray()
        self._frame_left = 0  # bytes of the current stdout frame not read yet
        self._fd = -1
        self.mem_mb = cfg.memory_mb + cfg.docker_tmpfs_mb
        tmpfs_opts = f"rw,nosuid,nodev,size={cfg.docker_tmpfs_mb}m,mode=1777"
        host_config = api.create_host_config(
            network_mode="none",
            read_only=True,
            tmpfs={WORKDIR: tmpfs_opts, "/tmp": tmpfs_opts},
            # tmpfs pages count against the memory cgroup, hence the sum; no swap beyond it.
            mem_limit=f"{self.mem_mb}m",
            memswap_limit=f"{self.mem_mb}m",
            pids_limit=cfg.max_processes,
            nano_cpus=int(cfg.docker_cpus * 1e9),
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            init=True,  # tini as pid 1: reaps orphans, turns a signal death into exit 128+sig
            auto_remove=True,
            ipc_mode="private",
            oom_score_adj=500,  # under host memory pressure the kernel picks sandboxes before the trainer
        )
        # The pids cgroup limits each container on its own. RLIMIT_NPROC would instead count every
        # uid-65534 process on the host (all containers and local workers), so one session's fork
        # bomb could starve the others: leave it effectively unlimited here.
        wcfg = worker_config(cfg, max_processes=1 << 20)
        created = api.create_container(
            cfg.docker_image,
            command=["python3", "-s", "-B", WORKER_PATH, json.dumps(wcfg)],
            user=SANDBOX_UID,
            stdin_open=True,
            # detach=False + stdin_open makes the SDK set StdinOnce: when our attach connection
            # closes (this process died), the worker's stdin closes too, it reads EOF and exits.
            detach=False,
            tty=False,  # a tty would mangle the binary protocol
            environment=minimal_env(WORKDIR),
            working_dir=WORKDIR,
            labels=labels,
            host_config=host_config,
        )
        self.cid: str = created["Id"]
        self.ident = self.cid[:12]
        watcher.watch(self.cid)
        try:
            # Attach before start: the ready message goes out as soon as SymPy is imported.
            params = {"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1, "detachKeys": _DETACH_KEYS}
            sock = api.attach_socket(self.cid, params=params)
            # Keep only our own duplicate of the hijacked connection's fd, and close the SDK's
            # HTTP objects now (response first: it flushes through the socket object). Closing a
            # dup'ed fd does not shut the connection down, and a plain fd is what the channel
            # reads and writes, and what kill() closes.
            fd = os.dup(sock.fileno())
            for obj in (getattr(sock, "_response", None), sock):
                try:
                    if obj is not None:
                        obj.close()
                except Exception:  # noqa: BLE001 - best effort; the dup keeps the connection
                    pass
            self._fd = fd
            api.start(self.cid)
        except BaseException:
            try:
                api.remove_container(self.cid, force=True)
            except docker.errors.APIError:
                pass
            watcher.forget(self.cid)
            if self._fd >= 0:
                os.close(self._fd)
            raise
        super().__init__(cfg, self._fd, self._fd)

    # ---------------------------------------------------------------- framing
    def _read_exact(self, n: int, deadline: float) -> bytes:
        # Without a tty the daemon wraps the container's output in frames: 1 byte stream id,
        # 3 zero bytes, 4-byte big-endian length, payload. Unwrap stdout; keep a little stderr
        # (the worker only writes there before it owns fd 2: interpreter errors).
        buf = bytearray()
        while len(buf) < n:
            if self._frame_left == 0:
                stream, size = struct.unpack(">BxxxI", self._read_raw(8, deadline))
                if stream == _STDOUT:
                    self._frame_left = size
                    continue
                if stream != _STDERR:
                    raise WorkerDied("garbled", f"unknown stream id {stream} from the daemon")
                while size:  # read in chunks: never buffer an unbounded stderr frame
                    chunk = self._read_raw(min(size, 1 << 16), deadline)
                    size -= len(chunk)
                    self._boot = (self._boot + chunk)[-_BOOT_LOG_MAX:]
                continue
            chunk = self._read_raw(min(n - len(buf), self._frame_left), deadline)
            self._frame_left -= len(chunk)
            buf += chunk
        return bytes(buf)

    # ---------------------------------------------------------------- hooks
    def alive(self) -> bool:
        return not self.dead and not self._watcher.exited(self.cid)

    def exit_info(self) -> ExitInfo:
        rec = self._watcher.wait(self.cid, timeout=5.0)
        if rec is None:
            return ExitInfo("the sandbox container stopped (exit status unknown)")
        code, oom = rec
        if oom:
            return ExitInfo(f"the container ran out of memory (limit {self.mem_mb} MiB)", memory=True)
        return describe_exit_status(code, self.cfg)

    def kill(self) -> None:
        with self._kill_lock:
            if self.dead:
                return
            self.dead = True
        docker = _docker_module()
        try:
            # SIGKILL to the container's init ends its whole pid namespace; then the daemon removes it.
            self._api.remove_container(self.cid, force=True)
        except docker.errors.NotFound:
            pass  # it exited and auto-remove was faster
        except docker.errors.APIError as exc:
            if exc.status_code != 409:  # 409: a removal is already in progress
                log.warning("sandbox: could not remove container %s: %s", self.ident, exc)
        except Exception as exc:  # noqa: BLE001 - daemon gone: the reaper of the next run handles it
            log.warning("sandbox: could not remove container %s: %s", self.ident, exc)
        self._watcher.forget(self.cid)
        # As for local pipes: close the socket only when no thread is reading it (fd reuse).
        if self._io_lock.acquire(timeout=5):
            try:
                os.close(self._fd)
            except OSError:
                pass
            finally:
                self._io_lock.release()

    def boot_log_tail(self) -> str:
        return bytes(self._boot).decode("utf-8", "replace")


class DockerSandbox(PooledSandbox):
    """Sandbox backend running each worker in its own container. Thread-safe; see module docstring."""

    def __init__(self, cfg: SandboxConfig) -> None:
        client = connect()
        self._client = client
        try:
            self._image_labels = check_image(client, cfg.docker_image)
            reap_orphans(client)
            super().__init__(cfg)
            self._instance = uuid.uuid4().hex
            self._labels = owner_labels() | {INSTANCE: self._instance}
            self._watcher = _ExitWatcher(client.api, self._instance)
        except BaseException:
            client.close()
            raise
        st = self._state
        watcher, instance = self._watcher, self._instance
        # After the workers are killed: remove anything of this instance still there (a container
        # created while close() ran), stop the event stream, close the client's connections.
        st.cleanups += [lambda: _sweep(client, instance), watcher.close, client.close]
        self._start_pool()

    def _new_worker(self) -> ContainerWorker:
        return ContainerWorker(self._client, self._watcher, self.cfg, self._labels)

    def __enter__(self) -> DockerSandbox:
        return self

    def info(self) -> dict[str, Any]:
        """How this sandbox is isolated (same keys as LocalSandbox.info())."""
        cfg = self.cfg
        return {
            "mode": "docker",
            "image": cfg.docker_image,
            "python": "python3 (in the image)",
            "uid": 65534,
            "network_blocked": True,
            "nproc_enforced": True,  # by the pids cgroup, per container
            "filesystem_private": True,
            "notes": [
                f"limits: memory {cfg.memory_mb + cfg.docker_tmpfs_mb} MiB, pids {cfg.max_processes}, "
                f"cpus {cfg.docker_cpus}, tmpfs {cfg.docker_tmpfs_mb} MiB at {WORKDIR} and /tmp",
                "no user namespace: uid 65534 in the container is uid 65534 on the host",
            ],
        }

    def container_ids(self) -> list[str]:
        """Ids of this sandbox's live containers (pooled, starting and in sessions)."""
        return [w.cid for w in self._workers() if isinstance(w, ContainerWorker)]

    @property
    def instance(self) -> str:
        return self._instance


def _sweep(client: Any, instance: str) -> None:
    docker = _docker_module()
    try:
        for c in client.api.containers(all=True, filters={"label": f"{INSTANCE}={instance}"}):
            try:
                client.api.remove_container(c["Id"], force=True)
            except docker.errors.APIError:
                pass
    except Exception:  # noqa: BLE001 - daemon gone; the next run's reaper removes leftovers
        log.debug("sandbox: final sweep failed", exc_info=True)
