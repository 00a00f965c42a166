"""The dashboard in a real headless Chromium (Debian's /usr/bin/chromium) driven by Playwright.

A real Durably on a SQLite file, its worker started, served by uvicorn in a thread on a free
loopback port, with the API (and so the dashboard) mounted under a prefix: every URL the page
uses must be relative. Jobs wait on gates the test opens, so intermediate states can be seen.
No browser is ever downloaded: `executable_path` points at the system Chromium. Without it
(or without playwright) the tests are skipped, and under `CI=true` they fail.

Screenshots go to `$DURABLY_ARTIFACTS` or `tests/browser/artifacts/`.
"""

from __future__ import annotations

import os
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from conftest import wait_until
from pydantic import BaseModel

from durably import Durably, StepContext, create_durably, define_job
from durably.plugins import with_log_persistence

#: Debian's package (apt-get install chromium); DURABLY_CHROMIUM points elsewhere
CHROMIUM = os.environ.get("DURABLY_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: where the tests mount the app: the page must find the API relative to itself
PREFIX = "/ops/durably"
ARTIFACTS = Path(os.environ.get("DURABLY_ARTIFACTS") or Path(__file__).parent / "artifacts")
GATE_SECONDS = 60


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"browser tests cannot run under CI: {reason}", pytrace=False)
    pytest.skip(reason)


class Gates:
    """Named gates a job step waits at while the test holds them (open by default)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[str, threading.Event] = {}
        self._reached: set[str] = set()

    def hold(self, *names: str) -> None:
        with self._lock:
            for name in names:
                self._held[name] = threading.Event()

    def release(self, name: str) -> None:
        with self._lock:
            gate = self._held.pop(name, None)
        if gate is not None:
            gate.set()

    def release_all(self) -> None:
        with self._lock:
            gates, self._held = list(self._held.values()), {}
        for gate in gates:
            gate.set()

    def reached(self, name: str) -> bool:
        with self._lock:
            return name in self._reached

    def pass_through(self, name: str) -> None:
        with self._lock:
            self._reached.add(name)
            gate = self._held.get(name)
        if gate is not None and not gate.wait(GATE_SECONDS):
            raise TimeoutError(f"the test never released gate {name!r}")


class ItemsIn(BaseModel):
    items: int = 3


@dataclass
class Dashboard:
    """One served dashboard: its page URL, the instance behind it and the test's controls."""

    url: str
    durably: Durably
    gates: Gates
    #: `flaky` fails until this file exists
    fix_file: Path
    base: str = field(default="")

    def wait_status(self, run_id: str, status: str) -> None:
        def check() -> bool:
            run = self.durably.get_run(run_id)
            return run is not None and run.status == status

        wait_until(check, timeout=30)


def _jobs(gates: Gates, fix_file: Path) -> dict[str, Any]:
    def items(step: StepContext, payload: ItemsIn) -> dict[str, int]:
        for i in range(payload.items):

            def work(i: int = i) -> int:
                gates.pass_through(f"item-{i}")
                return i * i

            step.run(f"item-{i}", work)
            step.progress(i + 1, payload.items, f"item {i + 1} of {payload.items}")
            step.log.info("processed", {"item": i})
        return {"processed": payload.items}

    def flaky(step: StepContext, payload: Any) -> str:
        step.run("prepare", lambda: "ready")

        def check() -> bool:
            if not fix_file.exists():
                raise RuntimeError(f"not fixed yet: {fix_file.name} is missing")
            return True

        step.run("check", check)
        return "fixed"

    return {
        "items": define_job(name="items", input=ItemsIn, run=items),
        "flaky": define_job(name="flaky", run=flaky),
    }


class _Server:
    """uvicorn in a daemon thread on a free 127.0.0.1 port."""

    def __init__(self, app: Any) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.base = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        config = uvicorn.Config(app, log_level="warning", lifespan="off")
        # open SSE streams never end by themselves: do not wait for them on shutdown
        config.timeout_graceful_shutdown = 1
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )

    def __enter__(self) -> _Server:
        self._thread.start()
        wait_until(lambda: self._server.started or not self._thread.is_alive())
        assert self._server.started, "uvicorn did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(10)
        self._sock.close()


def _serve(tmp_path: Path, build: Any, path: str) -> Iterator[Dashboard]:
    gates = Gates()
    fix_file = tmp_path / "fixed.flag"
    d = create_durably(
        f"sqlite:///{tmp_path / 'dashboard.db'}",
        polling_interval=0.05,
        heartbeat_interval=0.2,
    )
    try:
        d.migrate()
        d.use(with_log_persistence())
        d.register(_jobs(gates, fix_file))
        d.start()
        with _Server(build(d)) as server:
            yield Dashboard(
                url=server.base + path, durably=d, gates=gates, fix_file=fix_file, base=server.base
            )
    finally:
        gates.release_all()
        d.stop(timeout=5)
        d.close()


@pytest.fixture
def dashboard(tmp_path: Path) -> Iterator[Dashboard]:
    """The API and its dashboard mounted under PREFIX of an outer Starlette app."""
    from starlette.applications import Starlette
    from starlette.routing import Mount

    from durably.server import create_app

    def build(d: Durably) -> Any:
        return Starlette(routes=[Mount(PREFIX, app=create_app(d))])

    yield from _serve(tmp_path, build, PREFIX + "/")


@pytest.fixture
def split_dashboard(tmp_path: Path) -> Iterator[Dashboard]:
    """The layout of `durably serve`: the dashboard at `/`, the API under `/api`."""
    from starlette.applications import Starlette
    from starlette.routing import Mount

    from durably.server import create_app
    from durably.server.dashboard import create_dashboard

    def build(d: Durably) -> Any:
        return Starlette(
            routes=[Mount("/api", app=create_app(d)), Mount("/", app=create_dashboard("api/"))]
        )

    yield from _serve(tmp_path, build, "/")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless system Chromium for the module (closed after it: Playwright's sync API
    keeps an event loop marked running in this thread while it is open)."""
    if not Path(CHROMIUM).exists():
        _unavailable(f"{CHROMIUM} is not installed (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (pip install 'playwright>=1.40')")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@dataclass
class PageErrors:
    """What went wrong inside the page: uncaught exceptions and console errors."""

    uncaught: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)


@pytest.fixture
def page(browser: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A fresh page (own context); it must end without a script error or a CSP violation.

    A screenshot of its last state is saved as `<test name>-final.png`.
    """
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(20_000)
    tab = context.new_page()
    errors = PageErrors()
    tab.on("pageerror", lambda exc: errors.uncaught.append(str(exc)))
    tab.on(
        "console",
        lambda message: errors.console.append(message.text) if message.type == "error" else None,
    )
    tab.errors = errors
    try:
        yield tab
        assert errors.uncaught == [], f"uncaught errors in the page: {errors.uncaught}"
        csp = [text for text in errors.console if "Content Security Policy" in text]
        assert csp == [], f"the page broke its own Content-Security-Policy: {csp}"
    finally:
        try:
            screenshot(tab, request.node.name, "final")
        finally:
            context.close()


def screenshot(tab: Any, test_name: str, label: str) -> Path:
    """Save a full-page screenshot as a test artifact; returns its path."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", test_name)
    path = ARTIFACTS / f"{safe}-{label}.png"
    tab.screenshot(path=str(path), full_page=True, animations="disabled")
    return path
