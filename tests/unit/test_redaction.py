"""Credentials in database URLs are never printed: not in repr, errors, or CLI output."""

from __future__ import annotations

from pathlib import Path

import pytest

from durably import DurablyError, create_durably, redact_url
from durably.cli import main

SECRET = "s3cr3tValue"


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql+psycopg://user:{SECRET}@127.0.0.1/db",
        f"postgresql+psycopg://:{SECRET}@127.0.0.1/db",
        f"postgresql://user:{SECRET}@host:5432/db?sslmode=require",
        f"mysql+pymysql://root:p@ss/{SECRET}@127.0.0.1/db",  # '@' and '/' in the password
        f"libsql://db.example.com?authToken={SECRET}",
        f"libsql://db.example.com?AUTHTOKEN={SECRET}&tls=1",
        f"libsql://db.example.com?auth_token={SECRET}",
        f"libsql+file:/tmp/x.db?auth_token={SECRET}",
        f"libsql+https://db.example.com/?Auth_Token={SECRET}#frag",
        f"sqlite:///x.db?password={SECRET}",
        f"postgresql://h/db?user=u&password={SECRET}",
        f"postgresql://h/db?PassWord={SECRET}",
        f"libsql://h?token={SECRET}",
        f"libsql://h?api_key={SECRET}",
        f"libsql://h?secret={SECRET}",
    ],
)
def test_every_credential_bearing_part_of_a_url_is_hidden(url: str) -> None:
    shown = redact_url(url)
    assert SECRET not in shown
    assert "***" in shown


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:///durably.db",
        "sqlite:////abs/path/durably.db",
        "postgresql+psycopg://postgres@127.0.0.1:5432/test",
        "libsql+file:/tmp/x.db?driver=libsql",
        "libsql://db.example.com?tls=0",
    ],
)
def test_a_url_without_credentials_is_shown_as_is(url: str) -> None:
    assert redact_url(url) == url


def test_the_parts_around_a_password_stay_readable() -> None:
    assert (
        redact_url(f"postgresql://user:{SECRET}@db.example.com:5432/app?sslmode=require")
        == "postgresql://user:***@db.example.com:5432/app?sslmode=require"
    )
    assert redact_url(f"libsql://h?tls=1&authToken={SECRET}&x=2") == (
        "libsql://h?tls=1&authToken=***&x=2"
    )


def test_repr_of_an_instance_hides_the_token(tmp_path: Path) -> None:
    with create_durably(f"libsql+file:{tmp_path / 'x.db'}?authToken={SECRET}") as d:
        assert SECRET not in repr(d)
        assert SECRET not in repr(d.dialect)


def test_a_missing_directory_error_hides_the_token(tmp_path: Path) -> None:
    for url in (
        f"libsql+file:{tmp_path / 'nope' / 'x.db'}?auth_token={SECRET}",
        f"sqlite:///{tmp_path / 'nope' / 'x.db'}?password={SECRET}",
    ):
        with pytest.raises(DurablyError) as raised:
            create_durably(url)
        assert SECRET not in str(raised.value)


@pytest.mark.parametrize("command", ["migrate", "runs"])
def test_cli_errors_never_print_the_password(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # nothing listens on port 1: the connection fails and the error names the URL
    url = f"postgresql+psycopg://user:{SECRET}@127.0.0.1:1/db?connect_timeout=2"
    status = main([command, url])
    out, err = capsys.readouterr()
    assert status != 0
    assert SECRET not in out + err
    libsql = f"libsql+file:/nonexistent/dir/x.db?authToken={SECRET}"
    assert main([command, libsql]) != 0
    out, err = capsys.readouterr()
    assert SECRET not in out + err
