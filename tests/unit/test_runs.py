"""Reading runs and steps; retry, cancel, delete_run and their state errors."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from _api_helpers import Gate, Recorder, count_rows, in_background, wait_for_status
from pydantic import BaseModel

from durably import (
    Durably,
    DurablyError,
    InvalidRunStateError,
    JobHandle,
    Run,
    RunNotFoundError,
    StepContext,
    define_job,
)
from durably.plugins import with_log_persistence

UNKNOWN_ID = "01ARZ3NDEKTSV4RRFFQ69G5FAV"


class Out(BaseModel):
    value: int


@define_job(name="alpha", output=Out)
def alpha_job(step: StepContext, payload: Any) -> Out:
    value = step.run("compute", lambda: payload["n"] * 2)
    return Out(value=value)


@define_job(name="beta")
def beta_job(step: StepContext, payload: Any) -> Any:
    if payload.get("fail"):
        raise RuntimeError("asked to fail")
    return payload


class StateMaker:
    """Produces runs in each status; a 'running' run is held at a gate in a thread."""

    def __init__(self, durably: Durably) -> None:
        self.durably = durably
        self.gate = Gate()
        self._threads: list[Any] = []

        @define_job(name="stateful")
        def job(step: StepContext, payload: Any) -> str:
            if payload.get("block"):
                step.run("block", self.gate.pass_through)
            if payload.get("fail"):
                raise RuntimeError("asked to fail")
            return "ok"

        self.handle = durably.register({"stateful": job})["stateful"]

    def make(self, status: str) -> Run:
        d = self.durably
        if status == "running":
            run = self.handle.trigger({"block": True})
            thread, _ = in_background(d.process_one)
            self._threads.append(thread)
            self.gate.wait_entered()
        elif status == "pending":
            run = self.handle.trigger({})
        elif status == "completed":
            run = self.handle.trigger({})
            assert d.process_one()
        elif status == "failed":
            run = self.handle.trigger({"fail": True})
            assert d.process_one()
        elif status == "cancelled":
            run = self.handle.trigger({})
            d.cancel(run.id)
        else:
            raise AssertionError(status)
        stored = d.get_run(run.id)
        assert stored is not None and stored.status == status
        return stored

    def finish(self) -> None:
        self.gate.open()
        for thread in self._threads:
            thread.join(10)


@pytest.fixture
def states(durably: Durably) -> Iterator[StateMaker]:
    maker = StateMaker(durably)
    yield maker
    maker.finish()


# -- reading runs ----------------------------------------------------------------------


def test_get_run_returns_none_for_an_unknown_id(durably: Durably) -> None:
    assert durably.get_run(UNKNOWN_ID) is None


def test_get_run_reflects_the_lifecycle_with_aware_utc_timestamps(durably: Durably) -> None:
    handle = durably.register({"alpha": alpha_job})["alpha"]
    run = handle.trigger({"n": 2})
    assert durably.process_one()
    done = durably.get_run(run.id)
    assert done is not None
    assert done.status == "completed" and done.output == {"value": 4} and done.error is None
    assert done.payload == {"n": 2}
    assert done.current_step_index == 1
    for stamp in (done.created_at, done.updated_at, done.started_at, done.completed_at):
        assert stamp is not None and stamp.tzinfo is not None
        assert stamp.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    assert done.created_at <= done.started_at <= done.completed_at  # type: ignore[operator]
    assert done.updated_at >= done.created_at


def test_run_records_are_immutable(durably: Durably) -> None:
    handle = durably.register({"beta": beta_job})["beta"]
    run = handle.trigger({})
    with pytest.raises((dataclasses.FrozenInstanceError, AttributeError, TypeError, ValueError)):
        run.status = "completed"  # type: ignore[misc]


def test_get_runs_is_newest_first(durably: Durably) -> None:
    handle = durably.register({"beta": beta_job})["beta"]
    ids = [handle.trigger({"i": i}).id for i in range(4)]
    assert [r.id for r in durably.get_runs()] == list(reversed(ids))


def test_get_runs_breaks_created_at_ties_by_id_descending(durably: Durably) -> None:
    handle = durably.register({"beta": beta_job})["beta"]
    runs = handle.batch_trigger([{"i": i} for i in range(5)])
    listed = durably.get_runs()
    assert [r.id for r in listed] == sorted((r.id for r in runs), reverse=True)
    assert listed == sorted(listed, key=lambda r: (r.created_at, r.id), reverse=True)


def test_get_runs_filters_by_job_name_as_str_and_list(durably: Durably) -> None:
    handles = durably.register({"alpha": alpha_job, "beta": beta_job})
    a = handles["alpha"].trigger({"n": 1})
    b = handles["beta"].trigger({})
    assert [r.id for r in durably.get_runs(job_name="alpha")] == [a.id]
    assert [r.id for r in durably.get_runs(job_name=["beta"])] == [b.id]
    assert [r.id for r in durably.get_runs(job_name=["alpha", "beta"])] == [b.id, a.id]
    assert durably.get_runs(job_name="gamma") == []


def test_get_runs_filters_by_status_as_str_and_list(durably: Durably) -> None:
    handle = durably.register({"beta": beta_job})["beta"]
    failed = handle.trigger({"fail": True})
    assert durably.process_one()
    completed = handle.trigger({})
    assert durably.process_one()
    pending = handle.trigger({})
    assert [r.id for r in durably.get_runs(status="pending")] == [pending.id]
    assert [r.id for r in durably.get_runs(status="failed")] == [failed.id]
    assert [r.id for r in durably.get_runs(status=["completed", "failed"])] == [
        completed.id,
        failed.id,
    ]
    assert durably.get_runs(status="running") == []
    assert [r.id for r in durably.get_runs(job_name="beta", status=["pending"])] == [pending.id]


def test_get_runs_paginates_with_limit_and_offset(durably: Durably) -> None:
    handle = durably.register({"beta": beta_job})["beta"]
    ids = [handle.trigger({"i": i}).id for i in range(5)]
    newest_first = list(reversed(ids))
    assert [r.id for r in durably.get_runs(limit=2)] == newest_first[:2]
    assert [r.id for r in durably.get_runs(limit=2, offset=2)] == newest_first[2:4]
    assert [r.id for r in durably.get_runs(limit=2, offset=4)] == newest_first[4:]
    assert [r.id for r in durably.get_runs(offset=3)] == newest_first[3:]
    assert durably.get_runs(limit=0) == []
    assert durably.get_runs(offset=10) == []


def test_job_handle_get_runs_lists_only_its_own_runs(durably: Durably) -> None:
    handles = durably.register({"alpha": alpha_job, "beta": beta_job})
    a1 = handles["alpha"].trigger({"n": 1})
    handles["beta"].trigger({})
    a2 = handles["alpha"].trigger({"n": 2})
    assert [r.id for r in handles["alpha"].get_runs()] == [a2.id, a1.id]
    assert [r.id for r in handles["alpha"].get_runs(limit=1)] == [a2.id]
    assert [r.id for r in handles["alpha"].get_runs(limit=1, offset=1)] == [a1.id]
    assert durably.process_until_idle() == 3
    assert handles["alpha"].get_runs(status="pending") == []
    completed = handles["alpha"].get_runs(status=["completed"])
    assert [r.id for r in completed] == [a2.id, a1.id]
    assert [r.output for r in completed] == [Out(value=4), Out(value=2)]


def test_job_handle_get_run_parses_output_and_ignores_other_jobs_runs(durably: Durably) -> None:
    handles = durably.register({"alpha": alpha_job, "beta": beta_job})
    a = handles["alpha"].trigger({"n": 21})
    b = handles["beta"].trigger({})
    pending = handles["alpha"].get_run(a.id)
    assert pending is not None and pending.output is None
    assert durably.process_until_idle() == 2
    typed = handles["alpha"].get_run(a.id)
    assert typed is not None and typed.output == Out(value=42)
    assert isinstance(typed.output, Out)
    plain = durably.get_run(a.id)
    assert plain is not None and plain.output == {"value": 42}
    assert handles["alpha"].get_run(b.id) is None
    assert handles["alpha"].get_run(UNKNOWN_ID) is None


def test_get_steps_returns_the_persisted_steps_in_index_order(durably: Durably) -> None:
    @define_job(name="steps-order")
    def job(step: StepContext, payload: Any) -> None:
        for name in ["zulu", "alpha", "mike"]:
            step.run(name, lambda name=name: name.upper())

    handle = durably.register({"job": job})["job"]
    run = handle.trigger({})
    assert durably.process_one()
    steps = durably.get_steps(run.id)
    assert [(s.index, s.name, s.output) for s in steps] == [
        (0, "zulu", "ZULU"),
        (1, "alpha", "ALPHA"),
        (2, "mike", "MIKE"),
    ]
    assert durably.get_steps(UNKNOWN_ID) == []


# -- retry -----------------------------------------------------------------------------


def test_retry_of_a_failed_run_keeps_completed_steps_and_emits_run_retry(
    durably: Durably,
) -> None:
    calls: Counter[str] = Counter()
    state = {"fail": True}

    @define_job(name="retryable")
    def job(step: StepContext, payload: Any) -> str:
        step.run("kept", lambda: calls.update(["kept"]) or "kept")

        def flaky() -> str:
            calls["flaky"] += 1
            if state["fail"]:
                raise RuntimeError("not yet")
            return "fine"

        return step.run("flaky", flaky)

    handle = durably.register({"job": job})["job"]
    run = handle.trigger({})
    assert durably.process_one()
    kept_before = durably.get_steps(run.id)[0]
    events = Recorder(durably)

    durably.retry(run.id)
    pending = durably.get_run(run.id)
    assert pending is not None and pending.status == "pending"
    assert pending.error is None and pending.completed_at is None
    assert [(e.type, e.run_id, e.job_name) for e in events.events] == [
        ("run:retry", run.id, "retryable")
    ]
    assert [s.name for s in durably.get_steps(run.id) if s.status == "completed"] == ["kept"]

    state["fail"] = False
    assert durably.process_one()
    done = durably.get_run(run.id)
    assert done is not None and done.status == "completed" and done.output == "fine"
    assert calls == Counter(kept=1, flaky=2)
    steps = durably.get_steps(run.id)
    assert [(s.name, s.status) for s in steps] == [("kept", "completed"), ("flaky", "completed")]
    assert steps[0].id == kept_before.id


def test_retry_of_a_cancelled_run_makes_it_pending_and_it_runs_again(durably: Durably) -> None:
    handle = durably.register({"beta": beta_job})["beta"]
    run = handle.trigger({"x": 1})
    durably.cancel(run.id)
    durably.retry(run.id)
    pending = durably.get_run(run.id)
    assert pending is not None and pending.status == "pending"
    assert durably.process_one()
    done = durably.get_run(run.id)
    assert done is not None and done.status == "completed" and done.output == {"x": 1}


# -- cancel ----------------------------------------------------------------------------


def test_cancel_of_a_pending_run_cancels_it_and_it_never_runs(durably: Durably) -> None:
    calls: list[str] = []

    @define_job(name="never")
    def job(step: StepContext, payload: Any) -> None:
        calls.append("ran")

    handle = durably.register({"job": job})["job"]
    run = handle.trigger({})
    events = Recorder(durably)
    durably.cancel(run.id)
    cancelled = durably.get_run(run.id)
    assert cancelled is not None and cancelled.status == "cancelled"
    assert [(e.type, e.run_id, e.job_name) for e in events.events] == [
        ("run:cancel", run.id, "never")
    ]
    assert durably.process_one() is False
    assert calls == []


def test_cancel_of_a_running_run_stops_it_at_the_next_step_boundary(durably: Durably) -> None:
    gate = Gate()
    calls: list[str] = []

    @define_job(name="long")
    def job(step: StepContext, payload: Any) -> str:
        def first() -> int:
            calls.append("first")
            gate.pass_through()
            return 1

        step.run("first", first)
        step.run("second", lambda: calls.append("second"))
        step.progress(1)
        return "should not complete"

    handle = durably.register({"job": job})["job"]
    run = handle.trigger({})
    events = Recorder(durably)
    thread, outcome = in_background(durably.process_one)
    gate.wait_entered()

    durably.cancel(run.id)
    cancelled = durably.get_run(run.id)
    assert cancelled is not None and cancelled.status == "cancelled"
    gate.open()
    thread.join(10)
    assert not thread.is_alive() and "error" not in outcome

    assert calls == ["first"]
    final = durably.get_run(run.id)
    assert final is not None and final.status == "cancelled" and final.output is None
    assert [e.step_name for e in events.of("step:start")] == ["first"]
    assert events.of("run:complete") == [] and events.of("run:fail") == []
    assert len(events.of("run:cancel")) == 1
    assert all(s.name == "first" for s in durably.get_steps(run.id))


def test_cancel_from_another_instance_stops_the_run_at_its_next_step_boundary(
    durably: Durably, make_durably: Callable[..., Durably]
) -> None:
    gate = Gate()
    calls: list[str] = []

    @define_job(name="long-elsewhere")
    def job(step: StepContext, payload: Any) -> None:
        step.run("first", lambda: (calls.append("first"), gate.pass_through())[0])
        step.run("second", lambda: calls.append("second"))

    handle = durably.register({"job": job})["job"]
    other = make_durably()
    other.register({"job": job})
    run = handle.trigger({})
    events = Recorder(durably)
    thread, outcome = in_background(durably.process_one)
    gate.wait_entered()
    other.cancel(run.id)
    gate.open()
    thread.join(10)
    assert "error" not in outcome
    assert calls == ["first"]
    final = durably.get_run(run.id)
    assert final is not None and final.status == "cancelled"
    assert [e.step_name for e in events.of("step:start")] == ["first"]
    assert events.of("run:complete") == [] and events.of("run:fail") == []


def test_cancelled_run_stays_cancelled_even_if_the_job_then_returns_normally(
    durably: Durably,
) -> None:
    gate = Gate()

    @define_job(name="returns-anyway")
    def job(step: StepContext, payload: Any) -> str:
        step.run("before", lambda: 1)
        gate.pass_through()  # in the job body, not at a step boundary
        return "finished anyway"

    handle = durably.register({"job": job})["job"]
    run = handle.trigger({})
    events = Recorder(durably)
    thread, outcome = in_background(durably.process_one)
    gate.wait_entered()
    durably.cancel(run.id)
    gate.open()
    thread.join(10)
    assert "error" not in outcome
    final = durably.get_run(run.id)
    assert final is not None and final.status == "cancelled" and final.output is None
    assert events.of("run:complete") == []


def test_cancelled_run_stays_cancelled_when_its_in_flight_step_finishes(durably: Durably) -> None:
    gate = Gate()

    @define_job(name="step-in-flight")
    def job(step: StepContext, payload: Any) -> str:
        step.run("slow", lambda: (gate.pass_through(), "slow result")[1])
        return "done"

    handle = durably.register({"job": job})["job"]
    run = handle.trigger({})
    thread, _ = in_background(durably.process_one)
    gate.wait_entered()
    durably.cancel(run.id)
    gate.open()
    thread.join(10)
    final = durably.get_run(run.id)
    assert final is not None and final.status == "cancelled" and final.output is None


# -- delete_run ------------------------------------------------------------------------


@pytest.mark.parametrize("status", ["completed", "failed", "cancelled"])
def test_delete_run_deletes_a_terminal_run(states: StateMaker, status: str) -> None:
    run = states.make(status)
    states.durably.delete_run(run.id)
    assert states.durably.get_run(run.id) is None
    assert states.durably.get_runs() == []


def test_delete_run_deletes_its_payload_steps_and_logs(durably: Durably, db_url: str) -> None:
    durably.use(with_log_persistence())

    @define_job(name="with-logs")
    def job(step: StepContext, payload: Any) -> None:
        step.run("one", lambda: step.log.info("in one"))
        step.log.info("outside")

    handle = durably.register({"job": job})["job"]
    run = handle.trigger({})
    keep = handle.trigger({})
    assert durably.process_until_idle() == 2
    assert len(durably.get_steps(run.id)) == 1 and len(durably.get_logs(run.id)) == 2
    durably.delete_run(run.id)
    assert durably.get_run(run.id) is None
    assert durably.get_steps(run.id) == []
    assert durably.get_logs(run.id) == []
    assert count_rows(db_url, "durably_steps") == 1
    assert count_rows(db_url, "durably_logs") == 2
    assert count_rows(db_url, "durably_payloads") == 1
    assert len(durably.get_logs(keep.id)) == 2


def test_delete_run_frees_the_idempotency_key(durably: Durably) -> None:
    handle: JobHandle[Any, Any] = durably.register({"beta": beta_job})["beta"]
    first = handle.trigger({"v": 1}, idempotency_key="once")
    assert durably.process_one()
    durably.delete_run(first.id)
    events = Recorder(durably, "run:trigger")
    second = handle.trigger({"v": 2}, idempotency_key="once")
    assert second.id != first.id
    assert second.payload == {"v": 2} and second.status == "pending"
    assert [e.run_id for e in events.events] == [second.id]


# -- state errors ----------------------------------------------------------------------

WRONG_STATES = [
    ("cancel", "completed"),
    ("cancel", "failed"),
    ("cancel", "cancelled"),
    ("retry", "pending"),
    ("retry", "running"),
    ("retry", "completed"),
    ("delete_run", "pending"),
    ("delete_run", "running"),
]


@pytest.mark.parametrize(("operation", "status"), WRONG_STATES)
def test_operation_on_a_run_in_the_wrong_state_raises_invalid_run_state_error(
    states: StateMaker, operation: str, status: str
) -> None:
    d = states.durably
    run = states.make(status)
    events = Recorder(d)
    with pytest.raises(InvalidRunStateError) as info:
        getattr(d, operation)(run.id)
    assert isinstance(info.value, DurablyError)
    assert run.id in str(info.value)
    unchanged = d.get_run(run.id)
    assert unchanged is not None and unchanged.status == status
    assert [e.type for e in events.events if e.type in ("run:cancel", "run:retry")] == []


@pytest.mark.parametrize("operation", ["cancel", "retry", "delete_run"])
def test_operation_on_an_unknown_run_raises_run_not_found_error(
    durably: Durably, operation: str
) -> None:
    with pytest.raises(RunNotFoundError) as info:
        getattr(durably, operation)(UNKNOWN_ID)
    assert isinstance(info.value, LookupError)
    assert isinstance(info.value, DurablyError)
    assert UNKNOWN_ID in str(info.value)


def test_a_running_run_can_be_cancelled_but_not_deleted_or_retried_until_it_ends(
    states: StateMaker,
) -> None:
    d = states.durably
    run = states.make("running")
    with pytest.raises(InvalidRunStateError):
        d.delete_run(run.id)
    d.cancel(run.id)
    states.finish()
    d.delete_run(run.id)
    assert d.get_run(run.id) is None


def test_cancelled_run_is_not_claimed_by_a_running_worker(durably: Durably) -> None:
    handle = durably.register({"beta": beta_job})["beta"]
    cancelled = handle.trigger({"which": "cancelled"})
    durably.cancel(cancelled.id)
    later = handle.trigger({"which": "later"})
    durably.start()
    wait_for_status(durably, later.id, "completed")
    final = durably.get_run(cancelled.id)
    assert final is not None and final.status == "cancelled"
