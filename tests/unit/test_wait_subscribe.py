"""trigger_and_wait and subscribe / subscribe_async."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable
from typing import Any

import pytest
from _api_helpers import Gate, in_background, wait_for_status, wait_until
from pydantic import BaseModel

from durably import (
    Durably,
    DurablyError,
    InputValidationError,
    JobHandle,
    RunCancelledError,
    RunFailedError,
    StepContext,
    TriggerResult,
    WaitTimeoutError,
    define_job,
)


class In(BaseModel):
    n: int


class Out(BaseModel):
    doubled: int


@define_job(name="doubler", input=In, output=Out)
def doubler_job(step: StepContext, payload: In) -> Out:
    value = step.run("double", lambda: payload.n * 2)
    step.log.info("doubled", {"value": value})
    return Out(doubled=value)


@define_job(name="breaker", input=In)
def breaker_job(step: StepContext, payload: In) -> None:
    step.run("break", lambda: payload.n / 0)


def _listening(durably: Durably) -> bool:
    """Whether any listener is still registered for a run's events (white-box check)."""
    return any(
        durably._events.wants(t)
        for t in ("run:start", "step:start", "run:complete", "run:fail", "run:cancel")
    )


# -- trigger_and_wait ------------------------------------------------------------------


def test_trigger_and_wait_returns_the_id_and_the_typed_output(durably: Durably) -> None:
    handle = durably.register({"job": doubler_job})["job"]
    durably.start()
    result = handle.trigger_and_wait({"n": 21}, timeout=20)
    assert isinstance(result, TriggerResult)
    assert result.output == Out(doubled=42)
    assert isinstance(result.output, Out)
    run = durably.get_run(result.id)
    assert run is not None and run.status == "completed" and run.job_name == "doubler"


def test_trigger_and_wait_without_output_type_returns_the_json_output(durably: Durably) -> None:
    @define_job(name="untyped")
    def job(step: StepContext, payload: Any) -> Any:
        return {"echo": payload}

    handle = durably.register({"job": job})["job"]
    durably.start()
    result = handle.trigger_and_wait([1, 2], timeout=20)
    assert result.output == {"echo": [1, 2]}


def test_trigger_and_wait_raises_run_failed_error_with_run_id_and_error(
    durably: Durably,
) -> None:
    handle = durably.register({"job": breaker_job})["job"]
    durably.start()
    with pytest.raises(RunFailedError) as info:
        handle.trigger_and_wait({"n": 1}, timeout=20)
    exc = info.value
    assert isinstance(exc, DurablyError)
    assert exc.error == "ZeroDivisionError: division by zero"
    run = durably.get_run(exc.run_id)
    assert run is not None and run.status == "failed" and run.job_name == "breaker"


def test_trigger_and_wait_raises_run_cancelled_error_when_the_run_is_cancelled(
    durably: Durably,
) -> None:
    gate = Gate()

    @define_job(name="cancel-me")
    def job(step: StepContext, payload: Any) -> None:
        step.run("wait", gate.pass_through)
        step.run("after", lambda: None)

    handle = durably.register({"job": job})["job"]
    durably.start()
    thread, outcome = in_background(lambda: handle.trigger_and_wait({}, timeout=20))
    gate.wait_entered()
    [run] = durably.get_runs(status="running")
    durably.cancel(run.id)
    gate.open()
    thread.join(20)
    assert isinstance(outcome.get("error"), RunCancelledError), outcome
    assert isinstance(outcome["error"], DurablyError)
    assert run.id in str(outcome["error"])


