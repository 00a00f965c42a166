"""Hostile values at the Python API: every one is a typed `DurablyError`, nothing is written.

Covers what the HTTP fuzz table cannot reach: values a JSON body cannot carry (non-strings
where strings belong), the payload size limit, and database failures (no tables yet, a
full disk, MariaDB's packet limit) that must surface as `StoreError`, not a driver error.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from _backends import SERVER_URLS, drop_schema, empty_tables, prepare_server
from pydantic import BaseModel

from durably import (
    ConfigurationError,
    Durably,
    InputValidationError,
    PayloadTooLargeError,
    StepContext,
    StepSerializationError,
    StoreError,
    create_durably,
    define_job,
)

MiB = 1024 * 1024


class Text(BaseModel):
    text: str


@define_job(name="echo", input=Text)
def echo(step: StepContext, payload: Text) -> str:
    return step.run("copy", lambda: payload.text)


@define_job(name="free")
def free(step: StepContext, payload: Any) -> Any:
    return payload


@define_job(name="big-step")
def big_step(step: StepContext, payload: Any) -> None:
    step.run("big", lambda: "x" * payload["size"])


@define_job(name="big-output")
def big_output(step: StepContext, payload: Any) -> str:
    return "y" * int(payload["size"])


JOBS = {"echo": echo, "free": free, "big-step": big_step, "big-output": big_output}


@pytest.fixture
def d(make_durably: Callable[..., Durably]) -> Durably:
    durably = make_durably(max_payload_bytes=1000)
    durably.register(JOBS)
    return durably


def no_runs(durably: Durably) -> None:
    assert durably.get_runs() == []


# -- values that cannot be stored ----------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [{"text": "lone \ud800 surrogate"}, {"text": "ok", "extra": "\udfff"}],
    ids=["model-field", "extra-key"],
)
def test_a_lone_surrogate_in_the_input_is_an_input_error_and_nothing_is_written(
    d: Durably, payload: dict[str, str]
) -> None:
    job = d.jobs.free if "extra" in payload else d.jobs.echo
    with pytest.raises(InputValidationError, match=r"surrogate|JSON"):
        job.trigger(payload)
    no_runs(d)


def test_a_lone_surrogate_in_a_batch_item_writes_none_of_the_batch(d: Durably) -> None:
    with pytest.raises(InputValidationError, match="batch item 1"):
        d.jobs.echo.batch_trigger([{"text": "fine"}, {"text": "\ud800"}])
    no_runs(d)


@pytest.mark.parametrize("bad", [5, [5], ["ok", None], b"echo"])
def test_job_name_filters_that_are_not_strings_are_input_errors(d: Durably, bad: Any) -> None:
    with pytest.raises(InputValidationError, match="job_name"):
        d.get_runs(job_name=bad)


@pytest.mark.parametrize("bad", [5, ["pending", 3]])
def test_status_filters_that_are_not_strings_are_input_errors(d: Durably, bad: Any) -> None:
    with pytest.raises(InputValidationError, match="status"):
        d.get_runs(status=bad)


def test_a_nul_inside_the_payload_round_trips_on_every_backend(d: Durably) -> None:
    run = d.jobs.echo.trigger({"text": "a\x00b"})
    assert d.process_one()
    stored = d.get_run(run.id)
    assert stored is not None and stored.status == "completed"
    assert stored.payload == {"text": "a\x00b"}
    assert stored.output == "a\x00b"


# -- the payload size limit ------------------------------------------------------------------


def test_a_payload_over_max_payload_bytes_is_refused_and_nothing_is_written(d: Durably) -> None:
    with pytest.raises(PayloadTooLargeError) as raised:
        d.jobs.free.trigger({"blob": "x" * 2000})
    assert raised.value.limit == 1000 and raised.value.size > 1000
    assert isinstance(raised.value, InputValidationError)
    assert "max_payload_bytes" in str(raised.value)
    no_runs(d)


def test_the_limit_counts_utf8_bytes_not_characters(d: Durably) -> None:
    # 400 characters of 3 bytes each: 1200 bytes as JSON, over the 1000-byte limit
    with pytest.raises(PayloadTooLargeError):
        d.jobs.free.trigger({"t": "\u20ac" * 400})
    d.jobs.free.trigger({"t": "e" * 400})  # 400 bytes: fine
    assert len(d.get_runs()) == 1


def test_a_batch_with_one_oversized_item_writes_nothing(d: Durably) -> None:
    with pytest.raises(PayloadTooLargeError, match="batch item 2"):
        d.jobs.free.batch_trigger([{"a": 1}, {"b": 2}, {"c": "x" * 5000}])
    no_runs(d)


def test_a_step_result_over_the_limit_fails_the_run_with_a_clear_error(d: Durably) -> None:
    run = d.jobs["big-step"].trigger({"size": 5000})
    assert d.process_one()
    failed = d.get_run(run.id)
    assert failed is not None and failed.status == "failed"
    assert failed.failed_step_name == "big"
    assert failed.error is not None and "max_payload_bytes" in failed.error
    assert StepSerializationError.__name__ in failed.error
    assert d.get_steps(run.id)[0].status == "failed"


def test_a_job_output_over_the_limit_fails_the_run_with_a_clear_error(d: Durably) -> None:
    run = d.jobs["big-output"].trigger({"size": 5000})
    assert d.process_one()
    failed = d.get_run(run.id)
    assert failed is not None and failed.status == "failed"
    assert failed.error is not None and "max_payload_bytes" in failed.error


def test_the_default_limit_is_ten_mebibytes(make_durably: Callable[..., Durably]) -> None:
    durably = make_durably()
    assert durably.max_payload_bytes == 10 * MiB
    durably.register(JOBS)
    with pytest.raises(PayloadTooLargeError):
        durably.jobs.free.trigger({"blob": "x" * (10 * MiB)})
    no_runs(durably)


@pytest.mark.parametrize("bad", [0, -1, 1.5, "10", True])
def test_max_payload_bytes_must_be_a_positive_integer(db_url: str, bad: Any) -> None:
    with pytest.raises(ConfigurationError, match="max_payload_bytes"):
        create_durably(db_url, max_payload_bytes=bad)


# -- database failures are StoreErrors --------------------------------------------------


@pytest.fixture
def unmigrated(backend: str, backend_url: str) -> Iterator[Durably]:
    """A Durably on a database without durably's tables (restored afterwards)."""
    drop_schema(backend_url)
    durably = create_durably(backend_url)
    durably.register(JOBS)
    try:
        yield durably
    finally:
        durably.close()
        with create_durably(backend_url) as again:
            again.migrate()


