"""libSQL URLs: transport, driver per URL and `?driver=`, token from the URL or the env."""

from __future__ import annotations

from pathlib import Path

import pytest

from durably import ConfigurationError, DialectNotFoundError, resolve_dialect
from durably_dialects.libsql import (
    LibsqlDialect,
    LibsqlIntegrityError,
    parse_libsql_url,
)

NO_ENV: dict[str, str] = {}


@pytest.mark.parametrize(
    ("url", "transport", "driver", "driver_url"),
    [
        ("libsql://db-org.turso.io", "libsql", "libsql", "libsql://db-org.turso.io"),
        ("libsql+https://db.example", "https", "libsql", "https://db.example"),
        ("libsql+http://127.0.0.1:8080", "http", "libsql", "http://127.0.0.1:8080"),
        ("libsql+wss://db.example", "wss", "libsql-client", "wss://db.example"),
        ("libsql+ws://127.0.0.1:8080/ns", "ws", "libsql-client", "ws://127.0.0.1:8080/ns"),
        ("libsql+file:app.db", "file", "libsql", "app.db"),
        ("libsql+file:/var/db/app.db", "file", "libsql", "/var/db/app.db"),
        ("libsql+file:///var/db/app.db", "file", "libsql", "/var/db/app.db"),
        ("libsql+file://localhost/var/db/app.db", "file", "libsql", "/var/db/app.db"),
    ],
)
def test_each_url_form_selects_its_transport_and_default_driver(
    url: str, transport: str, driver: str, driver_url: str
) -> None:
    target = parse_libsql_url(url, NO_ENV)
    assert (target.transport, target.driver, target.driver_url()) == (
        transport,
        driver,
        driver_url,
    )


@pytest.mark.parametrize(
    ("url", "driver", "driver_url"),
    [
        ("libsql://db.example?driver=libsql-client", "libsql-client", "libsql://db.example"),
        ("libsql+http://h:1?driver=libsql-client", "libsql-client", "http://h:1"),
        ("libsql+https://h?driver=libsql", "libsql", "https://h"),
        ("libsql+wss://h?driver=libsql-client", "libsql-client", "wss://h"),
        ("libsql+file:/x/a.db?driver=libsql-client", "libsql-client", "file:/x/a.db"),
    ],
)
def test_driver_query_option_overrides_the_default(url: str, driver: str, driver_url: str) -> None:
    target = parse_libsql_url(url, NO_ENV)
    assert (target.driver, target.driver_url()) == (driver, driver_url)


def test_the_libsql_driver_refuses_websocket_urls_with_a_hint() -> None:
    with pytest.raises(ConfigurationError, match="driver=libsql-client"):
        parse_libsql_url("libsql+wss://h?driver=libsql", NO_ENV)


def test_an_unknown_driver_is_a_configuration_error_naming_both_drivers() -> None:
    with pytest.raises(ConfigurationError, match="libsql or libsql-client"):
        parse_libsql_url("libsql://h?driver=pylibsql", NO_ENV)


def test_auth_token_comes_from_the_url_then_from_the_environment() -> None:
    env = {"LIBSQL_AUTH_TOKEN": "from-env"}
    assert parse_libsql_url("libsql://h?auth_token=from-url", env).auth_token == "from-url"
    assert parse_libsql_url("libsql://h?authToken=camel", env).auth_token == "camel"
    assert parse_libsql_url("libsql://h", env).auth_token == "from-env"
    assert parse_libsql_url("libsql://h", NO_ENV).auth_token is None


def test_durably_options_never_reach_the_driver_url() -> None:
    url = "libsql+http://h:1/db?auth_token=t&driver=libsql-client&timeout=5"
    target = parse_libsql_url(url, NO_ENV)
    assert target.driver_url() == "http://h:1/db"
    assert target.timeout == 5.0


def test_an_unknown_option_is_a_configuration_error_that_hides_the_token() -> None:
    with pytest.raises(ConfigurationError) as info:
        parse_libsql_url("libsql://h?auth_token=s3cret&tls=0", NO_ENV)
    assert "tls" in str(info.value)
    assert "s3cret" not in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        "libsql+file://user:pw@host/db",  # a file URL names a local file
        "libsql+file:",
        "libsql+file::memory:",
        "libsql://user:s3cret@host/db",  # the token goes in ?auth_token=
        "libsql+http:host",
    ],
)
def test_malformed_urls_name_the_url_forms_and_the_extra(url: str) -> None:
    with pytest.raises(DialectNotFoundError) as info:
        resolve_dialect(url)
    assert "durably[libsql]" in str(info.value)
    assert "s3cret" not in str(info.value)


def test_sync_url_needs_a_local_file_and_the_libsql_driver() -> None:
    target = parse_libsql_url("libsql+file:r.db?sync_url=libsql://primary&sync_interval=2", NO_ENV)
    assert (target.sync_url, target.sync_interval) == ("libsql://primary", 2.0)
    with pytest.raises(ConfigurationError, match="embedded replica"):
        parse_libsql_url("libsql+http://h?sync_url=libsql://primary", NO_ENV)
    with pytest.raises(ConfigurationError, match="embedded replica"):
        parse_libsql_url("libsql+file:r.db?sync_url=libsql://p&driver=libsql-client", NO_ENV)


@pytest.mark.parametrize("value", ["0", "-1", "soon"])
def test_bad_timeouts_are_configuration_errors(value: str) -> None:
    with pytest.raises(ConfigurationError, match="timeout"):
        parse_libsql_url(f"libsql+file:a.db?timeout={value}", NO_ENV)


def test_resolving_a_remote_url_connects_nowhere() -> None:
    # port 9 (discard) on loopback has no server: resolving and closing must not notice
    dialect = resolve_dialect("libsql+http://127.0.0.1:9?auth_token=s3cret")
    assert isinstance(dialect, LibsqlDialect)
    assert "s3cret" not in repr(dialect)
    dialect.close()
    resolve_dialect("libsql+ws://127.0.0.1:9").close()


def test_the_dialect_declares_returning_claims_and_its_integrity_error(tmp_path: Path) -> None:
    dialect = resolve_dialect(f"libsql+file:{tmp_path / 'a.db'}")
    try:
        assert dialect.returning is True  # type: ignore[attr-defined]
        assert dialect.skip_locked is False
        assert dialect.integrity_errors == (LibsqlIntegrityError,)
        assert dialect.sqlalchemy_dialect.name == "sqlite"
        assert dialect.sqlalchemy_dialect.paramstyle == "qmark"
    finally:
        dialect.close()


def test_a_file_url_in_a_missing_directory_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="does not exist"):
        resolve_dialect(f"libsql+file:{tmp_path / 'nope' / 'a.db'}")
