"""Shared fixtures: one core suite over every backend, Durably factories, poll-until waits.

Tests that use `make_durably`/`durably` run once per backend of `DURABLY_TEST_BACKENDS`
(default: sqlite,postgres,mysql). A test that also asks for `db_url` reads the SQLite file
directly, so it runs on SQLite only. Under `CI=true` an unreachable server is a failure;
elsewhere its tests are skipped with the reason.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from durably import Durably, create_durably

SERVER_URLS = {
    "postgres": os.environ.get(
        "DURABLY_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
    ),
    "mysql": os.environ.get("DURABLY_TEST_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/test"),
}
ALL_BACKENDS = ("sqlite", "postgres", "mysql")
DURABLY_TABLES = ("durably_logs", "durably_steps", "durably_runs")


def selected_backends() -> list[str]:
    raw = os.environ.get("DURABLY_TEST_BACKENDS", ",".join(ALL_BACKENDS))
    names = [b.strip() for b in raw.split(",") if b.strip()]
    unknown = set(names) - set(ALL_BACKENDS)
    if unknown:
        raise pytest.UsageError(f"unknown DURABLY_TEST_BACKENDS {sorted(unknown)}")
    return names


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" in metafunc.fixturenames:
        backends = ["sqlite"] if "db_url" in metafunc.fixturenames else selected_backends()
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


_server_state: dict[str, str | None] = {}


def _prepare_server(name: str) -> None:
    """Reach the server once per session and migrate it; fail (CI) or skip if it is down."""
    if name not in _server_state:
        url = SERVER_URLS[name]
        try:
            with create_durably(url) as d:
                d.migrate()
            _server_state[name] = None
        except Exception as exc:  # unreachable server, missing driver, ...
            _server_state[name] = f"{name} at {url} is not usable: {exc}"
    problem = _server_state[name]
    if problem is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{problem} (CI=true: a missing server is a failure)")
        pytest.skip(problem)


def _empty_tables(url: str) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            for table in DURABLY_TABLES:
                conn.exec_driver_sql(f"DELETE FROM {table}")
    finally:
        engine.dispose()


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    """A URL of a fresh SQLite file."""
    return f"sqlite:///{tmp_path / 'durably.db'}"


@pytest.fixture
def backend_url(backend: str, tmp_path: Path) -> str:
    """The database of this test's backend: a fresh SQLite file, or an emptied server DB."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'durably.db'}"
    _prepare_server(backend)
    url = SERVER_URLS[backend]
    _empty_tables(url)
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