@pytest.mark.parametrize(
    "call",
    [
        lambda d: d.jobs.free.trigger({}),
        lambda d: d.get_runs(),
        lambda d: d.get_run("01ARZ3NDEKTSV4RRFFQ69G5FAV"),
        lambda d: d.get_steps("01ARZ3NDEKTSV4RRFFQ69G5FAV"),
        lambda d: d.cancel("01ARZ3NDEKTSV4RRFFQ69G5FAV"),
        lambda d: d.process_one(),
    ],
    ids=["trigger", "get_runs", "get_run", "get_steps", "cancel", "process_one"],
)
def test_calls_before_migrate_say_to_run_migrate_first(
    unmigrated: Durably, call: Callable[[Durably], Any]
) -> None:
    with pytest.raises(StoreError, match=r"migrate\(\)") as raised:
        call(unmigrated)
    assert raised.value.__cause__ is not None  # the driver's error stays attached
    assert "[SQL:" not in str(raised.value)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real file system of 1 MiB (tmpfs): a disk that fills up."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=True)


def test_a_full_disk_is_a_store_error_and_the_instance_goes_on(small_disk: Path) -> None:
    with create_durably(f"sqlite:///{small_disk / 'full.db'}") as durably:
        durably.migrate()
        durably.register(JOBS)
        durably.jobs.free.trigger({"n": 0})
        with pytest.raises(StoreError, match="full") as raised:
            for _ in range(20):  # 20 x 300 KB cannot fit on a 1 MiB disk
                durably.jobs.free.trigger({"blob": "x" * 300_000})
        assert "[SQL:" not in str(raised.value)
        runs = durably.get_runs()
        assert {"n": 0} in [r.payload for r in runs]
        assert all(r.status == "pending" for r in runs)


def test_a_statement_over_mariadbs_packet_limit_is_a_store_error() -> None:
    prepare_server("mysql")
    url = SERVER_URLS["mysql"]
    empty_tables(url)
    with create_durably(url, max_payload_bytes=100 * MiB) as durably:
        durably.register(JOBS)
        with pytest.raises(StoreError, match="max_allowed_packet"):
            durably.jobs.free.trigger({"blob": "x" * (20 * MiB)})
        no_runs(durably)
        durably.jobs.free.trigger({"small": True})  # the connection pool recovered
        assert len(durably.get_runs()) == 1


@pytest.mark.parametrize("driver", ["libsql", "libsql-client"])
def test_libsql_drivers_reject_or_round_trip_a_nul(tmp_path: Path, driver: str) -> None:
    # the official driver once cut text at a NUL: "a\x00b" read back as "a"
    with create_durably(f"libsql+file:{tmp_path / 'nul.db'}?driver={driver}") as durably:
        durably.migrate()
        durably.register(JOBS)
        with pytest.raises(InputValidationError, match="NUL"):
            durably.jobs.free.trigger({}, idempotency_key="a\x00b")
        with pytest.raises(InputValidationError, match="NUL"):
            durably.get_runs(job_name="fr\x00ee")
        run = durably.jobs.echo.trigger({"text": "a\x00b"})
        assert durably.process_one()
        stored = durably.get_run(run.id)
        assert stored is not None
        assert (stored.payload, stored.output) == ({"text": "a\x00b"}, "a\x00b")
        assert [s.output for s in durably.get_steps(run.id)] == ["a\x00b"]
