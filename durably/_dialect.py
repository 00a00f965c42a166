"""The `Dialect` protocol and dialect resolution by URL through pluggy.

The core talks to a database only through this protocol. Adapters (the built-in ones in
`durably_dialects` and third-party ones) announce themselves through the hook
`durably_dialect_for_url`, discovered under the entry-point group `durably.dialects`.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import logging
import re
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from functools import partial
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import pluggy

from ._errors import DialectNotFoundError

if TYPE_CHECKING:
    import sqlalchemy as sa
    from sqlalchemy.engine.interfaces import Dialect as SADialect

ENTRY_POINT_GROUP = "durably.dialects"

hookspec = pluggy.HookspecMarker("durably")
hookimpl = pluggy.HookimplMarker("durably")

Params = Sequence[Any] | Mapping[str, Any]


class Cursor(Protocol):
    """What executing one statement gives back (a DB-API cursor satisfies it)."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Sequence[Any] | None: ...

    def fetchall(self) -> Sequence[Sequence[Any]]: ...


class Result:
    """A fully read statement result that stays usable after its transaction ends.

    Adapters may return it from `Connection.execute`; the store reads results only after
    the write transaction's block exits (so batch-only transports can fill them in late).
    """

    __slots__ = ("rowcount", "rows")

    def __init__(self, rows: Sequence[Sequence[Any]], rowcount: int) -> None:
        self.rows = rows
        self.rowcount = rowcount

    def fetchone(self) -> Sequence[Any] | None:
        return self.rows[0] if self.rows else None

    def fetchall(self) -> Sequence[Sequence[Any]]:
        return self.rows


class Connection(Protocol):
    """A connection inside a transaction: runs SQL compiled for the dialect's paramstyle."""

    def execute(self, sql: str, params: Params = ...) -> Cursor: ...

    def executemany(self, sql: str, params: Sequence[Params]) -> None: ...


class Migrator(Protocol):
    """What the core hands to `Dialect.migrate`: runs alembic on a SQLAlchemy connection."""

    def upgrade(self, connection: sa.Connection) -> None:
        """Upgrade durably's tables to head on `connection` (a transaction is open)."""
        ...


@runtime_checkable
class Dialect(Protocol):
    """What durably needs from a database.

    - `sqlalchemy_dialect` compiles the core's statements (SQL text and paramstyle);
      statements are compiled once per dialect and cached by the store.
    - `transaction()` opens an atomic, serialised read-write transaction; on SQLite-like
      backends it must take the write lock at once (`BEGIN IMMEDIATE`). The results its
      statements return must stay readable after the block exits (see `Result`): the
      store reads them only then, so a transport without interactive transactions may
      buffer the statements and send them as one atomic batch at exit. (The one
      exception is the select-then-update claim used when `returning` is false, as on
      MySQL, which needs an interactive transaction.)
    - `returning` says `UPDATE ... RETURNING` works: claims are then one statement.
    - `read()` gives a connection for reads outside any write transaction.
    - `integrity_errors` are the exception types the driver raises on a UNIQUE violation.
    - `skip_locked` says the backend supports `SELECT ... FOR UPDATE SKIP LOCKED`.
    - `migrate(migrator)` runs `migrator.upgrade(conn)` on a SQLAlchemy connection, holding
      a lock that serialises concurrent migrations across processes; a backend that has no
      SQLAlchemy engine applies the same revisions by other means (the libSQL adapter runs
      alembic's offline SQL through its driver) and keeps `durably_alembic_version` in step.

    Optional members, used when present:
    - `notify(conn)`: called inside a write transaction that made runs claimable, to wake
      workers in other processes when it commits (PostgreSQL: `NOTIFY`).
    - `listen(callback) -> stop | None`: call `callback` on such wake-ups; the worker uses
      it while started. Polling stays the fallback.
    - `database_clock: bool`: True where the database server has a clock of its own that
      every worker shares (PostgreSQL, MySQL, a remote libSQL server): heartbeats are then
      stamped, and staleness judged, in SQL by that clock instead of each machine's.
    - `is_transient(exc) -> bool`: whether `exc` means the transaction lost a deadlock, a
      serialisation conflict or a lock wait and was rolled back; the store runs it again.
    - `error_kind(exc) -> str | None`: what a failure means for the user:
      `"missing_schema"` (durably's tables are not there: run `migrate()` first),
      `"storage_full"`, `"too_large"` (a statement over the server's size limit), or None.
      The public API turns it into a `StoreError` with a message that says so.
    """

    url: str
    sqlalchemy_dialect: SADialect
    integrity_errors: tuple[type[BaseException], ...]
    skip_locked: bool
    returning: bool

    def transaction(self) -> AbstractContextManager[Connection]: ...

    def read(self) -> AbstractContextManager[Connection]: ...

    def migrate(self, migrator: Migrator) -> None: ...

    def close(self) -> None: ...


