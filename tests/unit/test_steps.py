"""StepContext.run: persistence, replay without calling fn, JSON round trips, step_index."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from _api_helpers import Recorder, SimulatedCrash
from pydantic import BaseModel

from durably import (
    DuplicateStepError,
    Durably,
    DurablyError,
    StepContext,
    define_job,
)


class Point(BaseModel):
    x: int
    y: int


class Opaque:
    """Not JSON-serialisable."""


def _crash_first_time(state: dict[str, bool]) -> None:
    """Simulate a crash at this point in the first execution only."""
    if not state.get("crashed"):
        state["crashed"] = True
        raise SimulatedCrash


def _run_crash_then_resume(durably: Durably, run_id: str) -> None:
    """First execution dies at a step (released to pending); the second resumes it."""
    with pytest.raises(SimulatedCrash):
        durably.process_one()
    run = durably.get_run(run_id)
    assert run is not None and run.status == "pending"
    assert durably.process_one()


def test_completed_steps_are_not_called_again_after_a_failure_and_retry(durably: Durably) -> None:
    calls: Counter[str] = Counter()
    state = {"fail": True}

    @define_job(name="retry-replay")
    def job(step: StepContext, payload: Any) -> int:
        def a() -> int:
            calls["a"] += 1
            return 10

        def b() -> int:
            calls["b"] += 1
            if state["fail"]:
                raise RuntimeError("boom")
            return 1

        return step.run("a", a) + step.run("b", b)

    handle = durably.register({"job": job})["job"]
    run = handle.trigger({})
    assert durably.process_one()
    failed = durably.get_run(run.id)
    assert failed is not None and failed.status == "failed"
    assert calls == Counter(a=1, b=1)

    state["fail"] = False
    durably.retry(run.id)
    assert durably.process_one()
    done = durably.get_run(run.id)
    assert done is not None and done.status == "completed" and done.output == 11
    assert calls == Counter(a=1, b=2)


def test_completed_steps_are_not_called_again_on_a_resume(durably: Durably) -> None:
    calls: Counter[str] = Counter()
    state: dict[str, bool] = {}

    @define_job(name="resume-replay")
    def job(step: StepContext, payload: Any) -> list[int]:
        def a() -> int:
            calls["a"] += 1
            return 1

        def b() -> int:
            calls["b"] += 1
            _crash_first_time(state)
            return 2

        def c() -> int:
            calls["c"] += 1
            return 3

        return [step.run("a", a), step.run("b", b), step.run("c", c)]

    handle = durably.register({"job": job})["job"]
    run = handle.trigger({})
    _run_crash_then_resume(durably, run.id)
    done = durably.get_run(run.id)
    assert done is not None and done.status == "completed" and done.output == [1, 2, 3]
    assert calls == Counter(a=1, b=2, c=1)
    assert [(s.name, s.index, s.status) for s in durably.get_steps(run.id)] == [
        ("a", 0, "completed"),
        ("b", 1, "completed"),
        ("c", 2, "completed"),
    ]


def test_step_result_passes_through_json_on_first_run_and_on_replay(durably: Durably) -> None:
    seen: list[Any] = []
    state: dict[str, bool] = {}

    @define_job(name="json-roundtrip")
    def job(step: StepContext, payload: Any) -> None:
        seen.append(
            (
                step.run("tuple", lambda: (1, 2)),
                step.run("int-keys", lambda: {1: "a"}),
                step.run("model-without-annotation", lambda: Point(x=1, y=2)),
            )
        )
        step.run("crash", lambda: _crash_first_time(state))

    handle = durably.register({"job": job})["job"]
    run = handle.trigger({})
    _run_crash_then_resume(durably, run.id)
    expected = ([1, 2], {"1": "a"}, {"x": 1, "y": 2})
    assert seen == [expected, expected]
    for values in seen:
        assert type(values[0]) is list
        assert type(values[2]) is dict
    assert durably.get_steps(run.id)[0].output == [1, 2]


def test_return_annotation_restores_a_model_on_first_run_and_replay(durably: Durably) -> None:
    seen: list[Any] = []
    state: dict[str, bool] = {}

    @define_job(name="annotated-step")
    def job(step: StepContext, payload: Any) -> None:
        def make_point() -> Point:
            return Point(x=3, y=4)

        seen.append(step.run("point", make_point))
        step.run("crash", lambda: _crash_first_time(state))

    handle = durably.register({"job": job})["job"]
    run = handle.trigger({})
    _run_crash_then_resume(durably, run.id)
    assert seen == [Point(x=3, y=4), Point(x=3, y=4)]
    assert all(isinstance(v, Point) for v in seen)
    assert durably.get_steps(run.id)[0].output == {"x": 3, "y": 4}


def test_returns_argument_validates_the_result_into_that_type_on_replay_too(
    durably: Durably,
) -> None:
    seen: list[Any] = []
    state: dict[str, bool] = {}

    @define_job(name="returns-arg")
    def job(step: StepContext, payload: Any) -> None:
        seen.append(step.run("point", lambda: {"x": "5", "y": 6}, returns=Point))
        seen.append(step.run("tuple", lambda: [1, "2"], returns=tuple[int, int]))
        step.run("crash", lambda: _crash_first_time(state))

    handle = durably.register({"job": job})["job"]
    run = handle.trigger({})
    _run_crash_then_resume(durably, run.id)
    assert seen == [Point(x=5, y=6), (1, 2), Point(x=5, y=6), (1, 2)]
    assert isinstance(seen[2], Point)


def test_unserialisable_step_result_fails_the_step_naming_the_step_and_type(
    durably: Durably,
) -> None:
    events = Recorder(durably)
    after: list[str] = []

    @define_job(name="opaque")
    def job(step: StepContext, payload: Any) -> None:
        step.run("make-opaque", lambda: Opaque())
        after.append("ran on")

    handle = durably.register({"job": job})["job"]
    run = handle.trigger({})
    assert durably.process_one()
    failed = durably.get_run(run.id)
    assert failed is not None and failed.status == "failed"
    assert failed.error is not None
    assert "make-opaque" in failed.error and "Opaque" in failed.error
    [record] = durably.get_steps(run.id)
    assert record.name == "make-opaque" and record.status == "failed"
    assert record.error is not None and "Opaque" in record.error
    [step_fail] = events.of("step:fail")
    assert step_fail.step_name == "make-opaque" and "Opaque" in step_fail.error
    [run_fail] = events.of("run:fail")
    assert run_fail.failed_step_name == "make-opaque"
    assert after == []


def test_unserialisable_step_result_raises_a_durably_error_inside_the_job(
    durably: Durably,
) -> None:
    caught: list[BaseException] = []

    @define_job(name="opaque-caught")
    def job(step: StepContext, payload: Any) -> None:
        try:
            step.run("opaque-step", lambda: Opaque())
        except Exception as exc:
            caught.append(exc)
            raise

    handle = durably.register({"job": job})["job"]
    handle.trigger({})
    assert durably.process_one()
    [exc] = caught
    assert isinstance(exc, DurablyError)
    assert "opaque-step" in str(exc) and "Opaque" in str(exc)


def test_a_step_name_used_twice_raises_duplicate_step_error_and_fails_the_run(
    durably: Durably,
) -> None:
    caught: list[BaseException] = []
    calls: Counter[str] = Counter()

    @define_job(name="dupe")
    def job(step: StepContext, payload: Any) -> None:
        step.run("same-name", lambda: calls.update(["first"]))
        try:
            step.run("same-name", lambda: calls.update(["second"]))
        except DuplicateStepError as exc:
            caught.append(exc)
            raise

    handle = durably.register({"job": job})["job"]
    run = handle.trigger({})
    assert durably.process_one()
    [exc] = caught
    assert "same-name" in str(exc)
    assert calls == Counter(first=1)
    failed = durably.get_run(run.id)
    assert failed is not None and failed.status == "failed"
    assert failed.error is not None
    assert "DuplicateStepError" in failed.error and "same-name" in failed.error


def test_step_index_counts_replayed_steps_so_indexes_match_across_a_resume(
    durably: Durably,
) -> None:
    indexes: list[list[int]] = []
    state: dict[str, bool] = {}

    @define_job(name="indexes")
    def job(step: StepContext, payload: Any) -> None:
        seen = [step.step_index]
        indexes.append(seen)
        step.run("zero", lambda: 0)
        seen.append(step.step_index)
        step.run("one", lambda: 1)
        seen.append(step.step_index)
        step.run("two", lambda: _crash_first_time(state))
        seen.append(step.step_index)
        step.run("three", lambda: 3)
        seen.append(step.step_index)

    handle = durably.register({"job": job})["job"]
    run = handle.trigger({})
    _run_crash_then_resume(durably, run.id)
    assert indexes == [[0, 1, 2], [0, 1, 2, 3, 4]]
    assert [(s.name, s.index) for s in durably.get_steps(run.id)] == [
        ("zero", 0),
        ("one", 1),
        ("two", 2),
        ("three", 3),
    ]


def test_step_context_exposes_the_current_run_id(durably: Durably) -> None:
    seen: list[str] = []

    @define_job(name="run-id")
    def job(step: StepContext, payload: Any) -> None:
        seen.append(step.run_id)

    handle = durably.register({"job": job})["job"]
    run = handle.trigger({})
    assert durably.process_one()
    assert seen == [run.id]


def test_a_raising_step_fails_the_run_and_records_the_failed_step(durably: Durably) -> None:
    events = Recorder(durably)
    calls: Counter[str] = Counter()

    @define_job(name="raising-step")
    def job(step: StepContext, payload: Any) -> None:
        step.run("ok", lambda: calls.update(["ok"]))

        def divide() -> float:
            calls["divide"] += 1
            return 1 / 0

        step.run("divide", divide)
        step.run("never", lambda: calls.update(["never"]))

    handle = durably.register({"job": job})["job"]
    run = handle.trigger({})
    assert durably.process_until_idle() == 1
    failed = durably.get_run(run.id)
    assert failed is not None and failed.status == "failed"
    assert failed.error == "ZeroDivisionError: division by zero"
    assert failed.failed_step_name == "divide"
    assert failed.completed_at is not None
    # no automatic retries
    assert calls == Counter(ok=1, divide=1)
    steps = durably.get_steps(run.id)
    assert [(s.name, s.status) for s in steps] == [("ok", "completed"), ("divide", "failed")]
    assert steps[1].error == "ZeroDivisionError: division by zero"
    [run_fail] = events.of("run:fail")
    assert run_fail.failed_step_name == "divide"
    assert run_fail.error == "ZeroDivisionError: division by zero"


def test_a_step_returning_none_is_replayed_as_none_without_calling_it(durably: Durably) -> None:
    calls: Counter[str] = Counter()
    seen: list[Any] = []
    state: dict[str, bool] = {}

    @define_job(name="none-step")
    def job(step: StepContext, payload: Any) -> None:
        seen.append(step.run("nothing", lambda: calls.update(["nothing"])))
        step.run("crash", lambda: _crash_first_time(state))

    handle = durably.register({"job": job})["job"]
    run = handle.trigger({})
    _run_crash_then_resume(durably, run.id)
    assert seen == [None, None]
    assert calls == Counter(nothing=1)


def test_steps_are_persisted_with_outputs_in_index_order(durably: Durably) -> None:
    @define_job(name="persisted")
    def job(step: StepContext, payload: Any) -> None:
        for i in range(5):
            step.run(f"s{i}", lambda i=i: {"i": i})

    handle = durably.register({"job": job})["job"]
    run = handle.trigger({})
    assert durably.process_one()
    steps = durably.get_steps(run.id)
    assert [s.name for s in steps] == [f"s{i}" for i in range(5)]
    assert [s.index for s in steps] == list(range(5))
    assert [s.output for s in steps] == [{"i": i} for i in range(5)]
    for s in steps:
        assert s.run_id == run.id and s.status == "completed" and s.error is None
        assert s.started_at.tzinfo is not None
        assert s.completed_at is not None and s.completed_at >= s.started_at


def test_step_run_passes_its_extra_arguments_to_fn_sync_and_async(durably: Durably) -> None:
    import asyncio

    from durably import AsyncStepContext

    def add(a: int, b: int) -> int:
        return a + b

    async def mul(a: int, b: int) -> int:
        await asyncio.sleep(0)
        return a * b

    @define_job(name="args-sync")
    def sync_job(step: StepContext, payload: Any) -> list[int]:
        return [step.run(f"add-{i}", add, i, 10) for i in range(3)]

    @define_job(name="args-async")
    async def async_job(step: AsyncStepContext, payload: Any) -> list[int]:
        return [await step.run(f"mul-{i}", mul, i, 10) for i in range(3)]

    durably.register({"s": sync_job, "a": async_job})
    s = durably.jobs.s.trigger({})
    a = durably.jobs.a.trigger({})
    assert durably.process_until_idle() == 2
    assert durably.get_run(s.id).output == [10, 11, 12]  # type: ignore[union-attr]
    assert durably.get_run(a.id).output == [0, 10, 20]  # type: ignore[union-attr]
