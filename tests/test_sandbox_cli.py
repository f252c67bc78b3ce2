"""`agentic-gcpo sandbox exec|build-image|reap`, through `run_cli`, with real sandboxes (no mocks).

Docker cases use the `docker_ready` fixture of test_sandbox.py: they skip only when the engine or
the image is unavailable, saying which.
"""

from __future__ import annotations

import io
import json
import sys

import pytest
from test_sandbox import docker_ready  # noqa: F401 - session fixture shared with the sandbox suite

from agentic_gcpo.sandbox.cli import run_cli


@pytest.fixture(params=["local", "docker"])
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "docker":
        request.getfixturevalue("docker_ready")
    return request.param


def _stdin(monkeypatch: pytest.MonkeyPatch, data: bytes) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))


def test_exec_cells_share_state_and_print_the_observation(backend, capsys):
    rc = run_cli(["sandbox", "exec", "--backend", backend, "x = 20", "print('x is', x)\nx + 22"])
    out = capsys.readouterr().out
    assert rc == 0 and out == "(no output)\nx is 20\n42\n"


def test_exec_reads_stdin(backend, capsys, monkeypatch):
    _stdin(monkeypatch, b"import sympy as sp\nx = sp.Symbol('x')\nsp.solve(x**2 - 4, x)\n")
    assert run_cli(["sandbox", "exec", "--backend", backend]) == 0
    assert capsys.readouterr().out == "[-2, 2]\n"
    _stdin(monkeypatch, b"x = 1\n\xff\n")  # invalid UTF-8: decoded to U+FFFD, then a SyntaxError
    rc = run_cli(["sandbox", "exec", "--backend", backend, "-"])
    assert rc == 1 and "Error: SyntaxError" in capsys.readouterr().out


def test_exec_error_and_timeout_exit_1(backend, capfd):
    rc = run_cli(["sandbox", "exec", "--backend", backend, "--timeout", "1", "1/0", "while True:\n    pass"])
    out, err = capfd.readouterr()
    assert rc == 1
    assert out.splitlines()[0] == "Error: ZeroDivisionError: division by zero"
    assert out.splitlines()[1].startswith("Error: TimeoutError: execution exceeded 1.0 s")
    assert "Traceback" in err  # the traceback goes to stderr for a human; the model sees stdout only


def test_exec_json(backend, capsys):
    assert run_cli(["sandbox", "exec", "--backend", backend, "--json", "print('hi')\n3"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["stdout"] == "hi\n" and rec["value"] == "3" and rec["error_type"] is None


def test_exec_usage_errors(capsys):
    assert run_cli(["sandbox", "exec", "-", "-"]) == 2
    assert "only once" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_cli(["sandbox", "exec", "--backend", "nope", "1"])


def test_exec_docker_missing_image_exit_2(docker_ready, capsys):  # noqa: F811 - the fixture
    rc = run_cli(["sandbox", "exec", "--backend", "docker", "--image", "agentic-gcpo-sandbox:absent", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "agentic-gcpo-sandbox:absent not built" in err
    assert "agentic-gcpo sandbox build-image --tag agentic-gcpo-sandbox:absent" in err


def test_build_image_is_idempotent_and_accepts_a_base(docker_ready, capfd):  # noqa: F811
    from agentic_gcpo.sandbox.docker import check_image, connect

    assert run_cli(["sandbox", "build-image"]) == 0
    assert "up to date" in capfd.readouterr().out
    # --base: any local image with python3 + SymPy; the sandbox image itself is one.
    tag = "agentic-gcpo-sandbox:test-from-base"
    client = connect()
    try:
        assert run_cli(["sandbox", "build-image", "--base", "agentic-gcpo-sandbox:latest", "--tag", tag]) == 0
        assert "committing " + tag in capfd.readouterr().out
        check_image(client, tag)  # carries the packaged worker's hash
        assert run_cli(["sandbox", "exec", "--backend", "docker", "--image", tag, "6*7"]) == 0
        assert capfd.readouterr().out == "42\n"
        assert run_cli(["sandbox", "build-image", "--base", "no-such-image:x", "--tag", tag]) == 1
        assert "not present locally" in capfd.readouterr().err
    finally:
        client.api.remove_image(tag, force=True)
        client.close()


def test_reap(docker_ready, capsys):  # noqa: F811
    assert run_cli(["sandbox", "reap"]) == 0
    assert "sandbox container(s) left by dead processes" in capsys.readouterr().out
