"""Sandbox worker: runs untrusted, model-written Python inside the isolation boundary.

One worker process serves one session (one trajectory): it keeps a single globals dict, so
variables and imports persist from one cell to the next, notebook style. It is started by the
client (``agentic_gcpo.sandbox.local`` or the Docker backend), imports the modules of its config's
`preload` list (none by default: a cell imports SymPy when it asks for it) *before* it announces
itself ready, then applies its resource limits and serves requests.

Protocol (over the pipes the client gave us as stdin/stdout): every message is a 4-byte big-endian
length followed by that many bytes of UTF-8 JSON.
  client -> worker: {"code": "..."}
  worker -> client: {"ready": true, ...} once at start, then one result dict per request.

What this file covers:
  * stdout/stderr are captured at the file-descriptor level (memfds dup'ed onto fd 1 and 2), so
    os.write(1, ...), C extensions and child processes are captured too; output is truncated here,
    head + tail, so a worker never ships megabytes back to the client.
  * rlimits: CPU (per cell: the soft limit is moved forward before each cell; the hard limit is
    a lifetime cap), address space, file size, process count, no core files.
  * The value of a final expression statement is returned as its repr(), like a notebook.

What it does NOT cover (the client does): the wall-clock timeout, killing, network and filesystem
isolation, the uid switch. Untrusted code runs in this very process, so it can corrupt anything
here, including the protocol channel; the client treats any malformed reply as a dead worker.
This file must stay stdlib + SymPy/NumPy only: it never imports agentic_gcpo.
"""

import ast
import builtins
import importlib
import io
import json
import linecache
import os
import resource
import signal
import struct
import sys
import traceback

_CELL = "<cell>"
_READ_ALL_LIMIT = 8 * 1024 * 1024  # above this, only head and tail bytes of an output are read


def _truncate(text, limit):
    """Keep the head and tail of text, with a marker saying how much was cut from the middle."""
    if len(text) <= limit:
        return text, False
    head = limit // 2
    tail = limit - head
    cut = len(text) - limit
    return text[:head] + f"\n...[truncated {cut} chars]...\n" + (text[-tail:] if tail else ""), True


def _clean(text):
    # Lone surrogates (from a custom __repr__, say) cannot be encoded; replace them.
    return text.encode("utf-8", "replace").decode("utf-8")