class DialectSpec:
    """Hook specifications a dialect plugin implements."""

    @hookspec(firstresult=True)
    def durably_dialect_for_url(self, url: str) -> Dialect | None:
        """Return a Dialect for `url`, or None when the URL is not this plugin's."""

    @hookspec
    def durably_dialect_schemes(self) -> list[str]:  # type: ignore[empty-body]
        """The URL schemes this plugin handles, for listings and error messages."""


# Schemes durably knows of, with the extra that provides them: lets an error for a
# missing adapter say what to install, without the core importing any adapter.
KNOWN_SCHEMES: dict[str, str] = {
    "libsql": "libsql",
    "libsql+ws": "libsql",
    "libsql+wss": "libsql",
    "libsql+http": "libsql",
    "libsql+https": "libsql",
    "libsql+file": "libsql",
    "postgresql": "postgres",
    "postgresql+psycopg": "postgres",
    "postgresql+psycopg2": "postgres",
    "postgres": "postgres",
    "mysql": "mysql",
    "mysql+pymysql": "mysql",
    "mariadb": "mysql",
    "mariadb+pymysql": "mysql",
}

# The drivers (distribution, module) a built-in adapter runs on: its schemes are usable
# when one of them imports (the adapter itself imports without them). The SQLAlchemy
# adapter lists only the schemes whose driver imports, so it needs no entry here.
BUILTIN_DRIVERS: dict[str, tuple[tuple[str, str], ...]] = {
    "libsql": (("libsql", "libsql"), ("libsql-client", "libsql_client")),
}

# What to say instead of `pip install 'durably[extra]'` when an extra does not bring the
# driver a scheme names
_OTHER_DRIVER_HINTS: dict[str, str] = {
    "postgresql+psycopg2": (
        "durably's postgres extra (pip install 'durably[postgres]') installs psycopg 3: "
        "use postgresql+psycopg://, or install psycopg2 yourself (pip install psycopg2-binary)"
    ),
}

# The adapters that ship with durably, registered in code through the same hooks as
# third-party plugins, so a source checkout that is not installed opens `sqlite://` too.
# Named by module, never imported by name: the core does not depend on an adapter.
BUILTIN_PLUGINS: dict[str, str] = {
    "sqlite3": "durably_dialects.sqlite3",
    "libsql": "durably_dialects.libsql",
    "sqlalchemy": "durably_dialects.sqlalchemy",
}

_lock = threading.Lock()
_manager: pluggy.PluginManager | None = None
_load_errors: dict[str, str] = {}
logger = logging.getLogger("durably.dialect")


def _plugin_manager() -> pluggy.PluginManager:
    global _manager
    with _lock:
        if _manager is None:
            pm = pluggy.PluginManager("durably")
            pm.add_hookspecs(DialectSpec)
            for name, module in BUILTIN_PLUGINS.items():
                _register(pm, name, partial(_builtin, module))
            for ep in entry_points(group=ENTRY_POINT_GROUP):
                if pm.get_plugin(ep.name) is None and not pm.is_blocked(ep.name):
                    _register(pm, ep.name, ep.load, f"{ep.value}: ")
            _manager = pm
        return _manager


def _builtin(module: str) -> object:
    return importlib.import_module(module).plugin


def _register(
    pm: pluggy.PluginManager, name: str, load: Callable[[], Any], where: str = ""
) -> None:
    """Register one plugin: a class (instantiated here), an instance or a module.

    pluggy's own loader registers the loaded object as is; a class would then be called
    without an instance. One broken plugin must not take every other dialect down.
    """
    try:
        plugin = load()
        if inspect.isclass(plugin):
            plugin = plugin()
        if not pm.is_registered(plugin):
            pm.register(plugin, name=name)
    except Exception as exc:
        _load_errors[name] = f"{where}{type(exc).__name__}: {exc}"
        logger.warning("dialect plugin %r failed to load: %s", name, exc)


def register_dialect_plugin(plugin: object) -> None:
    """Register a dialect plugin in this process (an object or module with hookimpls)."""
    pm = _plugin_manager()
    if not pm.is_registered(plugin):
        pm.register(plugin)


def unregister_dialect_plugin(plugin: object) -> None:
    """Remove a plugin registered with `register_dialect_plugin`."""
    pm = _plugin_manager()
    if pm.is_registered(plugin):
        pm.unregister(plugin)


def _schemes_of(plugin: object) -> list[str]:
    hook = getattr(plugin, "durably_dialect_schemes", None)
    return list(hook() or []) if callable(hook) else []


def plugin_drivers(name: str | None) -> dict[str, bool] | None:
    """Whether each driver of the built-in plugin `name` imports; None when durably does
    not know its drivers (a third-party plugin, or one that needs none)."""
    drivers = BUILTIN_DRIVERS.get(name or "")
    if drivers is None:
        return None
    return {dist: importlib.util.find_spec(module) is not None for dist, module in drivers}


