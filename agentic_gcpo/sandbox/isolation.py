"""Find out, once per process, how this machine can isolate a sandbox worker, and build its argv.

Layers, strongest first (each one observed on the 2-core Debian dev machines):
  * uid: when we are root, workers run as nobody (65534) so RLIMIT_NPROC counts and host files
    owned by root stay unwritable. That needs an interpreter nobody can read and import SymPy
    from: /root is mode 700, so a pyenv Python under /root does not qualify; Debian's
    /usr/bin/python3 + python3-sympy does. Without one we run as the current user and say so.
  * bubblewrap (`bwrap`): new user/pid/net/ipc/uts namespaces, a read-only view of only /usr and
    friends, a private /tmp, the session dir as the only writable host path.
  * `unshare --user --net --pid --fork --kill-child`: no network, one pid namespace (killing its
    init kills every process the code started), but the host filesystem stays visible.
  * none: rlimits only. The network is NOT blocked; a warning is logged.

NOT covered: seccomp syscall filtering, disk quotas (only a per-file size limit), CPU shares
between workers, and hiding /proc of the host in the `unshare` fallback.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass, field

log = logging.getLogger("agentic_gcpo.sandbox")

NOBODY = 65534
_PROBE = (
    "import json, os, sys, sympy; "
    "print(json.dumps([sys.prefix, sys.base_prefix, sys.exec_prefix, "
    "os.path.dirname(os.path.dirname(sympy.__file__))] + sys.path))"
)
_NET_PROBE = (
    "import socket\n"
    "try:\n"
    "    socket.create_connection(('1.1.1.1', 53), timeout=0.5)\n"
    "except OSError as e:\n"
    "    print('errno', e.errno)\n"
)


@dataclass(frozen=True)
class Isolation:
    """The isolation this process settled on (cached; see `detect`)."""

    mode: str  # "bwrap" | "unshare" | "none"
    python: str  # interpreter the worker runs under
    uid: int | None  # uid to switch to, or None for "stay who we are"
    ro_paths: tuple[str, ...] = ()  # extra read-only binds for bwrap (interpreter prefix, site dirs)
    notes: tuple[str, ...] = field(default=())
    launcher: str = ""  # absolute path of bwrap/unshare (the worker's env has its own PATH)

    @property
    def network_blocked(self) -> bool:
        return self.mode in ("bwrap", "unshare")

    @property
    def nproc_enforced(self) -> bool:
        # RLIMIT_NPROC is ignored for root; with namespaces it counts per user namespace.
        return (self.uid is not None and self.uid != 0) or os.geteuid() != 0

    @property
    def filesystem_private(self) -> bool:
        return self.mode == "bwrap"


def minimal_env(home: str) -> dict[str, str]:
    """The whole environment of a worker: nothing is inherited from the host (no secrets)."""
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": home,
        "TMPDIR": home,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PYTHONHASHSEED": "0",  # set/dict-of-str iteration order is reproducible across runs
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONNOUSERSITE": "1",
        # One BLAS thread: threads count against RLIMIT_NPROC and 2 cores are shared by all workers.
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }


def _run(argv: list[str], uid: int | None, timeout: float = 60.0) -> subprocess.CompletedProcess[str] | None:
    kw: dict[str, object] = {}
    if uid is not None and os.geteuid() == 0 and uid != 0:
        kw = {"user": uid, "group": uid, "extra_groups": []}
    try:
        return subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd="/",
            env=minimal_env("/tmp"),
            start_new_session=True,
            **kw,  # type: ignore[arg-type]
        )
    except (OSError, subprocess.SubprocessError):
        return None


def _pick_interpreter() -> tuple[str, int | None, list[str], list[str]]:
    """(python, uid, paths the interpreter needs, notes)."""
    notes: list[str] = []
    candidates = [sys.executable, shutil.which("python3") or "", "/usr/bin/python3"]
    candidates = list(dict.fromkeys(c for c in candidates if c and os.path.exists(c)))
    if os.geteuid() == 0:
        for py in candidates:
            res = _run([py, "-s", "-B", "-c", _PROBE], NOBODY)
            if res is not None and res.returncode == 0:
                return py, NOBODY, json.loads(res.stdout.strip().splitlines()[-1]), notes
        notes.append(
            "running sandbox workers as root: no interpreter that uid 65534 can run with SymPy "
            f"(tried {candidates}; install Debian's python3 and python3-sympy), so RLIMIT_NPROC "
            "is NOT enforced and, unless bubblewrap hides them, host files are writable by sandboxed code"
        )
    for py in candidates:
        res = _run([py, "-s", "-B", "-c", _PROBE], None)
        if res is not None and res.returncode == 0:
            return py, None, json.loads(res.stdout.strip().splitlines()[-1]), notes
    raise RuntimeError(f"no Python interpreter with SymPy found for the sandbox (tried {candidates})")


def _ro_paths(paths: list[str]) -> tuple[str, ...]:
    # Bind what the interpreter needs that is not already under the system dirs bwrap binds.
    system = ("/usr/", "/bin/", "/lib/", "/lib64/", "/sbin/", "/etc/")
    keep: list[str] = []
    for p in sorted({os.path.realpath(p) for p in paths if p and os.path.isdir(p)}, key=len):
        if (p + "/").startswith(system) or any((p + "/").startswith(k + "/") for k in keep):
            continue
        keep.append(p)
    return tuple(keep)


def bwrap_argv(iso: Isolation, workdir: str, worker_dir: str) -> list[str]:
    argv = [iso.launcher, "--unshare-all", "--die-with-parent", "--new-session"]
    for d in ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(d):
            argv += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            argv += ["--ro-bind", d, d]
    for f in (
        "/etc/ld.so.cache",
        "/etc/ld.so.conf",
        "/etc/ld.so.conf.d",
        "/etc/localtime",
        "/etc/alternatives",
    ):
        if os.path.exists(f):
            argv += ["--ro-bind", f, f]
    argv += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
    for p in iso.ro_paths:
        argv += ["--ro-bind", p, p]
    argv += ["--ro-bind", worker_dir, worker_dir, "--bind", workdir, workdir, "--chdir", workdir]
    return argv + ["--"]


def wrap_argv(iso: Isolation, argv: list[str], workdir: str, worker_dir: str) -> list[str]:
    """The full command line for a worker under `iso`."""
    if iso.mode == "bwrap":
        return bwrap_argv(iso, workdir, worker_dir) + argv
    if iso.mode == "unshare":
        return [iso.launcher, "--user", "--net", "--pid", "--fork", "--kill-child", "--"] + argv
    return argv


def _probe_mode(iso: Isolation, mode: str) -> bool:
    import tempfile

    trial = Isolation(mode, iso.python, iso.uid, iso.ro_paths, launcher=shutil.which(mode) or mode)
    tmp = tempfile.mkdtemp(prefix="agcpo-probe-")
    try:
        os.chmod(tmp, 0o777)  # the probe may run as nobody
        argv = wrap_argv(trial, [iso.python, "-s", "-B", "-c", _NET_PROBE], tmp, tmp)
        res = _run(argv, iso.uid, timeout=30)
        # In a fresh net namespace there is no route: ENETUNREACH (101).
        return res is not None and res.returncode == 0 and "errno 101" in res.stdout
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


_cache: dict[str, Isolation] = {}
_cache_lock = threading.Lock()


def detect(requested: str = "auto") -> Isolation:
    """Probe once per process and requested level; later calls return the cached answer."""
    with _cache_lock:
        if requested in _cache:
            return _cache[requested]
        python, uid, paths, notes = _pick_interpreter()
        base = Isolation("none", python, uid, _ro_paths(paths), tuple(notes))
        iso = base
        if requested != "none":
            # Debug/CI knob to exercise the fallbacks on a machine that has bubblewrap.
            order = os.environ.get("AGENTIC_GCPO_SANDBOX_LAUNCHERS", "bwrap,unshare").split(",")
            for mode in [m.strip() for m in order if m.strip() in ("bwrap", "unshare")]:
                if shutil.which(mode) and _probe_mode(base, mode):
                    iso = Isolation(
                        mode, python, uid, base.ro_paths, tuple(notes), shutil.which(mode) or mode
                    )
                    break
            else:
                msg = (
                    "sandbox: neither bubblewrap nor `unshare --user --net` works here; workers run with "
                    "rlimits only and the network is NOT blocked (apt-get install -y bubblewrap)"
                )
                if requested == "namespaces":
                    raise RuntimeError(
                        msg.replace("; workers run", " and isolation='namespaces'; workers would run")
                    )
                iso = Isolation("none", python, uid, base.ro_paths, tuple(notes) + (msg,))
        elif requested == "none":
            iso = Isolation(
                "none", python, uid, base.ro_paths, tuple(notes) + ("isolation='none': network NOT blocked",)
            )
        for note in iso.notes:
            log.warning("sandbox: %s", note)
        _cache[requested] = iso
        return iso
