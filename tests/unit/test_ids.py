"""Run ids are ULIDs: 26 Crockford base32 characters, monotonic within a process."""

from __future__ import annotations

import threading
import time
from typing import Any

from durably import Durably, StepContext, define_job
from durably._ids import UlidGenerator, new_ulid

CROCKFORD = set("0123456789ABCDEFGHJKMNPQRSTVWXYZ")


@define_job(name="noop")
def noop(step: StepContext, payload: Any) -> None:
    return None


def _timestamp_ms(ulid: str) -> int:
    value = 0
    for ch in ulid[:10]:
        value = value * 32 + "0123456789ABCDEFGHJKMNPQRSTVWXYZ".index(ch)
    return value


def test_run_ids_are_26_crockford_base32_characters(durably: Durably) -> None:
    handle = durably.register({"noop": noop})["noop"]
    before = time.time_ns() // 1_000_000
    run = handle.trigger({})
    after = time.time_ns() // 1_000_000
    assert len(run.id) == 26
    assert set(run.id) <= CROCKFORD
    # the first 10 characters are the creation time in milliseconds
    assert before - 1 <= _timestamp_ms(run.id) <= after + 1


def test_run_ids_sort_in_creation_order(durably: Durably) -> None:
    handle = durably.register({"noop": noop})["noop"]
    ids = [handle.trigger({}).id for _ in range(50)]
    ids += [r.id for r in handle.batch_trigger([{}] * 200)]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)


def test_ulids_are_monotonic_within_one_millisecond() -> None:
    generator = UlidGenerator()
    fixed_ms = 1_700_000_000_000
    ids = [generator.new(ms=fixed_ms) for _ in range(1000)]
    assert ids == sorted(ids)
    assert len(set(ids)) == 1000
    assert {_timestamp_ms(i) for i in ids} == {fixed_ms}
    assert all(len(i) == 26 and set(i) <= CROCKFORD for i in ids)


def test_ulids_stay_monotonic_if_the_clock_goes_back() -> None:
    generator = UlidGenerator()
    later = generator.new(ms=1_700_000_000_500)
    earlier_clock = generator.new(ms=1_700_000_000_000)
    assert earlier_clock > later


def test_new_ulid_is_monotonic_across_threads() -> None:
    results: list[list[str]] = []
    lock = threading.Lock()

    def make() -> None:
        mine = [new_ulid() for _ in range(500)]
        with lock:
            results.append(mine)

    threads = [threading.Thread(target=make) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [i for chunk in results for i in chunk]
    assert len(set(every)) == len(every)
    for chunk in results:
        assert chunk == sorted(chunk)
