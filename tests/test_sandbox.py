"""Adversarial tests of the local sandbox, with real worker processes (no mocks).

Each test runs one hostile or edge-case cell and then checks that the host is unharmed and that a
new session still works. Isolation-dependent properties (network, NPROC, private filesystem) are
skipped with the exact reason when this machine cannot provide them; `LocalSandbox.info()` says
which layers are active.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from agentic_gcpo.sandbox import ExecResult, Sandbox, SandboxConfig, make_sandbox, truncate_middle

TIMEOUT = 1.0
CFG = SandboxConfig(timeout_s=TIMEOUT, cpu_time_s=2.0, memory_mb=512, max_output_chars=400, pool_size=3)


@pytest.fixture(scope="module")
def sb():
    box = make_sandbox(CFG)
    yield box
    box.close()


@pytest.fixture(scope="module")
def info(sb) -> dict:
    return sb.info()


def _run(sb: Sandbox, code: str) -> ExecResult:
    session = uuid.uuid4().hex
    try:
        return sb.execute(code, session)
    finally:
        sb.close_session(session)


def _host_ok(sb: Sandbox) -> None:
    """The host survived and a brand-new session works."""
    r = _run(sb, "print(1+1)")
    assert r.ok and r.render() == "2", r


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


# ----------------------------------------------------------------------------- render / contract


def test_render_rules():
    assert ExecResult("2\n", "", None, None, None).render() == "2"
    assert ExecResult("a\n\n", "", None, None, None).render() == "a\n"  # only ONE newline stripped
    assert ExecResult("", "", "4", None, None).render() == "4"
    assert ExecResult("x\n", "", "4", None, None).render() == "x\n4"
    r = ExecResult("x\n", "warn", None, "ZeroDivisionError", "division by zero")
    assert r.render() == "x\nError: ZeroDivisionError: division by zero" and not r.ok
    assert ExecResult("", "", None, None, None).render() == "(no output)"
    assert ExecResult("", "", None, None, None, duration_s=1.23).render() == "(no output)"


def test_config_rejects_unknown_keys():
    with pytest.raises(ValueError, match="nope"):
        SandboxConfig(nope=1)
    with pytest.raises(NotImplementedError, match="docker"):
        make_sandbox(SandboxConfig(backend="docker"))


def test_truncate_middle_head_tail():
    text, cut = truncate_middle("a" * 10 + "b" * 10, 8)
    assert cut and text == "aaaa\n...[truncated 12 chars]...\nbbbb"


# ----------------------------------------------------------------------------- semantics


def test_final_expression_value(sb):
    assert _run(sb, "1+1").value == "2"
    assert _run(sb, "x = 3").value is None
    assert _run(sb, "print('hi')\nNone").render() == "hi"
    r = _run(sb, "import sympy as sp\nx = sp.Symbol('x')\nprint('roots')\nsp.solve(x**2 - 4, x)")
    assert r.render() == "roots\n[-2, 2]"
    assert _run(sb, "'a'").render() == "'a'"


def test_state_persists_in_session_and_not_across(sb):
    sb.execute("import math\nsecret_var = 41", "A")
    assert sb.execute("secret_var + 1", "A").value == "42"
    assert sb.execute("math.sqrt(16)", "A").value == "4.0"
    r = sb.execute("secret_var", "B")
    assert r.error_type == "NameError"
    sb.close_session("A")
    sb.close_session("A")  # idempotent
    sb.close_session("B")
    assert sb.execute("secret_var", "A").error_type == "NameError"  # reopened = fresh state
    sb.close_session("A")


def test_exception_reported(sb):
    r = _run(sb, "def f():\n    return 1/0\nf()")
    assert r.error_type == "ZeroDivisionError" and r.error == "division by zero"
    assert "line 2" in r.stderr and "worker.py" not in r.stderr
    assert _run(sb, "def (").error_type == "SyntaxError"


def test_empty_code(sb):
    r = _run(sb, "")
    assert r.ok and r.render() == "(no output)"


def test_nul_in_code(sb):
    r = _run(sb, "print(1)\x00")
    assert r.error_type == "SyntaxError" and "null" in (r.error or "")
    _host_ok(sb)


def test_one_megabyte_of_code(sb):
    code = "s = '" + "x" * (1 << 20) + "'\nlen(s)"
    r = _run(sb, code)
    assert r.value == str(1 << 20)
    _host_ok(sb)


def test_non_utf8_and_binary_output(sb):
    r = _run(
        sb,
        "import os, sys\nsys.stdout.buffer.write(b'\\xff\\xfeabc\\n')\nsys.stdout.flush()\nos.write(1, bytes(range(256)))",
    )
    assert r.ok and "abc" in r.stdout and "\ufffd" in r.stdout and "\x00" in r.stdout
    r.render().encode("utf-8")  # always valid text
    r = _run(sb, "print('\\ud800')\nclass A:\n    def __repr__(self): return '\\udcff'\nA()")
    (r.render()).encode("utf-8")
    _host_ok(sb)


def test_truncation_head_tail_marker(sb):
    r = _run(sb, "print('A' * 3000 + 'B' * 3000, end='')")
    assert r.output_truncated
    assert r.stdout.startswith("A" * 200) and r.stdout.endswith("B" * 200)
    assert "\n...[truncated 5600 chars]...\n" in r.stdout


def test_huge_output(sb):
    t0 = time.monotonic()
    r = _run(sb, "import sys\nfor _ in range(10**7):\n    sys.stdout.write('y' * 1000)")
    assert time.monotonic() - t0 < TIMEOUT + 3
    assert len(r.stdout) < 600 and (r.output_truncated or r.timed_out)
    _host_ok(sb)


def test_garbage_on_protocol_channel(sb):
    code = textwrap.dedent("""
        import os
        for fd in range(3, 64):
            try:
                if 'pipe' in os.readlink(f'/proc/self/fd/{fd}'):
                    os.write(fd, b'\\x00\\x00\\x00\\x05{{{{{' * 10)
            except OSError:
                pass
    """)
    r = _run(sb, code)
    assert r.error_type == "SandboxError" and "lost" in (r.error or "")
    _host_ok(sb)


# ----------------------------------------------------------------------------- resource abuse


def test_infinite_loop(sb):
    r = _run(sb, "while True:\n    pass")
    assert r.timed_out and r.error_type == "TimeoutError" and "state" in (r.error or "")
    assert r.duration_s < TIMEOUT + 1.5
    _host_ok(sb)


def test_sleep_timeout_loses_state(sb):
    sb.execute("v = 1", "S")
    r = sb.execute("import time\ntime.sleep(100)", "S")
    assert r.timed_out and "lost" in (r.error or "")
    assert sb.execute("v", "S").error_type == "NameError"  # fresh worker, same session id
    sb.close_session("S")
    _host_ok(sb)


def test_sigterm_ignored(sb):
    r = _run(sb, "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nwhile True:\n    pass")
    assert r.timed_out
    _host_ok(sb)


def test_memory_bomb(sb):
    r = _run(sb, "x = bytearray(4 * 1024**3)")
    assert r.memory_exceeded and r.error_type == "MemoryError"
    r = _run(sb, "a = []\nwhile True:\n    a.append(' ' * 10**7)")
    assert r.memory_exceeded or r.error_type in ("MemoryError", "SandboxError") or r.timed_out
    _host_ok(sb)


def test_fork_bomb(sb, info):
    if not info["nproc_enforced"]:
        pytest.skip(f"RLIMIT_NPROC is not enforced here (workers run as root): {info['notes']}")
    code = textwrap.dedent("""
        import os, time
        n = 0
        for _ in range(10000):
            if os.fork() == 0:
                time.sleep(30)
                os._exit(0)
            n += 1
    """)
    r = _run(sb, code)
    assert r.error_type in ("BlockingIOError", "TimeoutError"), r
    _host_ok(sb)


def test_deep_recursion(sb):
    r = _run(sb, "def f(n):\n    return f(n + 1)\nf(0)")
    assert r.error_type == "RecursionError"
    r = _run(sb, "import sys\nsys.setrecursionlimit(10**7)\ndef f(n):\n    return f(n + 1)\nf(0)")
    assert not r.ok  # RecursionError, MemoryError or a crash of the worker: never the host
    _host_ok(sb)


def test_sympy_never_finishes(sb):
    r = _run(sb, "import sympy\nsympy.factorint(sympy.nextprime(10**40) * sympy.nextprime(10**41))")
    assert r.timed_out
    _host_ok(sb)


def test_os_exit(sb):
    sb.execute("v = 1", "E")
    r = sb.execute("import os\nos._exit(3)", "E")
    assert r.error_type == "SandboxError" and "status 3" in (r.error or "") and "lost" in (r.error or "")
    assert sb.execute("1 + 1", "E").value == "2"  # the same session continues on a fresh worker
    sb.close_session("E")


def test_kill_parent(sb, info):
    if info["mode"] == "none" and info["uid"] is None and os.geteuid() == 0:
        pytest.skip("workers run as root without namespaces here: they could kill any host process")
    me = os.getpid()
    r = _run(sb, "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nimport time\ntime.sleep(0.2)")
    assert os.getpid() == me  # we are still here
    assert r.error_type in (None, "SandboxError", "PermissionError") or r.timed_out
    _host_ok(sb)


# ----------------------------------------------------------------------------- isolation


def test_env_secrets_not_visible(sb, monkeypatch):
    secret = "agcpo-fake-secret-" + uuid.uuid4().hex
    monkeypatch.setenv("AGCPO_FAKE_SECRET", secret)
    code = textwrap.dedent("""
        import os, glob
        seen = repr(dict(os.environ))
        for p in glob.glob('/proc/*/environ'):
            try:
                seen += open(p, 'rb').read().decode('latin-1')
            except OSError:
                pass
        print(seen)
    """)
    fresh = make_sandbox(CFG.model_copy(update={"pool_size": 0}))  # workers started after setenv
    try:
        r = fresh.execute(code, "s")
    finally:
        fresh.close()
    assert r.ok, r
    assert secret not in r.stdout and "AGCPO_FAKE_SECRET" not in r.stdout
    _host_ok(sb)


def test_write_outside_workdir(sb, info, tmp_path):
    if info["uid"] is None and os.geteuid() == 0:
        pytest.skip(
            "workers run as root here (no interpreter readable by uid 65534), so host files are writable"
        )
    os.chmod(tmp_path, 0o755)
    target = tmp_path / "escaped.txt"
    tmp_target = f"/tmp/agcpo-escape-{uuid.uuid4().hex}"
    code = f"""
