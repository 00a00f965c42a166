"""The HTTP API's Server-Sent Events: /subscribe and /runs/subscribe, framing, closing, leaks."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from _server_helpers import (
    Gate,
    add_job,
    boom_job,
    listener_count,
    live_server,
    open_sse,
    trigger,
    wait_until,
)

from durably import Durably, StepContext, define_job
from durably.server import create_app

EVENT_BASE = {"type", "timestamp", "sequence"}
FULL_KEYS = {
    "run:start": EVENT_BASE | {"runId", "jobName", "payload"},
    "run:complete": EVENT_BASE | {"runId", "jobName", "output", "duration"},
    "run:fail": EVENT_BASE | {"runId", "jobName", "error", "failedStepName"},
    "run:cancel": EVENT_BASE | {"runId", "jobName"},
    "run:retry": EVENT_BASE | {"runId", "jobName"},
    "run:progress": EVENT_BASE | {"runId", "jobName", "progress"},
    "step:start": EVENT_BASE | {"runId", "jobName", "stepName", "stepIndex"},
    "step:complete": EVENT_BASE
    | {"runId", "jobName", "stepName", "stepIndex", "output", "duration"},
    "step:fail": EVENT_BASE | {"runId", "jobName", "stepName", "stepIndex", "error"},
    "log:write": EVENT_BASE | {"runId", "stepName", "level", "message", "data"},
}
RUN_SUMMARY = {"type", "runId", "jobName"}
STEP_SUMMARY = RUN_SUMMARY | {"stepName", "stepIndex"}
SUMMARY_KEYS = {
    "run:trigger": RUN_SUMMARY,
    "run:start": RUN_SUMMARY,
    "run:complete": RUN_SUMMARY,
    "run:fail": RUN_SUMMARY,
    "run:cancel": RUN_SUMMARY,
    "run:retry": RUN_SUMMARY,
    "run:progress": RUN_SUMMARY | {"progress"},
    "step:start": STEP_SUMMARY,
    "step:complete": STEP_SUMMARY,
    "step:fail": STEP_SUMMARY | {"error"},
    "log:write": {"type", "runId", "stepName", "level", "message", "data"},
}


class Flaky:
    """A job that fails its step until told to succeed (so a retry can complete)."""

    def __init__(self) -> None:
        self.succeed = False
        self.gate: Gate | None = None

        @define_job(name="flaky")
        def flaky(step: StepContext, payload: Any) -> str:
            def attempt() -> str:
                if self.gate is not None:
                    self.gate.pass_through()
                if not self.succeed:
                    raise RuntimeError("not yet")
                return "ok"

            return step.run("attempt", attempt)

        self.job = flaky


@pytest.fixture
def flaky() -> Flaky:
    return Flaky()


@pytest.fixture
def d(durably: Durably, flaky: Flaky) -> Durably:
    durably.register({"add": add_job, "boom": boom_job, "flaky": flaky.job})
    return durably


@pytest.fixture
def base(d: Durably) -> Iterator[str]:
    with live_server(create_app(d)) as url:
        yield url


@pytest.fixture
def client(base: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base, timeout=20) as c:
        yield c


def types(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


def check_full_shapes(events: list[dict[str, Any]], run_id: str) -> None:
    sequences = [e["sequence"] for e in events]
    assert sequences == sorted(sequences) and len(set(sequences)) == len(sequences)
    for event in events:
        assert set(event) == FULL_KEYS[event["type"]], event
        assert event["runId"] == run_id
        assert event["timestamp"].endswith("Z")


# -- /subscribe -------------------------------------------------------------------------


def test_subscribe_streams_every_event_of_the_run_and_closes_after_complete(
    client: httpx.Client, d: Durably
) -> None:
    run_id = trigger(client, "add", {"a": 1, "b": 2})
    other = trigger(client, "add", {"a": 5, "b": 5})
    with open_sse(client, "/subscribe", runId=run_id) as stream:
        d.start()
        events = stream.rest()
        assert stream.closed
    assert types(events) == [
        "run:start",
        "step:start",
        "step:complete",
        "run:progress",
        "log:write",
        "step:start",
        "step:complete",
        "run:progress",
        "run:complete",
    ]
    check_full_shapes(events, run_id)
    start, step_start, step_done, progress, log, *_, last_progress, complete = events
    assert start["payload"] == {"a": 1, "b": 2} and start["jobName"] == "add"
    assert (step_start["stepName"], step_start["stepIndex"]) == ("sum", 0)
    assert step_done["output"] == 3
    assert isinstance(step_done["duration"], int) and step_done["duration"] >= 0
    assert progress["progress"] == {"current": 1, "total": 2, "message": "half way"}
    assert last_progress["progress"] == {"current": 2}
    assert (log["level"], log["message"], log["data"]) == ("info", "summed", {"total": 3})
    assert complete["output"] == {"total": 3, "doubled": 6}
    assert isinstance(complete["duration"], int) and complete["duration"] >= 0
    wait_until(lambda: (r := d.get_run(other)) is not None and r.status == "completed")


def test_subscribe_to_a_completed_run_sends_its_final_state_and_closes(
    client: httpx.Client, d: Durably
) -> None:
    run_id = trigger(client, "add", {"a": 2, "b": 2})
    d.process_until_idle()
    with open_sse(client, "/subscribe", runId=run_id) as stream:
        events = stream.rest()
    assert types(events) == ["run:complete"]
    check_full_shapes(events, run_id)
    assert events[0]["output"] == {"total": 4, "doubled": 8}


def test_subscribe_stays_open_after_a_failure_and_follows_the_retry(
    client: httpx.Client, d: Durably, flaky: Flaky
) -> None:
    run_id = trigger(client, "flaky")
    with open_sse(client, "/subscribe", runId=run_id) as stream:
        d.start()
        failed = stream.until("run:fail")
        assert types(failed) == ["run:start", "step:start", "step:fail", "run:fail"]
        check_full_shapes(failed, run_id)
        assert failed[-1]["failedStepName"] == "attempt"
        assert "RuntimeError: not yet" in failed[-1]["error"]
        flaky.succeed = True
        assert client.post("/retry", params={"runId": run_id}).status_code == 200
        rest = stream.rest()
    assert types(rest) == ["run:retry", "run:start", "step:start", "step:complete", "run:complete"]
    check_full_shapes(rest, run_id)
    assert rest[-1]["output"] == "ok"


def test_subscribe_to_a_failed_run_sends_its_final_state_and_closes_once_deleted(
    client: httpx.Client, d: Durably
) -> None:
    run_id = trigger(client, "boom")
    d.process_until_idle()
    with open_sse(client, "/subscribe", runId=run_id) as stream:
        first = stream.next()
        assert first is not None and first["type"] == "run:fail"
        check_full_shapes([first], run_id)
        assert first["failedStepName"] == "explode"
        assert "ZeroDivisionError" in first["error"]
        assert client.delete("/run", params={"runId": run_id}).status_code == 200
        assert stream.rest() == []


def test_subscribe_stays_open_after_a_cancel(client: httpx.Client, d: Durably) -> None:
    run_id = trigger(client, "add", {"a": 1, "b": 1})
    with open_sse(client, "/subscribe", runId=run_id) as stream:
        assert client.post("/cancel", params={"runId": run_id}).status_code == 200
        assert types(stream.until("run:cancel")) == ["run:cancel"]
        assert client.post("/retry", params={"runId": run_id}).status_code == 200
        d.start()
        rest = stream.rest()
    assert types(rest)[0] == "run:retry"
    assert types(rest)[-1] == "run:complete"
    check_full_shapes(rest, run_id)


def test_subscribe_follows_a_cancel_of_a_running_run(
    client: httpx.Client, d: Durably, flaky: Flaky
) -> None:
    flaky.gate = gate = Gate()
    flaky.succeed = True
    run_id = trigger(client, "flaky")
    with open_sse(client, "/subscribe", runId=run_id) as stream:
        d.start()
        assert gate.entered.wait(20)
        assert client.post("/cancel", params={"runId": run_id}).status_code == 200
        events = stream.until("run:cancel")
        assert types(events)[:2] == ["run:start", "step:start"]
        gate.opened.set()
        wait_until(lambda: d.get_runs(status="running") == [])
        flaky.gate = None
        assert client.post("/retry", params={"runId": run_id}).status_code == 200
        rest = stream.rest()
    assert types(rest)[0] == "run:retry" and types(rest)[-1] == "run:complete"
    assert types(rest).count("run:complete") == 1


def test_subscribe_notices_an_end_reached_by_another_process(
    client: httpx.Client, d: Durably, make_durably: Callable[..., Durably], flaky: Flaky
) -> None:
    elsewhere = make_durably()  # same database, its own events: like another process
    elsewhere.register({"add": add_job, "boom": boom_job, "flaky": flaky.job})

    failing = trigger(client, "flaky")
    with open_sse(client, "/subscribe", runId=failing) as stream:
        assert elsewhere.process_one()
        (fail,) = stream.until("run:fail")
        check_full_shapes([fail], failing)
        assert fail["failedStepName"] == "attempt"
        # retried and completed elsewhere: the stream reports the new end and closes
        flaky.succeed = True
        elsewhere.retry(failing)
        assert elsewhere.process_one()
        (complete,) = stream.rest()
    assert complete["type"] == "run:complete" and complete["output"] == "ok"


def test_subscribe_to_an_unknown_run_is_404_and_keeps_no_listener(
    client: httpx.Client, d: Durably
) -> None:
    before = listener_count(d)
    response = client.get("/subscribe", params={"runId": "ghost"})
    assert response.status_code == 404
    assert response.json()["error"] == "Run not found"
    assert listener_count(d) == before


def test_a_stream_that_ends_removes_its_listener(client: httpx.Client, d: Durably) -> None:
    run_id = trigger(client, "add", {"a": 1, "b": 1})
    d.process_until_idle()
    before = listener_count(d)
    with open_sse(client, "/subscribe", runId=run_id) as stream:
        stream.rest()
    wait_until(lambda: listener_count(d) == before)


# -- disconnects ------------------------------------------------------------------------


def test_client_disconnect_mid_stream_removes_the_listeners(
    client: httpx.Client, d: Durably, flaky: Flaky
) -> None:
    flaky.gate = gate = Gate()
    run_id = trigger(client, "flaky")
    before = listener_count(d)
    with (
        open_sse(client, "/subscribe", runId=run_id) as stream,
        open_sse(client, "/runs/subscribe") as runs_stream,
    ):
        assert listener_count(d) == before + 2
        d.start()
        assert types(stream.until("step:start")) == ["run:start", "step:start"]
        assert runs_stream.until("step:start")[-1]["runId"] == run_id
        assert gate.entered.wait(20)
    # both connections are closed while the run waits at the gate: nothing is emitted
    wait_until(lambda: listener_count(d) == before)
    gate.opened.set()
    wait_until(lambda: (r := d.get_run(run_id)) is not None and r.is_terminal)
    assert listener_count(d) == before
    assert client.get("/run", params={"runId": run_id}).status_code == 200


def test_client_disconnect_from_a_quiet_stream_removes_the_listener(
    client: httpx.Client, d: Durably
) -> None:
    run_id = trigger(client, "add", {"a": 1, "b": 1})
    before = listener_count(d)
    for path, params in [("/subscribe", {"runId": run_id}), ("/runs/subscribe", {})]:
        with open_sse(client, path, **params):
            assert listener_count(d) == before + 1
        wait_until(lambda: listener_count(d) == before)


# -- /runs/subscribe --------------------------------------------------------------------


def test_runs_subscribe_sends_summaries_of_every_run(client: httpx.Client, d: Durably) -> None:
    with open_sse(client, "/runs/subscribe") as stream:
        ok = trigger(client, "add", {"a": 1, "b": 2})
        bad = trigger(client, "boom")
        cancelled = trigger(client, "add", {"a": 0, "b": 0})
        assert client.post("/cancel", params={"runId": cancelled}).status_code == 200
        d.start()
        events = stream.until("run:fail")
        assert client.post("/retry", params={"runId": bad}).status_code == 200
        events += stream.until("run:retry")
    for event in events:
        assert set(event) == SUMMARY_KEYS[event["type"]], event
    of_ok = [e for e in events if e["runId"] == ok]
    assert types(of_ok) == [
        "run:trigger",
        "run:start",
        "step:start",
        "step:complete",
        "run:progress",
        "log:write",
        "step:start",
        "step:complete",
        "run:progress",
        "run:complete",
    ]
    assert all(e["jobName"] == "add" for e in of_ok if e["type"] != "log:write")
    assert of_ok[2]["stepName"] == "sum" and of_ok[2]["stepIndex"] == 0
    assert of_ok[4]["progress"] == {"current": 1, "total": 2, "message": "half way"}
    assert of_ok[5] == {
        "type": "log:write",
        "runId": ok,
        "stepName": None,
        "level": "info",
        "message": "summed",
        "data": {"total": 3},
    }
    of_bad = [e for e in events if e["runId"] == bad]
    assert types(of_bad) == [
        "run:trigger",
        "run:start",
        "step:start",
        "step:fail",
        "run:fail",
        "run:retry",
    ]
    assert "ZeroDivisionError" in of_bad[3]["error"]
    assert types([e for e in events if e["runId"] == cancelled]) == ["run:trigger", "run:cancel"]


def test_runs_subscribe_with_a_job_name_sends_only_that_job_and_no_logs(
    client: httpx.Client, d: Durably
) -> None:
    with open_sse(client, "/runs/subscribe", jobName="boom") as stream:
        trigger(client, "add", {"a": 1, "b": 2})  # runs first: one worker claims oldest first
        bad = trigger(client, "boom")
        d.start()
        events = stream.until("run:fail")
        assert {e["runId"] for e in events} == {bad}
        assert types(events) == ["run:trigger", "run:start", "step:start", "step:fail", "run:fail"]
        # it never closes by itself: a later run shows up on the same stream
        again = trigger(client, "boom")
        assert stream.until("run:fail")[-1]["runId"] == again


def test_sse_frames_are_exactly_data_lines(base: str, d: Durably) -> None:
    with httpx.Client(base_url=base, timeout=20) as client:
        run_id = trigger(client, "add", {"a": 1, "b": 1})
        d.process_until_idle()
        with client.stream("GET", "/subscribe", params={"runId": run_id}) as response:
            body = response.read()
    assert body.startswith(b'data: {"type":"run:complete",')
    assert body.endswith(b"}\n\n")
    assert body.count(b"\n") == 2


def test_an_event_that_cannot_be_encoded_is_dropped_and_the_stream_goes_on(
    client: httpx.Client, d: Durably
) -> None:
    @define_job(name="cyclic-log")
    def cyclic_log(step: StepContext, payload: Any) -> str:
        cycle: list[Any] = []
        cycle.append(cycle)
        step.log.info("cyclic", cycle)
        step.log.info("fine", {"ok": True})
        return "done"

    d.register({"cyclic-log": cyclic_log})
    run_id = trigger(client, "cyclic-log")
    with open_sse(client, "/subscribe", runId=run_id) as stream:
        d.start()
        events = stream.rest()
    logs = [e for e in events if e["type"] == "log:write"]
    assert [e["message"] for e in logs] == ["fine"]
    assert events[-1]["type"] == "run:complete" and events[-1]["output"] == "done"


def test_an_event_whose_text_cannot_be_utf8_is_dropped_and_every_stream_goes_on(
    client: httpx.Client, d: Durably
) -> None:
    @define_job(name="surrogate-log")
    def surrogate_log(step: StepContext, payload: Any) -> str:
        # log messages are cleaned where they enter (U+FFFD); log data is not
        step.log.info("bad data", {"text": "lone \ud800 surrogate"})
        step.log.info("fine")
        return "done"

    d.register({"surrogate-log": surrogate_log})
    run_id = trigger(client, "surrogate-log")
    with (
        open_sse(client, "/subscribe", runId=run_id) as stream,
        open_sse(client, "/runs/subscribe") as runs_a,
        open_sse(client, "/runs/subscribe") as runs_b,
    ):
        d.start()
        events = stream.rest()
        summaries = [runs.until("run:complete") for runs in (runs_a, runs_b)]
        # still open: a later run shows up on both
        again = trigger(client, "add", {"a": 1, "b": 1})
        for runs in (runs_a, runs_b):
            assert runs.until("run:complete")[-1]["runId"] == again
    for received in (events, *summaries):
        assert [e["message"] for e in received if e["type"] == "log:write"] == ["fine"]
        assert received[-1]["type"] == "run:complete"
