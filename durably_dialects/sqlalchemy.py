"""Any SQLAlchemy URL: PostgreSQL (psycopg 3), MySQL/MariaDB (PyMySQL), SQLite via pysqlite.

The core's statements are compiled for the engine's dialect and run with
`exec_driver_sql` on pooled connections, so the per-statement cost is the driver's.
Claims on PostgreSQL and MySQL/MariaDB use `FOR UPDATE SKIP LOCKED` (the store picks it
from `skip_locked`); the UNIQUE constraint on `active_concurrency_key` makes the
concurrency key safe under concurrent claimers. MySQL runs at READ COMMITTED so that
locking reads take no gap locks. Migrations hold `pg_advisory_lock` / `GET_LOCK` (or
`BEGIN IMMEDIATE` on SQLite) so that concurrent `migrate()` calls are serialised.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from durably import DialectNotFoundError, Result, hookimpl

from .sqlite3 import sqlite_error_kind

# extra that installs the driver a URL needs, by SQLAlchemy backend name
_EXTRAS = {"postgresql": "postgres", "mysql": "mysql", "mariadb": "mysql"}
# durably's postgres extra installs psycopg 3, which SQLAlchemy names `postgresql+psycopg`
_PSYCOPG2_HINT = (
    "durably's postgres extra (pip install 'durably[postgres]') installs psycopg 3: use "
    "postgresql+psycopg://, or install psycopg2 yourself (pip install psycopg2-binary)"
)
_LOCK_NAME = "durably_migrate"
_CHANNEL = "durably_wakeup"
# seconds the LISTEN thread waits for a notification before looking at its stop flag
LISTEN_POLL = 0.5
logger = logging.getLogger("durably.dialects.sqlalchemy")
_PG_LOCK_KEY = zlib.crc32(_LOCK_NAME.encode())
# deadlock_detected, serialization_failure
_PG_RETRYABLE = ("40P01", "40001")
# deadlock, lock wait timeout
_MYSQL_RETRYABLE = (1213, 1205)
# what an error means for the user (the Dialect's `error_kind`), by SQLSTATE / error code
_PG_KINDS = {"42P01": "missing_schema", "53100": "storage_full", "54000": "too_large"}
_MYSQL_KINDS = {
    1146: "missing_schema",  # ER_NO_SUCH_TABLE
    1114: "storage_full",  # ER_RECORD_FILE_FULL
    1021: "storage_full",  # ER_DISK_FULL
    1153: "too_large",  # ER_NET_PACKET_TOO_LARGE
}
# the server closed the connection; after a statement over max_allowed_packet it does so
# without a word (the client is still sending when the server hangs up)
_MYSQL_GONE = (2006, 2013)


def sqlite3_version() -> tuple[int, ...]:
    import sqlite3

    return sqlite3.sqlite_version_info


class _Conn:
    """Adapts a SQLAlchemy connection to the core's Connection protocol."""

    __slots__ = ("_conn",)

    def __init__(self, conn: sa.Connection) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Any = ()) -> Result:
        result = self._conn.exec_driver_sql(sql, params)
        rows = result.fetchall() if result.returns_rows else []
        return Result(rows, result.rowcount)

    def executemany(self, sql: str, params: Sequence[Any]) -> None:
        self._conn.exec_driver_sql(sql, list(params))


def _text_size(params: Any) -> int:
    """Characters of text in a statement's parameters (one row or many)."""
    if isinstance(params, (str, bytes)):
        return len(params)
    if isinstance(params, dict):
        params = params.values()
    if isinstance(params, (list, tuple)) or hasattr(params, "__iter__"):
        return sum(_text_size(p) for p in params)
    return 0


