"""Events: every type with its fields, order, sequence, listeners, errors in listeners."""

from __future__ import annotations

import itertools
import threading
from collections import Counter
from datetime import datetime
from typing import Any

import pytest
from _api_helpers import Gate, Recorder, in_background, wait_for_status, wait_until

from durably import Durably, Progress, StepContext, define_job


@define_job(name="eventful")
def eventful_job(step: StepContext, payload: Any) -> dict[str, Any]:
    step.log.info("before steps", {"n": payload["n"]})
    first = step.run("first", lambda: payload["n"] + 1)
    step.progress(1, 2, "half")
    second = step.run("second", lambda: first * 2)
    return {"result": second}


@define_job(name="failing")
def failing_job(step: StepContext, payload: Any) -> None:
    step.run("ok", lambda: 1)
    step.run("explode", lambda: 1 / 0)


def test_events_of_a_successful_run_come_in_order_with_their_fields(durably: Durably) -> None:
    events = Recorder(durably)
    handle = durably.register({"job": eventful_job})["job"]
    run = handle.trigger({"n": 1})
    assert durably.process_one()

    assert events.types(run.id) == [
        "run:trigger",
        "run:start",
        "log:write",
        "step:start",
        "step:complete",
        "run:progress",
        "step:start",
        "step:complete",
        "run:complete",
    ]
    (trigger, start, log, s1, c1, progress, s2, c2, complete) = events.of(run_id=run.id)

    assert (trigger.run_id, trigger.job_name, trigger.payload) == (run.id, "eventful", {"n": 1})
    assert (start.run_id, start.job_name, start.payload) == (run.id, "eventful", {"n": 1})

    assert (log.run_id, log.step_name, log.level, log.message, log.data) == (
        run.id,
        None,
        "info",
        "before steps",
        {"n": 1},
    )

    assert (s1.run_id, s1.job_name, s1.step_name, s1.step_index) == (run.id, "eventful", "first", 0)
    assert (c1.run_id, c1.job_name, c1.step_name, c1.step_index, c1.output) == (
        run.id,
        "eventful",
        "first",
        0,
        2,
    )
    assert isinstance(c1.duration, float) and c1.duration >= 0
    assert (s2.step_name, s2.step_index) == ("second", 1)
    assert (c2.step_name, c2.step_index, c2.output) == ("second", 1, 4)

    assert (progress.run_id, progress.job_name) == (run.id, "eventful")
    assert progress.progress == Progress(1, 2, "half")
    assert isinstance(progress.progress, Progress)

    assert (complete.run_id, complete.job_name, complete.output) == (
        run.id,
        "eventful",
        {"result": 4},
    )
    assert isinstance(complete.duration, float) and complete.duration >= 0


def test_events_of_a_failing_run_carry_the_error_and_the_failed_step(durably: Durably) -> None:
    events = Recorder(durably)
    handle = durably.register({"job": failing_job})["job"]
    run = handle.trigger({})
    assert durably.process_one()
    assert events.types(run.id) == [
        "run:trigger",
        "run:start",
        "step:start",
        "step:complete",
        "step:start",
        "step:fail",
        "run:fail",
    ]
    step_fail = events.of("step:fail")[0]
    assert (step_fail.run_id, step_fail.job_name, step_fail.step_name, step_fail.step_index) == (
        run.id,
        "failing",
        "explode",
        1,
    )
    assert step_fail.error == "ZeroDivisionError: division by zero"
    run_fail = events.of("run:fail")[0]
    assert (run_fail.run_id, run_fail.job_name) == (run.id, "failing")
    assert run_fail.error == "ZeroDivisionError: division by zero"
    assert run_fail.failed_step_name == "explode"


def test_retry_emits_run_retry_and_replayed_steps_emit_no_step_events(durably: Durably) -> None:
    state = {"fail": True}

    @define_job(name="retry-events")
    def job(step: StepContext, payload: Any) -> None:
        step.run("done-once", lambda: 1)

        def flaky() -> int:
            if state["fail"]:
                raise RuntimeError("flaky")
            return 2

        step.run("flaky", flaky)

    handle = durably.register({"job": job})["job"]
    run = handle.trigger({})
    assert durably.process_one()
    events = Recorder(durably)
    state["fail"] = False
    durably.retry(run.id)
    assert durably.process_one()
    assert events.types(run.id) == [
        "run:retry",
        "run:start",
        "step:start",
        "step:complete",
        "run:complete",
    ]
    retry = events.of("run:retry")[0]
    assert (retry.run_id, retry.job_name) == (run.id, "retry-events")
    assert [(e.step_name, e.step_index) for e in events.of("step:start")] == [("flaky", 1)]


