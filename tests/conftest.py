"""Shared fixtures: a fresh SQLite file per test, Durably factories, poll-until waits."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from durably import Durably, create_durably


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
def make_durably(db_url: str) -> Iterator[Callable[..., Durably]]:
    """Build migrated Durably instances on the test's database; all closed at teardown."""
    made: list[Durably] = []

    def make(url: str | None = None, **options: Any) -> Durably:
        options.setdefault("polling_interval", 0.05)
        options.setdefault("heartbeat_interval", 0.2)
        options.setdefault("stale_threshold", 2.0)
        d = create_durably(url or db_url, **options)
        d.migrate()
        made.append(d)
        return d

    yield make
    for d in made:
        d.stop(timeout=5)
        d.close()


@pytest.fixture
def durably(make_durably: Callable[..., Durably]) -> Durably:
    """A migrated Durably on a fresh SQLite file (worker not started)."""
    return make_durably()
