"""The error hierarchy and the public names importable from `durably`."""

from __future__ import annotations

import sqlite3
from contextlib import closing

import pytest

import durably
from durably import (
    DialectNotFoundError,
    DuplicateStepError,
    DurablyError,
    InputValidationError,
    InvalidRunStateError,
    MigrationError,
    RunCancelledError,
    RunFailedError,
    RunNotFoundError,
    WaitTimeoutError,
    create_durably,
)

ERRORS = [
    InputValidationError,
    RunNotFoundError,
    InvalidRunStateError,
    DuplicateStepError,
    RunFailedError,
    RunCancelledError,
    WaitTimeoutError,
    DialectNotFoundError,
    MigrationError,
]

EXTRA_BASES = [
    (InputValidationError, ValueError),
    (RunNotFoundError, LookupError),
    (WaitTimeoutError, TimeoutError),
    (DialectNotFoundError, ValueError),
]

PUBLIC_NAMES = [
    "create_durably",
    "Durably",
    "define_job",
    "JobDefinition",
    "JobHandle",
    "StepContext",
    "BatchItem",
    "TriggerResult",
    "Run",
    "StepRecord",
    "LogEntry",
    "Progress",
    "DurablyEvent",
    "Dialect",
    "hookimpl",
    "resolve_dialect",
    "register_dialect_plugin",
    *(e.__name__ for e in ERRORS),
    "DurablyError",
]


def test_durably_error_is_an_exception() -> None:
    assert issubclass(DurablyError, Exception)


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: e.__name__)
def test_every_error_subclasses_durably_error(error: type[Exception]) -> None:
    assert issubclass(error, DurablyError)


@pytest.mark.parametrize(("error", "base"), EXTRA_BASES, ids=lambda e: e.__name__)
def test_errors_have_their_extra_standard_bases(
    error: type[Exception], base: type[Exception]
) -> None:
    assert issubclass(error, base)


@pytest.mark.parametrize("name", PUBLIC_NAMES)
def test_every_name_the_spec_uses_is_importable_from_durably(name: str) -> None:
    assert getattr(durably, name) is not None
    assert name in durably.__all__


def test_with_log_persistence_is_importable_from_durably_plugins() -> None:
    from durably.plugins import with_log_persistence

    assert callable(getattr(with_log_persistence(), "install", None))


def test_unknown_url_scheme_raises_dialect_not_found_error_naming_schemes() -> None:
    with pytest.raises(DialectNotFoundError) as info:
        create_durably("nosuchdb://somewhere/x")
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert "nosuchdb" in message
    assert "sqlite" in message  # an installed scheme


def test_migrate_raises_migration_error_when_the_tables_cannot_be_created(
    db_url: str,
) -> None:
    path = db_url[len("sqlite:///") :]
    with closing(sqlite3.connect(path)) as raw:
        # a conflicting object where durably wants its table
        raw.execute("CREATE VIEW durably_runs AS SELECT 1 AS id")
        raw.commit()
    with create_durably(db_url) as d, pytest.raises(MigrationError):
        d.migrate()
