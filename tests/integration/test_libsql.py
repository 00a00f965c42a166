"""The libSQL dialect on every transport and driver, against real SQLite underneath.

Remote tests talk to the Hrana test server of `tests/libsql_server` (a subprocess on
loopback, backed by a SQLite file): WebSocket `hrana2` through libsql-client, Hrana 3 HTTP
(batons, cursors) through the official `libsql` driver, and HTTP API v1 batches through
libsql-client. With `LIBSQL_TEST_URL` set, the transport-independent tests also run
against that database (a real sqld or Turso).
"""

from __future__ import annotations

import itertools
import sqlite3
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
from _libsql_helpers import (
    CASES,
    REMOTE_TRANSPORTS,
    HranaServer,
    case_url,
    hrana_server,
)
from conftest import wait_until

from durably import (
    Durably,
    InvalidRunStateError,
    StepContext,
    create_durably,
    define_job,
    resolve_dialect,
)
from durably._migrate import VERSION_TABLE, AlembicMigrator
from durably.plugins import with_log_persistence
from durably_dialects.libsql import (
    LibsqlDatabaseError,
    LibsqlDialect,
    LibsqlIntegrityError,
    LibsqlStreamExpiredError,
)
from durably_dialects.libsql._migrate import head_revision, split_sql, upgrade_statements


