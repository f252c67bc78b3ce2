"""`agentic-gcpo sandbox ...`: try code the way the model does, and build the Docker image.

    agentic-gcpo sandbox exec [--backend local|docker] [--session NAME] [--timeout S] [--json] [CODE ...]
    agentic-gcpo sandbox build-image [--base IMAGE] [--tag TAG] [--force]
    agentic-gcpo sandbox reap

`exec` runs each CODE argument as one cell (notebook style) in one session and prints what the
model would see (ExecResult.render()); CODE omitted or '-' reads a cell from stdin. Cells of one
invocation share state; separate invocations never do, even with the same --session, because the
sandbox (and its workers) end with the process. Exit status: 0 when every cell succeeded, 1 when
one raised or timed out, 2 when the sandbox could not be used (message on stderr).

Wire it into a parent parser with `add_sandbox_parser(subparsers)`; each subcommand sets
`fn(args) -> int`. `run_cli(argv)` runs it standalone, e.g. run_cli(["sandbox", "exec", "1+1"]).
"""

from __future__ import annotations

import argparse
import importlib.resources
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from . import SandboxConfig, SandboxUnavailable, make_sandbox

_EXEC_HELP = """\
Each CODE is one cell, run in order in one session (state is shared between them); CODE omitted or
'-' reads one cell from stdin. The output is the tool observation the model would see. State does
NOT persist across separate invocations, whatever --session says: the workers end with this process.
Exit status: 0 all cells ok, 1 a cell raised or timed out, 2 the sandbox is unavailable."""


def _read_stdin() -> str:
    # Bytes, decoded leniently: a stray non-UTF-8 byte becomes U+FFFD, like the model's own text.
    return sys.stdin.buffer.read().decode("utf-8", "replace")


def _exec(args: argparse.Namespace) -> int:
    cells = list(args.code) or ["-"]
    if cells.count("-") > 1:
        print("error: stdin ('-') can be read only once", file=sys.stderr)
        return 2
    cells = [_read_stdin() if c == "-" else c for c in cells]
    update: dict[str, object] = {"backend": args.backend, "pool_size": 0}  # one session: no warm pool
    if args.timeout is not None:
        update["timeout_s"] = args.timeout
        update["cpu_time_s"] = args.timeout
    if args.image:
        update["docker_image"] = args.image
    try:
        cfg = SandboxConfig(**update)  # type: ignore[arg-type]
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        box = make_sandbox(cfg)
    except SandboxUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    failed = False
    with box:
        for code in cells:
            res = box.execute(code, args.session)
            if res.error_type == "SandboxError" and res.error and "could not start worker" in res.error:
                print(f"error: {res.error}", file=sys.stderr)
                return 2
            failed = failed or not res.ok
            if args.json:
                print(json.dumps(res.to_dict(), ensure_ascii=False), flush=True)
            else:
                print(res.render(), flush=True)
                if res.stderr and not res.ok:  # the traceback helps a human; the model sees render()
                    print(res.stderr.rstrip("\n"), file=sys.stderr, flush=True)
    return 1 if failed else 0


def _script_dir(stack: list[tempfile.TemporaryDirectory[str]]) -> Path:
    """A real directory holding build_image.sh and worker.py (copied out if the package is zipped)."""
    files = importlib.resources.files("agentic_gcpo.sandbox_files")
    if isinstance(files, Path) and (files / "build_image.sh").is_file():
        return files
    tmp = tempfile.TemporaryDirectory(prefix="agcpo-build-")
    stack.append(tmp)
    for name in ("build_image.sh", "worker.py"):
        (Path(tmp.name) / name).write_bytes((files / name).read_bytes())
    return Path(tmp.name)


def _build_image(args: argparse.Namespace) -> int:
    if not shutil.which("bash"):
        print("error: bash is needed to run the image build script", file=sys.stderr)
        return 2
    argv: list[str] = []
    if args.base:
        argv += ["--base", args.base]
    if args.tag:
        argv += ["--tag", args.tag]
    if args.force:
        argv.append("--force")
    stack: list[tempfile.TemporaryDirectory[str]] = []
    try:
        script = _script_dir(stack) / "build_image.sh"
        sys.stdout.flush()
        # The script prints its own progress; its exit status is ours.
        return subprocess.run(["bash", str(script), *argv], env=os.environ.copy()).returncode
    finally:
        for tmp in stack:
            tmp.cleanup()


def _reap(args: argparse.Namespace) -> int:
    from .docker import connect, reap_orphans

    try:
        client = connect()
    except SandboxUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        removed = reap_orphans(client)
    finally:
        client.close()
    print(f"removed {len(removed)} sandbox container(s) left by dead processes")
    return 0


def add_sandbox_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `sandbox exec|build-image|reap` to a parent CLI's subparsers."""
    p = subparsers.add_parser(
        "sandbox",
        help="run code in the sandbox the way the model does; build the docker image",
        description="Run code in the tool sandbox, or build the image of its docker backend.",
    )
    sub = p.add_subparsers(dest="sandbox_cmd", required=True)

    e = sub.add_parser(
        "exec",
        help="run cells in one sandbox session and print what the model would see",
        description=_EXEC_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    e.add_argument("--backend", choices=["local", "docker"], default="local", help="default: local")
    e.add_argument("--session", default="cli", help="session name (shared by the cells of this invocation)")
    e.add_argument("--timeout", type=float, default=None, help="wall and CPU seconds per cell (default: 5)")
    e.add_argument("--image", default=None, help="docker image (default: agentic-gcpo-sandbox:latest)")
    e.add_argument("--json", action="store_true", help="print each full result record as one JSON line")
    e.add_argument("code", nargs="*", metavar="CODE", help="a cell of Python; '-' or none: read stdin")
    e.set_defaults(fn=_exec)

    b = sub.add_parser(
        "build-image",
        help="build the docker sandbox image (debootstrap, or from a local --base image)",
        description="Runs the packaged sandbox/build_image.sh: without --base it debootstraps the host's "
        "Debian/Ubuntu release with python3-sympy (root + debootstrap, ~1.5 min); with --base it adds the "
        "worker to a local image that has python3 and SymPy. Does nothing when the image is up to date.",
    )
    b.add_argument("--base", default=None, help="local image with python3 + SymPy to build from")
    b.add_argument("--tag", default=None, help="image tag (default: agentic-gcpo-sandbox:latest)")
    b.add_argument("--force", action="store_true", help="rebuild even when up to date")
    b.set_defaults(fn=_build_image)

    r = sub.add_parser("reap", help="remove sandbox containers whose owner process is gone")
    r.set_defaults(fn=_reap)


def run_cli(argv: list[str]) -> int:
    """Run `agentic-gcpo sandbox ...` standalone: argv starts with "sandbox"."""
    ap = argparse.ArgumentParser(prog="agentic-gcpo")
    sub = ap.add_subparsers(dest="cmd", required=True)
    add_sandbox_parser(sub)
    args = ap.parse_args(argv)
    return int(args.fn(args))


def main(argv: list[str] | None = None) -> int:
    return run_cli(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
