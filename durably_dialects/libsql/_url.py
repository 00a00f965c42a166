"""libSQL URLs: which transport, which driver, which token."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote

from durably import ConfigurationError, DialectNotFoundError, redact_url

SCHEMES = ("libsql", "libsql+ws", "libsql+wss", "libsql+http", "libsql+https", "libsql+file")
DRIVERS = ("libsql", "libsql-client")
TOKEN_ENV = "LIBSQL_AUTH_TOKEN"
OPTIONS = ("auth_token", "authToken", "driver", "timeout", "sync_url", "sync_interval")
USAGE = (
    "libSQL URLs (durably[libsql]) look like libsql://HOST?auth_token=TOKEN, "
    "libsql+wss://HOST, libsql+https://HOST, libsql+ws://HOST:PORT, libsql+http://HOST:PORT "
    "or libsql+file:PATH"
)


def _bad_url(url: str, why: str) -> DialectNotFoundError:
    return DialectNotFoundError(f"no dialect for {redact_url(url)!r}: {why}; {USAGE}")


@dataclass(frozen=True)
class LibsqlTarget:
    """A parsed libSQL URL."""

    transport: str  # libsql (TLS), ws, wss, http, https or file
    host: str  # remote: host[:port]; file: ""
    path: str  # remote: the URL path ("" or "/..."); file: the filesystem path
    driver: str  # "libsql" or "libsql-client"
    auth_token: str | None
    timeout: float  # busy timeout of local files, seconds
    sync_url: str | None = None  # embedded replica of this remote database
    sync_interval: float | None = None

    @property
    def remote(self) -> bool:
        return self.transport != "file"

    def driver_url(self) -> str:
        """The URL or path the chosen driver is given (without durably's options)."""
        if self.transport == "file":
            return self.path if self.driver == "libsql" else f"file:{self.path}"
        return f"{self.transport}://{self.host}{self.path}"

    def lock_key(self) -> str:
        """Identifies the database, so that one process serialises its own writers."""
        if self.transport == "file":
            return "file:" + os.path.realpath(self.path)
        return f"{self.transport}://{self.host}{self.path}"


def default_driver(transport: str) -> str:
    """WebSocket only exists in libsql-client; the official driver serves the rest."""
    return "libsql-client" if transport in ("ws", "wss") else "libsql"


def parse_libsql_url(url: str, environ: Mapping[str, str] | None = None) -> LibsqlTarget:
    """Parse a libSQL URL of SPEC.md; the token comes from `?auth_token=` or the env."""
    env = os.environ if environ is None else environ
    head, sep, rest = url.partition(":")
    scheme = head.lower()
    if not sep or scheme not in SCHEMES:
        raise _bad_url(url, "not a libSQL URL")
    rest, _, query = rest.partition("?")
    options: dict[str, str] = dict(parse_qsl(query, keep_blank_values=True))
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ConfigurationError(
            f"unknown option(s) {', '.join(unknown)} in {redact_url(url)!r}; "
            f"libSQL URLs take: {', '.join(OPTIONS)}"
        )
    transport = "libsql" if scheme == "libsql" else scheme.split("+", 1)[1]
    host = ""
    if transport == "file":
        if rest.startswith("//"):
            authority, _, tail = rest[2:].partition("/")
            if authority not in ("", "localhost"):
                raise _bad_url(url, "a libsql+file: URL names a local file")
            rest = "/" + tail
        path = unquote(rest)
        if not path or path == ":memory:" or path.startswith("file:"):
            raise _bad_url(url, "a libsql+file: URL needs the path of a database file")
    else:
        if not rest.startswith("//"):
            raise _bad_url(url, "a remote libSQL URL needs //HOST")
        host, slash, tail = rest[2:].partition("/")
        if "@" in host:
            raise _bad_url(url, "the token goes in ?auth_token=, not in user:password@")
        if not host:
            raise _bad_url(url, "the URL has no host")
        path = slash + tail if tail else ""

    driver = options.get("driver") or default_driver(transport)
    if driver not in DRIVERS:
        raise ConfigurationError(
            f"unknown driver={driver!r} in {redact_url(url)!r}: use {' or '.join(DRIVERS)}"
        )
    if driver == "libsql" and transport in ("ws", "wss"):
        raise ConfigurationError(
            f"{redact_url(url)!r}: the libsql driver has no WebSocket transport; "
            "use libsql+http(s):// with it, or driver=libsql-client"
        )
    sync_url = options.get("sync_url") or None
    if sync_url is not None and (transport != "file" or driver != "libsql"):
        raise ConfigurationError(
            f"{redact_url(url)!r}: sync_url (an embedded replica) needs a libsql+file: URL "
            "with the libsql driver"
        )
    token = options.get("auth_token") or options.get("authToken") or env.get(TOKEN_ENV) or None
    return LibsqlTarget(
        transport=transport,
        host=host,
        path=path,
        driver=driver,
        auth_token=token,
        timeout=_seconds(url, options, "timeout") or 30.0,
        sync_url=sync_url,
        sync_interval=_seconds(url, options, "sync_interval"),
    )


def _seconds(url: str, options: Mapping[str, str], name: str) -> float | None:
    raw = options.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise ConfigurationError(
            f"bad {name}={raw!r} in {redact_url(url)!r}: give a positive number of seconds"
        )
    return value