import os
for p in [{str(target)!r}, {tmp_target!r}]:
    try:
        open(p, 'w').write('x')
    except OSError as e:
        print(type(e).__name__)
open('inside.txt', 'w').write('ok')
print(open(os.path.join(os.getcwd(), 'inside.txt')).read())
"""
    r = _run(sb, code)
    assert r.ok and r.stdout.rstrip().endswith("ok"), r
    assert not target.exists()
    if info["filesystem_private"]:
        assert not os.path.exists(tmp_target)
    elif os.path.exists(tmp_target):
        os.unlink(tmp_target)  # world-writable /tmp is shared without bubblewrap; documented
    _host_ok(sb)


def test_network_blocked(sb, info):
    if not info["network_blocked"]:
        pytest.skip(f"no network namespace on this machine (mode={info['mode']}): {info['notes']}")
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    try:
        code = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=0.5)\n'connected'"
        r = _run(sb, code)
        assert r.value != "'connected'" and r.error_type in (
            "ConnectionRefusedError",
            "OSError",
            "TimeoutError",
        )
        r = _run(sb, "import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=0.5)")
        assert not r.ok
    finally:
        srv.close()


# ----------------------------------------------------------------------------- concurrency / cleanup


def test_thread_safety_concurrent_sessions(sb):
    def one(i: int) -> list[str]:
        s = f"conc-{i}"
        out = [sb.execute(f"n = {i}", s).render()]
        for _ in range(5):
            out.append(sb.execute("n = n * 2\nn", s).render())
        sb.close_session(s)
        return out

    with ThreadPoolExecutor(8) as ex:
        results = list(ex.map(one, range(8)))
    for i, out in enumerate(results):
        assert out == ["(no output)"] + [str(i * 2**k) for k in range(1, 6)]


def test_no_leaks_after_close():
    box = make_sandbox(CFG.model_copy(update={"pool_size": 2}))
    root = box._state.root  # type: ignore[attr-defined]
    for i in range(3):
        box.execute("import subprocess\nsubprocess.Popen(['sleep', '60'])", f"s{i}")
    box.close_session("s0")
    pids = box.worker_pids()  # type: ignore[attr-defined]
    assert pids and os.path.isdir(root)
    box.close()
    with pytest.raises(RuntimeError):
        box.execute("1", "s1")
    time.sleep(0.2)
    assert not os.path.exists(root)
    assert not [p for p in pids if _alive(p)]
    # nothing that the sandbox started survives as a process whose cwd is under its root
    assert not _procs_under(root)


def _procs_under(root: str) -> list[int]:
    found = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                cwd = os.readlink(f"/proc/{d}/cwd")
            except OSError:
                continue
            if cwd.startswith(root) and _alive(int(d)):
                found.append(int(d))
    return found


def test_no_leaks_at_interpreter_exit():
    script = textwrap.dedent("""
        from agentic_gcpo.sandbox import SandboxConfig, make_sandbox
        sb = make_sandbox(SandboxConfig(pool_size=2))
        sb.execute("import subprocess\\nsubprocess.Popen(['sleep', '60'])", "s")
        print(sb._state.root, *sb.worker_pids())
        # no close(): the atexit finalizer must clean up
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    root, *pids = out.stdout.split()
    time.sleep(0.2)
    assert not os.path.exists(root)
    assert not [p for p in pids if _alive(int(p))]
    assert not _procs_under(root)


