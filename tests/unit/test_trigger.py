"""JobHandle.trigger / batch_trigger: validation, idempotency keys, all-or-nothing batches."""

from __future__ import annotations

import threading
from datetime import timezone
from typing import Any

import pytest
from _api_helpers import Recorder, count_rows
from pydantic import BaseModel

from durably import (
    BatchItem,
    Durably,
    DurablyError,
    InputValidationError,
    JobHandle,
    StepContext,
    define_job,
)


class OrderIn(BaseModel):
    order_id: int
    note: str = ""


@define_job(name="orders", input=OrderIn)
def orders_job(step: StepContext, payload: OrderIn) -> int:
    return payload.order_id


@define_job(name="other-orders", input=OrderIn)
def other_orders_job(step: StepContext, payload: OrderIn) -> int:
    return payload.order_id


@pytest.fixture
def orders(durably: Durably) -> JobHandle[Any, Any]:
    return durably.register({"orders": orders_job})["orders"]


def _details(exc: InputValidationError) -> list[Any]:
    """pydantic's error list, whether exposed as an attribute or pydantic-style method."""
    errors = exc.errors
    return list(errors() if callable(errors) else errors)


def test_trigger_stores_a_pending_run_and_returns_it(
    durably: Durably, orders: JobHandle[Any, Any]
) -> None:
    run = orders.trigger({"order_id": "42"})
    assert run.status == "pending"
    assert run.job_name == "orders"
    assert run.payload == {"order_id": 42, "note": ""}
    assert run.output is None and run.error is None and run.progress is None
    assert run.idempotency_key is None and run.concurrency_key is None
    assert run.current_step_index == 0
    assert run.created_at.tzinfo is not None
    assert run.created_at.utcoffset() == timezone.utc.utcoffset(None)
    assert run.started_at is None and run.completed_at is None
    stored = durably.get_run(run.id)
    assert stored is not None
    assert stored.status == "pending"
    assert stored.payload == {"order_id": 42, "note": ""}


def test_trigger_emits_run_trigger_with_run_id_job_name_and_payload(
    durably: Durably, orders: JobHandle[Any, Any]
) -> None:
    events = Recorder(durably, "run:trigger")
    run = orders.trigger({"order_id": 1, "note": "n"})
    [event] = events.events
    assert event.type == "run:trigger"
    assert event.run_id == run.id
    assert event.job_name == "orders"
    assert event.payload == {"order_id": 1, "note": "n"}


def test_trigger_stores_the_keys(durably: Durably, orders: JobHandle[Any, Any]) -> None:
    run = orders.trigger({"order_id": 1}, idempotency_key="idem-1", concurrency_key="conc-1")
    assert run.idempotency_key == "idem-1" and run.concurrency_key == "conc-1"
    stored = durably.get_run(run.id)
    assert stored is not None
    assert stored.idempotency_key == "idem-1" and stored.concurrency_key == "conc-1"


def test_invalid_input_raises_input_validation_error_that_is_a_value_error(
    orders: JobHandle[Any, Any],
) -> None:
    with pytest.raises(InputValidationError) as info:
        orders.trigger({"order_id": "not-a-number"})
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, DurablyError)


def test_input_validation_error_carries_pydantic_details(orders: JobHandle[Any, Any]) -> None:
    with pytest.raises(InputValidationError) as info:
        orders.trigger({"note": 5})
    details = _details(info.value)
    by_loc = {tuple(d["loc"]): d for d in details}
    assert by_loc[("order_id",)]["type"] == "missing"
    assert by_loc[("note",)]["type"] == "string_type"


def test_invalid_input_writes_nothing_and_emits_nothing(
    durably: Durably, orders: JobHandle[Any, Any], db_url: str
) -> None:
    events = Recorder(durably)
    with pytest.raises(InputValidationError):
        orders.trigger({"order_id": []})
    assert durably.get_runs() == []
    assert count_rows(db_url, "durably_runs") == 0
    assert events.events == []


def test_same_idempotency_key_returns_the_original_run_with_its_original_payload(
    durably: Durably, orders: JobHandle[Any, Any]
) -> None:
    first = orders.trigger({"order_id": 1, "note": "first"}, idempotency_key="k")
    events = Recorder(durably)
    again = orders.trigger({"order_id": 2, "note": "second"}, idempotency_key="k")
    assert again.id == first.id
    assert again.payload == {"order_id": 1, "note": "first"}
    assert [r.id for r in durably.get_runs()] == [first.id]
    assert events.events == []


def test_idempotency_key_returns_the_run_even_after_it_completed(
    durably: Durably, orders: JobHandle[Any, Any]
) -> None:
    first = orders.trigger({"order_id": 7}, idempotency_key="k")
    assert durably.process_one()
    again = orders.trigger({"order_id": 8}, idempotency_key="k")
    assert again.id == first.id
    assert again.status == "completed"
    assert again.output == 7
    assert durably.process_one() is False