@pytest.fixture(params=CASES, ids=[c[0] for c in CASES])
def libsql_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A libSQL URL of each transport: a fresh file, a fresh test server, or LIBSQL_TEST_URL."""
    with case_url(*request.param, tmp_path) as url:
        yield url


@pytest.fixture
def server(tmp_path: Path) -> Iterator[HranaServer]:
    with hrana_server(tmp_path) as running:
        yield running


@pytest.fixture
def make_durably() -> Iterator[Callable[[str], Durably]]:
    made: list[Durably] = []

    def make(url: str) -> Durably:
        d = create_durably(url, polling_interval=0.05, heartbeat_interval=0.2, stale_threshold=5)
        d.migrate()
        made.append(d)
        return d

    yield make
    for d in made:
        d.stop(timeout=10)
        d.close()


@pytest.fixture
def dialect_of() -> Iterator[Callable[[str], LibsqlDialect]]:
    made: list[LibsqlDialect] = []

    def make(url: str) -> LibsqlDialect:
        dialect = resolve_dialect(url)
        assert isinstance(dialect, LibsqlDialect)
        made.append(dialect)
        return dialect

    yield make
    for dialect in made:
        dialect.close()


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


# -- a real job, end to end -------------------------------------------------------------

calls: dict[str, int] = {}


def _lifecycle_job(step: StepContext, payload: dict[str, Any]) -> dict[str, Any]:
    key = payload["key"]
    doubled = step.run("double", lambda: _count(f"{key}:double") and payload["n"] * 2)

    def flaky() -> int:
        if payload.get("fail_once") and _count(f"{key}:flaky") == 1:
            raise RuntimeError("boom")
        return int(doubled) + 1

    result = step.run("flaky", flaky)
    step.log.info("done", {"result": result})
    step.progress(2, 2, "done")
    return {"result": result}


def _count(name: str) -> int:
    calls[name] = calls.get(name, 0) + 1
    return calls[name]


def test_a_job_runs_end_to_end_with_retry_and_cancel(
    libsql_url: str, make_durably: Callable[[str], Durably]
) -> None:
    d = make_durably(libsql_url)
    d.migrate()  # idempotent
    d.use(with_log_persistence())
    name = unique("e2e")
    handle = d.register({name: define_job(name=name, run=_lifecycle_job)})[name]
    ok = handle.trigger({"n": 1, "key": unique("ok")})
    flaky_key = unique("flaky")
    flaky = handle.trigger({"n": 2, "key": flaky_key, "fail_once": True})
    idem = unique("idem")
    first = handle.trigger({"n": 3, "key": unique("i")}, idempotency_key=idem)
    assert handle.trigger({"n": 4, "key": "x"}, idempotency_key=idem).id == first.id

    assert d.process_until_idle() == 3
    done = d.get_run(ok.id)
    assert done is not None and done.status == "completed" and done.output == {"result": 3}
    assert done.progress is not None and done.progress.message == "done"
    assert [log.message for log in d.get_logs(ok.id)] == ["done"]
    failed = d.get_run(flaky.id)
    assert failed is not None and failed.status == "failed"
    assert failed.error == "RuntimeError: boom" and failed.failed_step_name == "flaky"

    d.retry(flaky.id)
    assert d.process_until_idle() == 1
    retried = d.get_run(flaky.id)
    assert retried is not None and retried.status == "completed"
    assert retried.output == {"result": 5}
    assert calls[f"{flaky_key}:double"] == 1, "a completed step is not run again on retry"
    assert [(s.name, s.status) for s in d.get_steps(flaky.id)] == [
        ("double", "completed"),
        ("flaky", "completed"),
    ]

    pending = handle.trigger({"n": 5, "key": unique("c")}, concurrency_key=unique("k"))
    d.cancel(pending.id)
    assert d.process_until_idle() == 0
    cancelled = d.get_run(pending.id)
    assert cancelled is not None and cancelled.status == "cancelled"
    with pytest.raises(InvalidRunStateError):
        d.cancel(pending.id)
    d.retry(pending.id)
    assert d.process_until_idle() == 1
    d.delete_run(ok.id)
    assert d.get_run(ok.id) is None
    assert {r.status for r in handle.get_runs()} == {"completed"}


def test_the_worker_runs_jobs_in_its_threads(
    libsql_url: str, make_durably: Callable[[str], Durably]
) -> None:
    d = make_durably(libsql_url)
    name = unique("worker")
    handle = d.register({name: define_job(name=name, run=_lifecycle_job)})[name]
    d.start()
    results = [handle.trigger_and_wait({"n": n, "key": unique("w")}, timeout=60) for n in range(3)]
    assert [r.output for r in results] == [{"result": 1}, {"result": 3}, {"result": 5}]


def test_the_jobs_writes_reach_the_servers_database(
    server: HranaServer, make_durably: Callable[[str], Durably]
) -> None:
    for case_id, template, _ in REMOTE_TRANSPORTS:
        d = make_durably(server.url(template))
        name = unique(case_id.replace("-", "_"))
        handle = d.register({name: define_job(name=name, run=_lifecycle_job)})[name]
        run = handle.trigger({"n": 1, "key": unique("s")})
        assert d.process_until_idle() == 1
        assert server.query("SELECT status FROM durably_runs WHERE id = ?", (run.id,)) == [
            ("completed",)
        ]
        assert server.query(
            'SELECT name FROM durably_steps WHERE run_id = ? ORDER BY "index"', (run.id,)
        ) == [("double",), ("flaky",)]
    stats = server.stats()
    assert stats["ws_connections"] >= 1  # libsql-client over WebSocket
    assert stats["POST /v3/pipeline"] >= 1 and stats["POST /v3/cursor"] >= 1  # libsql
    assert stats["POST /v1/batch"] >= 1  # libsql-client over HTTP: batches


# -- transactions: atomic, and their errors recognisable --------------------------------


def test_a_unique_violation_is_the_dialects_integrity_error(
    libsql_url: str, dialect_of: Callable[[str], LibsqlDialect]
) -> None:
    dialect = dialect_of(libsql_url)
    table = unique("uq")
    with dialect.transaction() as conn:
        conn.execute(f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, v TEXT UNIQUE)")
        conn.execute(f"INSERT INTO {table} (v) VALUES (?)", ("a",))
    try:
        with pytest.raises(dialect.integrity_errors) as info, dialect.transaction() as conn:
            conn.execute(f"INSERT INTO {table} (v) VALUES (?)", ("a",))
        assert isinstance(info.value, LibsqlIntegrityError)
        assert info.value.code.startswith("SQLITE_CONSTRAINT")
        # outside a transaction too
        with pytest.raises(LibsqlIntegrityError), dialect.read() as conn:
            conn.execute(f"INSERT INTO {table} (v) VALUES (?) RETURNING id", ("a",))
    finally:
        with dialect.transaction() as conn:
            conn.execute(f"DROP TABLE {table}")


def test_a_failed_transaction_leaves_nothing_behind(
    libsql_url: str, dialect_of: Callable[[str], LibsqlDialect]
) -> None:
    dialect = dialect_of(libsql_url)
    table = unique("atomic")
    with dialect.transaction() as conn:
        conn.execute(f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, v TEXT UNIQUE)")
        conn.execute(f"INSERT INTO {table} (v) VALUES (?)", ("kept",))

    def values() -> list[str]:
        with dialect.read() as conn:
            return [r[0] for r in conn.execute(f"SELECT v FROM {table} ORDER BY id").fetchall()]

    try:
        with pytest.raises(LibsqlIntegrityError), dialect.transaction() as conn:
            conn.execute(f"INSERT INTO {table} (v) VALUES (?)", ("new",))
            conn.execute(f"UPDATE {table} SET v = ? WHERE v = ?", ("kept!", "kept"))
            conn.execute(f"INSERT INTO {table} (v) VALUES (?)", ("new",))
        assert values() == ["kept"]
        with pytest.raises(ZeroDivisionError), dialect.transaction() as conn:
            conn.execute(f"INSERT INTO {table} (v) VALUES (?)", ("lost",))
            _ = 1 / 0
        assert values() == ["kept"]
        with dialect.transaction() as conn:
            cur = conn.execute(
                f"UPDATE {table} SET v = v || ? WHERE v = ? RETURNING id, v", ("!", "kept")
            )
            conn.executemany(f"INSERT INTO {table} (v) VALUES (?)", [("b",), ("c",)])
        # results are readable after the block on every transport (batches fill them then)
        assert cur.rowcount == 1 and cur.fetchone() == (1, "kept!")
        assert values() == ["kept!", "b", "c"]
    finally:
        with dialect.transaction() as conn:
            conn.execute(f"DROP TABLE {table}")


def test_integers_keep_their_64_bit_values(
    libsql_url: str, dialect_of: Callable[[str], LibsqlDialect]
) -> None:
    dialect = dialect_of(libsql_url)
    table = unique("ints")
    big = 2**62 + 1
    with dialect.transaction() as conn:
        conn.execute(f"CREATE TABLE {table} (n INTEGER NOT NULL)")
        conn.executemany(f"INSERT INTO {table} (n) VALUES (?)", [(big,), (-big,), (7,)])
    try:
        with dialect.read() as conn:
            rows = conn.execute(
                f"SELECT n FROM {table} WHERE n <> ? ORDER BY n LIMIT ? OFFSET ?", (7, 2**62, 0)
            ).fetchall()
        assert rows == [(-big,), (big,)]
        assert all(type(r[0]) is int for r in rows)
    finally:
        with dialect.transaction() as conn:
            conn.execute(f"DROP TABLE {table}")


# -- the batch path of libsql-client over HTTP ------------------------------------------


def test_a_batch_transaction_sends_its_statements_as_one_batch_when_the_block_exits(
    server: HranaServer, dialect_of: Callable[[str], LibsqlDialect]
) -> None:
    dialect = dialect_of(server.url("libsql+http://{hostport}?driver=libsql-client"))
    assert dialect.interactive is False
    with dialect.transaction() as conn:
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT UNIQUE)")
    batches = server.stats()["POST /v1/batch"]

    with dialect.transaction() as conn:
        inserted = conn.execute("INSERT INTO t (v) VALUES (?) RETURNING id", ("a",))
        updated = conn.execute("UPDATE t SET v = v || ? WHERE v = ?", ("!", "a"))
        with pytest.raises(RuntimeError, match="after"):
            inserted.fetchone()
        with pytest.raises(RuntimeError, match="after"):
            _ = updated.rowcount
        assert server.query("SELECT count(*) FROM t") == [(0,)]
        assert server.stats()["POST /v1/batch"] == batches
    assert server.stats()["POST /v1/batch"] == batches + 1
    assert inserted.fetchone() == (1,) and inserted.rowcount == 1
    assert updated.rowcount == 1 and updated.fetchall() == []
    assert server.query("SELECT v FROM t") == [("a!",)]


def test_a_batch_whose_body_raises_sends_nothing(
    server: HranaServer, dialect_of: Callable[[str], LibsqlDialect]
) -> None:
    dialect = dialect_of(server.url("libsql+http://{hostport}?driver=libsql-client"))
    with dialect.transaction() as conn:
        conn.execute("CREATE TABLE t (v TEXT)")
    batches = server.stats()["POST /v1/batch"]
    with pytest.raises(KeyError), dialect.transaction() as conn:
        conn.execute("INSERT INTO t (v) VALUES (?)", ("never",))
        raise KeyError("the body failed")
    assert server.stats()["POST /v1/batch"] == batches
    assert server.query("SELECT count(*) FROM t") == [(0,)]


def test_a_failing_statement_rolls_the_whole_batch_back(
    server: HranaServer, dialect_of: Callable[[str], LibsqlDialect]
) -> None:
    dialect = dialect_of(server.url("libsql+http://{hostport}?driver=libsql-client"))
    with dialect.transaction() as conn:
        conn.execute("CREATE TABLE t (v TEXT UNIQUE)")
    with pytest.raises(LibsqlIntegrityError) as info, dialect.transaction() as conn:
        first = conn.execute("INSERT INTO t (v) VALUES (?)", ("x",))
        conn.execute("INSERT INTO t (v) VALUES (?)", ("x",))
    assert info.value.code == "SQLITE_CONSTRAINT"
    assert server.query("SELECT count(*) FROM t") == [(0,)]
    with pytest.raises(RuntimeError):
        _ = first.rowcount  # never filled: the batch failed as a whole


# -- auth tokens --------------------------------------------------------------------------


@pytest.mark.parametrize("case", REMOTE_TRANSPORTS, ids=[c[0] for c in REMOTE_TRANSPORTS])
def test_the_auth_token_reaches_the_server_from_the_url_or_the_environment(
    case: tuple[str, str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    dialect_of: Callable[[str], LibsqlDialect],
) -> None:
    _, template, _ = case
    sep = "&" if "?" in template else "?"

    def works(url: str) -> bool:
        with dialect_of(url).read() as conn:
            return conn.execute("SELECT 42", ()).fetchone() == (42,)

    with hrana_server(tmp_path, auth_token="s3cret") as server:
        base = server.url(template)
        assert works(f"{base}{sep}auth_token=s3cret")
        monkeypatch.setenv("LIBSQL_AUTH_TOKEN", "s3cret")
        assert works(base)
        monkeypatch.setenv("LIBSQL_AUTH_TOKEN", "wrong")
        with pytest.raises(LibsqlDatabaseError) as info:
            works(base)
        assert "s3cret" not in str(info.value)
        monkeypatch.delenv("LIBSQL_AUTH_TOKEN")
        with pytest.raises(LibsqlDatabaseError):
            works(base)
        assert server.stats()["auth_rejected"] >= 2


# -- a missing driver -------------------------------------------------------------------

MISSING_DRIVER = """
import sys
for name in {blocked!r}:
    sys.modules[name] = None  # as if the package were not installed
