"""Ctrl-C on a real training run: it stops within seconds wherever it is, kills what it started,
leaves nothing half-written, says how to continue, and exits 130.

Every test starts `agentic-gcpo train` on the tiny config as a subprocess, waits until the run is
genuinely where the test wants it (a progress line, or a marker file written from inside the
phase), snapshots every descendant process by walking /proc ppid links (the sandbox workers run in
their own sessions, so this is the only way to see them all), sends SIGINT to the trainer alone,
and checks the exit: time, status, message, processes, files.

Three tests steer the run with a small wrapper script (`_script`) that patches one function before
calling the real CLI: an engine that writes a tool call sleeping in the sandbox (the tiny random
model never calls a tool), a slowed learner micro-batch, a hung cleanup. Everything else is the
shipped code path.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "tiny_cpu.yaml"
STOP_BOUND_S = 15.0  # Ctrl-C -> process gone; measured 0.1-3.6 s on 2 cores at load 4-5
START_TIMEOUT_S = 240.0  # time to reach the wanted phase; generous for a loaded CI box
COMMON = ["train.steps=500", "log.progress=false"]


# ------------------------------------------------------------------------------------ processes
def _stat(pid: int) -> tuple[int, str, int] | None:
    """(ppid, state, start time in clock ticks) of a live pid, else None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()  # comm may contain spaces and parentheses
    return int(fields[1]), fields[0], int(fields[19])


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def _descendants(root: int) -> dict[int, tuple[int, str]]:
    """pid -> (start time, comm) of every process below `root`, found through ppid links."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _stat(int(entry))) is not None:
            children.setdefault(st[0], []).append(int(entry))
    out, todo = {}, [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if (st := _stat(child)) is not None:
                out[child] = (st[2], _comm(child))
                todo.append(child)
    return out


def _still_running(procs: dict[int, tuple[int, str]]) -> dict[int, str]:
    """The recorded processes that still run: same pid *and* start time (no reuse), not a zombie.

    A zombie has exited: it runs no code and holds no memory or files, only its pid entry until
    its parent reaps it. The workers the trainer kills are reaped by the trainer itself; only a
    process orphaned by a hard exit is left to PID 1 to reap, so a zombie counts as gone."""
    alive = {}
    for pid, (start, comm) in procs.items():
        st = _stat(pid)
        if st is not None and st[2] == start and st[1] != "Z":
            alive[pid] = comm
    return alive


def _wait_gone(procs: dict[int, tuple[int, str]], timeout: float = 5.0) -> dict[int, str]:
    """SIGKILL is asynchronous for a process's own children (a pid namespace's members die when
    its init dies): give the kernel a moment, then report what still runs."""
    deadline = time.monotonic() + timeout
    while (left := _still_running(procs)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


# ------------------------------------------------------------------------------------ the run
class Run:
    """A training subprocess whose stdout lines and stderr are collected by threads."""

    def __init__(self, argv: list[str], cwd: Path) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1"}
        self.proc = subprocess.Popen(
            argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.out), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.err), daemon=True),
        ]
        for t in self._readers:
            t.start()

    @staticmethod
    def _read(stream, sink: list[str]) -> None:
        for line in stream:
            sink.append(line.rstrip("\n"))

    def wait_for(self, ready, what: str, timeout: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if self.proc.poll() is not None:
                self.finish()
                pytest.fail(
                    f"the run ended (rc {self.proc.returncode}) before {what}:\n{self.stderr[-3000:]}"
                )
            if time.monotonic() > deadline:
                self.proc.kill()
                self.finish()
                pytest.fail(f"no {what} within {timeout:.0f} s:\n{self.stderr[-3000:]}")
            time.sleep(0.05)

    def line(self, pattern: str) -> bool:
        return any(re.search(pattern, x) for x in self.out)

    def interrupt(self) -> tuple[int, float]:
        """SIGINT to the trainer alone (a terminal would also signal its process group, the
        SymPy helpers included; the sandbox workers are in their own sessions either way)."""
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGINT)
        try:
            rc = self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.finish()
            pytest.fail(f"still running 60 s after Ctrl-C:\n{self.stderr[-3000:]}")
        took = time.monotonic() - t0
        self.finish()
        print(f"Ctrl-C -> exit {rc} in {took:.2f} s")
        return rc, took

    def finish(self) -> None:
        self.proc.wait(timeout=60)
        for t in self._readers:
            t.join(timeout=10)

    @property
    def stderr(self) -> str:
        return "\n".join(self.err)

    def run_dir(self) -> Path:
        m = next(re.match(r"run directory: (.+)$", x) for x in self.out if x.startswith("run directory:"))
        return Path(m.group(1))


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "agentic_gcpo.cli", "train", "-c", str(CONFIG), *COMMON, *args]


def _script(tmp_path: Path, body: str, *args: str) -> list[str]:
    """A wrapper that patches before running the real CLI with the tiny config."""
    path = tmp_path / "run_patched.py"
    path.write_text(f"import sys\n{body}\nfrom agentic_gcpo.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    return [sys.executable, str(path), "train", "-c", str(CONFIG), *COMMON, *args]


def _check_interrupted(run: Run, rc: int, took: float, procs: dict[int, tuple[int, str]]) -> Path:
    """The contract every interrupted run keeps; returns the run directory."""
    err = run.stderr
    assert rc == 130, err[-3000:]
    assert took < STOP_BOUND_S, f"took {took:.1f} s to stop"
    assert "interrupted (Ctrl-C)" in err, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    left = _wait_gone(procs)
    assert not left, f"still running after the trainer exited: {left} (recorded {procs})"
    run_dir = run.run_dir()
    assert f"agentic-gcpo train -c {run_dir / 'config.yaml'}" in err
    # the resume command exactly when a complete checkpoint exists
    assert (f"agentic-gcpo train --resume {run_dir}" in err) == ("last complete checkpoint:" in err), err
    ckpts = run_dir / "checkpoints"
    for d in ckpts.iterdir():  # complete checkpoints only, under their final names
        assert re.fullmatch(r"step-\d+|final", d.name), f"partial checkpoint left: {d}"
        assert (d / "config.json").is_file() and (d / "model.safetensors").is_file(), d
    metrics = run_dir / "metrics.jsonl"
    rows = [json.loads(x) for x in metrics.read_text().splitlines()] if metrics.exists() else []
    n = len([r for r in rows if "loss/policy" in r])  # every row parses: none torn
    assert [r["step"] for r in rows if "loss/policy" in r] == list(range(1, n + 1))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["interrupted"] is True and summary["updates"] == n
    if n:
        assert f"{n} of 500 updates were completed and logged" in err
    else:
        assert "no update was completed" in err
    assert not list(run_dir.glob(".*.tmp-*")), "a temporary file was left"
    return run_dir


# ------------------------------------------------------------------------------------ tests
def test_ctrl_c_mid_run_stops_cleans_up_and_the_run_can_be_continued(tmp_path):
    """Anywhere in a step (decode, tool wait, verify, update, checkpoint save): a checkpoint is
    saved every step, so a save is often in flight. Then the printed --resume command continues
    the run in its directory (one more step here), and its metrics have each step once."""
    run = Run(_cli(f"run.output_dir={tmp_path / 'runs'}", "train.checkpoint_every=1"), tmp_path)
    run.wait_for(lambda: run.line(r"^step 1/500 "), "first step")
    procs = _descendants(run.proc.pid)
    assert procs, "no sandbox worker recorded"
    rc, took = run.interrupt()
    run_dir = _check_interrupted(run, rc, took, procs)
    err = run.stderr
    saved = re.search(r"last complete checkpoint: (\S+/step-(\d+))$", err, re.M)
    assert saved and saved.group(1).startswith(str(run_dir / "checkpoints")), err[-3000:]
    k = int(saved.group(2))
    # The printed command, with train.steps lowered from 500 to one more step than the checkpoint.
    cmd = next(x.strip() for x in err.splitlines() if "--resume" in x and x.strip().startswith("agentic"))
    assert cmd.split() == ["agentic-gcpo", "train", "--resume", str(run_dir)]
    more = [f"train.steps={k + 1}", "train.save_final=false"]
    again = subprocess.run(
        [sys.executable, "-m", "agentic_gcpo.cli", *cmd.split()[1:], *more],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"at step {k} of {k + 1}" in again.stdout and f"step {k + 1}/{k + 1} " in again.stdout
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss/policy" in r] == list(range(1, k + 2))


def test_ctrl_c_while_the_next_batch_is_drawn_ahead(tmp_path):
    """rollout.off_policy_steps=1: a rollout thread runs beside the update. Ctrl-C stops both
    within the bound, and nothing is left running."""
    run = Run(_cli(f"run.output_dir={tmp_path / 'runs'}", "rollout.off_policy_steps=1"), tmp_path)
    run.wait_for(lambda: run.line(r"^step 1/500 "), "first step")
    procs = _descendants(run.proc.pid)
    rc, took = run.interrupt()
    _check_interrupted(run, rc, took, procs)


def _sleepers() -> dict[int, tuple[int, str]]:
    """Processes anywhere on the machine running the tool call's `sleep 317` (inside containers
    too: they are host processes, though not the trainer's descendants)."""
    out = {}
    for entry in os.listdir("/proc"):
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")[:2]
        except OSError:
            continue
        if entry.isdigit() and argv == [b"sleep", b"317"] and (st := _stat(int(entry))) is not None:
            out[int(entry)] = (st[2], "sleep")
    return out