def test_trigger_and_wait_timeout_raises_wait_timeout_error_and_the_run_goes_on(
    durably: Durably,
) -> None:
    gate = Gate()

    @define_job(name="slow")
    def job(step: StepContext, payload: Any) -> str:
        step.run("wait", gate.pass_through)
        return "finished"

    handle = durably.register({"job": job})["job"]
    durably.start()
    with pytest.raises(WaitTimeoutError) as info:
        handle.trigger_and_wait({}, timeout=0.3)
    assert isinstance(info.value, TimeoutError)
    assert isinstance(info.value, DurablyError)
    [run] = durably.get_runs()
    assert run.status in ("pending", "running")
    gate.open()
    done = wait_for_status(durably, run.id, "completed")
    assert done.output == "finished"


def test_trigger_and_wait_timeout_leaves_an_unclaimed_run_pending(durably: Durably) -> None:
    handle = durably.register({"job": doubler_job})["job"]
    with pytest.raises(WaitTimeoutError):
        handle.trigger_and_wait({"n": 1}, timeout=0.1)
    [run] = durably.get_runs()
    assert run.status == "pending"
    assert durably.process_one()
    done = durably.get_run(run.id)
    assert done is not None and done.status == "completed"


def test_trigger_and_wait_with_a_known_idempotency_key_returns_the_first_result(
    durably: Durably,
) -> None:
    handle = durably.register({"job": doubler_job})["job"]
    durably.start()
    first = handle.trigger_and_wait({"n": 1}, idempotency_key="k", timeout=20)
    again = handle.trigger_and_wait({"n": 50}, idempotency_key="k", timeout=20)
    assert again.id == first.id
    assert again.output == Out(doubled=2)
    assert len(durably.get_runs()) == 1


def test_trigger_and_wait_stores_the_concurrency_key(durably: Durably) -> None:
    handle = durably.register({"job": doubler_job})["job"]
    durably.start()
    result = handle.trigger_and_wait({"n": 1}, concurrency_key="ck", timeout=20)
    run = durably.get_run(result.id)
    assert run is not None and run.concurrency_key == "ck"


def test_trigger_and_wait_validates_input_before_writing(durably: Durably) -> None:
    handle = durably.register({"job": doubler_job})["job"]
    with pytest.raises(InputValidationError):
        handle.trigger_and_wait({"n": "x"}, timeout=1)
    assert durably.get_runs() == []


# -- subscribe -------------------------------------------------------------------------


def test_subscribe_yields_the_runs_events_and_ends_after_run_complete(durably: Durably) -> None:
    handles = durably.register({"job": doubler_job})
    handle = handles["job"]
    run = handle.trigger({"n": 2})
    other = handle.trigger({"n": 3})
    subscription = durably.subscribe(run.id)
    assert durably.process_until_idle() == 2
    events = list(subscription)
    assert [e.type for e in events] == [
        "run:start",
        "step:start",
        "step:complete",
        "log:write",
        "run:complete",
    ]
    assert all(e.run_id == run.id for e in events)
    assert events[-1].output == {"doubled": 4}
    assert other.id not in {e.run_id for e in events}
    assert not _listening(durably)


def test_subscribe_follows_a_run_executed_by_the_worker_as_it_happens(durably: Durably) -> None:
    gate = Gate()

    @define_job(name="live")
    def job(step: StepContext, payload: Any) -> int:
        step.run("first", lambda: 1)
        step.run("gated", gate.pass_through)
        return 2

    handle = durably.register({"job": job})["job"]
    run = handle.trigger({})
    subscription = durably.subscribe(run.id)
    durably.start()
    seen = [next(subscription).type for _ in range(4)]
    assert seen == ["run:start", "step:start", "step:complete", "step:start"]
    gate.open()
    rest = [e.type for e in subscription]
    assert rest == ["step:complete", "run:complete"]


def test_subscribe_ends_after_run_fail(durably: Durably) -> None:
    handle = durably.register({"job": breaker_job})["job"]
    run = handle.trigger({"n": 1})
    subscription = durably.subscribe(run.id)
    assert durably.process_one()
    events = list(subscription)
    assert events[-1].type == "run:fail"
    assert events[-1].error == "ZeroDivisionError: division by zero"
    assert events[-1].failed_step_name == "break"


