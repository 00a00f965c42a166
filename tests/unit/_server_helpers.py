"""Helpers for the HTTP API tests: a real uvicorn server in a thread, an SSE reader, jobs.

Not collected (no `test_` prefix).
"""

from __future__ import annotations

import json
import re
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import uvicorn
from conftest import wait_until
from pydantic import BaseModel

from durably import Durably, StepContext, define_job

__all__ = [
    "SSE",
    "AddIn",
    "Gate",
    "add_job",
    "anything_job",
    "boom_job",
    "listener_count",
    "live_server",
    "open_sse",
    "trigger",
    "wait_until",
]

_FRAME = re.compile(rb"data: ([^\n]*)")


class AddIn(BaseModel):
    a: int
    b: int


@define_job(name="add", input=AddIn)
def add_job(step: StepContext, payload: AddIn) -> dict[str, int]:
    total = step.run("sum", lambda: payload.a + payload.b)
    step.progress(1, 2, "half way")
    step.log.info("summed", {"total": total})
    doubled = step.run("double", lambda: total * 2)
    step.progress(2)
    return {"total": total, "doubled": doubled}


@define_job(name="boom")
def boom_job(step: StepContext, payload: Any) -> None:
    step.run("explode", lambda: 1 / 0)


@define_job(name="anything")
def anything_job(step: StepContext, payload: Any) -> Any:
    return payload


def trigger(client: httpx.Client, job: str, payload: Any = None, **extra: Any) -> str:
    """POST /trigger (`extra`: idempotencyKey, concurrencyKey); the new run's id."""
    body: dict[str, Any] = {"jobName": job, **extra}
    if payload is not None:
        body["input"] = payload
    response = client.post("/trigger", json=body)
    assert response.status_code == 200, response.text
    return str(response.json()["runId"])


class Gate:
    """Lets a job wait at a point until the test opens the gate."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.opened = threading.Event()

    def pass_through(self) -> None:
        self.entered.set()
        if not self.opened.wait(20):
            raise AssertionError("the test never opened the gate")


def listener_count(durably: Durably) -> int:
    """How many event subscriptions the instance holds (leak check)."""
    return sum(len(subs) for subs in durably._events._by_type.values())


@contextmanager
def live_server(app: Any) -> Iterator[str]:
    """Serve `app` with uvicorn on 127.0.0.1 (a free port) in a thread; yields the base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        log_level="warning",
        lifespan="off",
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started or not thread.is_alive())
        assert server.started, "uvicorn did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


class SSE:
    """Reads an SSE response frame by frame, checking each frame's exact form."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._chunks = response.iter_raw()
        self._buffer = b""
        self.closed = False

    def _next_frame(self) -> bytes | None:
        while b"\n\n" not in self._buffer:
            chunk = next(self._chunks, None)
            if chunk is None:
                assert self._buffer == b"", f"trailing bytes at close: {self._buffer!r}"
                self.closed = True
                return None
            self._buffer += chunk
        frame, self._buffer = self._buffer.split(b"\n\n", 1)
        return frame

    def next(self) -> dict[str, Any] | None:
        """The next event, or None when the server closed the stream."""
        frame = self._next_frame()
        if frame is None:
            return None
        match = _FRAME.fullmatch(frame)
        assert match, f"not a `data: <json>` frame: {frame!r}"
        text = match.group(1).decode("utf-8")
        data = json.loads(text)
        compact = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
        assert text == compact, f"frame JSON is not compact: {text!r}"
        assert isinstance(data, dict)
        return data

    def until(self, event_type: str) -> list[dict[str, Any]]:
        """Events up to and including the first of `event_type`."""
        events: list[dict[str, Any]] = []
        while True:
            event = self.next()
            assert event is not None, f"stream closed before {event_type}; got {events}"
            events.append(event)
            if event["type"] == event_type:
                return events

    def rest(self) -> list[dict[str, Any]]:
        """Every event until the server closes the stream."""
        events: list[dict[str, Any]] = []
        while (event := self.next()) is not None:
            events.append(event)
        return events


@contextmanager
def open_sse(client: httpx.Client, path: str, **params: str) -> Iterator[SSE]:
    """Open an SSE stream and check its headers; closing the block disconnects."""
    with client.stream("GET", path, params=params) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"] == "text/event-stream"
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["connection"].lower() == "keep-alive"
        yield SSE(response)