def _docker_or_skip() -> None:
    try:
        from agentic_gcpo.sandbox.docker import DockerUnavailable, check_image, connect
    except ImportError:
        pytest.skip("python package `docker` not installed: pip install 'agentic-gcpo[docker]'")
    try:
        client = connect()
    except DockerUnavailable as e:
        pytest.skip(f"docker daemon not reachable: {e}")
    try:
        check_image(client, "agentic-gcpo-sandbox:latest")
    except DockerUnavailable as e:
        pytest.skip(f"no sandbox image: {e}")
    finally:
        client.close()


def _containers_of(pid: int) -> list[str]:
    from agentic_gcpo.sandbox.docker import OWNER_PID, connect

    client = connect()
    try:
        return [
            c["Id"][:12] for c in client.api.containers(all=True, filters={"label": f"{OWNER_PID}={pid}"})
        ]
    finally:
        client.close()


def _scripted_engine(turn: str) -> str:
    """Script lines that make the trainer's engine answer every prompt with `turn` (a tool call):
    the tiny random model never writes one by itself."""
    return f"""
from agentic_gcpo.engines.base import Completion, Engine
import agentic_gcpo.train.trainer as trainer

TURN = {turn!r}

class ScriptedEngine(Engine):
    def __init__(self, tok):
        self.tok = tok
    def generate(self, prompts, params):
        ids = self.tok(TURN, add_special_tokens=False).input_ids
        return [Completion(list(ids), [-1.0] * len(ids), "stop") for _ in prompts]
    def update_weights(self, state_dict=None):
        pass

trainer.make_engine = lambda backend, model, tokenizer, **kw: ScriptedEngine(tokenizer)
"""


