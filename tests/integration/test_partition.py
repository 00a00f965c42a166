"""A worker cut off from its database server (a network partition) keeps the promise.

Worker A reaches the server through a TCP proxy that the test cuts in the middle of a
step; worker B reaches it directly. A's heartbeats then fail: past its lease deadline it
must take its run as lost, so that when the partition heals and its step returns it
starts no further step, while B, which took the run over once its heartbeat went stale,
finishes it. Only the step in flight at the cut runs twice (at least once); the next one
runs once, by B.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from _backends import SERVER_URLS, empty_tables, prepare_server
from conftest import wait_until
from sqlalchemy.engine import make_url

from durably import StepContext, create_durably, define_job

HEARTBEAT = 0.2
STALE = 1.0


class Proxy:
    """A TCP proxy on 127.0.0.1 that can be cut (every connection dropped, new ones
    refused at once) and healed."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.cut = threading.Event()
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.cut.is_set():
                client.close()
                continue
            upstream = socket.create_connection(self.target)
            with self._lock:
                self._open += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def partition(self) -> None:
        self.cut.set()
        with self._lock:
            for s in self._open:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self._open.clear()

    def heal(self) -> None:
        self.cut.clear()

    def close(self) -> None:
        self.partition()
        self.listener.close()


@pytest.fixture(params=["postgres", "mysql"])
def server(request: pytest.FixtureRequest) -> Iterator[tuple[str, Proxy]]:
    """(direct URL, proxy to the same server) of a clean server database."""
    prepare_server(request.param)
    url = SERVER_URLS[request.param]
    empty_tables(url)
    parsed = make_url(url)
    proxy = Proxy((parsed.host or "127.0.0.1", parsed.port or 5432))
    yield url, proxy
    proxy.close()


@pytest.mark.parametrize("cut", ["in-step", "between-steps"])
def test_a_partitioned_worker_starts_no_step_after_its_run_was_taken_over(
    server: tuple[str, Proxy], cut: str
) -> None:
    url, proxy = server
    proxied = make_url(url).set(host="127.0.0.1", port=proxy.port).render_as_string(False)
    executions: list[tuple[str, str]] = []  # (worker, step), appended by step functions
    a_waits = threading.Event()
    a_may_go_on = threading.Event()
    # which instance runs the job: each one's run:start listener names its slot thread
    current = threading.local()

    def hold_worker_a() -> None:
        if current.name == "A":
            a_waits.set()
            assert a_may_go_on.wait(30), "the test never let worker A go on"

    def first() -> str:
        executions.append((current.name, "first"))
        if cut == "in-step":
            hold_worker_a()
        return str(current.name)

    @define_job(name="partitioned")
    def job(step: StepContext, payload: Any) -> None:
        step.run("first", first)
        if cut == "between-steps":
            hold_worker_a()  # job code between two steps, "first" committed
        step.run("second", lambda: executions.append((current.name, "second")))

    options: dict[str, Any] = {
        "heartbeat_interval": HEARTBEAT,
        "stale_threshold": STALE,
        "polling_interval": 0.05,
    }
    a = create_durably(proxied, **options)
    b = create_durably(url, **options)
    errors: list[Any] = []
    try:
        a.on("run:start", lambda _e: setattr(current, "name", "A"))
        b.on("run:start", lambda _e: setattr(current, "name", "B"))
        a.on("worker:error", errors.append)
        for d in (a, b):
            d.register({"partitioned": job})
        run = a.jobs.partitioned.trigger({})
        a.start()
        assert a_waits.wait(30), "worker A never reached the point of the cut"

        proxy.partition()  # A can no longer reach the server; B can
        b.start()
        wait_until(lambda: b.get_run(run.id).status == "completed", timeout=30)
        proxy.heal()
        a_may_go_on.set()  # A goes on into a healed network: it must stop right there
        a.stop(timeout=10)
        b.stop(timeout=10)

        assert ("A", "second") not in executions, executions
        assert executions.count(("B", "second")) == 1, executions
        assert any(getattr(e, "context", None) == "heartbeat" for e in errors), errors
        (stored,) = [s for s in b.get_steps(run.id) if s.name == "first"]
        if cut == "in-step":
            # the step in flight at the cut ran again, by the taker: at least once
            assert executions.count(("B", "first")) == 1, executions
            assert stored.output == "B"
        else:
            # committed before the cut: never again
            assert executions == [("A", "first"), ("B", "second")], executions
            assert stored.output == "A"
    finally:
        a_may_go_on.set()
        a.close()
        b.close()
