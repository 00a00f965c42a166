"""SSE streams under hostile conditions: a client that stops reading, idle proxies, bad text.

A stuck client is a raw socket that sends its request and never reads (its receive
buffer made small, so the server's writes block soon); the server must drop it once it
is too far behind, and keep serving everyone else. Every wait polls a state (listener
counts, bytes received); nothing asserts a duration.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from _server_helpers import (
    SSE,
    add_job,
    listener_count,
    live_server,
    open_sse,
    trigger,
    wait_until,
)

from durably import Durably, StepContext, define_job
from durably.server import create_app
from durably.server import sse as sse_module

KEEPALIVE = b": keep-alive\n\n"


class Flood:
    """A job that logs 1 KB lines until the test says stop (or a cap is reached)."""

    CAP = 50_000

    def __init__(self) -> None:
        self.stop = threading.Event()

        @define_job(name="flood")
        def flood(step: StepContext, payload: Any) -> int:
            count = 0
            while not self.stop.is_set() and count < self.CAP:
                step.log.info(f"line {count:06d} " + "x" * 1000)
                count += 1
            return count

        self.job = flood


@pytest.fixture
def flood() -> Flood:
    return Flood()


@pytest.fixture
def d(durably: Durably, flood: Flood) -> Durably:
    durably.register({"add": add_job, "flood": flood.job})
    return durably


@pytest.fixture
def base(d: Durably) -> Iterator[str]:
    with live_server(create_app(d)) as url:
        yield url


@pytest.fixture
def client(base: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base, timeout=20) as c:
        yield c


def stuck_client(base: str, target: str) -> socket.socket:
    """A client that sends its GET and then never reads (a tiny receive buffer)."""
    address = urlsplit(base)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((address.hostname, address.port))
    sock.sendall(f"GET {target} HTTP/1.1\r\nHost: {address.netloc}\r\n\r\n".encode())
    return sock


def read_to_eof(sock: socket.socket) -> bytes:
    sock.settimeout(20)
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


class Reader(threading.Thread):
    """A healthy client: reads every frame of a stream in a thread until `until` arrives."""

    def __init__(self, stream: SSE, until: str) -> None:
        super().__init__(daemon=True)
        self.stream = stream
        self.until = until
        self.events: list[dict[str, Any]] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.events = self.stream.until(self.until)
        except BaseException as exc:  # reported by the test thread
            self.error = exc


# -- a client that stops reading --------------------------------------------------------


@pytest.mark.backends("sqlite")  # events only: no database write per event
@pytest.mark.parametrize(
    ("bound", "value"),
    [("MAX_QUEUED_FRAMES", 100), ("MAX_QUEUED_BYTES", 64 * 1024)],
    ids=["frames", "bytes"],
)
def test_a_client_that_stops_reading_is_dropped_and_the_others_get_every_event(
    base: str,
    client: httpx.Client,
    d: Durably,
    flood: Flood,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    bound: str,
    value: int,
) -> None:
    monkeypatch.setattr(sse_module, bound, value)
    caplog.set_level(logging.WARNING, logger="durably.server")
    run_id = trigger(client, "flood")
    before = listener_count(d)
    stuck = stuck_client(base, f"/subscribe?runId={run_id}")
    try:
        wait_until(lambda: listener_count(d) == before + 1)
        with open_sse(client, "/runs/subscribe") as healthy_stream:
            healthy = Reader(healthy_stream, "run:complete")
            healthy.start()
            wait_until(lambda: listener_count(d) == before + 2)
            d.start()
            # the stuck client's listener goes while the run still floods; the healthy one stays
            wait_until(lambda: listener_count(d) == before + 1, timeout=60)
            assert d.get_run(run_id).status == "running"  # type: ignore[union-attr]
            flood.stop.set()
            healthy.join(60)
            assert not healthy.is_alive() and healthy.error is None, healthy.error
        wait_until(lambda: (r := d.get_run(run_id)) is not None and r.status == "completed")
        logged = d.get_run(run_id).output  # type: ignore[union-attr]
        assert logged > 0
        lines = [e["message"][:11] for e in healthy.events if e["type"] == "log:write"]
        assert lines == [f"line {i:06d}" for i in range(logged)]
        # the stuck client gets what was already on its way, then the connection closes
        # without the end of the chunked body: its stream was cut, not completed
        received = read_to_eof(stuck)
    finally:
        stuck.close()
    assert received.startswith(b"HTTP/1.1 200")
    assert b"text/event-stream" in received.split(b"\r\n\r\n", 1)[0]
    assert not received.endswith(b"0\r\n\r\n")
    assert received.count(b"data: ") < logged
    dropped = [r for r in caplog.records if "too far behind" in r.getMessage()]
    assert len(dropped) == 1, [r.getMessage() for r in caplog.records]
    assert dropped[0].levelno == logging.WARNING
    assert wait_until(lambda: listener_count(d) == before)


# -- keep-alive -------------------------------------------------------------------------


def raw_frames(response: httpx.Response) -> Iterator[bytes]:
    """Every frame of an SSE body, comments included, as sent."""
    buffer = b""
    for chunk in response.iter_raw():
        buffer += chunk
        while b"\n\n" in buffer:
            frame, buffer = buffer.split(b"\n\n", 1)
            yield frame + b"\n\n"


@pytest.mark.parametrize("path", ["/subscribe", "/runs/subscribe"])
def test_an_idle_stream_gets_keep_alive_comments_and_then_its_events(
    client: httpx.Client, d: Durably, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    monkeypatch.setattr(sse_module, "KEEPALIVE_SECONDS", 0.05)
    run_id = trigger(client, "add", {"a": 1, "b": 2})  # pending: no worker yet
    params = {"runId": run_id} if path == "/subscribe" else {}
    with client.stream("GET", path, params=params) as response:
        assert response.status_code == 200
        frames = raw_frames(response)
        assert [next(frames), next(frames)] == [KEEPALIVE, KEEPALIVE]
        d.start()
        events: list[dict[str, Any]] = []
        for frame in frames:
            if frame == KEEPALIVE:
                continue
            assert frame.startswith(b"data: "), frame
            events.append(json.loads(frame[len(b"data: ") :]))
            if events[-1]["type"] == "run:complete":
                break
    assert events[0]["type"] == "run:start" and events[-1]["runId"] == run_id


def test_keep_alive_is_fifteen_seconds_by_default() -> None:
    assert sse_module.KEEPALIVE_SECONDS == 15.0


# -- bad text ---------------------------------------------------------------------------


def test_a_log_message_with_a_lone_surrogate_ends_no_stream(
    client: httpx.Client, d: Durably
) -> None:
    """Regression: passes on main already (the core cleans messages where they enter)."""

    @define_job(name="surrogate-message")
    def surrogate_message(step: StepContext, payload: Any) -> str:
        step.log.info("bad \ud800")
        step.log.info("fine")
        return "done"

    d.register({"surrogate-message": surrogate_message})
    run_id = trigger(client, "surrogate-message")
    with (
        open_sse(client, "/subscribe", runId=run_id) as stream,
        open_sse(client, "/runs/subscribe") as runs,
    ):
        d.start()
        events = stream.rest()
        summaries = runs.until("run:complete")
        again = trigger(client, "add", {"a": 1, "b": 1})  # the feed of all runs goes on
        assert runs.until("run:complete")[-1]["runId"] == again
    for received in (events, summaries):
        messages = [e["message"] for e in received if e["type"] == "log:write"]
        assert messages == ["bad \ufffd", "fine"]
        assert received[-1]["type"] == "run:complete"