@pytest.mark.parametrize("backend", ["local", pytest.param("docker", marks=pytest.mark.docker)])
def test_ctrl_c_during_sandboxed_tool_calls_does_not_wait_for_them(tmp_path, backend):
    """Eight trajectories each run `sleep 317` in their sandbox session (the agent loop's thread
    pool); Ctrl-C must cancel and kill, not wait for the calls or the sandbox timeout."""
    if backend == "docker":
        _docker_or_skip()
    turn = "Let me check.\n```python\nimport subprocess\nsubprocess.run(['sleep', '317'])\n```\n"
    body = _scripted_engine(turn)
    argv = _script(
        tmp_path,
        body,
        f"run.output_dir={tmp_path / 'runs'}",
        "sandbox.timeout_s=600",
        "rollout.max_new_tokens_per_turn=64",
        f"sandbox.backend={backend}",
    )
    before = set(_sleepers())
    run = Run(argv, tmp_path)
    run.wait_for(lambda: len(set(_sleepers()) - before) >= 8, "8 tool calls sleeping in the sandbox")
    procs = {**_descendants(run.proc.pid), **{p: v for p, v in _sleepers().items() if p not in before}}
    rc, took = run.interrupt()
    _check_interrupted(run, rc, took, procs)
    assert "rollouts: generation and tool calls" in run.stderr
    if backend == "docker":
        assert not _containers_of(run.proc.pid), "containers left"


def test_ctrl_c_during_an_in_process_tool_call_does_not_wait_for_it(tmp_path):
    """An in-process tool (no sandbox) sleeping 300 s in the agent loop's threads: Python cannot
    stop that thread, and the interpreter would join it at exit, so the CLI exits at once after a
    2 s grace (its files are already closed) instead of waiting for the call."""
    marker = tmp_path / "napping"
    (tmp_path / "nap_tool.py").write_text(
        f"""
import pathlib, time
from agentic_gcpo.tool_registry import tool

@tool(timeout_s=600)
def nap(seconds: float) -> str:
    \"\"\"Sleep.

    Args:
        seconds: How long.
    \"\"\"
    pathlib.Path({str(marker)!r}).touch()
    time.sleep(seconds)
    return "rested"
"""
    )
    body = _scripted_engine('<tool_call>{"name": "nap", "arguments": {"seconds": 300}}</tool_call>')
    argv = _script(
        tmp_path,
        body,
        f"run.output_dir={tmp_path / 'runs'}",
        f"tools.modules=[{tmp_path / 'nap_tool.py'}]",
        "tools.names=[python,nap]",
        "prompt.call_format=json",
        "rollout.max_new_tokens_per_turn=64",
    )
    run = Run(argv, tmp_path)
    run.wait_for(marker.exists, "a tool call napping")
    procs = _descendants(run.proc.pid)
    rc, took = run.interrupt()
    _check_interrupted(run, rc, took, procs)
    assert "rollouts: generation and tool calls" in run.stderr