class SqlAlchemyDialect:
    """durably's Dialect over a SQLAlchemy engine."""

    integrity_errors: tuple[type[BaseException], ...] = (sa.exc.IntegrityError,)

    def __init__(self, url: str, **engine_options: Any) -> None:
        self.url = url
        parsed = make_url(url)
        backend = parsed.get_backend_name()
        options: dict[str, Any] = {"pool_pre_ping": True, **engine_options}
        if backend in ("mysql", "mariadb"):
            options.setdefault("isolation_level", "READ COMMITTED")
        if backend == "sqlite":
            options.setdefault("connect_args", {"timeout": 30})
        try:
            self.engine = sa.create_engine(parsed, **options)
        except ImportError as exc:
            raise _missing_driver(parsed, exc) from exc
        except sa.exc.NoSuchModuleError as exc:
            raise DialectNotFoundError(
                f"SQLAlchemy has no dialect for {parsed.drivername!r} ({exc})"
            ) from exc
        self.backend = backend
        self.sqlalchemy_dialect = self.engine.dialect
        # heartbeats are stamped, and staleness judged, by the server's clock: the one
        # clock that every worker machine shares
        self.database_clock = backend in ("postgresql", "mysql", "mariadb")
        self.skip_locked = backend in ("postgresql", "mysql", "mariadb")
        # MySQL/MariaDB have no UPDATE ... RETURNING: their claims select, then update
        self.returning = backend == "postgresql" or (
            backend == "sqlite" and sqlite3_version() >= (3, 35)
        )
        if backend == "sqlite":
            self._setup_sqlite()

    def is_transient(self, exc: BaseException) -> bool:
        """Whether `exc` says the transaction lost a deadlock, a serialisation conflict or
        a lock wait, and was rolled back, so running it again is safe."""
        orig = getattr(exc, "orig", None)
        if orig is None:
            return False
        if self.backend == "postgresql":
            return getattr(orig, "sqlstate", None) in _PG_RETRYABLE
        if self.backend in ("mysql", "mariadb"):
            args = getattr(orig, "args", ())
            return bool(args) and args[0] in _MYSQL_RETRYABLE
        return False

    def error_kind(self, exc: BaseException) -> str | None:
        """What `exc` means for the user: no tables yet, a full disk, a statement too big."""
        orig = getattr(exc, "orig", None)
        if orig is None:
            return None
        if self.backend == "postgresql":
            return _PG_KINDS.get(getattr(orig, "sqlstate", None) or "")
        if self.backend in ("mysql", "mariadb"):
            args = getattr(orig, "args", ())
            code = args[0] if args else None
            if code in _MYSQL_GONE and self._over_packet_limit(exc):
                return "too_large"
            return _MYSQL_KINDS.get(code) if isinstance(code, int) else None
        if self.backend == "sqlite":
            return sqlite_error_kind(orig)
        return None

    def _over_packet_limit(self, exc: BaseException) -> bool:
        """Whether the failed statement's parameters alone exceed max_allowed_packet.

        The statement's own error may be hidden behind the rollback's that followed it
        (the connection was gone for both): the chain of causes is searched.
        """
        chain: list[BaseException] = []
        error: BaseException | None = exc
        while error is not None and len(chain) < 5:
            chain.append(error)
            error = error.__cause__ or error.__context__
        size = max(_text_size(getattr(e, "params", None)) for e in chain)
        if size < 1024 * 1024:
            return False  # a lost connection, not a big statement: no need to ask the server
        try:
            with self.engine.connect() as conn:
                limit = conn.exec_driver_sql("SELECT @@max_allowed_packet").scalar()
        except Exception:
            return False
        return isinstance(limit, int) and size >= limit

    def _setup_sqlite(self) -> None:
        @sa.event.listens_for(self.engine, "connect")
        def _connect(dbapi_conn: Any, record: Any) -> None:
            # let durably emit BEGIN itself, so a write transaction takes the lock at once
            dbapi_conn.isolation_level = None
            dbapi_conn.execute("PRAGMA journal_mode=WAL")

        @sa.event.listens_for(self.engine, "begin")
        def _begin(conn: sa.Connection) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    @contextmanager
    def transaction(self) -> Iterator[_Conn]:
        with self.engine.begin() as conn:
            yield _Conn(conn)

    @contextmanager
    def read(self) -> Iterator[_Conn]:
        with self.engine.connect() as conn:
            yield _Conn(conn)
            conn.rollback()

    def notify(self, conn: _Conn) -> None:
        """Inside a transaction that made runs claimable: wake listeners when it commits."""
        if self.backend == "postgresql":
            conn.execute(f"NOTIFY {_CHANNEL}")

    def listen(self, callback: Callable[[], None]) -> Callable[[], None] | None:
        """Call `callback` when another process notifies (PostgreSQL LISTEN); returns a stopper.

        Runs a thread with its own autocommit connection that reconnects after errors;
        it also calls `callback` after each (re)connect, in case a wake-up was missed.
        """
        if self.backend != "postgresql":
            return None
        stop = threading.Event()
        args, kwargs = self.engine.dialect.create_connect_args(self.engine.url)
        dbapi = self.engine.dialect.loaded_dbapi

        def loop() -> None:
            backoff = 0.1
            while not stop.is_set():
                try:
                    conn = dbapi.connect(*args, **{**kwargs, "autocommit": True})
                except Exception as exc:
                    logger.warning("LISTEN connection failed, retrying: %s", exc)
                    stop.wait(backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
                try:
                    conn.execute(f"LISTEN {_CHANNEL}")
                    backoff = 0.1
                    callback()
                    while not stop.is_set():
                        for _ in conn.notifies(timeout=LISTEN_POLL):
                            if stop.is_set():
                                break  # the stopper's own wake-up: do not wait out the poll
                            callback()
                except Exception as exc:
                    if not stop.is_set():
                        logger.warning("LISTEN connection lost, reconnecting: %s", exc)
                finally:
                    try:
                        conn.close()
                    except Exception:
                        pass

        thread = threading.Thread(target=loop, name="durably-listen", daemon=True)
        thread.start()

        def stopper() -> None:
            stop.set()
            # wake the LISTEN connection now instead of at the end of its poll
            try:
                with self.engine.begin() as conn:
                    conn.exec_driver_sql(f"NOTIFY {_CHANNEL}")
            except Exception as exc:  # the thread still sees `stop` within one poll
                logger.debug("could not wake the LISTEN thread: %s", exc)
            thread.join(timeout=5)

        return stopper

    def migrate(self, migrator: Any) -> None:
        with self.engine.connect() as conn:
            if self.backend == "postgresql":
                conn.exec_driver_sql(f"SELECT pg_advisory_lock({_PG_LOCK_KEY})")
                conn.commit()
                try:
                    migrator.upgrade(conn)
                    conn.commit()
                finally:
                    conn.rollback()
                    conn.exec_driver_sql(f"SELECT pg_advisory_unlock({_PG_LOCK_KEY})")
                    conn.commit()
            elif self.backend in ("mysql", "mariadb"):
                got = conn.exec_driver_sql(f"SELECT GET_LOCK('{_LOCK_NAME}', 300)").scalar()
                conn.commit()
                if got != 1:
                    raise TimeoutError("could not take durably's migration lock within 300 s")
                try:
                    migrator.upgrade(conn)
                    conn.commit()
                finally:
                    conn.rollback()
                    conn.exec_driver_sql(f"SELECT RELEASE_LOCK('{_LOCK_NAME}')")
                    conn.commit()
            else:
                with conn.begin():
                    migrator.upgrade(conn)

    def close(self) -> None:
        self.engine.dispose()


# (scheme, DB-API module) of the URLs `durably dialects` lists; any other URL SQLAlchemy
# opens works too
_LISTED_SCHEMES = (
    ("postgresql+psycopg", "psycopg"),
    ("mysql+pymysql", "pymysql"),
    ("mariadb+pymysql", "pymysql"),
    ("sqlite+pysqlite", "sqlite3"),
)


def _missing_driver(parsed: sa.URL, exc: ImportError) -> DialectNotFoundError:
    """The error for a URL whose DB-API driver does not import, saying what to install."""
    if parsed.drivername == "postgresql+psycopg2":
        hint = _PSYCOPG2_HINT
    else:
        extra = _EXTRAS.get(parsed.get_backend_name())
        what = f"pip install 'durably[{extra}]'" if extra else "install its DB-API driver"
        hint = f"install it with: {what}"
    return DialectNotFoundError(
        f"the driver for {parsed.render_as_string(hide_password=True)!r} is not "
        f"installed ({exc}); {hint}"
    )


class SqlAlchemyPlugin:
    """The catch-all: any URL SQLAlchemy understands that no other plugin claimed."""

    @hookimpl(trylast=True)
    def durably_dialect_for_url(self, url: str) -> SqlAlchemyDialect | None:
        try:
            parsed = make_url(url)
        except sa.exc.ArgumentError:
            return None
        try:
            parsed.get_dialect()
        except sa.exc.NoSuchModuleError:
            return None
        except ImportError as exc:
            raise _missing_driver(parsed, exc) from exc
        return SqlAlchemyDialect(url)

    @hookimpl
    def durably_dialect_schemes(self) -> list[str]:
        """The usual schemes whose DB-API driver is importable here (listing one whose
        driver is missing would promise a URL that then fails)."""
        return [scheme for scheme, driver in _LISTED_SCHEMES if importlib.util.find_spec(driver)]


plugin = SqlAlchemyPlugin()
