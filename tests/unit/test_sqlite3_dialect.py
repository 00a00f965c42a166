"""The stdlib sqlite3 dialect's connections: bounded however many threads came and went,
reused by a thread that runs transactions in a row, never reused when broken."""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from _api_helpers import sqlite_path

from durably import ConfigurationError, Durably, StepContext, create_durably, define_job
from durably_dialects.sqlite3 import SqliteDialect

# a handful of idle pooled connections (the file and its -wal each) plus the shared -shm
FD_BOUND = 16


@define_job(name="tick")
def tick(step: StepContext, payload: Any) -> str:
    return "ok"


def _fds_to(db_path: str) -> int:
    """Open descriptors of this process to the database file, its -wal and its -shm."""
    real = os.path.realpath(db_path)
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # the descriptor listdir itself used, closed by now
            continue
        if target.startswith(real):
            count += 1
    return count


def _in_threads(n: int, fn: Callable[[int], None]) -> None:
    errors: list[BaseException] = []

    def body(i: int) -> None:
        try:
            fn(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert not errors, errors[:3]


@pytest.fixture
def dialect(db_url: str) -> Iterator[SqliteDialect]:
    d = SqliteDialect(db_url)
    with d.transaction() as conn:
        conn.execute("CREATE TABLE t (x INTEGER)")
    yield d
    d.close()


def _count(d: SqliteDialect) -> int:
    with d.read() as conn:
        row = conn.execute("SELECT COUNT(*) FROM t").fetchone()
    assert row is not None
    return int(row[0])


def _raw(conn: Any) -> sqlite3.Connection:
    """The sqlite3 connection under the dialect's adapter (identity says which one it is)."""
    raw: sqlite3.Connection = conn._raw
    return raw


def test_short_lived_threads_leave_a_bounded_number_of_connections_open(db_url: str) -> None:
    path = sqlite_path(db_url)
    with create_durably(db_url) as d:
        d.migrate()
        handle = d.register({"tick": tick})["tick"]

        def trigger_and_read(i: int) -> None:
            run = handle.trigger({"i": i})
            assert d.get_run(run.id) is not None

        _in_threads(200, trigger_and_read)
        assert len(d.get_runs(limit=1000)) == 200
        open_fds = _fds_to(path)
        assert open_fds <= FD_BOUND, f"{open_fds} descriptors open to {path} after 200 threads"
    assert _fds_to(path) == 0, "close() left connections open"


def test_a_worker_thread_reuses_one_connection_for_transactions_and_reads_in_a_row(
    dialect: SqliteDialect,
) -> None:
    seen: set[int] = set()
    for i in range(20):
        with dialect.transaction() as conn:
            conn.execute("INSERT INTO t (x) VALUES (?)", (i,))
            seen.add(id(_raw(conn)))
        with dialect.read() as conn:
            conn.execute("SELECT COUNT(*) FROM t")
            seen.add(id(_raw(conn)))
    assert len(seen) == 1


def test_a_transaction_whose_block_raises_is_rolled_back_and_its_connection_reused(
    dialect: SqliteDialect,
) -> None:
    with dialect.transaction() as conn:
        before = _raw(conn)
    with pytest.raises(ZeroDivisionError), dialect.transaction() as conn:
        conn.execute("INSERT INTO t (x) VALUES (1)")
        1 / 0  # noqa: B018
    with dialect.transaction() as conn:
        assert _raw(conn) is before
        conn.execute("INSERT INTO t (x) VALUES (2)")
    with dialect.read() as conn:
        assert conn.execute("SELECT x FROM t").fetchall() == [(2,)]


def test_a_failed_commit_is_rolled_back_and_the_connection_stays_usable(
    dialect: SqliteDialect,
) -> None:
    with dialect.transaction() as conn:
        conn.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
        conn.execute(
            "CREATE TABLE child (p INTEGER REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED)"
        )
    with dialect.transaction() as conn:
        # foreign keys are a per-connection setting, outside any transaction
        conn.execute("COMMIT")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("BEGIN IMMEDIATE")
    with pytest.raises(sqlite3.IntegrityError), dialect.transaction() as conn:
        conn.execute("INSERT INTO child (p) VALUES (42)")  # checked at COMMIT only
    with dialect.transaction() as conn:
        conn.execute("INSERT INTO parent (id) VALUES (42)")
        conn.execute("INSERT INTO child (p) VALUES (42)")
    with dialect.read() as conn:
        assert conn.execute("SELECT p FROM child").fetchall() == [(42,)]


def test_a_connection_broken_inside_a_transaction_is_not_reused(dialect: SqliteDialect) -> None:
    with pytest.raises(sqlite3.ProgrammingError), dialect.transaction() as conn:
        conn.execute("INSERT INTO t (x) VALUES (1)")
        broken = _raw(conn)
        broken.close()
    with dialect.transaction() as conn:
        assert _raw(conn) is not broken
        conn.execute("INSERT INTO t (x) VALUES (2)")
    assert _count(dialect) == 1


def test_a_read_runs_beside_an_open_write_transaction_of_another_thread(
    dialect: SqliteDialect,
) -> None:
    inside, release = threading.Event(), threading.Event()

    def writer() -> None:
        with dialect.transaction() as conn:
            conn.execute("INSERT INTO t (x) VALUES (1)")
            inside.set()
            assert release.wait(30)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        assert inside.wait(30)
        assert _count(dialect) == 0  # the uncommitted row is not seen, and nothing waits
    finally:
        release.set()
        thread.join(30)
    assert _count(dialect) == 1


def test_many_threads_writing_at_once_all_commit(dialect: SqliteDialect) -> None:
    def write(i: int) -> None:
        with dialect.transaction() as conn:
            conn.execute("INSERT INTO t (x) VALUES (?)", (i,))

    _in_threads(50, write)
    assert _count(dialect) == 50


def test_memory_database_is_one_shared_connection_across_threads() -> None:
    d = SqliteDialect("sqlite://")
    try:
        with d.transaction() as conn:
            conn.execute("CREATE TABLE t (x INTEGER)")

        def write(i: int) -> None:
            with d.transaction() as conn:
                conn.execute("INSERT INTO t (x) VALUES (?)", (i,))

        _in_threads(20, write)
        assert _count(d) == 20
    finally:
        d.close()
    with pytest.raises(RuntimeError, match="closed"), d.read():
        pass


def test_migrate_then_close_leaves_no_connection_open(db_url: str) -> None:
    d: Durably = create_durably(db_url)
    d.migrate()
    d.migrate()
    handle = d.register({"tick": tick})["tick"]
    handle.trigger({})
    d.close()
    assert _fds_to(sqlite_path(db_url)) == 0


def test_a_connection_that_fails_to_open_holds_no_descriptor(tmp_path: Path) -> None:
    path = tmp_path / "garbage.db"
    path.write_bytes(b"not a database, " * 512)
    d = SqliteDialect(f"sqlite:///{path}")
    try:
        with pytest.raises(sqlite3.DatabaseError, match="not a database"), d.read():
            pass
        assert _fds_to(str(path)) == 0
    finally:
        d.close()


# -- URL options --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("foo=1", "'foo'"),
        ("foo=1&bar=2", "'bar', 'foo'"),
        ("synchronous=FULL&Timeout=3", "'Timeout'"),
        ("journal_mode=DELETE&password=s3cret", "'journal_mode', 'password'"),
    ],
)
def test_an_unknown_url_option_is_refused_naming_it_and_the_known_ones(
    tmp_path: Path, query: str, named: str
) -> None:
    path = tmp_path / "options.db"
    with pytest.raises(ConfigurationError) as info:
        create_durably(f"sqlite:///{path}?{query}")
    message = str(info.value)
    assert f"unknown option {named}" in message or f"unknown options {named}" in message
    assert "synchronous" in message and "timeout" in message
    assert "s3cret" not in message
    assert not path.exists()


@pytest.mark.parametrize("value", ["soon", "-1", "nan", ""])
def test_a_bad_timeout_is_a_configuration_error(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigurationError, match="timeout"):
        SqliteDialect(f"sqlite:///{tmp_path / 'x.db'}?timeout={value}")


def test_the_known_url_options_are_accepted(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}?synchronous=FULL&timeout=5"
    dialect = SqliteDialect(url)
    assert (dialect.synchronous, dialect.timeout) == ("FULL", 5.0)
    dialect.close()