def test_ctrl_c_during_the_learner_update(tmp_path):
    """The interrupt lands between the micro-batches of an update (each slowed to 0.3 s so that a
    marker written at the first one leaves time to aim): no half-applied update is logged. The tiny
    model's backward takes milliseconds; that a long backward stops midway is the next test's."""
    marker = tmp_path / "in-update"
    body = f"""
import importlib, pathlib, time

def slowed(orig):
    def slow_logprobs(*a, **kw):
        out = orig(*a, **kw)
        pathlib.Path({str(marker)!r}).touch()
        time.sleep(0.3)
        return out
    return slow_logprobs

# the learner's log-probs, wherever the update imports them from
patched = 0
for name in ("agentic_gcpo.train.update", "agentic_gcpo.train.trainer"):
    try:
        mod = importlib.import_module(name)
    except ImportError:
        continue
    if hasattr(mod, "batch_logprobs"):
        mod.batch_logprobs = slowed(mod.batch_logprobs)
        patched += 1
assert patched, "no module of the learner holds batch_logprobs"
"""
    argv = _script(tmp_path, body, f"run.output_dir={tmp_path / 'runs'}", "train.micro_batch_size=1")
    run = Run(argv, tmp_path)
    run.wait_for(marker.exists, "the learner update")
    procs = _descendants(run.proc.pid)
    rc, took = run.interrupt()
    _check_interrupted(run, rc, took, procs)
    assert "in step 1/500 (the learner update)" in run.stderr
    assert "no update was completed" in run.stderr


def test_second_ctrl_c_during_cleanup_exits_at_once(tmp_path):
    """A cleanup that hangs (patched: close() sleeps first) is cut short by a second Ctrl-C, which
    still kills the sandbox workers and exits 130."""
    marker = tmp_path / "closing"
    body = f"""
import pathlib, time
import agentic_gcpo.train.trainer as trainer

_close = trainer.Trainer.close

def hung_close(self, interrupted=False):
    pathlib.Path({str(marker)!r}).touch()
    time.sleep(120)
    _close(self, interrupted)

trainer.Trainer.close = hung_close
"""
    argv = _script(tmp_path, body, f"run.output_dir={tmp_path / 'runs'}")
    run = Run(argv, tmp_path)
    run.wait_for(lambda: run.line(r"^step 1/500 "), "first step")
    procs = _descendants(run.proc.pid)
    run.proc.send_signal(signal.SIGINT)
    run.wait_for(marker.exists, "the cleanup", timeout=30)
    rc, took = run.interrupt()
    assert rc == 130, run.stderr[-3000:]
    assert took < 5.0, f"the second Ctrl-C took {took:.1f} s"
    assert "second Ctrl-C" in run.stderr
    left = _wait_gone(procs)
    assert not left, f"still running after the hard exit: {left}"


def test_backward_is_interruptible_between_parameters(tmp_path):
    """`loss.backward()` is one C++ call that never returns to the interpreter on CPU; the hooks of
    `interruptible_backward` let a Ctrl-C stop it between parameters. Here a 24-layer stack whose
    backward takes seconds gets SIGINT 0.3 s in: it must stop with the first layers' gradients
    never computed (backward reaches them last)."""
    script = tmp_path / "bw.py"
    script.write_text(
        """
import os, signal, threading, time, torch
from agentic_gcpo.train.policy import interruptible_backward
signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with SIGINT ignored
torch.manual_seed(0)
torch.set_num_threads(2)
net = torch.nn.Sequential(*[torch.nn.Linear(1024, 1024) for _ in range(24)])
loss = net(torch.randn(4096, 1024)).square().mean()
unhook = interruptible_backward(net)
threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
t0 = time.perf_counter()
try:
    loss.backward()
    print("completed", time.perf_counter() - t0)
except KeyboardInterrupt:
    done = sum(layer.weight.grad is not None for layer in net)
    print(f"interrupted {time.perf_counter() - t0:.2f} {done}")
"""
    )
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    words = out.stdout.split()
    assert words[0] == "interrupted", out.stdout
    print(f"backward stopped {float(words[1]):.2f} s after it started, {words[2]}/24 layers had gradients")
    assert int(words[2]) < 24