def test_many_threads_same_session_serialised(sb):
    errors: list[BaseException] = []

    def bump() -> None:
        try:
            sb.execute("c = globals().get('c', 0) + 1", "same")
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    ts = [threading.Thread(target=bump) for _ in range(10)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors and sb.execute("c", "same").value == "10"
    sb.close_session("same")


def test_session_survives_exit_of_the_thread_that_started_it(sb):
    # Regression: bwrap's --die-with-parent fires when the forking *thread* exits.
    t = threading.Thread(target=lambda: sb.execute("kept = 7", "thread-exit"))
    t.start()
    t.join()
    time.sleep(0.3)
    assert sb.execute("kept", "thread-exit").value == "7"
    sb.close_session("thread-exit")


def test_cpu_limit_per_cell():
    # Wall limit generous, CPU limit tight: RLIMIT_CPU (whole seconds, re-armed per cell) fires first.
    with make_sandbox(SandboxConfig(pool_size=0, timeout_s=8, cpu_time_s=1)) as box:
        box.execute("1", "s")
        r = box.execute("while True:\n    pass", "s")
        assert r.timed_out and "CPU time" in (r.error or "") and r.duration_s < 4
        for _ in range(3):  # many short cells must not add up to the per-cell limit
            assert box.execute("sum(range(10**6))", "s").ok
