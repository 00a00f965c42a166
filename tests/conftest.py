"""Shared fixtures: one core suite over every backend, Durably factories, poll-until waits.

Tests that use `make_durably`/`durably` run once per backend of `DURABLY_TEST_BACKENDS`
(default: sqlite,postgres,mysql,libsql). A test that also asks for `db_url` reads the SQLite file
directly, so it runs on SQLite only; `@pytest.mark.backends(...)` narrows a test to some of
the selected backends. Under `CI=true` an unreachable server is a failure; elsewhere its
tests are skipped with the reason. The backend helpers live in `_backends.py`.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from _backends import SERVER_URLS, empty_tables, file_url, prepare_server, selected_backends

from durably import Durably, create_durably


def pytest_configure(config: pytest.Config) -> None:
    # A suite started in the background (`nohup ... &`, a non-interactive shell's job)
    # inherits SIGINT as ignored, and so would every process it starts: the tests that
    # press Ctrl-C on a `durably` process would then see it ignored. A handler here is
    # reset to the default in each child at exec, as a terminal would give it.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    config.addinivalue_line(
        "markers",
        "backends(*names): run only on these of the selected backends "
        "(e.g. the servers, for a test about server behaviour)",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" in metafunc.fixturenames:
        backends = ["sqlite"] if "db_url" in metafunc.fixturenames else selected_backends()
        marker = metafunc.definition.get_closest_marker("backends")
        if marker is not None:
            backends = [b for b in backends if b in marker.args]
        metafunc.parametrize("backend", backends, scope="function")


def wait_until(predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.01) -> Any:
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s: {predicate}")
        time.sleep(interval)


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    """A URL of a fresh SQLite file."""
    return f"sqlite:///{tmp_path / 'durably.db'}"


@pytest.fixture
def backend_url(backend: str, tmp_path: Path) -> str:
    """This test's database: a fresh SQLite or libSQL file, or an emptied server database."""
    if backend not in SERVER_URLS:
        return file_url(backend, tmp_path / "durably.db")
    prepare_server(backend)
    url = SERVER_URLS[backend]
    empty_tables(url)
    return url


@pytest.fixture
def make_durably(backend_url: str) -> Iterator[Callable[..., Durably]]:
    """Build migrated Durably instances on the test's database; all closed at teardown."""
    made: list[Durably] = []

    def make(url: str | None = None, **options: Any) -> Durably:
        options.setdefault("polling_interval", 0.05)
        options.setdefault("heartbeat_interval", 0.2)
        options.setdefault("stale_threshold", 2.0)
        d = create_durably(url or backend_url, **options)
        d.migrate()
        made.append(d)
        return d

    yield make
    for d in made:
        d.stop(timeout=5)
        d.close()


@pytest.fixture
def durably(make_durably: Callable[..., Durably]) -> Durably:
    """A migrated Durably on this test's backend (worker not started)."""
    return make_durably()