def usable_schemes(name: str | None, plugin: object) -> list[str]:
    """The schemes `plugin` claims, none when none of its known drivers imports."""
    drivers = plugin_drivers(name)
    if drivers is not None and not any(drivers.values()):
        return []
    return _schemes_of(plugin)


def installed_schemes() -> list[str]:
    """Every URL scheme some installed dialect plugin claims and can open, sorted (a
    scheme whose driver is missing is not installed)."""
    pm = _plugin_manager()
    return sorted({s for p in pm.get_plugins() for s in usable_schemes(pm.get_name(p), p)})


def scheme_extra(scheme: str) -> str | None:
    """The extra of durably that provides `scheme` (or its backend, `mysql` for
    `mysql+acme`), None when durably does not know it."""
    extra = KNOWN_SCHEMES.get(scheme)
    if extra is None and "+" in scheme:
        extra = KNOWN_SCHEMES.get(scheme.split("+", 1)[0])
    return extra


def install_hint(scheme: str) -> str | None:
    """What to install for `scheme`: `pip install 'durably[extra]'` or, where durably's
    extra does not bring the driver the scheme names, what to do instead."""
    other = _OTHER_DRIVER_HINTS.get(scheme.lower())
    if other is not None:
        return other
    extra = scheme_extra(scheme)
    return f"pip install 'durably[{extra}]'" if extra else None


def url_scheme(url: str) -> str:
    """The scheme of a database URL (`sqlite` for `sqlite:///x.db`)."""
    head, sep, _ = url.partition(":")
    return head.lower() if sep else ""


# query options whose value is a credential (matched case-insensitively, anywhere in the name)
_SECRET_OPTION = re.compile(r"token|pass|pwd|secret|key|credential|signature", re.IGNORECASE)
_OPTION = re.compile(r"([?&;])([^=&;#]*)=([^&;#]*)")


def redact_url(url: str) -> str:
    """The URL with every credential hidden (a password, an auth token or key given as a
    query option, whatever its case), for messages and logs."""
    head, sep, rest = url.partition("//")
    if sep:
        # user:password@host: the password ends at the last '@' before the path's query
        authority_end = len(rest.split("?", 1)[0].split("#", 1)[0])
        at = rest.rfind("@", 0, authority_end)
        if at >= 0 and not rest.startswith("/"):  # sqlite:///path has no authority
            user, colon, _ = rest[:at].partition(":")
            if colon:
                rest = f"{user}:***{rest[at:]}"
        url = head + sep + rest

    def hide(match: re.Match[str]) -> str:
        lead, name, value = match.groups()
        if value and _SECRET_OPTION.search(name):
            return f"{lead}{name}=***"
        return match.group(0)

    return _OPTION.sub(hide, url)


def resolve_dialect(url: str) -> Dialect:
    """The Dialect that `url` selects among the installed plugins."""
    if not isinstance(url, str) or not url:
        raise DialectNotFoundError(f"a database URL must be a non-empty string, got {url!r}")
    pm = _plugin_manager()
    scheme = url_scheme(url)
    # the plugins that claim the URL's scheme answer first; then every plugin is asked
    # (a catch-all such as the SQLAlchemy adapter claims more schemes than it lists)
    others = [p for p in pm.get_plugins() if scheme not in _schemes_of(p)]
    dialect: Dialect | None = None
    if len(others) < len(pm.get_plugins()):
        owners = pm.subset_hook_caller("durably_dialect_for_url", remove_plugins=others)
        dialect = owners(url=url)
    if dialect is None:
        dialect = pm.hook.durably_dialect_for_url(url=url)
    if dialect is not None:
        return dialect
    installed = ", ".join(installed_schemes()) or "none"
    install = install_hint(scheme)
    if install is None:
        hint = (
            "; a third-party dialect plugin may provide it (entry-point group 'durably.dialects')"
        )
    elif install.startswith("pip install"):
        hint = f"; install it with: {install}"
    else:
        hint = f"; {install}"
    broken = (
        "; plugins that failed to load: " + "; ".join(f"{k} ({v})" for k, v in _load_errors.items())
        if _load_errors
        else ""
    )
    raise DialectNotFoundError(
        f"no dialect for {redact_url(url)!r} (scheme {scheme!r}); "
        f"installed schemes: {installed}{hint}{broken}"
    )


def iter_plugins() -> Iterator[tuple[str | None, object]]:
    """(name, plugin) of every registered dialect plugin."""
    pm = _plugin_manager()
    for plugin in pm.get_plugins():
        yield pm.get_name(plugin), plugin


def as_dialect(target: str | Dialect) -> Dialect:
    """Accept a URL or a ready Dialect instance."""
    if isinstance(target, str):
        return resolve_dialect(target)
    missing = [
        attr
        for attr in ("sqlalchemy_dialect", "transaction", "read", "migrate", "close")
        if not hasattr(target, attr)
    ]
    if missing:
        raise TypeError(f"{type(target).__name__} is not a Dialect: it lacks {', '.join(missing)}")
    return target
