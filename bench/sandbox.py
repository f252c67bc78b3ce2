"""Sandbox latency/throughput benchmark: warm pooled sessions vs a cold `python -c` per call.

    python bench/sandbox.py [--n 200] [--sessions 32]

Measures, in one run on this machine: p50/p95 of `print(1+1)` and of a SymPy `solve`, on a warm
pooled session and cold (a fresh interpreter that imports SymPy, run under the same isolation
launcher and uid as the workers, which is what a pool-less sandbox would pay per call); then
throughput with many concurrent sessions. Docker columns say "not available" until that backend
exists. Not measured: memory per worker, behaviour under a loaded trainer.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

from agentic_gcpo.sandbox import SandboxConfig, make_sandbox
from agentic_gcpo.sandbox.isolation import minimal_env, wrap_argv

CASES = {
    "print(1+1)": "print(1+1)",
    "sympy solve": "import sympy as sp\nx = sp.Symbol('x')\nprint(sp.solve(x**2 - 5*x + 6, x))",
}


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] * 1000


def warm(sb, code: str, n: int) -> list[float]:
    sb.execute(code, "bench")  # first call may pay a cold start if the pool is not full yet
    out = []
    for _ in range(n):
        t = time.perf_counter()
        r = sb.execute(code, "bench")
        out.append(time.perf_counter() - t)
        assert r.ok, r
    sb.close_session("bench")
    return out


def cold(sb, code: str, n: int) -> list[float]:
    iso = sb.isolation
    out = []
    for _ in range(n):
        with tempfile.TemporaryDirectory() as d:
            os.chmod(d, 0o777)
            argv = wrap_argv(iso, [iso.python, "-s", "-B", "-c", "import sympy\n" + code], d, d)
            kw = (
                {"user": iso.uid, "group": iso.uid, "extra_groups": []}
                if iso.uid and os.geteuid() == 0
                else {}
            )
            t = time.perf_counter()
            subprocess.run(argv, cwd=d, env=minimal_env(d), capture_output=True, check=True, **kw)
            out.append(time.perf_counter() - t)
    return out


def throughput(sb, sessions: int, calls: int) -> float:
    def one(i: int) -> None:
        for _ in range(calls):
            r = sb.execute(CASES["sympy solve"], f"tp-{i}")
            assert r.ok, r
        sb.close_session(f"tp-{i}")

    t = time.perf_counter()
    with ThreadPoolExecutor(sessions) as ex:
        list(ex.map(one, range(sessions)))
    return sessions * calls / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200, help="warm calls per case")
    ap.add_argument("--cold-n", type=int, default=10, help="cold calls per case")
    ap.add_argument("--sessions", type=int, default=32)
    ap.add_argument("--calls", type=int, default=10, help="calls per session in the throughput run")
    args = ap.parse_args()
    cfg = SandboxConfig(pool_size=4, timeout_s=30)
    with make_sandbox(cfg) as sb:
        print(f"isolation: {sb.info()}  cores: {os.cpu_count()}")
        time.sleep(3)  # let the pool fill
        print(
            f"{'case':<14}{'warm p50':>10}{'warm p95':>10}{'cold p50':>10}{'cold p95':>10}{'cold/warm':>11}  docker"
        )
        for name, code in CASES.items():
            w = warm(sb, code, args.n)
            c = cold(sb, code, args.cold_n)
            print(
                f"{name:<14}{pct(w, 0.5):>8.2f}ms{pct(w, 0.95):>8.2f}ms{pct(c, 0.5):>8.1f}ms{pct(c, 0.95):>8.1f}ms"
                f"{statistics.median(c) / statistics.median(w):>10.0f}x  not available"
            )
        tp = throughput(sb, args.sessions, args.calls)
        tp1 = throughput(sb, 1, args.calls * 4)
        print(
            f"throughput, sympy solve: {args.sessions} concurrent sessions {tp:.0f} calls/s "
            f"(incl. {args.sessions} session starts), 1 session {tp1:.0f} calls/s; docker: not available"
        )


if __name__ == "__main__":
    main()