def test_subscribe_ends_after_run_cancel(durably: Durably) -> None:
    handle = durably.register({"job": doubler_job})["job"]
    run = handle.trigger({"n": 1})
    subscription = durably.subscribe(run.id)
    durably.cancel(run.id)
    events = list(subscription)
    assert [(e.type, e.run_id) for e in events] == [("run:cancel", run.id)]


@pytest.mark.parametrize("status", ["completed", "failed", "cancelled"])
def test_subscribe_to_a_terminal_run_yields_one_final_event_and_ends(
    durably: Durably, status: str
) -> None:
    handles = durably.register({"ok": doubler_job, "bad": breaker_job})
    if status == "failed":
        run = handles["bad"].trigger({"n": 1})
        assert durably.process_one()
    else:
        run = handles["ok"].trigger({"n": 5})
        if status == "completed":
            assert durably.process_one()
        else:
            durably.cancel(run.id)
    events = list(durably.subscribe(run.id))
    assert len(events) == 1
    [event] = events
    assert event.run_id == run.id
    expected = {"completed": "run:complete", "failed": "run:fail", "cancelled": "run:cancel"}
    assert event.type == expected[status]
    if status == "completed":
        assert event.output == {"doubled": 10}
    if status == "failed":
        assert event.error == "ZeroDivisionError: division by zero"
    assert not _listening(durably)


def test_closing_a_subscription_early_removes_its_listeners(durably: Durably) -> None:
    handle = durably.register({"job": doubler_job})["job"]
    run = handle.trigger({"n": 1})
    subscription = durably.subscribe(run.id)
    assert _listening(durably)
    subscription.close()
    assert not _listening(durably)
    with pytest.raises(StopIteration):
        next(subscription)
    assert durably.process_one()


def test_breaking_out_of_a_subscription_and_closing_it_removes_its_listeners(
    durably: Durably,
) -> None:
    handle = durably.register({"job": doubler_job})["job"]
    run = handle.trigger({"n": 1})
    subscription = durably.subscribe(run.id)
    assert durably.process_one()
    for event in subscription:
        assert event.type == "run:start"
        break
    subscription.close()
    assert not _listening(durably)


def test_breaking_out_of_a_subscription_releases_its_listener_without_close(
    durably: Durably,
) -> None:
    handle = durably.register({"job": doubler_job})["job"]
    run = handle.trigger({"n": 1})
    before = durably._events.listener_count()

    def process_once_listened() -> bool:
        wait_until(lambda: durably._events.listener_count() > before)
        return durably.process_one()

    thread, outcome = in_background(process_once_listened)
    for event in durably.subscribe(run.id):
        assert event.type == "run:start"
        break
    thread.join(20)
    assert outcome == {"result": True}
    gc.collect()
    assert durably._events.listener_count() == before


def test_dropping_a_started_subscription_releases_its_listener(durably: Durably) -> None:
    handle = durably.register({"job": doubler_job})["job"]
    run = handle.trigger({"n": 1})
    before = durably._events.listener_count()
    subscription = durably.subscribe(run.id)
    assert durably.process_one()
    assert next(subscription).type == "run:start"
    del subscription
    gc.collect()
    assert durably._events.listener_count() == before


def test_subscribe_and_wait_notice_an_end_reached_by_another_process(
    make_durably: Callable[..., Durably],
) -> None:
    here, elsewhere = make_durably(), make_durably()  # one database, separate events
    handle = here.register({"job": doubler_job})["job"]
    elsewhere.register({"job": doubler_job})
    run = handle.trigger({"n": 3}, idempotency_key="k")
    before = here._events.listener_count()
    subscription = here.subscribe(run.id)
    thread, outcome = in_background(
        lambda: handle.trigger_and_wait({"n": 3}, idempotency_key="k", timeout=20)
    )
    assert elsewhere.process_one()
    [event] = list(subscription)
    assert (event.type, event.output) == ("run:complete", {"doubled": 6})
    thread.join(20)
    assert outcome["result"].output == Out(doubled=6)

    async def follow_async(run_id: str) -> list[Any]:
        subscription = here.subscribe_async(run_id)
        assert await asyncio.to_thread(elsewhere.process_one)
        return [event async for event in subscription]

    failing = here.register({"bad": breaker_job})["bad"].trigger({"n": 1})
    elsewhere.register({"bad": breaker_job})
    [event] = asyncio.run(follow_async(failing.id))
    assert (event.type, event.failed_step_name) == ("run:fail", "break")
    assert here._events.listener_count() == before