from durably import DialectNotFoundError, resolve_dialect
for url in {urls!r}:
    try:
        resolve_dialect(url).close()
    except DialectNotFoundError as exc:
        print("missing", exc)
    else:
        print("resolved")
"""


@pytest.mark.parametrize(
    ("blocked", "urls", "expected"),
    [
        (
            ["libsql"],
            ["libsql+file:a.db", "libsql://h?auth_token=s3cret", "libsql+ws://h:1"],
            ["missing", "missing", "resolved"],
        ),
        (
            ["libsql_client"],
            ["libsql+wss://h", "libsql+http://h:1?driver=libsql-client", "libsql+http://h:1"],
            ["missing", "missing", "resolved"],
        ),
    ],
    ids=["without-libsql", "without-libsql_client"],
)
def test_a_missing_driver_raises_dialect_not_found_naming_the_extra(
    blocked: list[str], urls: list[str], expected: list[str], tmp_path: Path
) -> None:
    code = MISSING_DRIVER.format(blocked=blocked, urls=urls)
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert [line.split()[0] for line in lines] == expected
    for line in lines:
        if line.startswith("missing"):
            assert "pip install 'durably[libsql]'" in line
            assert "s3cret" not in line


# -- migrations without a SQLAlchemy engine ---------------------------------------------


def _schema(conn: sqlite3.Connection) -> dict[str, Any]:
    tables = [
        r[0]
        for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
        ).fetchall()
    ]
    return {
        "tables": {t: conn.execute(f"PRAGMA table_info({t})").fetchall() for t in tables},
        "indexes": {
            t: sorted((*r[1:3], r[3]) for r in conn.execute(f"PRAGMA index_list({t})"))
            for t in tables
        },
    }


@pytest.mark.parametrize("case", REMOTE_TRANSPORTS, ids=[c[0] for c in REMOTE_TRANSPORTS])
def test_migrations_run_on_a_remote_database_without_a_sqlalchemy_engine(
    case: tuple[str, str, str],
    server: HranaServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    dialect_of: Callable[[str], LibsqlDialect],
) -> None:
    # the reference: the same revisions run online by the stdlib sqlite3 adapter
    reference = tmp_path / "reference.db"
    with create_durably(f"sqlite:///{reference}") as d:
        d.migrate()

    def no_engine(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a libSQL migration must not create a SQLAlchemy engine")

    monkeypatch.setattr(sqlalchemy, "create_engine", no_engine)
    monkeypatch.setattr(sqlalchemy.engine, "create_engine", no_engine)
    dialect = dialect_of(server.url(case[1]))
    dialect.migrate(AlembicMigrator())
    dialect.migrate(AlembicMigrator())  # at head: nothing to do

    assert server.query(f"SELECT version_num FROM {VERSION_TABLE}") == [(head_revision(),)]
    with sqlite3.connect(server.db_path) as remote, sqlite3.connect(reference) as local:
        assert _schema(remote) == _schema(local)


@pytest.mark.parametrize("case", REMOTE_TRANSPORTS, ids=[c[0] for c in REMOTE_TRANSPORTS])
def test_a_partial_first_migration_is_finished_through_every_remote_transport(
    case: tuple[str, str, str],
    server: HranaServer,
    tmp_path: Path,
    dialect_of: Callable[[str], LibsqlDialect],
) -> None:
    reference = tmp_path / "reference.db"
    with create_durably(f"sqlite:///{reference}") as d:
        d.migrate()
    # an empty version table, durably_runs and one of its indexes: a killed first migration
    with sqlite3.connect(server.db_path) as remote:
        for sql in upgrade_statements(None)[:3]:
            remote.execute(sql)
    remote.close()

    dialect_of(server.url(case[1])).migrate(AlembicMigrator())

    assert server.query(f"SELECT version_num FROM {VERSION_TABLE}") == [(head_revision(),)]
    with sqlite3.connect(server.db_path) as remote, sqlite3.connect(reference) as local:
        assert _schema(remote) == _schema(local)


@pytest.mark.parametrize("start", ["empty", "partial"])
def test_concurrent_migrations_from_several_processes_reach_head_once(
    server: HranaServer, tmp_path: Path, start: str
) -> None:
    if start == "partial":
        with sqlite3.connect(server.db_path) as remote:
            for sql in upgrade_statements(None)[:3]:
                remote.execute(sql)
        remote.close()
    urls = [server.url(template) for _, template, _ in REMOTE_TRANSPORTS]
    go = tmp_path / "go"
    code = textwrap.dedent(
        """
        import os, sys, time
        from durably import create_durably
        while not os.path.exists(sys.argv[2]):
            time.sleep(0.005)
        with create_durably(sys.argv[1]) as d:
            d.migrate()
        """
    )
    processes = [
        subprocess.Popen([sys.executable, "-c", code, url, str(go)], stderr=subprocess.PIPE)
        for url in itertools.islice(itertools.cycle(urls), 6)
    ]
    go.touch()
    for process in processes:
        _, err = process.communicate(timeout=120)
        assert process.returncode == 0, err.decode()
    assert server.query(f"SELECT version_num FROM {VERSION_TABLE}") == [(head_revision(),)]
    assert server.query("SELECT count(*) FROM durably_runs") == [(0,)]


def test_offline_sql_is_split_into_statements_even_with_semicolons_in_literals() -> None:
    script = "-- a comment\nCREATE TABLE a (v TEXT DEFAULT ';');\n\nINSERT INTO a VALUES ('x;y');\n"
    assert split_sql(script) == [
        "CREATE TABLE a (v TEXT DEFAULT ';')",
        "INSERT INTO a VALUES ('x;y')",
    ]


# -- expired remote streams (libsql driver over Hrana 3 HTTP) ---------------------------


def _expired(server: HranaServer) -> int:
    return server.stats().get("streams_expired", 0)


def test_an_expired_idle_stream_is_reopened_outside_a_transaction(
    tmp_path: Path, dialect_of: Callable[[str], LibsqlDialect]
) -> None:
    with hrana_server(tmp_path, stream_expiry=0.3) as server:
        dialect = dialect_of(server.url("libsql+http://{hostport}"))
        with dialect.transaction() as conn:
            conn.execute("CREATE TABLE t (v TEXT)")
        for expected in (1, 2):
            # a query leaves the driver's stream open; the server expires it when idle
            with dialect.read() as conn:
                assert conn.execute("SELECT count(*) FROM t").fetchone() == (expected - 1,)
            before = _expired(server)
            wait_until(lambda before=before: _expired(server) > before)
            if expected == 1:
                with dialect.read() as conn:
                    assert conn.execute("SELECT count(*) FROM t").fetchone() == (0,)
            with dialect.transaction() as conn:  # its BEGIN meets the expired stream
                conn.execute("INSERT INTO t (v) VALUES (?)", (f"row{expected}",))
        assert server.stats()["expired_baton_used"] >= 2
        assert server.query("SELECT v FROM t ORDER BY v") == [("row1",), ("row2",)]


def test_a_stream_expiring_inside_a_transaction_fails_it_and_commits_nothing(
    tmp_path: Path, dialect_of: Callable[[str], LibsqlDialect]
) -> None:
    with hrana_server(tmp_path, stream_expiry=0.3) as server:
        dialect = dialect_of(server.url("libsql+http://{hostport}"))
        with dialect.transaction() as conn:
            conn.execute("CREATE TABLE t (v TEXT)")
        before = _expired(server)
        with pytest.raises(LibsqlStreamExpiredError), dialect.transaction() as conn:
            conn.execute("INSERT INTO t (v) VALUES (?)", ("lost",))
            wait_until(lambda: _expired(server) > before)
            conn.execute("INSERT INTO t (v) VALUES (?)", ("after",))
        assert server.query("SELECT count(*) FROM t") == [(0,)]
        with dialect.transaction() as conn:  # the next transaction gets a new stream
            conn.execute("INSERT INTO t (v) VALUES (?)", ("next",))
        assert server.query("SELECT v FROM t") == [("next",)]
