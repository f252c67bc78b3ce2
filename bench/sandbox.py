"""Sandbox latency/throughput benchmark: warm pooled sessions vs a cold start per call.

    python bench/sandbox.py [--n 200] [--sessions 32] [--backends local,docker]

Measures, in one run on this machine, for each backend: p50/p95 of `print(1+1)` and of a SymPy
`solve`, on a warm pooled session and cold (what a pool-less sandbox would pay per call: locally
a fresh interpreter that imports SymPy, under the same isolation launcher and uid as the workers;
for docker a fresh `docker run --rm` of the sandbox image, same limits, `python3 -c` importing
SymPy); then throughput with many concurrent sessions. A backend that cannot run here (no daemon,
no image) is reported as unavailable with the reason. Not measured: memory per worker, behaviour
under a loaded trainer.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

from agentic_gcpo.sandbox import SandboxConfig, SandboxUnavailable, make_sandbox
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


def cold_local(sb, code: str, n: int) -> list[float]:
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


def cold_docker(sb, code: str, n: int) -> list[float]:
    # One throw-away container per call with the sandbox's limits: create, start, wait, remove.
    cfg = sb.cfg
    api = sb._client.api
    tmpfs = f"rw,nosuid,nodev,size={cfg.docker_tmpfs_mb}m,mode=1777"
    host_config = api.create_host_config(
        network_mode="none",
        read_only=True,
        tmpfs={"/work": tmpfs, "/tmp": tmpfs},
        mem_limit=f"{cfg.memory_mb + cfg.docker_tmpfs_mb}m",
        pids_limit=cfg.max_processes,
        nano_cpus=int(cfg.docker_cpus * 1e9),
        cap_drop=["ALL"],
        security_opt=["no-new-privileges"],
        init=True,
    )
    out = []
    for _ in range(n):
        t = time.perf_counter()
        cid = api.create_container(
            cfg.docker_image,
            command=["python3", "-s", "-B", "-c", "import sympy\n" + code],
            user="65534:65534",
            environment=minimal_env("/work"),
            working_dir="/work",
            labels={"agentic-gcpo.bench": "1"},
            host_config=host_config,
        )["Id"]
        try:
            api.start(cid)
            rc = api.wait(cid)["StatusCode"]
            out.append(time.perf_counter() - t)
            assert rc == 0, api.logs(cid)
        finally:
            api.remove_container(cid, force=True)
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


def bench_backend(backend: str, args: argparse.Namespace) -> dict[str, object]:
    """{case: (warm, cold) samples, "tp": 32-session calls/s, "tp1": 1-session calls/s, "info": ...}"""
    cfg = SandboxConfig(backend=backend, pool_size=4, timeout_s=30)
    res: dict[str, object] = {}
    with make_sandbox(cfg) as sb:
        res["info"] = sb.info()
        time.sleep(3 if backend == "local" else 6)  # let the pool fill
        cold = cold_local if backend == "local" else cold_docker
        for name, code in CASES.items():
            res[name] = (warm(sb, code, args.n), cold(sb, code, args.cold_n))
        res["tp"] = throughput(sb, args.sessions, args.calls)
        res["tp1"] = throughput(sb, 1, args.calls * 4)
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200, help="warm calls per case")
    ap.add_argument("--cold-n", type=int, default=10, help="cold calls per case")
    ap.add_argument("--sessions", type=int, default=32)
    ap.add_argument("--calls", type=int, default=10, help="calls per session in the throughput run")
    ap.add_argument("--backends", default="local,docker", help="comma-separated: local,docker")
    args = ap.parse_args()
    results: dict[str, dict[str, object] | str] = {}
    for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
        try:
            results[backend] = bench_backend(backend, args)
        except SandboxUnavailable as exc:
            results[backend] = f"not available: {exc}"
    print(f"cores: {os.cpu_count()}  load average: {os.getloadavg()[0]:.1f}")
    for backend, r in results.items():
        if isinstance(r, dict):
            print(f"{backend} isolation: {r['info']}")
    print(
        f"{'backend':<8}{'case':<14}{'warm p50':>10}{'warm p95':>10}{'cold p50':>10}{'cold p95':>10}{'cold/warm':>11}"
    )
    for backend, r in results.items():
        if isinstance(r, str):
            print(f"{backend:<8}{r}")
            continue
        for name in CASES:
            w, c = r[name]  # type: ignore[misc]
            print(
                f"{backend:<8}{name:<14}{pct(w, 0.5):>8.2f}ms{pct(w, 0.95):>8.2f}ms{pct(c, 0.5):>8.1f}ms"
                f"{pct(c, 0.95):>8.1f}ms{statistics.median(c) / statistics.median(w):>10.0f}x"
            )
    for backend, r in results.items():
        if isinstance(r, dict):
            print(
                f"throughput {backend}, sympy solve: {args.sessions} concurrent sessions {r['tp']:.0f} calls/s "
                f"(incl. {args.sessions} session starts), 1 session {r['tp1']:.0f} calls/s"
            )


if __name__ == "__main__":
    main()