def test_idempotency_keys_are_scoped_per_job(durably: Durably, orders: JobHandle[Any, Any]) -> None:
    other = durably.register({"other": other_orders_job})["other"]
    a = orders.trigger({"order_id": 1}, idempotency_key="shared")
    b = other.trigger({"order_id": 2}, idempotency_key="shared")
    assert a.id != b.id
    assert b.job_name == "other-orders" and b.payload["order_id"] == 2
    assert len(durably.get_runs()) == 2


def test_concurrent_triggers_with_one_idempotency_key_create_one_run(
    durably: Durably, orders: JobHandle[Any, Any]
) -> None:
    events = Recorder(durably, "run:trigger")
    barrier = threading.Barrier(8, timeout=10)
    ids: list[str] = []
    lock = threading.Lock()

    def trigger(i: int) -> None:
        barrier.wait()
        run = orders.trigger({"order_id": i}, idempotency_key="race")
        with lock:
            ids.append(run.id)

    threads = [threading.Thread(target=trigger, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert len(ids) == 8 and len(set(ids)) == 1
    assert [r.id for r in durably.get_runs()] == ids[:1]
    assert [e.run_id for e in events.events] == ids[:1]


def test_batch_trigger_accepts_inputs_and_batch_items_in_order(
    durably: Durably, orders: JobHandle[Any, Any]
) -> None:
    events = Recorder(durably, "run:trigger")
    runs = orders.batch_trigger(
        [
            {"order_id": 1},
            BatchItem({"order_id": 2}, idempotency_key="i2", concurrency_key="c2"),
            OrderIn(order_id=3),
            BatchItem(payload={"order_id": "4"}),
        ]
    )
    assert [r.payload["order_id"] for r in runs] == [1, 2, 3, 4]
    assert all(r.status == "pending" and r.job_name == "orders" for r in runs)
    assert len({r.id for r in runs}) == 4
    assert (runs[1].idempotency_key, runs[1].concurrency_key) == ("i2", "c2")
    assert (runs[3].idempotency_key, runs[3].concurrency_key) == (None, None)
    stored = durably.get_run(runs[1].id)
    assert stored is not None
    assert (stored.idempotency_key, stored.concurrency_key) == ("i2", "c2")
    assert sorted(r.id for r in durably.get_runs()) == sorted(r.id for r in runs)
    assert [e.run_id for e in events.events] == [r.id for r in runs]


def test_batch_trigger_is_all_or_nothing_when_one_item_is_invalid(
    durably: Durably, orders: JobHandle[Any, Any], db_url: str
) -> None:
    events = Recorder(durably)
    with pytest.raises(InputValidationError) as info:
        orders.batch_trigger(
            [{"order_id": 1}, BatchItem({"order_id": 2}), {"order_id": "bad"}, {"order_id": 4}]
        )
    assert isinstance(info.value, ValueError)
    assert durably.get_runs() == []
    assert count_rows(db_url, "durably_runs") == 0
    assert events.events == []


def test_batch_trigger_returns_existing_runs_for_known_idempotency_keys(
    durably: Durably, orders: JobHandle[Any, Any]
) -> None:
    existing = orders.trigger({"order_id": 1}, idempotency_key="a")
    events = Recorder(durably, "run:trigger")
    runs = orders.batch_trigger(
        [
            BatchItem({"order_id": 10}, idempotency_key="a"),
            BatchItem({"order_id": 20}, idempotency_key="b"),
            BatchItem({"order_id": 30}, idempotency_key="b"),
        ]
    )
    assert runs[0].id == existing.id and runs[0].payload["order_id"] == 1
    assert runs[1].id == runs[2].id
    assert runs[1].payload["order_id"] == 20
    assert len(durably.get_runs()) == 2
    assert [e.run_id for e in events.events] == [runs[1].id]


def test_batch_trigger_of_nothing_returns_an_empty_list(
    durably: Durably, orders: JobHandle[Any, Any]
) -> None:
    assert orders.batch_trigger([]) == []
    assert durably.get_runs() == []


def test_an_input_that_cannot_be_stored_as_json_raises_input_validation_error(
    durably: Durably, db_url: str
) -> None:
    @define_job(name="untyped")
    def untyped(step: StepContext, payload: Any) -> None:
        return None

    handle = durably.register({"untyped": untyped})["untyped"]
    events = Recorder(durably)
    try:
        with pytest.raises(InputValidationError):
            handle.trigger({"handle": object()})
    finally:
        assert count_rows(db_url, "durably_runs") == 0
        assert events.events == []
