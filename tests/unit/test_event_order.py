"""A run's events reach listeners in order, even when a worker claims the run the moment
its trigger or retry commits, before the caller's thread has emitted `run:trigger` /
`run:retry` (found as a flaky SSE test: `run:start` arrived before `run:retry`)."""

from __future__ import annotations

from typing import Any

from conftest import wait_until

from durably import Durably, StepContext, define_job


@define_job(name="quick")
def quick(step: StepContext, payload: Any) -> str:
    return step.run("one", lambda: "done")


@define_job(name="fails")
def fails(step: StepContext, payload: Any) -> None:
    step.run("boom", lambda: 1 / 0)


def _hold_until_claimed(durably: Durably, event_type: str) -> None:
    """A listener, registered first, that keeps the caller inside the emission of
    `event_type` until a worker has claimed the run: its run:start comes meanwhile."""

    def hold(event: Any) -> None:
        def claimed() -> bool:
            run = durably.get_run(event.run_id)
            return run is not None and run.status != "pending"

        try:
            wait_until(claimed, timeout=5)
        except AssertionError:
            pass  # the fixed code claims but waits to announce: nothing else to see

    durably.on(event_type, hold)


def test_run_start_is_never_delivered_before_the_run_trigger(durably: Durably) -> None:
    durably.register({"quick": quick})
    _hold_until_claimed(durably, "run:trigger")
    seen: list[str] = []
    durably.on("*", lambda e: seen.append(e.type))
    durably.start()
    run = durably.jobs.quick.trigger({})
    wait_until(lambda: durably.get_run(run.id).status == "completed")  # type: ignore[union-attr]
    wait_until(lambda: "run:complete" in seen)
    assert seen.index("run:trigger") < seen.index("run:start"), seen


def test_run_start_is_never_delivered_before_the_run_retry(durably: Durably) -> None:
    durably.register({"fails": fails})
    run = durably.jobs.fails.trigger({})
    assert durably.process_one()
    _hold_until_claimed(durably, "run:retry")
    seen: list[str] = []
    durably.on("*", lambda e: seen.append(e.type))
    durably.start()
    durably.retry(run.id)
    wait_until(lambda: "run:fail" in seen)
    assert seen.index("run:retry") < seen.index("run:start"), seen
