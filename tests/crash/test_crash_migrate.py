"""A first `migrate()` SIGKILLed at random moments, on every backend: the next one finishes.

On MySQL/MariaDB every CREATE TABLE / CREATE INDEX commits on its own, so a kill can leave
part of revision 0001 and no version row; on the others the kill rolls the migration's
one transaction back (and must leave no lock behind). Each round kills a migration of an
empty database, then kills the migration that resumes from what the first left, then
migrates to the end and runs a job. The kill moments are seeded: uniform over the time
one whole migration takes here.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from _backends import SERVER_URLS, drop_schema, schema_of

from durably import StepContext, create_durably, define_job
from durably._migrate import VERSION_TABLE, AlembicMigrator

pytestmark = pytest.mark.crash

ROUNDS = 4
KILLS_PER_ROUND = 2
SEED = 20261125

# waits for a line on stdin, so the test chooses when the migration starts
MIGRATOR = """
import sys
from durably import create_durably
with create_durably(sys.argv[1]) as d:
    print("ready", flush=True)
    sys.stdin.readline()
    d.migrate()
    print("migrated", flush=True)
"""


@define_job(name="after_killed_migrations")
def after_killed_migrations(step: StepContext, payload: Any) -> str:
    return step.run("one", lambda: "ok")


class Migrator:
    """A `migrate()` in its own process, started by `go()`."""

    def __init__(self, url: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", MIGRATOR, url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def wait_ready(self) -> None:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line == "ready\n", (line, self.proc.stderr.read() if self.proc.stderr else "")

    def go(self) -> float:
        """Let it migrate; returns the monotonic time it was let go."""
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        return time.monotonic()

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def wait_migrated(self) -> None:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line == "migrated\n", (line, self.proc.stderr.read() if self.proc.stderr else "")


def _summary(schema: dict[str, Any]) -> str:
    tables = [t for t in schema if t.startswith("durably_") and t != VERSION_TABLE]
    indexes = sum(len(schema[t]["indexes"]) for t in tables)
    version = "no version table" if VERSION_TABLE not in schema else schema["version rows"]
    return f"{len(tables)} tables, {indexes} indexes, {version}"


@pytest.fixture
def url(backend: str, backend_url: str) -> Iterator[str]:
    """This test's database, left migrated for the rest of the session."""
    yield backend_url
    if backend in SERVER_URLS:
        drop_schema(backend_url)
        with create_durably(backend_url) as d:
            d.migrate()


def test_migrate_finishes_after_first_migrations_sigkilled_at_random_moments(
    backend: str, url: str
) -> None:
    rng = random.Random(f"{SEED}-{backend}")
    # start every process up front: their imports overlap instead of adding up, and
    # are over before the one migration that sets the window is timed
    migrators = [Migrator(url) for _ in range(1 + ROUNDS * KILLS_PER_ROUND)]
    try:
        for migrator in migrators:
            migrator.wait_ready()
        drop_schema(url)
        measured = migrators[0]
        started = measured.go()
        measured.wait_migrated()
        window = time.monotonic() - started
        assert measured.proc.wait(30) == 0
        head = schema_of(url)
        assert head["version rows"] == [(AlembicMigrator().head(),)]

        states: Counter[str] = Counter()
        for round_ in range(ROUNDS):
            drop_schema(url)
            for i in range(KILLS_PER_ROUND):
                victim = migrators[1 + round_ * KILLS_PER_ROUND + i]
                delay = rng.uniform(0, window)
                started = victim.go()
                time.sleep(max(0.0, started + delay - time.monotonic()))
                victim.kill()
                states[_summary(schema_of(url))] += 1

            with create_durably(url, polling_interval=0.05) as d:
                d.migrate()
                assert schema_of(url) == head, f"round {round_}: {states}"
                jobs = d.register({"after_killed_migrations": after_killed_migrations})
                run = jobs["after_killed_migrations"].trigger({})
                assert d.process_one()
                finished = d.get_run(run.id)
                assert finished is not None and finished.status == "completed"
                assert finished.output == "ok"
        # which states the kills left (visible with -s): partial ones on MySQL/MariaDB
        print(f"\n{backend}: one migration {window:.2f} s; kills left {dict(states)}")
    finally:
        for migrator in migrators:
            if migrator.proc.poll() is None:
                migrator.proc.kill()
            migrator.proc.communicate(timeout=30)