class Worker:
    def __init__(self, cfg):
        self.cfg = cfg
        self.limit = int(cfg["max_output_chars"])
        # Keep private copies of the protocol pipes and point fds 0/1/2 elsewhere, so a stray
        # print or a child process can never write into the protocol stream by accident.
        # os.dup gives non-inheritable fds, so children do not get them either.
        self.rfd = os.dup(0)
        self.wfd = os.dup(1)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        self.out_fd = os.memfd_create("stdout", 0)
        self.err_fd = os.memfd_create("stderr", 0)
        self._rebind_fds()
        self.globals = {"__name__": "__main__", "__builtins__": builtins}
        self.pid = os.getpid()
        self.cells = 0

    # ---------------------------------------------------------------- setup
    def apply_limits(self):
        cfg = self.cfg
        mb = 1024 * 1024
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        mem = int(cfg["memory_mb"]) * mb
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        fsize = int(cfg["max_file_mb"]) * mb
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
        nproc = int(cfg["max_processes"])
        try:
            resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
        except (ValueError, OSError):
            pass  # the client reports whether NPROC is enforced; nothing more to do here
        # RLIMIT_CPU counts the whole life of the process, so the hard limit is a lifetime cap
        # and the soft limit is moved to "used + cpu_time_s" before every cell (see _arm_cpu).
        hard = int(cfg["cpu_lifetime_s"])
        resource.setrlimit(resource.RLIMIT_CPU, (hard, hard))
        # Writes past RLIMIT_FSIZE should raise OSError(EFBIG) in the cell, not kill the worker.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    def _arm_cpu(self):
        ru = resource.getrusage(resource.RUSAGE_SELF)
        used = ru.ru_utime + ru.ru_stime
        _, hard = resource.getrlimit(resource.RLIMIT_CPU)
        soft = int(used + float(self.cfg["cpu_time_s"])) + 1
        if hard != resource.RLIM_INFINITY:
            soft = min(soft, hard)
        try:
            resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))
        except (ValueError, OSError):
            pass

    def _rebind_fds(self):
        # The cell may have closed or redirected fd 1/2 or replaced sys.stdout; undo that.
        os.dup2(self.out_fd, 1)
        os.dup2(self.err_fd, 2)
        for fd in (self.out_fd, self.err_fd):
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
        sys.stdout = io.TextIOWrapper(
            open(1, "wb", closefd=False), encoding="utf-8", errors="backslashreplace", line_buffering=False
        )
        sys.stderr = io.TextIOWrapper(
            open(2, "wb", closefd=False), encoding="utf-8", errors="backslashreplace", line_buffering=False
        )
        sys.stdin = open(os.devnull)  # noqa: SIM115 - lives as long as the cell

    # ---------------------------------------------------------------- protocol
    def _read_exact(self, n):
        chunks = []
        while n:
            chunk = os.read(self.rfd, min(n, 1 << 20))
            if not chunk:
                raise EOFError
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    def recv(self):
        (n,) = struct.unpack(">I", self._read_exact(4))
        return json.loads(self._read_exact(n).decode("utf-8"))

    def send(self, msg):
        data = json.dumps(msg, ensure_ascii=False).encode("utf-8")
        data = struct.pack(">I", len(data)) + data
        view = memoryview(data)
        while view:
            n = os.write(self.wfd, view)
            view = view[n:]

    # ---------------------------------------------------------------- execution
    def _collect(self, fd):
        size = os.fstat(fd).st_size
        if size <= _READ_ALL_LIMIT:
            text = os.pread(fd, size, 0).decode("utf-8", "replace")
            return _truncate(text, self.limit)
        # Huge output: read only the ends; the cut count is then in bytes, close enough.
        head = os.pread(fd, self.limit * 2, 0).decode("utf-8", "replace")[: self.limit // 2]
        tail_n = self.limit - self.limit // 2
        tail = os.pread(fd, self.limit * 2, size - self.limit * 2).decode("utf-8", "replace")
        tail = tail[-tail_n:] if tail_n else ""
        cut = size - len(head) - len(tail)
        return head + f"\n...[truncated {cut} chars]...\n" + tail, True

    def _format_error(self, exc):
        if isinstance(exc, SyntaxError):
            where = f" (line {exc.lineno})" if exc.lineno else ""
            return type(exc).__name__, f"{exc.msg}{where}", None
        tb = exc.__traceback__
        # Drop the worker's own frames so the traceback starts in the user's cell.
        while tb is not None and tb.tb_frame.f_code.co_filename != _CELL:
            tb = tb.tb_next
        try:
            text = "".join(traceback.format_exception(type(exc), exc, tb))
        except Exception:
            text = f"{type(exc).__name__}\n"
        try:
            msg = str(exc)
        except Exception:
            msg = "<exception str() failed>"
        return type(exc).__name__, msg, text

    def execute(self, code):
        self.cells += 1
        self._rebind_fds()
        value = None
        err_type = err = tb_text = None
        memory = False
        try:
            self._arm_cpu()
            linecache.cache[_CELL] = (len(code), None, code.splitlines(True), _CELL)
            if "\x00" in code:  # ValueError or SyntaxError depending on the Python version; unify
                raise SyntaxError("source code string cannot contain null bytes")
            tree = ast.parse(code, _CELL, "exec")
            last = None
            if tree.body and isinstance(tree.body[-1], ast.Expr):
                last = ast.Expression(tree.body.pop().value)
            exec(compile(tree, _CELL, "exec"), self.globals)
            if last is not None:
                result = eval(compile(last, _CELL, "eval"), self.globals)
                if result is not None:
                    self.globals["_"] = result
                    value = repr(result)
        except SystemExit as exc:
            if exc.code not in (None, 0):
                err_type, err, tb_text = "SystemExit", str(exc.code), None
        except BaseException as exc:  # noqa: BLE001 - everything the cell does is reported
            memory = isinstance(exc, MemoryError)
            err_type, err, tb_text = self._format_error(exc)
            if memory and not err:
                err = f"out of memory (limit {self.cfg['memory_mb']} MB)"
        for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
            try:
                stream.flush()
            except Exception:
                pass
        stdout, t1 = self._collect(self.out_fd)
        stderr, t2 = self._collect(self.err_fd)
        if tb_text:
            stderr = stderr + tb_text if len(stderr) < self.limit else stderr
            stderr, t3 = _truncate(stderr, self.limit)
            t2 = t2 or t3
        t3 = False
        if value is not None:
            value, t3 = _truncate(value, self.limit)
        if err is not None:
            err, _ = _truncate(err, 1000)
        return {
            "stdout": _clean(stdout),
            "stderr": _clean(stderr),
            "value": None if value is None else _clean(value),
            "error_type": err_type,
            "error": None if err is None else _clean(err),
            "memory_exceeded": memory,
            "output_truncated": bool(t1 or t2 or t3),
        }

    def serve(self):
        while True:
            try:
                req = self.recv()
            except EOFError:
                return
            try:
                res = self.execute(str(req.get("code", "")))
            except BaseException as exc:  # noqa: BLE001 - report, never die silently
                res = {"error_type": "SandboxError", "error": f"worker failure: {exc!r}"[:1000]}
            if os.getpid() != self.pid:
                # A child the cell forked (os.fork) came back out of the cell: it must not answer
                # on the shared pipe or read the next request. Leave quietly.
                os._exit(0)
            res["id"] = req.get("id")
            self.send(res)


def main():
    cfg = json.loads(sys.argv[1])
    worker = Worker(cfg)
    ready = {"ready": True, "pid": os.getpid(), "uid": os.getuid(), "python": sys.version.split()[0]}
    # Imported before the limits apply and before the pool calls the worker warm. Each one costs
    # every worker its import time (SymPy ~0.4 s of CPU) whether or not its session uses it.
    for name in cfg.get("preload", []):
        try:
            mod = importlib.import_module(name)
            ready.setdefault("preloaded", {})[name] = getattr(mod, "__version__", "")
        except Exception as exc:  # noqa: BLE001 - reported, the cell's own import will say why too
            ready.setdefault("preload_errors", {})[name] = repr(exc)
    worker.apply_limits()
    worker.send(ready)
    worker.serve()


if __name__ == "__main__":
    main()