def test_cancel_emits_run_cancel_with_run_id_and_job_name(durably: Durably) -> None:
    handle = durably.register({"job": eventful_job})["job"]
    run = handle.trigger({"n": 1})
    events = Recorder(durably)
    durably.cancel(run.id)
    [cancel] = events.events
    assert (cancel.type, cancel.run_id, cancel.job_name) == ("run:cancel", run.id, "eventful")


def test_log_write_has_step_name_level_message_and_data(durably: Durably) -> None:
    events = Recorder(durably, "log:write")

    @define_job(name="logger")
    def job(step: StepContext, payload: Any) -> None:
        step.log.warn("outside", None)
        step.run("inner", lambda: step.log.error("inside", {"k": [1]}))

    handle = durably.register({"job": job})["job"]
    run = handle.trigger({})
    assert durably.process_one()
    assert [(e.run_id, e.step_name, e.level, e.message, e.data) for e in events.events] == [
        (run.id, None, "warn", "outside", None),
        (run.id, "inner", "error", "inside", {"k": [1]}),
    ]


def test_every_event_has_type_aware_timestamp_and_strictly_increasing_sequence(
    durably: Durably,
) -> None:
    events = Recorder(durably)
    handle = durably.register({"job": eventful_job, "fail": failing_job})
    for i in range(3):
        handle["job"].trigger({"n": i})
    handle["fail"].trigger({})
    assert durably.process_until_idle() == 4
    recorded = events.events
    assert len(recorded) > 20
    sequences = [e.sequence for e in recorded]
    assert all(a < b for a, b in itertools.pairwise(sequences))
    for e in recorded:
        assert isinstance(e.type, str)
        assert isinstance(e.timestamp, datetime) and e.timestamp.tzinfo is not None


def test_sequence_numbers_stay_unique_and_per_run_increasing_across_concurrent_runs(
    make_durably: Any,
) -> None:
    d = make_durably(max_concurrent_runs=4)
    events = Recorder(d)
    handle = d.register({"job": eventful_job})["job"]
    runs = handle.batch_trigger([{"n": i} for i in range(8)])
    d.start()
    for run in runs:
        wait_for_status(d, run.id, "completed")
    sequences = [e.sequence for e in events.events]
    assert len(sequences) == len(set(sequences))
    for run in runs:
        of_run = [e.sequence for e in events.of(run_id=run.id)]
        assert len(of_run) == 9
        assert of_run == sorted(of_run)


def test_typed_listener_receives_only_its_type_and_star_receives_all(durably: Durably) -> None:
    only_starts = Recorder(durably, "run:start")
    everything = Recorder(durably, "*")
    handle = durably.register({"job": eventful_job})["job"]
    handle.trigger({"n": 1})
    assert durably.process_one()
    assert [e.type for e in only_starts.events] == ["run:start"]
    assert len(everything.events) == 9
    assert Counter(e.type for e in everything.events)["run:start"] == 1


def test_unsubscribe_stops_delivery(durably: Durably) -> None:
    received: list[str] = []
    unsubscribe = durably.on("run:trigger", lambda e: received.append(e.run_id))
    handle = durably.register({"job": eventful_job})["job"]
    first = handle.trigger({"n": 1})
    unsubscribe()
    handle.trigger({"n": 2})
    assert received == [first.id]


def test_listeners_run_synchronously_in_registration_order(durably: Durably) -> None:
    calls: list[tuple[str, int]] = []
    durably.on("*", lambda e: calls.append(("star", e.sequence)))
    durably.on("run:trigger", lambda e: calls.append(("first", e.sequence)))
    durably.on("run:trigger", lambda e: calls.append(("second", e.sequence)))
    handle = durably.register({"job": eventful_job})["job"]
    handle.trigger({"n": 1})
    # delivered before trigger() returned, each listener once, in registration order
    names = [name for name, _ in calls]
    assert names.index("first") < names.index("second")
    assert len({seq for _, seq in calls}) == 1
    assert sorted(names) == ["first", "second", "star"]


def test_star_and_typed_listeners_run_together_in_registration_order(durably: Durably) -> None:
    calls: list[str] = []
    durably.on("*", lambda e: calls.append("star-1"))
    durably.on("run:trigger", lambda e: calls.append("typed-2"))
    durably.on("*", lambda e: calls.append("star-3"))
    durably.on("run:trigger", lambda e: calls.append("typed-4"))
    handle = durably.register({"job": eventful_job})["job"]
    handle.trigger({"n": 1})
    assert calls == ["star-1", "typed-2", "star-3", "typed-4"]


