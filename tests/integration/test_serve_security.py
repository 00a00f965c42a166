"""`durably serve` facing a network: basic auth from the environment, the Host check, the
warning for a server open beyond loopback. Real `durably serve` processes, real HTTP.
"""

from __future__ import annotations

import base64
import json
import signal
import socket
import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import wait_until
from test_cli_processes import APP, FAST, START_TIMEOUT, Process, free_port

pytestmark = pytest.mark.slow

PASSWORD = "correct-horse-7f3a9c"  # a value that would be easy to spot in any output


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    (tmp_path / "cliapp.py").write_text(textwrap.dedent(APP))
    return tmp_path


@pytest.fixture
def processes() -> Iterator[list[Process]]:
    started: list[Process] = []
    yield started
    for process in started:
        process.kill()


def serve(processes: list[Process], app_dir: Path, port: int, *options: str) -> Process:
    url = f"sqlite:///{app_dir / 'durably.db'}"
    process = Process(
        ["serve", url, "--app", "cliapp:jobs", "--port", str(port), *FAST, *options], app_dir
    )
    processes.append(process)
    process.wait_for_line(r"dashboard and API at ")
    return process


def answering(base: str, **headers: str) -> None:
    def answers() -> bool:
        try:
            httpx.get(f"{base}/api/runs", headers=headers, timeout=5)
        except httpx.TransportError:
            return False
        return True

    wait_until(answers, timeout=START_TIMEOUT, interval=0.05)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def raw_get(port: int, host_header: str) -> tuple[int, bytes]:
    """A GET with exactly this Host header (httpx would normalise it)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        request = f"GET /api/runs HTTP/1.1\r\nHost: {host_header}\r\nConnection: close\r\n\r\n"
        sock.sendall(request.encode())
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


def test_serve_with_credentials_in_the_environment_requires_them_on_every_path(
    app_dir: Path, processes: list[Process], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DURABLY_SERVE_USER", "alice")
    monkeypatch.setenv("DURABLY_SERVE_PASSWORD", PASSWORD)
    port = free_port()
    server = serve(processes, app_dir, port)
    base = f"http://127.0.0.1:{port}"
    answering(base)
    wrong = [
        {},
        {"Authorization": basic("alice", "wrong")},
        {"Authorization": basic("mallory", PASSWORD)},
        {"Authorization": basic("alice", PASSWORD + "x")},
        {"Authorization": "Basic !!!not-base64"},
        {"Authorization": "Bearer " + PASSWORD},
    ]
    for path in ("/", "/api/", "/api/runs", "/api/runs/subscribe"):
        for headers in wrong:
            answer = httpx.get(f"{base}{path}", headers=headers, timeout=10)
            assert answer.status_code == 401, (path, headers, answer.text)
            assert answer.headers["www-authenticate"].startswith('Basic realm="durably"')
            assert answer.json() == {"error": "authentication required (HTTP basic auth)"}
    ok = httpx.get(f"{base}/api/runs", auth=("alice", PASSWORD), timeout=10)
    assert ok.status_code == 200 and ok.json() == []
    triggered = httpx.post(
        f"{base}/api/trigger",
        json={"jobName": "count", "input": {"n": 1}},
        auth=("alice", PASSWORD),
        timeout=10,
    )
    assert triggered.status_code == 200, triggered.text
    run_id = triggered.json()["runId"]
    # a stream too: the run's events arrive to the authenticated client
    with httpx.stream(
        "GET", f"{base}/api/subscribe", params={"runId": run_id}, auth=("alice", PASSWORD)
    ) as stream:
        assert stream.status_code == 200
        body = stream.read()
    assert body.rstrip().endswith(b"}") and b'"type":"run:complete"' in body
    assert httpx.get(f"{base}/", auth=("alice", PASSWORD), timeout=10).status_code == 307
    assert server.stop(signal.SIGTERM) == 0, server.output()
    assert "basic auth as 'alice'" in "".join(server.out)
    assert PASSWORD not in server.output()
    assert "WARNING" not in "".join(server.err)


def test_serve_rejects_a_foreign_host_header_and_accepts_its_own_names(
    app_dir: Path, processes: list[Process]
) -> None:
    port = free_port()
    server = serve(processes, app_dir, port, "--allowed-host", "durably.internal")
    answering(f"http://127.0.0.1:{port}")
    for accepted in (
        f"127.0.0.1:{port}",
        f"localhost:{port}",
        "LOCALHOST",
        f"[::1]:{port}",
        f"durably.internal:{port}",
        "durably.internal.",
    ):
        status, body = raw_get(port, accepted)
        assert (status, json.loads(body)) == (200, []), accepted
    # DNS rebinding: the attacker's name resolves to 127.0.0.1 but stays in the Host header
    status, body = raw_get(port, f"evil.example:{port}")
    assert status == 400
    assert json.loads(body) == {
        "error": "host 'evil.example' is not allowed; start durably serve with "
        "--allowed-host evil.example to accept it"
    }
    for malformed in ("", "a b", f"evil.example:{port}:1", "[::1"):
        status, body = raw_get(port, malformed)
        assert status == 400, malformed
    assert server.stop(signal.SIGTERM) == 0, server.output()


@pytest.mark.parametrize("with_auth", [False, True], ids=["without-auth", "with-auth"])
def test_serve_warns_when_it_listens_beyond_loopback_without_authentication(
    app_dir: Path, processes: list[Process], monkeypatch: pytest.MonkeyPatch, with_auth: bool
) -> None:
    if with_auth:
        monkeypatch.setenv("DURABLY_SERVE_USER", "alice")
        monkeypatch.setenv("DURABLY_SERVE_PASSWORD", PASSWORD)
    port = free_port()
    server = serve(processes, app_dir, port, "--host", "0.0.0.0")
    assert server.stop(signal.SIGTERM) == 0, server.output()
    warnings = [line for line in server.err if "WARNING" in line]
    if with_auth:
        assert warnings == [], server.output()
    else:
        assert len(warnings) == 1, server.output()
        assert f"listens on 0.0.0.0:{port}" in warnings[0]
        assert "WITHOUT authentication" in warnings[0]
        assert "DURABLY_SERVE_USER and DURABLY_SERVE_PASSWORD" in warnings[0]
    assert PASSWORD not in server.output()


def test_serve_on_loopback_without_authentication_does_not_warn(
    app_dir: Path, processes: list[Process]
) -> None:
    server = serve(processes, app_dir, free_port(), "--host", "localhost")
    assert server.stop(signal.SIGTERM) == 0, server.output()
    assert "WARNING" not in "".join(server.err), server.output()
    assert "no authentication" in "".join(server.out)


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({"DURABLY_SERVE_PASSWORD": PASSWORD}, "DURABLY_SERVE_USER is not"),
        ({"DURABLY_SERVE_USER": "alice"}, "DURABLY_SERVE_PASSWORD is not"),
        ({"DURABLY_SERVE_USER": "alice", "DURABLY_SERVE_PASSWORD": ""}, "is empty"),
        ({"DURABLY_SERVE_USER": "a:b", "DURABLY_SERVE_PASSWORD": PASSWORD}, "may not contain"),
    ],
)
def test_serve_with_half_a_credential_exits_1_without_serving(
    app_dir: Path,
    processes: list[Process],
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str],
    problem: str,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    url = f"sqlite:///{app_dir / 'durably.db'}"
    process = Process(["serve", url, "--app", "cliapp:jobs", "--port", str(free_port())], app_dir)
    processes.append(process)
    assert process.wait() == 1, process.output()
    assert "".join(process.err).startswith("error: ") and problem in "".join(process.err)
    assert "".join(process.out) == ""
    assert PASSWORD not in process.output()