def test_a_wait_that_times_out_releases_its_listeners(durably: Durably) -> None:
    handle = durably.register({"job": doubler_job})["job"]
    before = durably._events.listener_count()
    with pytest.raises(WaitTimeoutError):
        handle.trigger_and_wait({"n": 1}, timeout=0.1)

    async def main() -> None:
        with pytest.raises(WaitTimeoutError):
            await handle.trigger_and_wait_async({"n": 1}, timeout=0.1)

    asyncio.run(main())
    assert durably._events.listener_count() == before


# -- subscribe_async -------------------------------------------------------------------


def test_subscribe_async_yields_the_runs_events_and_ends(durably: Durably) -> None:
    handle = durably.register({"job": doubler_job})["job"]
    run = handle.trigger({"n": 4})

    async def main() -> list[Any]:
        subscription = durably.subscribe_async(run.id)
        assert await durably.process_one_async()
        return [event async for event in subscription]

    events = asyncio.run(main())
    assert [e.type for e in events] == [
        "run:start",
        "step:start",
        "step:complete",
        "log:write",
        "run:complete",
    ]
    assert events[-1].output == {"doubled": 8}
    assert not _listening(durably)


def test_subscribe_async_follows_a_run_executed_by_the_worker(durably: Durably) -> None:
    handle = durably.register({"job": doubler_job})["job"]
    run = handle.trigger({"n": 4})

    async def main() -> list[str]:
        subscription = durably.subscribe_async(run.id)
        durably.start()
        return [event.type async for event in subscription]

    types = asyncio.run(main())
    assert types[0] == "run:start" and types[-1] == "run:complete"


def test_subscribe_async_to_a_terminal_run_yields_one_final_event(durably: Durably) -> None:
    handle = durably.register({"job": breaker_job})["job"]
    run = handle.trigger({"n": 4})
    assert durably.process_one()

    async def main() -> list[Any]:
        return [event async for event in durably.subscribe_async(run.id)]

    [event] = asyncio.run(main())
    assert event.type == "run:fail" and event.run_id == run.id


def test_closing_subscribe_async_early_removes_its_listeners(
    make_durably: Callable[..., Durably],
) -> None:
    d = make_durably()
    handle: JobHandle[Any, Any] = d.register({"job": doubler_job})["job"]
    run = handle.trigger({"n": 4})

    async def main() -> None:
        subscription = d.subscribe_async(run.id)
        assert _listening(d)
        await subscription.aclose()  # type: ignore[attr-defined]
        assert not _listening(d)

    asyncio.run(main())


@pytest.mark.parametrize("release", ["aclose", "drop"])
def test_a_started_async_subscription_releases_its_listener(durably: Durably, release: str) -> None:
    handle = durably.register({"job": doubler_job})["job"]
    run = handle.trigger({"n": 1})
    before = durably._events.listener_count()

    async def main() -> None:
        # the listener is registered on the call, before this task can run
        processing = asyncio.ensure_future(durably.process_one_async())
        subscription = durably.subscribe_async(run.id)
        async for event in subscription:
            assert event.type == "run:start"
            break
        assert await processing
        if release == "aclose":
            await subscription.aclose()  # type: ignore[attr-defined]
        del subscription
        gc.collect()
        assert durably._events.listener_count() == before

    asyncio.run(main())