def test_a_raising_listener_goes_to_on_error_and_never_affects_the_run(durably: Durably) -> None:
    errors: list[tuple[BaseException, Any]] = []
    durably.on_error(lambda exc, event: errors.append((exc, event)))
    later: list[str] = []

    def broken(event: Any) -> None:
        raise RuntimeError(f"listener broke on {event.type}")

    durably.on("*", broken)
    durably.on("*", lambda e: later.append(e.type))
    handle = durably.register({"job": eventful_job})["job"]
    run = handle.trigger({"n": 1})
    assert durably.process_one()
    done = durably.get_run(run.id)
    assert done is not None and done.status == "completed"
    assert done.output == {"result": 4}
    assert [s.status for s in durably.get_steps(run.id)] == ["completed", "completed"]
    # every event reached on_error with the exception and the event, and later listeners
    assert [event.type for _, event in errors] == later
    assert "run:complete" in later
    for exc, event in errors:
        assert isinstance(exc, RuntimeError)
        assert str(exc) == f"listener broke on {event.type}"


def test_a_raising_listener_without_on_error_handler_still_never_affects_the_run(
    durably: Durably,
) -> None:
    def broken(event: Any) -> None:
        raise RuntimeError("nobody handles me")

    durably.on("step:complete", broken)
    durably.on("run:start", broken)
    handle = durably.register({"job": eventful_job})["job"]
    run = handle.trigger({"n": 1})
    assert durably.process_one()
    done = durably.get_run(run.id)
    assert done is not None and done.status == "completed"


def test_a_coroutine_listener_is_scheduled(durably: Durably) -> None:
    received: list[str] = []
    got_all = threading.Event()

    async def listener(event: Any) -> None:
        received.append(event.type)
        if event.type == "run:complete":
            got_all.set()

    durably.on("*", listener)
    handle = durably.register({"job": eventful_job})["job"]
    handle.trigger({"n": 1})
    assert durably.process_one()
    assert got_all.wait(10)
    assert Counter(received)["step:complete"] == 2


def test_a_coroutine_listener_exception_goes_to_on_error(durably: Durably) -> None:
    errors: list[tuple[BaseException, Any]] = []
    durably.on_error(lambda exc, event: errors.append((exc, event)))

    async def listener(event: Any) -> None:
        raise ValueError(f"async broke on {event.run_id}")

    durably.on("run:trigger", listener)
    handle = durably.register({"job": eventful_job})["job"]
    run = handle.trigger({"n": 1})
    wait_until(lambda: errors, timeout=10)
    [(exc, event)] = errors
    assert isinstance(exc, ValueError) and str(exc) == f"async broke on {run.id}"
    assert event.type == "run:trigger" and event.run_id == run.id
    assert durably.process_one()
    done = durably.get_run(run.id)
    assert done is not None and done.status == "completed"


def test_on_error_handler_receives_exceptions_from_listeners_on_worker_threads(
    durably: Durably,
) -> None:
    errors: list[Any] = []
    durably.on_error(lambda exc, event: errors.append(event.type))
    durably.on("step:start", lambda e: 1 / 0)
    handle = durably.register({"job": eventful_job})["job"]
    run = handle.trigger({"n": 1})
    durably.start()
    wait_for_status(durably, run.id, "completed")
    assert errors == ["step:start", "step:start"]


def test_skipped_steps_emit_no_step_start_or_complete_on_a_resume(durably: Durably) -> None:
    gate_state: dict[str, bool] = {}

    class Crash(BaseException):
        pass

    @define_job(name="resume-events")
    def job(step: StepContext, payload: Any) -> None:
        step.run("a", lambda: 1)
        step.run("b", lambda: 2)

        def c() -> int:
            if not gate_state.get("crashed"):
                gate_state["crashed"] = True
                raise Crash
            return 3

        step.run("c", c)

    handle = durably.register({"job": job})["job"]
    run = handle.trigger({})
    with pytest.raises(Crash):
        durably.process_one()
    events = Recorder(durably)
    assert durably.process_one()
    step_events = [e for e in events.of(run_id=run.id) if e.type.startswith("step")]
    assert [(e.type, e.step_name) for e in step_events] == [
        ("step:start", "c"),
        ("step:complete", "c"),
    ]
    assert events.types(run.id) == ["run:start", "step:start", "step:complete", "run:complete"]


def test_on_rejects_an_unknown_event_type(durably: Durably) -> None:
    with pytest.raises(ValueError):
        durably.on("run:exploded", lambda e: None)


def test_events_of_a_run_executed_in_the_background_arrive_in_order(durably: Durably) -> None:
    gate = Gate()

    @define_job(name="gated")
    def job(step: StepContext, payload: Any) -> int:
        step.run("wait", gate.pass_through)
        return 1

    events = Recorder(durably)
    handle = durably.register({"job": job})["job"]
    run = handle.trigger({})
    thread, _ = in_background(durably.process_one)
    gate.wait_entered()
    assert events.types(run.id) == ["run:trigger", "run:start", "step:start"]
    gate.open()
    thread.join(10)
    assert events.types(run.id)[-2:] == ["step:complete", "run:complete"]
